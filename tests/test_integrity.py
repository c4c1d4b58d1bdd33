"""The store is never silently incomplete, stale or mislabelled (issue 11).

After any sequence of runs, kills, limit changes, file edits and deletes,
the store must hold what one clean run of the current files with the
current settings would hold — or the report must say why not. Each test
reproduces one path that used to leave the store silently wrong.

Crashes at an exact step are simulated with a store whose chosen method
raises ``StoreError`` once (the job then stops as it would on an outage or
a kill at that point: everything before it durable, nothing after it done).
"""

from __future__ import annotations

import contextlib
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.qdrant_edge import EdgePageStore
from pipeline import PageRAG
from pipeline.config import PageRAGConfig, load_config
from pipeline.errors import CollectionNotFoundError, QueryError, RenderTimeoutError, StoreError
from pipeline.ingest.render import Renderer
from pipeline.testing.fakes import FakeEmbedder
from pipeline.types import DocumentRecord, PageFilter
from tests import clirun

THREE_PAGES = "robust/pdfjs/test/pdfs/three_pages_with_number.pdf"
FIVE_PAGES = "robust/pdfjs/test/pdfs/file_pdfjs_test.pdf"
EIGHT_PAGES = "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf"


def config_for(tmp_path: Path, **render: object) -> PageRAGConfig:
    return load_config(
        environ={},
        overrides={"store": {"path": str(tmp_path / "data")}, "render": {"dpi": 40, **render}},
    )


class CrashingStore(EdgePageStore):
    """An embedded store whose ``crash_at`` method fails once, like a kill at that step."""

    crash_at: str | None = None

    def _maybe_crash(self, name: str) -> None:
        if self.crash_at == name:
            self.crash_at = None
            raise StoreError(f"simulated crash in {name}")

    def mark_complete(self, record: DocumentRecord) -> None:
        self._maybe_crash("mark_complete")
        super().mark_complete(record)

    def delete_document(self, document_id: str) -> int:
        self._maybe_crash("delete_document")
        return super().delete_document(document_id)


@pytest.fixture
def make_rag(tmp_path: Path) -> Iterator[Callable[..., PageRAG]]:
    """``make(crash_at=None, renderer=None, **render)``: a fresh PageRAG on one data dir."""
    made: list[PageRAG] = []

    def make(
        crash_at: str | None = None, renderer: Renderer | None = None, **render: object
    ) -> PageRAG:
        for rag in made:
            rag.close()
        config = config_for(tmp_path, **render)
        store = CrashingStore(config.store.path, config.store.collection)
        store.crash_at = crash_at
        rag = PageRAG(config, embedder=FakeEmbedder(), store=store, renderer=renderer)
        made.append(rag)
        return rag

    yield make
    for rag in made:
        rag.close()


