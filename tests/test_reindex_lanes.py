"""``pagerag reindex --text`` / ``--visual``: adding a retrieval lane to a collection in place.

What must hold: the text lane lands on a visual-only collection without touching
any visual vector or other payload; files that moved or changed are named and
the lane is then not recorded; a killed run resumes to exactly what an
uninterrupted one gives; the visual lane on a text-only collection equals a
visual ingest of the same files; a rerun on a finished collection writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline import PageRAG
from pipeline.cli import app
from pipeline.config import PageRAGConfig, load_config
from pipeline.embed.pooling import POOLED_VECTORS
from pipeline.errors import CollectionMismatchError
from pipeline.ingest.relane import LaneReindexStore
from pipeline.models import ModelSpec, get_model_spec
from pipeline.retrieve.reindex import ReindexProgress
from pipeline.retrieve.store import PageStore
from pipeline.testing.fakes import FAKE_SPEC, FakeEmbedder
from pipeline.types import TEXT_FIELD
from tests.test_render import write_pdf

COLLECTION = "pages"
# One distinct word per page, to find it by the text lane.
DOCUMENTS = {
    "alpha.pdf": ["aardvark annual report", "budget buffalo figures", "capex camel outlook"],
    "beta.pdf": ["dolphin dividend policy", "elephant equity summary"],
}
PAGES = 6  # the PDFs' five pages and one picture (no text layer)


def text_pdf(path: Path, texts: list[str]) -> Path:
    """A PDF whose pages carry ``texts`` as a real text layer and a grey box placed by
    page, so the pages also look different."""
    return write_pdf(
        path,
        [
            (
                300,
                400,
                0,
                b"0.5 g %d 40 60 60 re f 0 g BT /F1 14 Tf 20 300 Td (%s) Tj ET"
                % (20 + 50 * number, text.encode("ascii")),
            )
            for number, text in enumerate(texts)
        ],
        font=True,
    )


@pytest.fixture
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    for name, texts in DOCUMENTS.items():
        text_pdf(folder / name, texts)
    pixels = np.full((200, 160, 3), 255, dtype=np.uint8)
    pixels[40:90, 30:80] = (200, 30, 30)
    Image.fromarray(pixels).save(folder / "scan.png")
    return folder


def config_for(data: Path, lanes: str = "auto", **text: Any) -> PageRAGConfig:
    return load_config(
        environ={},
        overrides={
            "store": {"path": str(data), "collection": COLLECTION},
            "ingest": {"lanes": lanes},
            "render": {"dpi": 72},  # small pages: the fake model's time is per pixel
            "retrieval": {"mode": "auto"},
            "text": text,
        },
    )


def rag_for(data: Path, lanes: str = "auto", model: ModelSpec = FAKE_SPEC, **text: Any) -> PageRAG:
    return PageRAG(config_for(data, lanes, **text), embedder=FakeEmbedder(model))


def ingested(data: Path, files: Path, lanes: str, model: ModelSpec = FAKE_SPEC) -> PageRAG:
    rag = rag_for(data, lanes, model)
    report = rag.ingest([files])
    assert report.exit_code == 0, report
    return rag


@pytest.fixture
def visual_only(tmp_path: Path, files: Path) -> Iterator[PageRAG]:
    rag = ingested(tmp_path / "data", files, "visual")
    yield rag
    rag.close()


def lane_store(rag: PageRAG) -> LaneReindexStore:
    rag.documents()  # opens the collection
    store = rag.store
    assert isinstance(store, LaneReindexStore)
    return store


def all_ids(store: PageStore) -> list[str]:
    return sorted(i for batch in store.iter_page_ids() for i in batch)


def payloads(store: LaneReindexStore) -> dict[str, dict[str, Any]]:
    """Every stored page's whole payload (the image included)."""
    return store._retrieve(all_ids(store), True, "reading payloads")  # type: ignore[attr-defined]


def vectors(store: PageStore, names: tuple[str, ...] = ("full", *POOLED_VECTORS)) -> dict:
    ids = all_ids(store)
    return {name: store.page_vectors(ids, using=name) for name in names}


def assert_same_vectors(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].keys() == after[name].keys()
        for point_id, array in before[name].items():
            np.testing.assert_array_equal(array, after[name][point_id])


class Killed(Exception):
    """Stands for a kill: raised from the progress callback after the first batch."""


def kill(event: ReindexProgress) -> None:
    raise Killed


def text_scores(rag: PageRAG, query: str) -> list[tuple[str, float]]:
    """The text lane's pages and scores for ``query`` (ties in either order)."""
    return sorted((h.label, round(h.score, 5)) for h in rag.search(query, k=PAGES, mode="text"))


# --------------------------------------------------------------------------- --text


