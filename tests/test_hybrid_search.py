"""The search surface of the text lane: modes, plans and refusals, hits with their lanes,
the CLI, LangChain, and answering with each page's text.

The collections are written directly through the store API (no rendering, no model):
each page has a text (its BM25 vector, made by Qdrant's own tokenizer) and a "look",
the words the fake embedder turns into its visual vectors, so the two lanes can be
made to agree or disagree on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from connectors.bm25 import QdrantBm25
from pipeline import PageRAG
from pipeline.answer.answerer import PAGE_TEXT_CHARS, page_text_part
from pipeline.answer.messages import chat_messages
from pipeline.api import build_store
from pipeline.config import PageRAGConfig, RetrievalConfig, load_config
from pipeline.errors import QueryError
from pipeline.retrieve.display import describe_lanes, text_snippet
from pipeline.retrieve.fusion import Fuse
from pipeline.retrieve.planning import SearchOptions, SearchPlan, plan_search
from pipeline.retrieve.store import IMAGE_FIELD, KIND_PAGE, paths_payload
from pipeline.testing.fake_vlm import FakeVLM
from pipeline.testing.fakes import FAKE_SPEC, FakeEmbedder
from pipeline.types import (
    TEXT_FIELD,
    TEXT_VECTOR,
    CollectionSpec,
    Float16Array,
    Lane,
    ModelIdentity,
    PageHit,
    PagePoint,
    page_point_id,
)

# (file, page, text, look): "look" is what the page's image "shows" to the fake embedder.
PAGES = [
    ("report.pdf", 1, "Quarterly revenue grew in every segment.", "bar chart blue"),
    ("report.pdf", 2, "Safety instructions for the ladder.", "ladder diagram red"),
    ("report.pdf", 3, "", "photo cat"),  # a scan: no text layer
    ("manual.pdf", 1, "Revenue table by segment and region.", "table grid"),
]
BOTH: tuple[Lane, ...] = ("visual", "text")
POOLED = CollectionSpec(name="c", model="m", dim=128, pooled=("rows", "cols"), lanes=BOTH)


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 52), "white").save(out, format="JPEG")
    return out.getvalue()


def write_collection(root: Path, lanes: tuple[Lane, ...]) -> PageRAGConfig:
    """A collection of :data:`PAGES` with ``lanes`` under ``root``; its config."""
    config = load_config(environ={}, overrides={"store": {"path": str(root / "data")}})
    embedder = FakeEmbedder()
    spec = CollectionSpec(
        name=config.store.collection,
        model=FAKE_SPEC.name,
        dim=FAKE_SPEC.dim,
        identity=embedder.identity(),
        lanes=lanes,
    )
    bm25 = QdrantBm25()
    image = base64.b64encode(jpeg()).decode("ascii")
    points = []
    for file, page, text, look in PAGES:
        source = str(root / file)
        doc = hashlib.sha256(file.encode()).hexdigest()
        payload: dict[str, Any] = {
            "kind": KIND_PAGE,
            "document_id": doc,
            **paths_payload(source, None),
            "file_name": file,
            "page": page,
            "page_count": 3,
            IMAGE_FIELD: image,
        }
        sparse = {}
        if "text" in lanes:
            payload |= {TEXT_FIELD: text, "has_text": bool(text)}
            if text:
                sparse = {TEXT_VECTOR: bm25.embed_texts([text])[0]}
        vectors = {"full": embedder.embed_query(look)} if "visual" in lanes else {}
        points.append(PagePoint(page_point_id(doc, page), vectors, payload, sparse))
    store = build_store(config)
    try:
        store.open(spec, create=True)
        store.upsert_pages(points)
        store.flush()
    finally:
        store.close()
    return config


class NoVisualModel(FakeEmbedder):
    """The fake's spec, but any use of the model (or its weights' files) fails the test."""

    def embed_query(self, query: str) -> Float16Array:
        raise AssertionError("the visual model embedded a query")

    def embed_images(self, images: Sequence[Image.Image]) -> list[Float16Array]:
        raise AssertionError("the visual model embedded pages")

    def identity(self) -> ModelIdentity:
        raise AssertionError("the visual model's weights were fingerprinted")


@pytest.fixture(scope="module")
def both_lanes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hybrid")
    write_collection(root, BOTH)
    return root


@pytest.fixture
def rag(both_lanes: Path) -> Iterator[PageRAG]:
    config = load_config(environ={}, overrides={"store": {"path": str(both_lanes / "data")}})
    with PageRAG(config, embedder=FakeEmbedder()) as rag:
        yield rag


def where(hits: Sequence[PageHit]) -> list[tuple[str, int]]:
    return [(hit.file_name, hit.page_number) for hit in hits]


# -- planning ------------------------------------------------------------------------


def never() -> int:
    raise AssertionError("pages counted")


def test_options_name_every_mode() -> None:
    for mode in ("auto", "visual", "exact", "two_stage", "text", "hybrid"):
        assert SearchOptions(mode=mode).mode == mode  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="auto, visual, exact, two_stage, text, hybrid"):
        SearchOptions(mode="bm25")  # type: ignore[arg-type]


def test_auto_is_visual_with_the_visual_lane_and_text_without_it() -> None:
    config = RetrievalConfig(two_stage_min_pages=100)
    assert plan_search(SearchOptions(), POOLED, config, lambda: 10).mode == "exact"
    assert plan_search(SearchOptions(), POOLED, config, lambda: 500).mode == "two_stage"
    visual = plan_search(SearchOptions(mode="visual"), POOLED, config, lambda: 500)
    assert visual.mode == "two_stage" and visual.visual == "two_stage"
    assert visual.lanes == ("visual",)
    text_only = dataclasses.replace(POOLED, lanes=("text",))
    plan = plan_search(SearchOptions(k=3), text_only, config, never)
    assert plan == SearchPlan("text", 3, None)
    assert plan.visual is None and plan.lanes == ("text",)


def test_hybrid_plans_the_fusion_and_the_visual_lanes_search() -> None:
    config = RetrievalConfig(
        fusion="dbsf", rrf_k=10, visual_weight=2.0, text_weight=0.5, lane_k=50, prefetch_k=80
    )
    small = plan_search(SearchOptions(k=5, mode="hybrid"), POOLED, config, lambda: 10)
    assert small.mode == "hybrid" and small.visual == "exact" and small.prefetch == ()
    assert small.fusion == Fuse("dbsf", (2.0, 0.5), 10)
    assert small.lane_k == 50 and small.lanes == ("visual", "text")
    # a big pooled collection: the visual lane is itself two-stage, prefetching at least lane_k
    big = plan_search(SearchOptions(k=70, mode="hybrid"), POOLED, config, lambda: 10**6)
    assert big.visual == "two_stage" and big.lane_k == 70
    assert big.prefetch == (("rows", 80),)
    unpooled = dataclasses.replace(POOLED, pooled=())
    exact = plan_search(SearchOptions(mode="hybrid"), unpooled, RetrievalConfig(), never)
    assert exact.visual == "exact" and exact.fusion == Fuse("rrf", (1.0, 1.0), 60)


@pytest.mark.parametrize(
    ("lanes", "mode", "fix"),
    [
        (("visual",), "text", "pagerag reindex --text"),
        (("visual",), "hybrid", "pagerag reindex --text"),
        (("text",), "hybrid", "pagerag reindex --visual`, or search with --mode text"),
        (("text",), "visual", "pagerag reindex --visual`, or search with --mode text"),
        (("text",), "exact", "pagerag reindex --visual"),
        (("text",), "two_stage", "pagerag reindex --visual"),
    ],
)
def test_a_mode_the_collection_cannot_serve_names_the_fix(
    lanes: tuple[Lane, ...], mode: str, fix: str
) -> None:
    spec = dataclasses.replace(POOLED, lanes=lanes)
    with pytest.raises(QueryError, match=mode) as caught:
        plan_search(SearchOptions(mode=mode), spec, RetrievalConfig(), never)  # type: ignore[arg-type]
    assert fix in str(caught.value)


# -- searching through PageRAG -------------------------------------------------------


def test_text_mode_ranks_by_the_words_and_loads_no_visual_model(both_lanes: Path) -> None:
    config = load_config(environ={}, overrides={"store": {"path": str(both_lanes / "data")}})
    with PageRAG(config, embedder=NoVisualModel()) as rag:
        hits = rag.search("ladder safety", k=5, mode="text")
        assert where(hits) == [("report.pdf", 2)]
        assert hits[0].lanes == {"text": 1}
        assert hits[0].text == "Safety instructions for the ladder."
        revenue = rag.search("revenue by segment", k=5, mode="text")
        assert set(where(revenue)) == {("report.pdf", 1), ("manual.pdf", 1)}
        assert [h.lanes for h in revenue] == [{"text": 1}, {"text": 2}]
        # the scan has no text: the text lane never returns it
        assert ("report.pdf", 3) not in where(rag.search("photo cat", k=5, mode="text"))
        assert rag.plan(mode="text").mode == "text"
        # the async form too
        again = asyncio.run(rag.asearch("ladder safety", k=5, mode="text"))
        assert where(again) == where(hits)


def test_a_query_of_stopwords_is_refused_in_text_mode_and_visual_alone_in_hybrid(
    rag: PageRAG, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(QueryError, match="no searchable words"):
        rag.search("the of and", mode="text")
    hits = rag.search("the of and", k=4, mode="hybrid")
    assert len(hits) == 4
    assert [h.lanes for h in hits] == [{"visual": rank} for rank in range(1, 5)]
    assert "visual lane alone" in caplog.text


def test_visual_hits_say_their_lane(rag: PageRAG) -> None:
    hits = rag.search("ladder diagram", k=3, mode="visual")
    assert where(hits)[0] == ("report.pdf", 2)
    assert [h.lanes for h in hits] == [{"visual": 1}, {"visual": 2}, {"visual": 3}]
    assert rag.search("ladder diagram", k=3, mode="exact") == hits


def test_hybrid_fuses_both_lanes_and_says_which_found_each_page(rag: PageRAG) -> None:
    # visually "cat" is the scan (no text); by text "revenue" is two other pages
    hits = rag.search("cat revenue", k=4, mode="hybrid")
    found = {where([h])[0]: dict(h.lanes) for h in hits}
    assert found[("report.pdf", 3)].get("visual") == 1
    assert "text" not in found[("report.pdf", 3)]
    assert {found[("report.pdf", 1)]["text"], found[("manual.pdf", 1)]["text"]} == {1, 2}
    assert all(set(lanes) <= {"visual", "text"} and lanes for lanes in found.values())
    # a page both lanes put first is the fused first
    top = rag.search("ladder", k=2, mode="hybrid")[0]
    assert where([top]) == [("report.pdf", 2)] and top.lanes == {"visual": 1, "text": 1}
    assert asyncio.run(rag.asearch("ladder", k=2, mode="hybrid"))[0].lanes == top.lanes


def test_a_text_only_collection_searches_text_without_the_models_weights(
    tmp_path: Path,
) -> None:
    config = write_collection(tmp_path, ("text",))
    with PageRAG(config, embedder=NoVisualModel()) as rag:
        hits = rag.search("ladder")  # auto: the text lane
        assert where(hits) == [("report.pdf", 2)] and hits[0].lanes == {"text": 1}
        with pytest.raises(QueryError, match="reindex --visual"):
            rag.search("ladder", mode="hybrid")


def test_a_visual_only_collection_refuses_text_modes(tmp_path: Path) -> None:
    config = write_collection(tmp_path, ("visual",))
    with PageRAG(config, embedder=FakeEmbedder()) as rag:
        assert rag.search("ladder diagram", k=1)[0].lanes == {"visual": 1}
        for mode in ("text", "hybrid"):
            with pytest.raises(QueryError, match="reindex --text"):
                rag.search("ladder", mode=mode)  # type: ignore[arg-type]


# -- answering with the pages' text ----------------------------------------------------


@pytest.mark.parametrize("with_text", [False, True])
def test_answer_with_text_sends_each_pages_text_beside_its_image(
    both_lanes: Path, with_text: bool
) -> None:
    with FakeVLM() as vlm:
        config = load_config(
            environ={},
            overrides={
                "store": {"path": str(both_lanes / "data")},
                "vlm": {"base_url": vlm.base_url, "max_retries": 0},
                "text": {"answer_with_text": with_text},
            },
        )
        with PageRAG(config, embedder=FakeEmbedder()) as rag:
            answer = rag.ask("Who climbs the ladder?", k=2, mode="hybrid")
        assert answer.answered
        (body,) = vlm.requests
    content = body["messages"][1]["content"]
    texts = [part["text"] for part in content if part["type"] == "text"]
    images = [part for part in content if part["type"] == "image_url"]
    assert len(images) == 2
    shown = [t for t in texts if t.startswith("Text extracted from [")]
    if not with_text:
        assert shown == []
        assert not any("Safety instructions" in t for t in texts)
        return
    assert shown[0] == (
        "Text extracted from [report.pdf p.2] (may be incomplete):\n"
        "Safety instructions for the ladder."
    )
    # right after its page's image
    index = next(i for i, part in enumerate(content) if part.get("text") == shown[0])
    assert content[index - 1]["type"] == "image_url"


def test_page_text_is_capped_and_pages_without_text_get_none() -> None:
    def hit(text: str) -> PageHit:
        payload = {"file_name": "a.pdf", TEXT_FIELD: text}
        return PageHit("p", "d", "/a.pdf", 1, 1.0, payload, image_loader=jpeg)

    assert page_text_part(hit("")) is None
    long = page_text_part(hit("word " * 5000))
    assert long is not None and long.text.endswith("[… text cut]")
    assert len(long.text) < PAGE_TEXT_CHARS + 100
    messages = chat_messages(
        "q", [hit("x" * 10)], max_image_side=64, jpeg_quality=70, page_text_chars=5
    )
    assert messages[1]["content"][2]["text"].endswith("\nxxxxx [… text cut]")


# -- how hits are shown ------------------------------------------------------------


def test_lanes_and_snippets_read_well() -> None:
    assert describe_lanes({"text": 1, "visual": 3}) == "visual #3 · text #1"
    assert describe_lanes({}) == ""
    assert text_snippet("  a\n\nb  c ") == "a b c"
    assert text_snippet("alpha beta gamma", 12) == "alpha beta…"


def test_cli_search_shows_lanes_and_snippets(
    both_lanes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.clirun import invoke, invoke_json

    monkeypatch.setattr("pipeline.api.build_embedder", lambda config: FakeEmbedder())
    env = {"PAGERAG_STORE__PATH": str(both_lanes / "data"), "OPENAI_API_KEY": ""}
    code, out, err = invoke(env, "search", "ladder", "-k", "2", "--mode", "hybrid")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "found by" in flat
    assert "visual #1 · text #1" in flat
    assert "Safety instructions for the ladder." in flat
    code, data = invoke_json(env, "search", "cat revenue", "-k", "4", "--mode", "hybrid", "--json")
    assert code == 0, data
    by_page = {(Path(h["source"]).name, h["page"]): h for h in data["hits"]}
    assert by_page[("report.pdf", 3)]["lanes"] == {"visual": 1}
    assert by_page[("report.pdf", 3)]["snippet"] == ""
    assert by_page[("manual.pdf", 1)]["snippet"] == "Revenue table by segment and region."
    assert "text" in by_page[("manual.pdf", 1)]["lanes"]
    # a visual search keeps its table as it was: no lanes column
    code, out, _ = invoke(env, "search", "ladder", "-k", "2", "--mode", "visual")
    assert code == 0 and "found by" not in out
    code, out, err = invoke(env, "search", "ladder", "--mode", "bm25")
    assert code != 0 and "hybrid" in out + err


def test_langchain_documents_carry_the_page_text_and_lanes(rag: PageRAG) -> None:
    pytest.importorskip("langchain_core")
    from connectors.langchain import IMAGE_KEY, PageRetriever

    docs = PageRetriever(rag=rag, k=4, mode="hybrid").invoke("cat revenue")
    by_label = {d.metadata["label"]: d for d in docs}
    scan = by_label["report.pdf p.3"]
    assert "no OCR" in scan.page_content  # the stand-in, only for a page without text
    assert scan.metadata["lanes"] == {"visual": 1}
    table = by_label["manual.pdf p.1"]
    assert table.page_content == "Revenue table by segment and region."
    assert IMAGE_KEY in table.metadata and "text" in table.metadata["lanes"]
    (text_doc,) = PageRetriever(rag=rag, k=1, mode="text").invoke("ladder")
    assert text_doc.page_content == "Safety instructions for the ladder."
    assert json.dumps(text_doc.metadata["lanes"]) == '{"text": 1}'


def test_the_service_wire_carries_lanes_and_a_snippet() -> None:
    from pipeline.serve.wire import hit_from_wire, hit_to_wire

    text = "Safety instructions for the ladder. " * 20
    hit = PageHit(
        "p", "d", "/a.pdf", 2, 0.5, {"file_name": "a.pdf", TEXT_FIELD: text}, lanes={"text": 1}
    )
    wire = json.loads(json.dumps(hit_to_wire(hit)))
    assert wire["lanes"] == {"text": 1}
    assert wire["snippet"] == text_snippet(text) and wire["snippet"].endswith("…")
    back = hit_from_wire(wire)
    assert back.lanes == {"text": 1} and back.text == text
