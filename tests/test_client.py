"""``pipeline.client`` and ``PageRetriever`` against a running service, over real HTTP.

A real uvicorn serves the stand-in ColPali model and the embedded store on a
loopback port (in a thread of this process, so results can be compared with
the in-process ``PageRAG`` on the same store), with an API key and a fake
OpenAI-compatible VLM. The clients reach it only through HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("fastembed")
pytest.importorskip("langchain_core")

from langchain_tests.integration_tests import RetrieversIntegrationTests

from connectors.langchain import IMAGE_KEY, PageRetriever
from pipeline import PageRAG
from pipeline.client import AsyncPageRAGClient, PageRAGClient
from pipeline.errors import QueryError, ServiceAuthError, ServiceError, ServiceUnavailableError
from pipeline.serve.app import create_app
from pipeline.testing.fake_vlm import FakeVLM
from tests.serve_support import EIGHT_PAGES, THREE_PAGES, serve_config, uvicorn_server

KEY = "client-test-key-abcdef0123456789"
QUERY = "the page with the number three"

pytestmark = pytest.mark.skipif(
    shutil.which("pdftoppm") is None, reason="poppler-utils is not installed"
)


@pytest.fixture(scope="module")
def remote(
    tiny_model_dir: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    tmp = tmp_path_factory.mktemp("client")
    with FakeVLM() as vlm:
        rag = PageRAG(
            serve_config(tmp, model_dir=tiny_model_dir, vlm_url=vlm.base_url, api_key=KEY)
        )
        with uvicorn_server(create_app(rag)) as url, PageRAGClient(url, api_key=KEY) as client:
            job = client.wait(client.ingest([corpus / THREE_PAGES])["id"])
            assert job["state"] == "done", job
            yield SimpleNamespace(url=url, client=client, rag=rag, vlm=vlm)
        rag.close()


def test_search_equals_the_in_process_call_on_the_same_store(remote: Any) -> None:
    hits = remote.client.search(QUERY, k=3)
    local = remote.rag.search(QUERY, 3)
    assert [(h.point_id, h.page_number, h.source) for h in hits] == [
        (h.point_id, h.page_number, h.source) for h in local
    ]
    assert [h.score for h in hits] == pytest.approx([h.score for h in local])
    assert hits[0].label == local[0].label
    assert hits[0].load_jpeg() == local[0].load_jpeg()  # fetched from the service


def test_ask_and_the_stream_give_the_same_answer(remote: Any) -> None:
    answer = remote.client.ask("Which number?", k=2)
    assert answer.answered and answer.text.startswith("The pages say so [")
    assert [h.point_id for h in answer.cited] == [answer.sources[0].point_id]
    assert answer.usage is not None and answer.usage.total_tokens == 1012
    with remote.client.ask_stream("Which number?", k=2) as stream:
        assert [h.point_id for h in stream.sources] == [h.point_id for h in answer.sources]
        pieces = list(stream)
        streamed = stream.answer
    assert len(pieces) > 1 and "".join(pieces) == answer.text
    assert streamed.text == answer.text
    assert [h.point_id for h in streamed.cited] == [h.point_id for h in answer.cited]
    assert streamed.usage == answer.usage


def test_documents_explain_and_delete(remote: Any, corpus: Path) -> None:
    client = remote.client
    job = client.wait(client.ingest([corpus / EIGHT_PAGES], metadata={"team": "qa"})["id"])
    assert job["report"]["pages_ingested"] == 8
    records = {r.file_name: r for r in client.documents()}
    boxes = records["boxes.pdf"]
    assert boxes.page_count == 8 and boxes.is_complete and boxes.metadata == {"team": "qa"}
    assert client.document(boxes.document_id[:12]) == boxes
    hit = client.search("boxes", k=1, filter={"document_id": boxes.document_id})[0]
    png = Image.open(io.BytesIO(client.explain("boxes", hit.point_id)))
    assert png.format == "PNG" and png.size == hit.load_image().size
    assert [r.document_id for r in client.delete(boxes.document_id)] == [boxes.document_id]
    with pytest.raises(ServiceError, match="no document with id") as missing:
        client.document(boxes.document_id)
    assert missing.value.status == 404


def test_errors_come_back_as_the_same_exceptions(remote: Any) -> None:
    with pytest.raises(QueryError) as local:
        remote.rag.search("", 3)
    with pytest.raises(QueryError) as over_http:
        remote.client.search("", k=3)
    assert str(over_http.value) == str(local.value)
    with PageRAGClient(remote.url, api_key="wrong") as wrong, pytest.raises(ServiceAuthError):
        wrong.status()
    with PageRAGClient(remote.url, api_key="") as none, pytest.raises(ServiceAuthError) as info:
        none.search("x")
    assert KEY not in str(info.value)
    with (
        PageRAGClient("http://127.0.0.1:1", api_key=KEY, timeout=2) as down,
        pytest.raises(ServiceUnavailableError, match="is `pagerag serve` running there"),
    ):
        down.status()
    assert KEY not in repr(remote.client)


def test_async_client(remote: Any, corpus: Path, tmp_path: Path) -> None:
    copy = tmp_path / "again.pdf"
    shutil.copy(corpus / THREE_PAGES, copy)

    async def run() -> tuple[Any, ...]:
        async with AsyncPageRAGClient(remote.url, api_key=KEY) as client:
            hits = await client.search(QUERY, k=2)
            stream = await client.ask_stream("Which number?", k=2)
            pieces = [piece async for piece in stream]
            answer = await stream.result()
            job = await client.wait((await client.ingest([copy]))["id"])
            image = await client.page_image(hits[0].point_id)
            return hits, pieces, answer, job, image

    hits, pieces, answer, job, image = asyncio.run(run())
    assert [h.point_id for h in hits] == [h.point_id for h in remote.rag.search(QUERY, 2)]
    assert "".join(pieces) == answer.text and answer.cited
    assert job["report"]["files"]["skipped"] + job["report"]["files"]["ingested"] == 1
    assert image == hits[0].load_jpeg()


def test_retriever_over_the_service_matches_the_local_one(remote: Any) -> None:
    over_http = PageRetriever(client=remote.client, k=2)
    local = PageRetriever(rag=remote.rag, k=2)
    docs, expected = over_http.invoke(QUERY), local.invoke(QUERY)
    assert [d.id for d in docs] == [d.id for d in expected]
    assert [d.page_content for d in docs] == [d.page_content for d in expected]
    assert docs[0].metadata[IMAGE_KEY] == expected[0].metadata[IMAGE_KEY]
    base64.b64decode(docs[0].metadata[IMAGE_KEY])
    assert [d.id for d in asyncio.run(over_http.ainvoke(QUERY))] == [d.id for d in docs]
    assert len(over_http.invoke(QUERY, k=1)) == 1


def test_retriever_needs_exactly_one_target(remote: Any) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        PageRetriever(k=2)
    with pytest.raises(ValueError, match="exactly one"):
        PageRetriever(rag=remote.rag, client=remote.client)
    built = PageRetriever.from_url(remote.url, api_key=KEY, k=1)
    try:
        assert len(built.invoke(QUERY)) == 1
    finally:
        assert built.client is not None
        built.client.close()


def test_the_client_needs_no_web_framework() -> None:
    """An application that only calls a service installs pagerag[client], not [serve]."""
    code = (
        "import sys, pipeline.client, connectors.langchain; "
        "bad = sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'sse_starlette') "
        "if m in sys.modules); print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# The suite is written for pytest-asyncio's auto mode (see tests/test_langchain.py).
pytest.mark.asyncio(RetrieversIntegrationTests.test_ainvoke_returns_documents)


class TestRemotePageRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _remote(self, remote: Any) -> None:
        self.client = remote.client

    @property
    def retriever_constructor(self) -> type[PageRetriever]:
        return PageRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"client": self.client}

    @property
    def retriever_query_example(self) -> str:
        return QUERY