def test_text_lane_is_added_in_place_and_the_visual_lane_is_untouched(
    visual_only: PageRAG,
) -> None:
    store = lane_store(visual_only)
    assert store.spec().lanes == ("visual",)  # type: ignore[union-attr]
    before_vectors, before_payloads = vectors(store), payloads(store)

    events: list[ReindexProgress] = []
    report = visual_only.reindex_text(batch=4, progress=events.append)

    assert (report.pages, report.pages_updated, report.recorded) == (PAGES, PAGES, True)
    assert report.complete and not report.skipped
    assert report.lanes == ("visual", "text")
    assert report.text_language == "english"
    assert events[-1].pages_done == events[-1].pages_total == PAGES
    spec = store.spec()
    assert spec is not None
    assert (spec.lanes, spec.text_language) == (("visual", "text"), "english")
    assert_same_vectors(before_vectors, vectors(store))
    after = payloads(store)
    texts = {}
    for point_id, payload in after.items():
        added = {k: payload.pop(k) for k in (TEXT_FIELD, "has_text")}
        assert payload == before_payloads[point_id]  # nothing else changed, image included
        texts[payload["file_name"], payload["page"]] = added
    assert texts["alpha.pdf", 2] == {TEXT_FIELD: "budget buffalo figures", "has_text": True}
    assert texts["scan.png", 1] == {TEXT_FIELD: "", "has_text": False}
    hits = visual_only.search("buffalo", k=3, mode="text")
    assert [h.label for h in hits] == ["alpha.pdf p.2"]
    assert visual_only.search("elephant", k=3, mode="hybrid")[0].label == "beta.pdf p.2"

    again = visual_only.reindex_text()
    assert again.no_op and again.complete and again.passes == 0


