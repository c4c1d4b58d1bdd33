"""The ingestion stages on their own, with no threads at all: what a second engine
(Ray tasks and actors) calls. The local engine (tests/test_ingest.py and the
others) runs the same objects on threads; here each is driven by hand.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline import PageRAG
from pipeline.config import load_config
from pipeline.errors import DamagedFileError, ModelError, StoreError
from pipeline.ingest.completer import Completer
from pipeline.ingest.outcome import FileOutcome, page_ranges
from pipeline.ingest.planner import Planner
from pipeline.ingest.render import PageFailure, Renderer, RenderPlan
from pipeline.ingest.sources import hash_file
from pipeline.ingest.stages import DecodedPage, Document, EmbedStage, RenderStage, UpsertStage
from pipeline.ingest.text import TextExtractor
from pipeline.retrieve.store import IMAGE_FIELD, PayloadReader
from pipeline.testing.fakes import FakeEmbedder
from pipeline.types import CollectionSpec, Page, PagePoint
from tests.test_render import write_pdf

pytestmark = pytest.mark.skipif(
    shutil.which("pdftoppm") is None or shutil.which("pdfinfo") is None,
    reason="poppler-utils is not installed (apt-get install poppler-utils)",
)

BOXES = [b"0.%d g 10 10 %d 60 re f" % (n, 20 + 20 * n) for n in range(1, 4)]  # 3 unlike pages


def make_rag(collection: str) -> PageRAG:
    config = load_config(
        environ={},
        overrides={"store": {"url": ":memory:", "collection": collection}, "render": {"dpi": 40}},
    )
    rag = PageRAG(config, embedder=FakeEmbedder())
    rag.ingest([])  # creates the collection
    return rag


@pytest.fixture
def rag() -> Iterator[PageRAG]:
    made = make_rag("stages")
    yield made
    made.close()


@pytest.fixture
def pdf(tmp_path: Path) -> Path:
    return write_pdf(tmp_path / "three.pdf", [(100, 100, 0, box) for box in BOXES])


def spec_of(rag: PageRAG) -> CollectionSpec:
    spec = rag.status().spec
    assert spec is not None
    return spec


class Stages:
    """Every stage, built as IngestJob builds them."""

    def __init__(self, rag: PageRAG, *, limits: dict[str, Any] | None = None) -> None:
        spec = spec_of(rag)
        self.planner = Planner(rag.store, hash_file, limits=limits)
        renderer = Renderer(rag.config.render)
        text = TextExtractor(rag.config.render, rag.config.text, renderer.poppler)
        self.render = RenderStage(renderer, text=text if spec.has_text else None)
        self.embed = EmbedStage(rag.embedder, spec, text_embedder=rag.text_embedder)
        self.upsert = UpsertStage(rag.store, batch=2)
        self.completer = Completer(rag.store, spec, limits=limits)

    def ingest(self, path: Path) -> FileOutcome:
        """Plan, render, embed (batches of 2), upsert, complete: in this thread."""
        doc = self.planner.plan(path)
        if isinstance(doc, FileOutcome):
            return doc
        if self.render.open(doc):
            pages = [item for item in self.render.pages(doc) if isinstance(item, DecodedPage)]
            for start in range(0, len(pages), 2):
                results = self.embed.embed(pages[start : start + 2])
                if self.upsert.add(only_points(results)):
                    self.upsert.flush()
            self.upsert.flush()
        doc.stored_pages = self.upsert.stored_pages(doc.document_id)
        return self.completer.complete(doc)


PAYLOAD = ["kind", "document_id", "source", "source_dirs", "file_name", "page", "page_count"]
PAYLOAD += ["width", "height", "dpi", "model", "model_fingerprint", "meta", IMAGE_FIELD]


def only_points(results: list[PagePoint | PageFailure]) -> list[PagePoint]:
    return [r for r in results if isinstance(r, PagePoint)]


def stored(rag: PageRAG) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """Every stored page: its payload (but the time it was stored) and full vectors."""
    ids = [i for batch in rag.store.iter_page_ids() for i in batch]
    assert isinstance(rag.store, PayloadReader)
    payloads = rag.store.page_payloads(ids, PAYLOAD)
    vectors = rag.store.page_vectors(ids)
    return {i: (payloads[i], vectors[i]) for i in ids}


def test_the_stages_ingest_a_file_in_one_thread_as_the_local_engine_does(
    rag: PageRAG, pdf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_threads(self: threading.Thread) -> None:
        raise AssertionError(f"a stage started a thread: {self.name}")

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", no_threads)
        outcome = Stages(rag).ingest(pdf)
    assert (outcome.status, outcome.pages, outcome.total_pages) == ("ingested", 3, 3)
    (record,) = rag.documents()
    assert (record.page_count, record.is_complete) == (3, True)

    local = make_rag("local")
    try:
        (by_engine,) = local.ingest([pdf]).outcomes
        assert by_engine.status == "ingested"
        mine, theirs = stored(rag), stored(local)
        assert mine.keys() == theirs.keys() and len(mine) == 3
        for point_id, (payload, vectors) in mine.items():
            assert payload == theirs[point_id][0] and payload.keys() == set(PAYLOAD)
            np.testing.assert_array_equal(vectors, theirs[point_id][1])
    finally:
        local.close()


def test_the_planner_skips_what_is_stored_and_names_duplicates(rag: PageRAG, pdf: Path) -> None:
    Stages(rag).ingest(pdf)
    planner = Stages(rag).planner
    unchanged = planner.plan(pdf)
    assert isinstance(unchanged, FileOutcome)
    assert (unchanged.status, unchanged.reason) == ("skipped", "unchanged")
    copy = pdf.with_name("copy.pdf")
    shutil.copy(pdf, copy)
    duplicate = planner.plan(copy)  # the same bytes, a second name, in the same run
    assert isinstance(duplicate, FileOutcome) and duplicate.reason == "duplicate"
    missing = planner.plan(pdf.with_name("gone.pdf"))
    assert isinstance(missing, FileOutcome) and missing.reason == "unreadable"
    assert "cannot read the file" in (missing.message or "")


def test_the_planner_redoes_an_incomplete_document_when_a_limit_changed(
    rag: PageRAG, pdf: Path
) -> None:
    cut = Stages(rag, limits={"max_pages": 2})
    cut.render.renderer = Renderer(rag.config.render.model_copy(update={"max_pages": 2}))
    outcome = cut.ingest(pdf)
    assert (outcome.status, outcome.reason, outcome.pages) == ("ingested", "truncated", 2)
    same = Stages(rag, limits={"max_pages": 2}).planner.plan(pdf)
    assert isinstance(same, FileOutcome) and same.reason == "incomplete"
    redo = Stages(rag, limits={"max_pages": 3}).planner.plan(pdf)
    assert isinstance(redo, Document)
    assert (
        redo.redo_note == "redone (stored with 2 of 3 pages; changed since: render.max_pages 2 → 3)"
    )


def test_a_damaged_file_is_recorded_on_the_document_not_raised(
    rag: PageRAG, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4\nthis is not a PDF body\n")
    stages = Stages(rag)
    doc = stages.planner.plan(bad)
    assert isinstance(doc, Document)
    assert stages.render.open(doc) is False
    assert isinstance(doc.render_error, DamagedFileError)
    assert list(stages.render.pages(doc)) == []
    outcome = stages.completer.complete(doc)
    assert (outcome.status, outcome.reason) == ("failed", "damaged")
    assert rag.documents() == []  # not marked


class _BrokenRenderer:
    """Opens anything; breaks with a bug after the first page."""

    def open(self, path: Path, **_: Any) -> RenderPlan:
        return RenderPlan(path, "pdf", 1, 2, 2, (), 0.0)

    def iter_pages(self, plan: RenderPlan, *, document_id: str, **_: Any) -> Iterator[Any]:
        yield Page(document_id, str(plan.path), 1, 2, b"not a jpeg", 1, 1, 72)
        raise RuntimeError("renderer bug")


def test_an_undecodable_page_and_a_renderer_bug_end_up_on_the_document(tmp_path: Path) -> None:
    doc = Document(tmp_path / "x.pdf", "d", 0.0, 1)
    stage = RenderStage(_BrokenRenderer())
    assert stage.open(doc)
    items = list(stage.pages(doc))
    assert [type(i) for i in items] == [PageFailure]
    assert doc.failures == items and "cannot be decoded" in str(doc.failures[0].error)
    assert "unexpected rendering failure: RuntimeError('renderer bug')" in str(doc.render_error)


class _PickyEmbedder(FakeEmbedder):
    """Fails any batch holding a black page; with ``broken``, cannot run at all."""

    def __init__(self, *, broken: bool = False) -> None:
        super().__init__()
        self.broken = broken

    def embed_images(self, images: Any) -> Any:
        if self.broken:
            raise ModelError("the model cannot load")
        if any(image.getextrema() == ((0, 0), (0, 0), (0, 0)) for image in images):
            raise RuntimeError("black page")
        return super().embed_images(images)


def _decoded(colour: tuple[int, int, int], number: int) -> DecodedPage:
    page = Page("d", "/x.pdf", number, 3, b"", 64, 64, 72)
    return DecodedPage(page, Image.new("RGB", (64, 64), colour))


def test_the_embed_stage_isolates_the_page_that_breaks_a_batch(rag: PageRAG) -> None:
    batch = [_decoded((200, 10, 10), 1), _decoded((0, 0, 0), 2), _decoded((10, 200, 10), 3)]
    results = EmbedStage(_PickyEmbedder(), spec_of(rag), text_embedder=rag.text_embedder).embed(
        batch
    )
    assert [type(r) for r in results] == [PagePoint, PageFailure, PagePoint]
    failure = results[1]
    assert isinstance(failure, PageFailure) and failure.page_number == 2
    assert "embedding failed: black page" in str(failure.error)
    point = results[0]
    assert isinstance(point, PagePoint) and point.payload["page"] == 1
    assert set(point.vectors) == {"full", *spec_of(rag).pooled}
    with pytest.raises(ModelError):
        EmbedStage(
            _PickyEmbedder(broken=True), spec_of(rag), text_embedder=rag.text_embedder
        ).embed(batch)


def test_the_upsert_stage_batches_and_counts_stored_pages(rag: PageRAG) -> None:
    embed = EmbedStage(rag.embedder, spec_of(rag), text_embedder=rag.text_embedder)
    points = only_points(embed.embed([_decoded((30 * n, 0, 0), n) for n in (1, 2, 3)]))
    upsert = UpsertStage(rag.store, batch=2)
    assert upsert.add(points[:1]) is False
    assert upsert.add(points[1:]) is True
    assert upsert.flush() == 3
    assert upsert.flush() == 0
    assert upsert.stored_pages("d") == {1, 2, 3}
    assert upsert.stored_pages("d") == set()  # handed over once
    assert rag.store.count_pages() == 3


def test_a_store_failure_while_upserting_is_raised_and_drops_the_buffer(rag: PageRAG) -> None:
    stage = EmbedStage(rag.embedder, spec_of(rag), text_embedder=rag.text_embedder)
    points = only_points(stage.embed([_decoded((9, 9, 9), 1)]))

    class DownStore:
        def upsert_pages(self, _points: Any) -> None:
            raise StoreError("the store is down")

    upsert = UpsertStage(DownStore(), batch=1)  # type: ignore[arg-type]
    assert upsert.add(points)
    with pytest.raises(StoreError):
        upsert.flush()
    assert upsert.flush() == 0 and upsert.stored_pages("d") == set()


def test_the_completer_does_not_mark_a_stopped_or_aborted_document(rag: PageRAG, pdf: Path) -> None:
    stages = Stages(rag)
    doc = stages.planner.plan(pdf)
    assert isinstance(doc, Document) and stages.render.open(doc)
    first = next(item for item in stages.render.pages(doc) if isinstance(item, DecodedPage))
    stages.upsert.add(only_points(stages.embed.embed([first])))
    stages.upsert.flush()
    doc.stored_pages = stages.upsert.stored_pages(doc.document_id)
    stopped = stages.completer.complete(doc, stopping=True)
    assert (stopped.status, stopped.reason) == ("failed", "interrupted")
    aborted = stages.completer.complete(doc, aborted=StoreError("down"))
    assert (aborted.status, aborted.reason) == ("failed", "aborted")
    assert rag.documents() == []


def test_the_completer_never_marks_a_document_whose_pages_went_missing(
    rag: PageRAG, pdf: Path
) -> None:
    """Defence in depth: pages that neither reached the store nor failed (an engine lost
    them without saying so) keep the document unmarked, stop requested or not."""
    stages = Stages(rag)
    doc = stages.planner.plan(pdf)
    assert isinstance(doc, Document) and stages.render.open(doc)
    first = next(item for item in stages.render.pages(doc) if isinstance(item, DecodedPage))
    stages.upsert.add(only_points(stages.embed.embed([first])))
    stages.upsert.flush()
    doc.stored_pages = stages.upsert.stored_pages(doc.document_id)
    outcome = stages.completer.complete(doc)
    assert (outcome.status, outcome.reason) == ("failed", "pages_lost")
    assert "2 of 3 pages" in outcome.message and "rerun" in outcome.message
    assert rag.documents() == []


def test_page_ranges() -> None:
    assert page_ranges([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
