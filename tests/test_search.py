"""Search and ask through PageRAG: ranking, filters, async parity, the VLM boundary."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from connectors.openai_vlm import OpenAIAnswerer
from pipeline import PageRAG, SearchOptions
from pipeline.config import load_config
from pipeline.errors import CollectionNotFoundError, QueryError, StoreUnavailableError
from pipeline.testing.fakes import FakeEmbedder
from tests.store_contract import maxsim

THREE = "robust/pdfjs/test/pdfs/three_pages_with_number.pdf"
EIGHT = "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf"


def make_config(tmp_path: Path, **vlm: object):
    return load_config(
        environ={},
        overrides={
            "store": {"path": str(tmp_path / "data")},
            "render": {"dpi": 50},
            "vlm": {"max_retries": 0, **vlm},
        },
    )


@pytest.fixture
def rag(tmp_path: Path, corpus: Path) -> Iterator[PageRAG]:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(corpus / THREE, docs / "three.pdf")
    shutil.copy(corpus / EIGHT, docs / "eight.pdf")
    with PageRAG(make_config(tmp_path), embedder=FakeEmbedder()) as rag:
        report = rag.ingest([docs], metadata={"team": "blue"})
        assert report.ok
        rag.ingest([corpus / "robust/pdfjs/test/pdfs/vertical.pdf"], metadata={"team": "red"})
        yield rag


def test_search_ranks_pages_in_exact_maxsim_order(rag: PageRAG) -> None:
    query = "boxes on a page"
    hits = rag.search(query, k=10, mode="exact")
    ids = [i for batch in rag.store.iter_page_ids() for i in batch]
    stored = rag.store.page_vectors(ids)
    q = rag.embedder.embed_query(query)
    brute = {i: maxsim(q, stored[i]) for i in ids}
    expected = sorted(brute.values(), reverse=True)[:10]
    # Same order up to near-ties: pages differing by one digit score alike, and
    # float16 sums in another order may swap them; each rank's score must match.
    assert [h.score for h in hits] == pytest.approx(expected, rel=1e-2)
    assert hits[0].point_id == max(brute, key=brute.__getitem__)
    for hit in hits:
        assert hit.score == pytest.approx(maxsim(q, stored[hit.point_id]), rel=2e-2)
        assert hit.payload["page"] == hit.page_number
        assert hit.source.endswith((".pdf",))


def test_filters_restrict_results(rag: PageRAG, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    only_three = rag.search("page", k=50, filter={"source": str(docs / "three.pdf")})
    assert {h.page_number for h in only_three} == {1, 2, 3}
    under_docs = rag.search("page", k=50, filter={"source": str(docs)})
    assert len(under_docs) == 11
    red = rag.search("page", k=50, filter={"team": "red"})
    assert red and {h.file_name for h in red} == {"vertical.pdf"}
    doc_id = only_three[0].document_id
    assert {h.document_id for h in rag.search("page", k=50, filter={"document_id": doc_id})} == {
        doc_id
    }


def test_async_search_equals_sync(rag: PageRAG) -> None:
    sync = rag.search("a table", k=5)
    async_hits = asyncio.run(rag.asearch("a table", k=5))
    assert [h.point_id for h in async_hits] == [h.point_id for h in sync]


def test_one_search_options_value_for_every_search_and_ask(rag: PageRAG, tmp_path: Path) -> None:
    """search/ask/ask_stream/asearch/aask take k, filter and mode as keywords, as k alone,
    or as one SearchOptions value; every form finds the same pages."""
    where = {"source": str(tmp_path / "docs" / "eight.pdf")}
    options = SearchOptions(k=3, filter=where, mode="exact")
    by_keywords = rag.search("boxes", k=3, filter=where, mode="exact")
    assert len(by_keywords) == 3
    ids = [h.point_id for h in by_keywords]
    assert [h.point_id for h in rag.search("boxes", options)] == ids
    assert [h.point_id for h in rag.search("boxes", 3, filter=where, mode="exact")] == ids
    assert [h.point_id for h in asyncio.run(rag.asearch("boxes", options))] == ids
    # keywords override a value's fields
    assert len(rag.search("boxes", options, k=1)) == 1
    # no VLM is configured: the answers list the pages they would have sent
    assert [h.point_id for h in rag.ask("boxes", options).sources] == ids
    assert [h.point_id for h in asyncio.run(rag.aask("boxes", options)).sources] == ids
    assert [h.point_id for h in rag.ask_stream("boxes", options).result().sources] == ids
    assert rag.plan(options).mode == "exact"
    with pytest.raises(TypeError, match="top_k"):
        rag.search("boxes", top_k=3)


@pytest.mark.parametrize("query", ["", "   \n"])
def test_empty_query_is_refused(rag: PageRAG, query: str) -> None:
    with pytest.raises(QueryError, match="empty"):
        rag.search(query)


@pytest.mark.parametrize("k", [0, -1, 10_001, True])
def test_bad_k_is_refused(rag: PageRAG, k: int) -> None:
    with pytest.raises(QueryError, match="k must be"):
        rag.search("x", k=k)


def test_two_stage_finds_the_same_top_page_as_exact(rag: PageRAG) -> None:
    exact = rag.search("numbers", k=3, mode="exact")
    two = rag.search("numbers", k=3, mode="two_stage")
    assert two[0].point_id == exact[0].point_id


def test_search_without_a_collection_says_to_ingest(tmp_path: Path) -> None:
    with (
        PageRAG(make_config(tmp_path), embedder=FakeEmbedder()) as rag,
        pytest.raises(CollectionNotFoundError, match="pagerag ingest"),
    ):
        rag.search("anything")


def test_filter_matching_nothing_gives_an_answer_that_says_so(rag: PageRAG) -> None:
    answer = rag.ask("anything", filter={"team": "green"})
    assert not answer.answered
    assert answer.sources == ()
    assert "filter" in answer.text


def chat_reply(text: str) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "vlm-test",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        ],
        "usage": {"prompt_tokens": 900, "completion_tokens": 12, "total_tokens": 912},
    }


def test_ask_sends_the_top_pages_to_the_vlm_and_parses_citations(
    rag: PageRAG, tmp_path: Path
) -> None:
    sent: list[dict] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        labels = [
            p["text"]
            for m in body["messages"]
            if isinstance(m["content"], list)
            for p in m["content"]
            if p["type"] == "text" and p["text"].startswith("[")
        ]
        return httpx.Response(200, json=chat_reply(f"It shows boxes {labels[1]}."))

    config = make_config(
        tmp_path, base_url="http://vlm.test/v1", model="vlm-test", api_key="sk-test-secret"
    )
    answerer = OpenAIAnswerer(
        config.vlm, http_client=httpx.Client(transport=httpx.MockTransport(endpoint))
    )
    rag._answerer = answerer  # the config would build the same class, without the mock
    answer = rag.ask(
        "What does page 2 of eight.pdf show?",
        k=3,
        filter={"source": str(tmp_path / "docs" / "eight.pdf")},
    )
    assert answer.answered
    assert answer.text.startswith("It shows boxes [eight.pdf p.")
    assert [f"[{h.label}]" for h in answer.cited] == [answer.text[len("It shows boxes ") : -1]]
    assert answer.cited[0] == answer.sources[1]
    assert len(answer.sources) == 3
    assert answer.usage is not None and answer.usage.total_tokens == 912
    (body,) = sent
    assert body["model"] == "vlm-test"
    parts = [
        p
        for m in body["messages"]
        for p in (m["content"] if isinstance(m["content"], list) else [])
    ]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 3
    assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in images)


def test_store_outage_mid_job_fails_the_rest_clearly_and_a_rerun_resumes(
    tmp_path: Path, corpus: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, name in enumerate([THREE, EIGHT, THREE]):
        # three distinct documents (the third differs by one appended byte)
        data = (corpus / name).read_bytes() + (b"\n" if i == 2 else b"")
        (docs / f"doc{i}.pdf").write_bytes(data)

    with PageRAG(make_config(tmp_path), embedder=FakeEmbedder()) as rag:
        store = rag.store
        real_upsert = store.upsert_pages
        calls = {"n": 0}

        def flaky(points):  # Qdrant goes away after the first batch
            calls["n"] += 1
            if calls["n"] > 1:
                raise StoreUnavailableError("Qdrant at http://qdrant:6333 is unreachable")
            return real_upsert(points)

        store.upsert_pages = flaky  # type: ignore[method-assign]
        report = rag.ingest([docs])
        assert report.exit_code == 1
        assert all(o.status in ("failed", "ingested") for o in report.outcomes)
        failed = [o for o in report.outcomes if o.status == "failed"]
        assert failed
        # the outage is reported once for the job; each file names it in a few words
        assert report.error is not None and "unreachable" in report.error
        assert all("store unavailable" in (o.message or "") for o in failed)
        store.upsert_pages = real_upsert  # type: ignore[method-assign]

        again = rag.ingest([docs])
        assert again.ok
        assert rag.store.count_pages() == 3 + 8 + 3
        assert len(rag.documents()) == 3
        ids = [i for batch in rag.store.iter_page_ids() for i in batch]
        assert len(ids) == len(set(ids))


def test_query_vectors_stay_float16(rag: PageRAG) -> None:
    assert rag.embedder.embed_query("x y z").dtype == np.float16