def test_moved_or_changed_files_are_reported_and_the_lane_is_not_recorded(
    visual_only: PageRAG, files: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "elsewhere.pdf"
    shutil.move(files / "beta.pdf", moved)
    original = (files / "alpha.pdf").read_bytes()
    (files / "alpha.pdf").write_bytes(original + b"\n% edited\n")

    report = visual_only.reindex_text()

    assert not report.complete and not report.recorded
    assert report.pages_missing == 5
    assert report.pages_updated == 1  # the picture
    skipped = {s.source: s for s in report.skipped}
    assert skipped[str(files / "alpha.pdf")].reason == "changed"
    assert skipped[str(files / "alpha.pdf")].pages == 3
    assert "re-ingest" in skipped[str(files / "alpha.pdf")].message
    assert skipped[str(files / "beta.pdf")].reason == "missing"
    assert skipped[str(files / "beta.pdf")].pages == 2
    assert "gone" in skipped[str(files / "beta.pdf")].message
    assert lane_store(visual_only).spec().lanes == ("visual",)  # type: ignore[union-attr]

    # Put the files back: a rerun finishes the five pages and records the lane.
    (files / "alpha.pdf").write_bytes(original)
    shutil.move(moved, files / "beta.pdf")
    finished = visual_only.reindex_text()
    assert finished.complete and finished.recorded
    assert finished.pages_updated == 5


def test_a_killed_text_reindex_resumes_to_what_an_uninterrupted_one_gives(
    tmp_path: Path, files: Path
) -> None:
    whole = ingested(tmp_path / "whole", files, "visual")
    killed = ingested(tmp_path / "killed", files, "visual")
    with whole, killed:
        whole.reindex_text()
        with pytest.raises(Killed):
            killed.reindex_text(batch=2, progress=kill)
        store = lane_store(killed)
        assert store.count_pages_without_field(TEXT_FIELD) == PAGES - 2
        assert store.spec().lanes == ("visual",)  # type: ignore[union-attr]

        resumed = killed.reindex_text(batch=2)
        assert (resumed.pages_updated, resumed.recorded) == (PAGES - 2, True)

        def lane(rag: PageRAG) -> dict[str, dict[str, Any]]:
            keep = (TEXT_FIELD, "has_text", "text_cut")
            return {i: {k: p.get(k) for k in keep} for i, p in payloads(lane_store(rag)).items()}

        assert lane(killed) == lane(whole)
        for query in ("camel outlook", "dividend", "report figures summary"):
            assert text_scores(killed, query) == text_scores(whole, query)


def test_another_text_language_rebuilds_the_lane_from_the_stored_text(
    visual_only: PageRAG, tmp_path: Path
) -> None:
    visual_only.reindex_text()
    visual_only.close()
    german = rag_for(tmp_path / "data", language="german")
    with german:
        report = german.reindex_text()
        assert report.recorded and report.pages_updated == PAGES
        assert report.text_language == "german"
        assert lane_store(german).spec().text_language == "german"  # type: ignore[union-attr]
        assert [h.label for h in german.search("dolphin", k=2, mode="text")] == ["beta.pdf p.1"]
        assert german.reindex_text().no_op


# --------------------------------------------------------------------------- --visual


def test_visual_lane_on_a_text_only_collection_equals_a_visual_ingest(
    tmp_path: Path, files: Path
) -> None:
    both = ingested(tmp_path / "both", files, "visual+text")
    text_only = ingested(tmp_path / "text", files, "text")
    with both, text_only:
        store = lane_store(text_only)
        assert store.spec().lanes == ("text",)  # type: ignore[union-attr]
        text_before = text_scores(text_only, "aardvark dolphin report")
        with pytest.raises(Killed):
            text_only.reindex_visual(batch=2, progress=kill)
        assert store.count_pages_missing(["full"]) == PAGES - 2
        assert store.spec().lanes == ("text",)  # type: ignore[union-attr]

        report = text_only.reindex_visual(batch=2)

        assert (report.pages_updated, report.recorded, report.complete) == (PAGES - 2, True, True)
        assert report.lanes == ("visual", "text")
        spec, wanted = store.spec(), lane_store(both).spec()
        assert spec is not None and wanted is not None
        assert spec.lanes == wanted.lanes and spec.pooled == wanted.pooled
        assert spec.identity == wanted.identity
        assert_same_vectors(vectors(lane_store(both)), vectors(store))

        def comparable(rag: PageRAG) -> dict[str, dict[str, Any]]:
            out = payloads(lane_store(rag))
            for payload in out.values():
                payload.pop("ingested_at")
            return out

        assert comparable(text_only) == comparable(both)
        assert text_scores(text_only, "aardvark dolphin report") == text_before
        assert text_scores(text_only, "aardvark dolphin report") == text_scores(
            both, "aardvark dolphin report"
        )
        assert text_only.search("anything", k=2, mode="visual")
        assert text_only.reindex_visual().no_op


def test_visual_lane_is_a_no_op_where_it_exists(visual_only: PageRAG) -> None:
    report = visual_only.reindex_visual()
    assert report.no_op and report.complete and report.lanes == ("visual",)


def test_visual_lane_refuses_a_model_unlike_the_declared_vectors(
    tmp_path: Path, files: Path
) -> None:
    ingested(tmp_path / "data", files, "text").close()
    other = dataclasses.replace(FAKE_SPEC, name="someone/else", dim=64)
    rag = rag_for(tmp_path / "data", model=other)
    with rag, pytest.raises(CollectionMismatchError, match=r"128 dimensions.*produces 64"):
        rag.reindex_visual()


# --------------------------------------------------------------------------- CLI


def test_cli_reindex_text(tmp_path: Path, files: Path) -> None:
    data = tmp_path / "data"
    # the configured model's layout (the command opens the collection as configured)
    ingested(data, files, "visual", get_model_spec("Qdrant/colpali-v1.3-fp16")).close()
    config = tmp_path / "pagerag.yaml"
    config.write_text(f"store:\n  path: {data}\n  collection: {COLLECTION}\n", encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(app, ["reindex", "--text", "--visual", "-c", str(config)]).exit_code == 2
    help_text = runner.invoke(app, ["reindex", "--help"]).output
    assert "--text" in help_text and "--visual" in help_text

    (files / "beta.pdf").unlink()
    broken = runner.invoke(app, ["reindex", "--text", "-c", str(config)])
    assert broken.exit_code == 1, broken.output
    assert "beta.pdf is gone" in broken.stderr
    assert "2 pages still lack it" in broken.stdout

    text_pdf(files / "beta.pdf", DOCUMENTS["beta.pdf"])
    fixed = runner.invoke(app, ["reindex", "--text", "-c", str(config), "--json"])
    assert fixed.exit_code == 0, fixed.output
    report = json.loads(fixed.stdout)
    assert report["lane"] == "text" and report["complete"] is True
    assert report["lanes"] == ["visual", "text"]
    assert report["pages_updated"] == 2 and report["skipped"] == []

    again = runner.invoke(app, ["reindex", "--text", "-c", str(config)])
    assert again.exit_code == 0 and "nothing to do" in again.stdout


def test_text_lane_on_qdrant_client_memory_mode_with_an_encrypted_pdf(tmp_path: Path) -> None:
    """The qdrant-client adapter does the same; the password that opened the file at
    ingest (here ``--password``) opens it again."""
    folder = tmp_path / "secret"
    folder.mkdir()
    content = b"0 g BT /F1 14 Tf 20 300 Td (%s) Tj ET"
    pages = [(300, 400, 0, content % word) for word in (b"zebra", b"yak")]
    write_pdf(folder / "locked.pdf", pages, user_password=b"s3cret", font=True)
    config = load_config(
        environ={},
        overrides={
            "store": {"url": ":memory:", "collection": COLLECTION},
            "ingest": {"lanes": "visual"},
        },
    )
    with PageRAG(config, embedder=FakeEmbedder()) as rag:
        assert rag.ingest([folder], password="s3cret").exit_code == 0
        refused = rag.reindex_text()
        assert not refused.complete and refused.skipped[0].reason == "needs_password"
        report = rag.reindex_text(password="s3cret")
        assert report.complete and report.recorded and report.pages_updated == 2
        assert [h.label for h in rag.search("yak", k=2, mode="text")] == ["locked.pdf p.2"]
