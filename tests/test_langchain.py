"""``connectors.langchain``: the standard retriever suite, then pagerag's own promises.

Everything runs on the real path — rendered corpus PDFs, the fastembed
embedder with the offline stand-in ColPali model, the embedded engine — so
the Documents are built from what a real search returns. The stand-in model
has random weights: these tests check plumbing, never ranking quality.

The embedded engine allows one open per data directory per process, and the
standard suite builds its retriever many times, so every retriever in this
module shares one ``PageRAG`` (``shared_rag``), closed when the module ends.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("langchain_core")
pytest.importorskip("fastembed")

from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnablePassthrough
from langchain_tests.integration_tests import RetrieversIntegrationTests
from pydantic import Field, ValidationError

from connectors.langchain import (
    IMAGE_KEY,
    METADATA_KEYS,
    MIME_TYPE_KEY,
    PageRetriever,
    format_pages,
    page_prompt,
    pages_to_content_blocks,
)
from pipeline import PageRAG
from pipeline.answer.answerer import SYSTEM_PROMPT
from pipeline.config import load_config
from pipeline.errors import OptionalDependencyError, StoreError

THREE_PAGES = "robust/pdfjs/test/pdfs/three_pages_with_number.pdf"
EIGHT_PAGES = "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf"
QUERY = "the page with the number three"


def _config_overrides(model_dir: Path, data_dir: Path) -> dict[str, dict[str, Any]]:
    return {
        "embedding": {"model_path": str(model_dir), "device": "cpu", "threads": 1},
        "store": {"path": str(data_dir)},
        "render": {"dpi": 50},
    }


@pytest.fixture(scope="module")
def shared_rag(
    tiny_model_dir: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PageRAG]:
    """Both corpus PDFs (3 + 8 pages) ingested once for the whole module."""
    data = tmp_path_factory.mktemp("langchain-store")
    rag = PageRAG(load_config(environ={}, overrides=_config_overrides(tiny_model_dir, data)))
    report = rag.ingest([corpus / THREE_PAGES, corpus / EIGHT_PAGES])
    assert report.exit_code == 0, report.to_dict()
    yield rag
    rag.close()


# -- the ecosystem's own definition of a well-behaved retriever ----------------------

# The suite is written for pytest-asyncio's auto mode; this project runs in strict
# mode, where a coroutine test needs the asyncio mark. Marking the suite's one
# coroutine test (the mark is stored on the function object, so the suite's
# "no overrides" check still sees the original) is the only change it needs;
# a class-wide mark would also land on its sync tests and warn there.
pytest.mark.asyncio(RetrieversIntegrationTests.test_ainvoke_returns_documents)


class TestPageRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _rag(self, shared_rag: PageRAG) -> None:
        self.rag = shared_rag

    @property
    def retriever_constructor(self) -> type[PageRetriever]:
        return PageRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"rag": self.rag}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


# -- pagerag's promises ----------------------------------------------------------------


@pytest.fixture
def retriever(shared_rag: PageRAG) -> PageRetriever:
    return PageRetriever(rag=shared_rag, k=5)


def test_one_document_per_page_with_metadata_and_image(
    retriever: PageRetriever, shared_rag: PageRAG
) -> None:
    docs = retriever.invoke(QUERY)
    hits = shared_rag.search(QUERY, 5)
    assert [d.id for d in docs] == [h.point_id for h in hits]
    for doc, hit in zip(docs, hits, strict=True):
        meta = doc.metadata
        assert set(METADATA_KEYS) | {IMAGE_KEY, MIME_TYPE_KEY} == set(meta)
        assert meta["document_id"] == hit.document_id
        assert meta["source"] == hit.source
        assert meta["page"] == hit.page_number
        assert meta["score"] == pytest.approx(hit.score)
        assert meta["point_id"] == doc.id == hit.point_id
        assert meta["file_name"] in ("three_pages_with_number.pdf", "boxes.pdf")
        assert meta["label"] == f"{meta['file_name']} p.{meta['page']}"
        assert meta[MIME_TYPE_KEY] == "image/jpeg"
        jpeg = base64.b64decode(meta[IMAGE_KEY])
        assert jpeg == hit.load_jpeg()
        assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
        assert meta["lanes"] == dict(hit.lanes)
        if hit.text.strip():  # the text lane: the page's own text
            assert doc.page_content == hit.text.strip()
            continue
        # the stand-in text names the page and says there is no OCR text
        assert doc.page_content.startswith(f"[{meta['label']}] Page {meta['page']} of ")
        assert "no OCR" in doc.page_content


def test_async_and_sync_return_the_same_pages(retriever: PageRetriever) -> None:
    sync = retriever.invoke(QUERY, k=7)
    asynchronous = asyncio.run(retriever.ainvoke(QUERY, k=7))
    assert len(sync) == 7
    assert [(d.id, d.metadata["score"]) for d in asynchronous] == [
        (d.id, d.metadata["score"]) for d in sync
    ]
    assert asynchronous == sync  # images and text too


def test_batch_matches_one_by_one(retriever: PageRetriever) -> None:
    queries = [QUERY, "a box", "numbers"]
    batched = retriever.batch(queries)
    assert [[d.id for d in docs] for docs in batched] == [
        [d.id for d in retriever.invoke(q)] for q in queries
    ]
    abatched = asyncio.run(retriever.abatch(queries))
    assert [[d.id for d in docs] for docs in abatched] == [[d.id for d in docs] for docs in batched]


def test_include_images_off_drops_the_image(shared_rag: PageRAG) -> None:
    docs = PageRetriever(rag=shared_rag, k=3, include_images=False).invoke(QUERY)
    assert len(docs) == 3
    for doc in docs:
        assert IMAGE_KEY not in doc.metadata
        assert MIME_TYPE_KEY not in doc.metadata
        stand_in = doc.page_content.startswith(f"[{doc.metadata['label']}]")
        assert stand_in == ("include_images=False" in doc.page_content)
    # per call too, and the text-only Documents still feed the prompt helper
    per_call = PageRetriever(rag=shared_rag).invoke(QUERY, k=3, include_images=False)
    assert [d.metadata for d in per_call] == [d.metadata for d in docs]
    blocks = pages_to_content_blocks(docs)
    assert len(blocks) == len(docs)
    for block, doc in zip(blocks, docs, strict=True):  # the text, after its label
        assert block["type"] == "text"
        assert block["text"].startswith(f"[{doc.metadata['label']}]")
        assert block["text"].endswith(doc.page_content)


def test_max_image_side_shrinks_images(shared_rag: PageRAG) -> None:
    (full,) = PageRetriever(rag=shared_rag, k=1).invoke(QUERY)
    (small,) = PageRetriever(rag=shared_rag, k=1, max_image_side=100).invoke(QUERY)
    assert small.id == full.id
    big = Image.open(io.BytesIO(base64.b64decode(full.metadata[IMAGE_KEY])))
    shrunk = Image.open(io.BytesIO(base64.b64decode(small.metadata[IMAGE_KEY])))
    assert max(big.size) > 100
    assert max(shrunk.size) == 100
    assert shrunk.format == "JPEG"


def test_filter_by_source_and_document_id(shared_rag: PageRAG, corpus: Path) -> None:
    boxes = str((corpus / EIGHT_PAGES).resolve())
    docs = PageRetriever(rag=shared_rag, k=20, filter={"source": boxes}).invoke(QUERY)
    assert sorted(d.metadata["page"] for d in docs) == list(range(1, 9))
    assert {d.metadata["source"] for d in docs} == {boxes}

    three_id = next(r.document_id for r in shared_rag.documents() if r.source != boxes)
    per_call = PageRetriever(rag=shared_rag, k=20).invoke(QUERY, filter={"document_id": three_id})
    assert sorted(d.metadata["page"] for d in per_call) == [1, 2, 3]
    assert {d.metadata["document_id"] for d in per_call} == {three_id}


def test_score_threshold_drops_weaker_pages(shared_rag: PageRAG) -> None:
    everything = PageRetriever(rag=shared_rag, k=11).invoke(QUERY)
    scores = [d.metadata["score"] for d in everything]
    assert scores == sorted(scores, reverse=True)
    cut = scores[4]
    kept = PageRetriever(rag=shared_rag, k=11, score_threshold=cut).invoke(QUERY)
    assert [d.id for d in kept] == [d.id for d in everything if d.metadata["score"] >= cut]
    assert 5 <= len(kept) < 11
    assert PageRetriever(rag=shared_rag, score_threshold=scores[0] + 1).invoke(QUERY) == []


def test_bad_arguments_are_refused(shared_rag: PageRAG) -> None:
    with pytest.raises(ValidationError):
        PageRetriever(rag=shared_rag, k=0)
    with pytest.raises(ValidationError):
        PageRetriever(rag=shared_rag, mode="fastest")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="extra"):
        PageRetriever(rag=shared_rag, top_k=3)  # type: ignore[call-arg]
    retriever = PageRetriever(rag=shared_rag)
    with pytest.raises(TypeError, match="top_k"):
        retriever.invoke(QUERY, top_k=3)
    with pytest.raises(ValidationError):
        retriever.invoke(QUERY, k=-1)


def test_from_config_and_a_collection_without_images(
    tiny_model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    """A retriever from a YAML file; pages stored without images say how to cope."""
    config = tmp_path / "pagerag.yaml"
    config.write_text(
        f"embedding:\n  model_path: {tiny_model_dir}\n  device: cpu\n"
        f"store:\n  path: {tmp_path / 'data'}\n"
        "render:\n  dpi: 50\n"
        "ingest:\n  store_images: false\n"
    )
    retriever = PageRetriever.from_config(config, k=2)
    try:
        assert retriever.k == 2
        assert retriever.rag.ingest([corpus / THREE_PAGES]).exit_code == 0
        with pytest.raises(StoreError, match="include_images=False"):
            retriever.invoke(QUERY)
        docs = retriever.invoke(QUERY, include_images=False)
        assert len(docs) == 2
    finally:
        retriever.rag.close()


# -- the recipe: retriever -> page images as content blocks -> chat model ------------------


class RecordingChatModel(FakeMessagesListChatModel):
    """A fake chat model that keeps the messages of every call it gets."""

    received: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.received.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def _answer_model() -> RecordingChatModel:
    return RecordingChatModel(
        responses=[AIMessage(content="It says 3 [three_pages_with_number.pdf p.3].")]
    )


def _image_urls(message: BaseMessage) -> list[str]:
    assert isinstance(message.content, list)
    return [
        block["image_url"]["url"]
        for block in message.content
        if isinstance(block, dict) and block.get("type") == "image_url"
    ]


def test_lcel_chain_shows_the_page_images_to_the_model(shared_rag: PageRAG) -> None:
    retriever = PageRetriever(rag=shared_rag, k=3)
    model = _answer_model()
    chain = {"question": RunnablePassthrough(), "docs": retriever} | format_pages | model

    answer = chain.invoke(QUERY)

    assert answer.content == "It says 3 [three_pages_with_number.pdf p.3]."
    ((system, human),) = model.received
    assert isinstance(system, SystemMessage)
    assert system.content == SYSTEM_PROMPT
    assert isinstance(human, HumanMessage)
    docs = retriever.invoke(QUERY)
    assert _image_urls(human) == [f"data:image/jpeg;base64,{d.metadata[IMAGE_KEY]}" for d in docs]
    assert isinstance(human.content, list)
    texts = [b["text"] for b in human.content if isinstance(b, dict) and b["type"] == "text"]
    assert texts == [*(f"[{d.metadata['label']}]" for d in docs), f"Question: {QUERY}"]


def test_lcel_chain_async_and_with_a_lambda_format(shared_rag: PageRAG) -> None:
    """``ainvoke`` through the chain, and the shape ``retriever | format | model``."""
    from langchain_core.runnables import RunnableLambda

    retriever = PageRetriever(rag=shared_rag, k=2)
    model = _answer_model()

    def format_docs(docs: list[Document]) -> list[BaseMessage]:
        return page_prompt("What number is on the page?", docs)

    chain = retriever | RunnableLambda(format_docs) | model
    asyncio.run(chain.ainvoke(QUERY))
    chain.invoke(QUERY)
    first, second = model.received
    assert first == second
    assert len(_image_urls(first[1])) == 2


def test_content_blocks_label_each_image() -> None:
    jpeg = base64.b64encode(b"\xff\xd8fake").decode()
    doc = Document(
        page_content="[a.pdf p.2] …",
        metadata={"label": "a.pdf p.2", IMAGE_KEY: jpeg, MIME_TYPE_KEY: "image/jpeg"},
    )
    text_doc = Document(page_content="plain text from another retriever")
    assert pages_to_content_blocks([doc, text_doc]) == [
        {"type": "text", "text": "[a.pdf p.2]"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{jpeg}"}},
        {"type": "text", "text": "plain text from another retriever"},
    ]
    with pytest.raises(TypeError, match="question"):
        format_pages.invoke({"docs": [doc]})


# -- the optional extra ---------------------------------------------------------------------


def test_import_without_langchain_core_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if not installed: a None entry makes `import` raise ModuleNotFoundError, and
    # every loaded submodule needs one too, or `from langchain_core.x import` finds it.
    for name in [
        n for n in sys.modules if n == "langchain_core" or n.startswith("langchain_core.")
    ]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "connectors.langchain")  # restored afterwards
    with pytest.raises(OptionalDependencyError, match=r"pip install -e .*\[langchain\]") as info:
        importlib.import_module("connectors.langchain")
    assert isinstance(info.value, ImportError)
    assert info.value.extra == "langchain"
    assert "langchain-core" in str(info.value)