@pytest.fixture
def docs(corpus: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(corpus / EIGHT_PAGES, folder / "eight.pdf")
    shutil.copy(corpus / THREE_PAGES, folder / "three.pdf")
    shutil.copy(corpus / FIVE_PAGES, folder / "five.pdf")
    return folder


def pages_of(rag: PageRAG, source: Path) -> list[tuple[str, int]]:
    """(document id, page) of every stored page point from ``source``, sorted."""
    hits = rag.search("page", k=100, filter={"source": str(source)})
    return sorted((h.document_id, h.page_number) for h in hits)


def ids_under(rag: PageRAG, source: Path) -> set[str]:
    rag.documents()  # opens the collection
    return rag.store.document_ids(PageFilter(source=str(source)))


# -- 1. incomplete documents are finished by a rerun ----------------------------


def test_raising_max_pages_redoes_a_truncated_document(make_rag, docs: Path) -> None:
    path = docs / "eight.pdf"
    first = make_rag(max_pages=5).ingest([path])
    (outcome,) = first.outcomes
    assert (outcome.status, outcome.reason, outcome.pages) == ("ingested", "truncated", 5)

    rag = make_rag(max_pages=5)
    (same,) = rag.ingest([path]).outcomes
    assert (same.status, same.reason) == ("skipped", "incomplete")
    assert "--retry-incomplete" in (same.message or "")
    (record,) = rag.documents()
    assert (record.incomplete, record.page_count, record.total_pages) == ("truncated", 5, 8)
    assert not record.is_complete

    rag = make_rag()  # the default limit: 10 000 pages
    (redone,) = rag.ingest([path]).outcomes
    assert (redone.status, redone.pages) == ("ingested", 8), redone
    assert "render.max_pages 5 → 10000" in (redone.message or "")
    assert [p for _, p in pages_of(rag, path)] == list(range(1, 9))
    (record,) = rag.documents()
    assert record.is_complete and record.limits["max_pages"] == 10000


def test_retry_incomplete_redoes_without_a_limit_change(make_rag, docs: Path) -> None:
    path = docs / "eight.pdf"
    make_rag(max_pages=5).ingest([path])
    (outcome,) = make_rag(max_pages=5).ingest([path], retry_incomplete=True).outcomes
    assert outcome.status == "ingested" and outcome.pages == 5
    assert "--retry-incomplete" in (outcome.message or "")


def test_lowering_max_pages_of_a_redone_document_leaves_no_stale_pages(
    make_rag, docs: Path
) -> None:
    path = docs / "eight.pdf"
    make_rag(max_pages=6).ingest([path])
    rag = make_rag(max_pages=3)
    (outcome,) = rag.ingest([path]).outcomes
    assert outcome.pages == 3
    assert [p for _, p in pages_of(rag, path)] == [1, 2, 3]


class TimeoutAfter(Renderer):
    """The real renderer, timing out after ``pages`` pages like a looping poppler."""

    def __init__(self, config: Any, pages: int) -> None:
        super().__init__(config)
        self.pages = pages

    def iter_pages(self, plan, **kwargs):  # type: ignore[no-untyped-def, override]
        for n, item in enumerate(super().iter_pages(plan, **kwargs), 1):
            if n > self.pages:
                raise RenderTimeoutError(plan.path, "rendering stopped (test)", page=n)
            yield item


def test_timeout_midway_is_reported_as_timeout_and_redone_when_the_limit_rises(
    make_rag, docs: Path
) -> None:
    path = docs / "eight.pdf"
    config = config_for(docs, timeout_s=30)
    rag = make_rag(renderer=TimeoutAfter(config.render, 4), timeout_s=30)
    (outcome,) = rag.ingest([path]).outcomes
    assert (outcome.status, outcome.reason, outcome.pages) == ("partial", "timeout", 4)
    assert outcome.failed_pages == [5, 6, 7, 8]
    (record,) = rag.documents()
    assert record.incomplete == "timeout"

    rag = make_rag(timeout_s=30)
    (same,) = rag.ingest([path]).outcomes
    assert (same.status, same.reason) == ("skipped", "incomplete")
    assert same.failed_pages == [5, 6, 7, 8]
    assert rag.ingest([path]).exit_code == 1  # still missing pages: not a clean success

    rag = make_rag(timeout_s=600)
    (redone,) = rag.ingest([path]).outcomes
    assert (redone.status, redone.pages) == ("ingested", 8)
    assert "render.timeout_s 30.0 → 600.0" in (redone.message or "")


def test_status_lists_incomplete_documents_as_such(cli_env, docs: Path) -> None:
    run_cli({**cli_env, "PAGERAG_RENDER__MAX_PAGES": "5"}, "ingest", str(docs / "eight.pdf"))
    out = run_cli(cli_env, "status", "--documents", "--json")
    (doc,) = out["document_list"]
    assert doc["complete"] is False
    assert (doc["incomplete"], doc["pages"], doc["total_pages"]) == ("truncated", 5, 8)


# -- 2. one path, one version, after any crash -----------------------------------


def test_unmarked_pages_of_a_killed_version_go_when_the_new_version_lands(
    make_rag, docs: Path, corpus: Path
) -> None:
    path = docs / "five.pdf"
    killed = make_rag(crash_at="mark_complete").ingest([path])
    assert killed.outcomes[0].status == "failed"
    rag = make_rag()
    (old_id,) = ids_under(rag, path)  # pages stored, no completion mark
    assert rag.documents() == []

    shutil.copy(corpus / THREE_PAGES, path)
    (outcome,) = rag.ingest([path]).outcomes
    assert outcome.status == "ingested"
    assert outcome.replaced == [old_id]
    assert ids_under(rag, path) == {outcome.document_id}
    assert rag.store.count_pages() == 3


def test_delete_by_path_removes_unmarked_pages(make_rag, docs: Path) -> None:
    path = docs / "five.pdf"
    make_rag(crash_at="mark_complete").ingest([path])
    rag = make_rag()
    assert rag.documents() == []
    assert rag.store.count_pages() > 0
    removed = rag.delete(str(path))
    assert len(removed) == 1 and removed[0].incomplete == "unfinished"
    assert rag.store.count_pages() == 0


def test_delete_by_id_of_unmarked_pages_reports_it(cli_env, docs: Path) -> None:
    with cli_rag(cli_env, crash_at="mark_complete") as rag:
        assert rag.ingest([docs / "five.pdf"]).outcomes[0].status == "failed"
        (doc_id,) = ids_under(rag, docs / "five.pdf")
    code, out = clirun.invoke_json(cli_env, "delete", doc_id, "--json")
    assert code == 0, out
    assert out["deleted"] == {doc_id: [doc_id]}


def test_crash_between_new_mark_and_old_delete_is_repaired_by_a_rerun(
    make_rag, docs: Path, corpus: Path
) -> None:
    path = docs / "three.pdf"
    make_rag().ingest([path])
    shutil.copy(corpus / FIVE_PAGES, path)
    crashed = make_rag(crash_at="delete_document").ingest([path])
    assert crashed.outcomes[0].status == "failed"
    rag = make_rag()
    assert len(rag.documents()) == 2  # the state the crash left

    (outcome,) = rag.ingest([path]).outcomes
    assert outcome.status == "skipped" and outcome.reason == "unchanged"
    assert len(outcome.replaced) == 1
    (record,) = rag.documents()
    assert ids_under(rag, path) == {record.document_id}
    assert rag.store.count_pages() == 5


def test_file_changed_to_bytes_another_path_holds_drops_its_old_version(
    make_rag, docs: Path
) -> None:
    three, five = docs / "three.pdf", docs / "five.pdf"
    make_rag().ingest([three, five])
    shutil.copy(three, five)
    rag = make_rag()
    by_name = {Path(o.path).name: o for o in rag.ingest([three, five]).outcomes}
    assert by_name["five.pdf"].status == "skipped"
    assert "same content" in (by_name["five.pdf"].message or "")  # as three.pdf (order varies)
    assert len(by_name["five.pdf"].replaced) == 1
    assert ids_under(rag, five) == set()
    assert rag.store.count_pages() == 3


def test_a_moved_file_is_relabelled_not_reembedded(make_rag, docs: Path) -> None:
    old, new = docs / "three.pdf", docs / "renamed.pdf"
    make_rag().ingest([old])
    old.rename(new)
    rag = make_rag()
    embedder = rag.embedder
    assert isinstance(embedder, FakeEmbedder)
    (outcome,) = rag.ingest([new]).outcomes
    assert outcome.status == "skipped" and "moved from" in (outcome.message or "")
    assert embedder.pages_embedded == 0
    (record,) = rag.documents()
    assert (record.source, record.file_name) == (str(new), "renamed.pdf")
    assert {h.file_name for h in rag.search("page", k=10)} == {"renamed.pdf"}


# -- 5. metadata and deletion do what users try ----------------------------------


def test_meta_on_an_unchanged_file_updates_it_without_reembedding(make_rag, docs: Path) -> None:
    path = docs / "three.pdf"
    make_rag().ingest([path], metadata={"team": "a"})
    rag = make_rag()
    (outcome,) = rag.ingest([path], metadata={"team": "b"}).outcomes
    assert outcome.status == "skipped" and "metadata updated" in (outcome.message or "")
    assert rag.documents()[0].metadata == {"team": "b"}
    assert len(rag.search("page", k=10, filter={"team": "b"})) == 3
    assert rag.search("page", k=10, filter={"team": "a"}) == []


def test_delete_by_short_id_and_ambiguous_prefix(make_rag, docs: Path) -> None:
    rag = make_rag()
    rag.ingest([docs / "three.pdf"])
    (record,) = rag.documents()
    for fake in ("abcd" + "0" * 60, "abcd" + "1" * 60):
        rag.store.mark_complete(DocumentRecord(fake, "/x/" + fake[-1], fake[-1], 1, 1, "t", "m", 1))
    with pytest.raises(QueryError, match=r"ambiguous: it matches 2 documents"):
        rag.delete("abcd")
    assert [r.document_id for r in rag.delete(record.document_id[:12])] == [record.document_id]
    assert rag.store.count_pages() == 0


def test_delete_a_folder_asks_or_needs_yes(cli_env, docs: Path) -> None:
    run_cli(cli_env, "ingest", str(docs))
    code, out = clirun.invoke_json(cli_env, "delete", str(docs))
    assert code == 2, out  # no terminal to ask on, no --yes: nothing deleted
    assert "--yes" in out
    code, out = clirun.invoke_json(cli_env, "delete", str(docs), "--yes", "--json")
    assert code == 0 and len(out["deleted"][str(docs)]) == 3


def test_symlinked_paths_answer_to_both_names(make_rag, docs: Path, tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    link = links / "alias.pdf"
    link.symlink_to(docs / "three.pdf")
    rag = make_rag()
    rag.ingest([link])
    (record,) = rag.documents()
    assert (record.source, record.source_alias) == (str(docs / "three.pdf"), str(link))
    assert len(rag.search("page", k=10, filter={"source": str(link)})) == 3
    assert len(rag.search("page", k=10, filter={"source": str(links)})) == 3
    assert len(rag.search("page", k=10, filter={"source": str(docs / "three.pdf")})) == 3
    assert [r.document_id for r in rag.delete(str(link))] == [record.document_id]
    rag.ingest([link])
    assert [r.document_id for r in rag.delete(str(docs / "three.pdf"))] == [record.document_id]


# -- the property: any history, then one run, equals one clean run ---------------


def snapshot(rag: PageRAG) -> dict[str, Any]:
    """Point ids, vectors and payloads (minus timestamps) of every page and mark."""
    rag.documents()  # opens the collection
    store = rag.store
    ids = sorted(i for batch in store.iter_page_ids() for i in batch)
    vectors = store.page_vectors(ids)
    pages = {}
    for hit in rag.search("page", k=1000):
        payload = {k: v for k, v in hit.payload.items() if k != "ingested_at"}
        pages[hit.point_id] = (payload, vectors[hit.point_id].tobytes())
    assert sorted(pages) == ids
    marks = {}
    for record in store.documents():
        marks[record.document_id] = {
            k: v for k, v in record.__dict__.items() if k not in ("ingested_at",)
        }
    return {"pages": pages, "marks": marks}


@pytest.mark.parametrize("seed", [20261129, 7, 11])
def test_any_history_then_one_run_equals_a_clean_run(
    make_rag, corpus: Path, tmp_path: Path, seed: int
) -> None:
    contents = [corpus / p for p in (THREE_PAGES, FIVE_PAGES, EIGHT_PAGES)]
    folder = tmp_path / "docs"
    folder.mkdir()
    names = ["a.pdf", "b.pdf", "c.pdf"]
    rng = random.Random(seed)

    def write(name: str) -> None:
        # Distinct bytes per (name, version): no two paths ever share content.
        source = rng.choice(contents).read_bytes()
        (folder / name).write_bytes(source + f"\n% {name} {rng.random()}\n".encode())

    for name in names:
        write(name)
    for _step in range(14):
        action = rng.choice(["ingest", "kill", "edit", "limits", "delete", "remove"])
        if action == "ingest":
            make_rag(max_pages=rng.choice([2, 4, 10_000])).ingest([folder])
        elif action == "kill":
            make_rag(crash_at=rng.choice(["mark_complete", "delete_document"])).ingest([folder])
        elif action == "edit":
            write(rng.choice(names))
        elif action == "limits":
            make_rag(max_pages=rng.choice([1, 3])).ingest([folder])
        elif action == "delete":
            with contextlib.suppress(CollectionNotFoundError):  # nothing ingested yet
                make_rag().delete(str(folder / rng.choice(names)))
        elif action == "remove":
            name = rng.choice(names)
            (folder / name).unlink(missing_ok=True)
            write(name)
    final = make_rag().ingest([folder])
    assert final.exit_code == 0, final.to_dict()
    after_history = snapshot(make_rag())

    clean = tmp_path / "clean"
    clean_rag = PageRAG(
        load_config(
            environ={},
            overrides={"store": {"path": str(clean)}, "render": {"dpi": 40}},
        ),
        embedder=FakeEmbedder(),
    )
    with clean_rag:
        assert clean_rag.ingest([folder]).exit_code == 0
        clean_state = snapshot(clean_rag)
    assert after_history["marks"].keys() == clean_state["marks"].keys()
    assert after_history["marks"] == clean_state["marks"]
    assert after_history["pages"].keys() == clean_state["pages"].keys()
    for point_id, (payload, vector) in clean_state["pages"].items():
        assert after_history["pages"][point_id][0] == payload, point_id
        assert np.array_equal(after_history["pages"][point_id][1], vector), point_id


# -- CLI helpers -------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    """The CLI on the stand-in model (the real fastembed loading path)."""
    return clirun.cli_env(tmp_path / "cli-data", tiny_model_dir)


def cli_rag(env: dict[str, str], crash_at: str | None = None) -> PageRAG:
    """The API on the CLI's store and model, with a store that can crash."""
    config = load_config(environ=env)
    store = CrashingStore(config.store.path, config.store.collection)
    store.crash_at = crash_at
    return PageRAG(config, store=store)


def run_cli(env: dict[str, str], *args: str) -> Any:
    code, out = clirun.invoke_json(env, *args)
    assert code == 0, out
    return out
