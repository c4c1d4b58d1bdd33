"""Progress a user can trust, and a model failure said once.

* Pages are counted up front (the renderer's probe, overlapped with the first
  renders), only for the files this run will render: the total does not grow
  while the job runs, and unchanged files do not inflate it.
* A model that fails ends the job with one error (``IngestReport.error``);
  each file's outcome says so in a few words instead of repeating it.

Generated PNGs and PDFs (no corpus), the fake embedder, the embedded store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from pipeline import PageRAG
from pipeline.config import load_config
from pipeline.errors import ModelError, ModelNotAvailableError
from pipeline.ingest.job import IngestProgress
from pipeline.testing.fakes import FakeEmbedder

PAGES = {"a.pdf": 3, "b.pdf": 5, "c.png": 1, "d.pdf": 2}


def write_doc(path: Path, pages: int, tag: str = "") -> None:
    images = []
    for number in range(1, pages + 1):
        image = Image.new("RGB", (200, 260), "white")
        ImageDraw.Draw(image).text((20, 20), f"{path.name}{tag} p{number}", fill="black")
        images.append(image)
    if path.suffix == ".pdf":
        images[0].save(path, "PDF", save_all=True, append_images=images[1:])
    else:
        images[0].save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, pages in PAGES.items():
        write_doc(docs / name, pages)
    return docs


@pytest.fixture
def rag(tmp_path: Path) -> Iterator[PageRAG]:
    config = load_config(
        environ={},
        overrides={"store": {"path": str(tmp_path / "data")}, "render": {"dpi": 40}},
    )
    with PageRAG(config, embedder=SlowFake()) as made:
        yield made


class SlowFake(FakeEmbedder):
    """Slow enough that the count pass overlaps rendering and embedding."""

    def __init__(self) -> None:
        super().__init__(seconds_per_page=0.05)


def settled(events: Sequence[IngestProgress]) -> list[IngestProgress]:
    return [e for e in events if not e.counting]


def test_pages_are_counted_up_front_and_the_total_never_grows(rag: PageRAG, folder: Path) -> None:
    events: list[IngestProgress] = []
    report = rag.ingest([folder], progress=events.append)
    assert report.exit_code == 0
    total = sum(PAGES.values())
    done = settled(events)
    assert done, "the count pass never finished"
    assert {e.pages_total for e in done} == {total}
    # While counting, the total only ever grows towards the count, never past it.
    assert all(e.pages_total <= total for e in events)
    assert events[-1].pages_done == total
    assert [e.pages_done for e in events] == sorted(e.pages_done for e in events)
    assert events[-1].files_done == events[-1].files_total == len(PAGES)


def test_unchanged_files_do_not_count(rag: PageRAG, folder: Path) -> None:
    assert rag.ingest([folder]).exit_code == 0
    write_doc(folder / "b.pdf", 4, tag=" v2")  # changed: 4 pages to do, the rest unchanged
    events: list[IngestProgress] = []
    report = rag.ingest([folder], progress=events.append)
    assert report.count("skipped") == 3
    assert {e.pages_total for e in settled(events)} == {4}
    assert events[-1].pages_done == 4
    assert events[-1].files_skipped == 3


def test_failed_pages_still_complete_the_bar(rag: PageRAG, folder: Path) -> None:
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n garbage garbage")
    events: list[IngestProgress] = []
    report = rag.ingest([folder], progress=events.append)
    assert report.count("failed") == 1
    last = events[-1]
    assert last.pages_done == last.pages_total == sum(PAGES.values())


class FailingModel(FakeEmbedder):
    def __init__(self, error: ModelError, *, after: int = 0) -> None:
        super().__init__()
        self.error = error
        self.after = after

    def embed_images(self, images: Sequence[Image.Image]) -> list:  # type: ignore[override]
        if self.pages_embedded >= self.after:
            raise self.error
        return super().embed_images(images)


FIX = (
    "the embedding model X is not available: it is not in the cache. On a machine with "
    "internet, run `hf download X --local-dir DIR`, copy DIR here and set embedding.model_path"
)


@pytest.mark.parametrize("after", [0, 3], ids=["first batch", "mid-job"])
def test_a_model_failure_is_one_error_and_short_outcomes(
    tmp_path: Path, folder: Path, after: int
) -> None:
    config = load_config(environ={}, overrides={"store": {"path": str(tmp_path / "data")}})
    model = FailingModel(ModelNotAvailableError(FIX), after=after)
    with PageRAG(config, embedder=model) as rag:
        report = rag.ingest([folder])
    assert report.exit_code == 1
    assert report.error == FIX
    assert report.to_dict()["error"] == FIX
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert failed
    for outcome in failed:
        assert outcome.reason == "aborted"
        assert outcome.message is not None
        assert "model not available" in outcome.message
        assert FIX not in outcome.message
        assert len(outcome.message) < 120


def test_inputs_that_name_nothing_count_as_done_files(rag: PageRAG, folder: Path) -> None:
    events: list[IngestProgress] = []
    report = rag.ingest([folder / "a.pdf", folder / "missing.pdf"], progress=events.append)
    assert report.count("failed") == 1
    assert events[-1].files_done == events[-1].files_total == 2
