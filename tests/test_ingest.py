"""The ingestion job end to end: real renderer, embedded Qdrant, fake embedder."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline import PageRAG
from pipeline.config import PageRAGConfig, load_config
from pipeline.errors import CollectionMismatchError, ModelNotAvailableError
from pipeline.models import ModelSpec
from pipeline.testing.fakes import FAKE_SPEC, FakeEmbedder

THREE_PAGES = "robust/pdfjs/test/pdfs/three_pages_with_number.pdf"
FIVE_PAGES = "robust/pdfjs/test/pdfs/file_pdfjs_test.pdf"
EIGHT_PAGES = "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf"
NOT_A_PDF = "robust/ocrmypdf/tests/resources/invalid.pdf"


def pdf_pages(path: Path) -> int:
    info = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True)
    return next(
        int(line.split()[1]) for line in info.stdout.splitlines() if line.startswith("Pages:")
    )


def config_for(tmp_path: Path, **store: object) -> PageRAGConfig:
    return load_config(
        environ={},
        overrides={
            "store": {"path": str(tmp_path / "data"), **store},
            "render": {"dpi": 60},
        },
    )


@pytest.fixture
def make_rag(tmp_path: Path) -> Iterator[Callable[..., PageRAG]]:
    made: list[PageRAG] = []

    def make(embedder: FakeEmbedder | None = None, **store: object) -> PageRAG:
        for rag in made:
            rag.close()
        rag = PageRAG(config_for(tmp_path, **store), embedder=embedder or FakeEmbedder())
        made.append(rag)
        return rag

    yield make
    for rag in made:
        rag.close()


@pytest.fixture
def docs(corpus: Path, tmp_path: Path) -> Path:
    """Copies of a few corpus PDFs in a folder the test may change."""
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(corpus / THREE_PAGES, folder / "three.pdf")
    shutil.copy(corpus / FIVE_PAGES, folder / "sub" / "five.pdf")
    return folder


def test_multi_page_pdf_becomes_exactly_page_count_points(make_rag, corpus: Path) -> None:
    rag = make_rag()
    path = corpus / EIGHT_PAGES
    report = rag.ingest([path])
    assert report.exit_code == 0, report.to_dict()
    (outcome,) = report.outcomes
    assert outcome.status == "ingested"
    assert outcome.pages == pdf_pages(path) == 8
    assert rag.store.count_pages() == 8
    (record,) = rag.documents()
    assert record.page_count == 8
    assert record.source == str(path.resolve())
    pages = sorted(h.page_number for h in rag.search("anything", k=50))
    assert pages == list(range(1, 9))


def test_payload_and_image_are_stored(make_rag, docs: Path) -> None:
    rag = make_rag()
    rag.ingest([docs / "three.pdf"])
    hit = rag.search("page", k=1)[0]
    payload = hit.payload
    for key in (
        "document_id",
        "source",
        "file_name",
        "page",
        "page_count",
        "width",
        "height",
        "dpi",
        "ingested_at",
        "model",
    ):
        assert key in payload, key
    assert payload["page_count"] == 3
    assert payload["model"] == FAKE_SPEC.name
    assert payload["dpi"] == 60
    image = hit.load_image()
    assert image.format == "JPEG"
    assert image.size == (payload["width"], payload["height"])


def test_folder_is_walked_recursively_and_rerun_is_a_noop(make_rag, docs: Path) -> None:
    embedder = FakeEmbedder()
    rag = make_rag(embedder)
    first = rag.ingest([docs])
    assert [o.status for o in first.outcomes] == ["ingested", "ingested"]
    assert rag.store.count_pages() == 8
    embedded = embedder.pages_embedded

    again = make_rag(embedder)
    second = again.ingest([docs])
    assert [o.status for o in second.outcomes] == ["skipped", "skipped"]
    assert embedder.pages_embedded == embedded  # no rendering or embedding on rerun
    assert again.store.count_pages() == 8
    assert second.exit_code == 0


def test_modified_file_replaces_its_pages(make_rag, docs: Path, corpus: Path) -> None:
    rag = make_rag()
    target = docs / "three.pdf"
    rag.ingest([target])
    old_id = rag.documents()[0].document_id

    shutil.copy(corpus / EIGHT_PAGES, target)  # same path, new content
    report = rag.ingest([target])
    (outcome,) = report.outcomes
    assert outcome.status == "ingested"
    assert outcome.replaced == [old_id]
    assert rag.store.count_pages() == 8
    assert [d.document_id for d in rag.documents()] == [outcome.document_id]


def test_delete_by_path_and_by_id_removes_everything(make_rag, docs: Path) -> None:
    rag = make_rag()
    rag.ingest([docs])
    five = next(d for d in rag.documents() if d.file_name == "five.pdf")
    removed = rag.delete(str(docs / "three.pdf"))
    assert [r.file_name for r in removed] == ["three.pdf"]
    assert rag.delete(five.document_id)[0].document_id == five.document_id
    assert rag.store.count_pages() == 0
    assert rag.documents() == []
    assert rag.delete(str(docs / "three.pdf")) == []


def test_bad_files_are_recorded_and_do_not_stop_the_job(make_rag, docs: Path, corpus: Path) -> None:
    shutil.copy(corpus / NOT_A_PDF, docs / "invalid.pdf")
    (docs / "notes.pdf").write_text("just text, not a PDF")
    rag = make_rag()
    report = rag.ingest([docs, docs / "missing.pdf"])
    by_name = {Path(o.path).name: o for o in report.outcomes}
    assert by_name["three.pdf"].status == "ingested"
    assert by_name["five.pdf"].status == "ingested"
    for name in ("invalid.pdf", "notes.pdf", "missing.pdf"):
        assert by_name[name].status == "failed", by_name[name]
        assert by_name[name].reason
        assert name in (by_name[name].message or "")
    assert report.exit_code == 1
    assert rag.store.count_pages() == 8
    data = json.loads(json.dumps(report.to_dict()))
    assert data["files"] == {"ingested": 2, "skipped": 0, "partial": 0, "failed": 3}


def test_collection_built_with_another_model_is_refused(make_rag, docs: Path) -> None:
    make_rag().ingest([docs / "three.pdf"])
    other = ModelSpec(**{**FAKE_SPEC.__dict__, "name": "someone/other-model"})
    rag = make_rag(FakeEmbedder(other))
    with pytest.raises(CollectionMismatchError, match="other-model"):
        rag.ingest([docs / "three.pdf"])
    wider = ModelSpec(**{**FAKE_SPEC.__dict__, "dim": 64})
    rag = make_rag(FakeEmbedder(wider))
    with pytest.raises(CollectionMismatchError, match="64"):
        rag.search("anything")


def test_pooled_vectors_are_stored_for_grid_models(make_rag, docs: Path) -> None:
    rag = make_rag()
    rag.ingest([docs / "three.pdf"])
    spec = rag.store.spec()
    assert spec is not None
    assert spec.pooled == ("rows", "cols")
    ids = [i for batch in rag.store.iter_page_ids() for i in batch]
    rows = rag.store.page_vectors(ids[:1], using="rows")[ids[0]]
    assert rows.shape == (32 + 6, FAKE_SPEC.dim)
    assert rows.dtype == np.float16


def test_model_that_cannot_load_fails_the_job_with_its_message(make_rag, docs: Path) -> None:
    class Missing(FakeEmbedder):
        def embed_images(self, images):  # type: ignore[override]
            raise ModelNotAvailableError("model not found: set embedding.model_path")

    rag = make_rag(Missing())
    report = rag.ingest([docs])
    assert report.exit_code == 1
    assert all(o.status == "failed" for o in report.outcomes)
    # the fix is said once, for the job; each file says why in a few words
    assert report.error is not None and "embedding.model_path" in report.error
    assert all("model not available" in (o.message or "") for o in report.outcomes)
    assert rag.store.count_pages() == 0
