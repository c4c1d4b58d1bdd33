"""EdgePageStore: the shared contract, plus what only the embedded engine does.

The edge-only tests pin behaviour we rely on and that is easy to lose on an
engine upgrade: persistence across reopen, the directory lock (same process,
another process, and a raw engine holder), two-stage prefetch, datatype and
quantization actually reaching the engine, and thread use by the ingest job.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe

from connectors.qdrant_edge import EdgePageStore
from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    QueryError,
    StoreError,
    StoreInUseError,
)
from pipeline.retrieve.store import PageStore
from pipeline.types import CollectionSpec, PageFilter, PagePoint, page_point_id
from tests.store_contract import SPEC, PageStoreContract, make_points, maxsim, record

POOLED = replace(SPEC, pooled=("rows", "cols"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_store(data_dir: Path) -> Iterator[Any]:
    """Factory over one data directory; closes earlier stores before each open."""
    made: list[EdgePageStore] = []

    def factory(spec: CollectionSpec, *, create: bool = True, **options: Any) -> EdgePageStore:
        for old in made:
            old.close()
        store = EdgePageStore(data_dir, spec.name, **options)
        made.append(store)
        store.open(spec, create=create)
        return store

    yield factory
    for store in made:
        store.close()


class TestEdgeContract(PageStoreContract):
    """Every PageStore behaviour, on the embedded engine."""


def with_pooled(points: list[PagePoint]) -> list[PagePoint]:
    """Add toy pooled vectors: means of token groups (rows) and strides (cols)."""
    out = []
    for p in points:
        full = p.vectors["full"].astype(np.float32)
        rows = full.reshape(4, -1, full.shape[1]).mean(axis=1)
        cols = np.stack([full[i::4].mean(axis=0) for i in range(4)])
        vectors = {"full": p.vectors["full"], "rows": rows.astype(np.float16)}
        vectors["cols"] = cols.astype(np.float16)
        out.append(replace(p, vectors=vectors))
    return out


def segment_quantization(shard_dir: Path) -> list[Any]:
    """Quantization of the full vector in each segment, as the engine persisted it."""
    found = []
    for path in shard_dir.glob("segments/*/segment.json"):
        config = json.loads(path.read_text())["config"]["vector_data"]["full"]
        found.append(config.get("quantization_config"))
    return found


def test_is_a_page_store(data_dir: Path) -> None:
    store = EdgePageStore(data_dir)
    assert isinstance(store, PageStore)
    assert not data_dir.exists()  # the constructor touches nothing


def test_reopen_persists_pages_marks_and_manifest(make_store: Any, data_dir: Path) -> None:
    store = make_store(POOLED)
    store.upsert_pages(with_pooled(make_points("doc-a", 3, source="/data/a.pdf")))
    store.flush()
    store.mark_complete(record("doc-a", "/data/a.pdf", 3))
    store.close()

    fresh = EdgePageStore(data_dir, POOLED.name)
    recorded = fresh.spec()  # read from the manifest point while closed
    assert recorded == POOLED
    assert fresh.spec() == recorded  # the short-lived load released the lock

    again = make_store(POOLED, create=False)
    assert again.count_pages() == 3
    got = again.get_document("doc-a")
    assert got is not None
    assert got.page_count == 3
    assert again.spec() == POOLED
    hits = again.search(np.ones((2, SPEC.dim), dtype=np.float16), k=5)
    assert len(hits) == 3


def test_second_open_in_process_is_refused_with_advice(make_store: Any, data_dir: Path) -> None:
    holder = make_store(SPEC)
    other = EdgePageStore(data_dir, SPEC.name)
    with pytest.raises(StoreInUseError) as info:
        other.open(SPEC)
    message = str(info.value)
    assert "in use by another pagerag process" in message
    assert "store.path" in message
    assert str(data_dir) in message
    with pytest.raises(StoreInUseError):
        other.spec()
    holder.close()
    other.open(SPEC)  # the lock was released
    other.close()


def test_another_process_holding_the_store_is_refused(make_store: Any, data_dir: Path) -> None:
    make_store(SPEC).close()
    script = (
        "import sys\n"
        "from connectors.qdrant_edge import EdgePageStore\n"
        "from tests.store_contract import SPEC\n"
        f"s = EdgePageStore({str(data_dir)!r}, SPEC.name)\n"
        "s.open(SPEC)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "s.close()\n"
    )
    root = Path(__file__).resolve().parents[1]
    with subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "ready"
            with pytest.raises(StoreInUseError, match="in use by another pagerag process"):
                EdgePageStore(data_dir, SPEC.name).open(SPEC)
        finally:
            child.stdin.write("\n")
            child.stdin.flush()
            child.wait(timeout=30)
    assert child.returncode == 0
    make_store(SPEC)  # free again once the other process closed it


def test_raw_engine_wal_lock_is_reported_as_in_use(make_store: Any, data_dir: Path) -> None:
    """A holder that bypasses our lock file still yields StoreInUseError, not WouldBlock."""
    make_store(SPEC).close()
    raw = qe.EdgeShard.load(str(data_dir / SPEC.name))
    try:
        with pytest.raises(StoreInUseError) as info:
            EdgePageStore(data_dir, SPEC.name).open(SPEC)
        assert "WouldBlock" not in str(info.value)
    finally:
        raw.close()


def test_close_from_another_thread_releases_the_lock(make_store: Any, data_dir: Path) -> None:
    store = make_store(SPEC)
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join()
    other = EdgePageStore(data_dir, SPEC.name)
    other.open(SPEC)
    other.close()


def test_closed_store_raises_store_error(make_store: Any, data_dir: Path) -> None:
    never_opened = EdgePageStore(data_dir, SPEC.name)
    with pytest.raises(StoreError, match="closed"):
        never_opened.count_pages()
    store = make_store(SPEC)
    store.close()
    store.close()  # idempotent
    query = np.ones((2, SPEC.dim), dtype=np.float16)
    for call in (
        store.count_pages,
        store.flush,
        store.stats,
        lambda: store.search(query, k=1),
        lambda: store.upsert_pages(make_points("doc-a", 1, source="/a.pdf")),
        lambda: store.get_document("doc-a"),
        lambda: list(store.iter_page_ids()),
    ):
        with pytest.raises(StoreError, match="closed"):
            call()


def test_missing_collection_without_create_touches_nothing(data_dir: Path) -> None:
    store = EdgePageStore(data_dir, SPEC.name)
    with pytest.raises(CollectionNotFoundError, match="pagerag ingest"):
        store.open(SPEC, create=False)
    assert not data_dir.exists()
    assert store.spec() is None


def test_mismatch_message_says_how_to_fix(make_store: Any, data_dir: Path) -> None:
    make_store(SPEC).close()
    other = replace(SPEC, model="someone/other-model", dim=32)
    with pytest.raises(CollectionMismatchError) as info:
        make_store(other)
    message = str(info.value)
    for words in (
        f"collection {SPEC.name!r}",
        "'pagerag/fake-colpali'",
        "'someone/other-model'",
        "16 dimensions",
        "32",
        "store.collection",
        str(data_dir / SPEC.name),
        "embedding.model back to 'pagerag/fake-colpali'",
    ):
        assert words in message
    # and the refused open left the store usable
    assert make_store(SPEC).count_pages() == 0


def test_two_stage_search_matches_exact_on_an_easy_case(make_store: Any) -> None:
    store = make_store(POOLED)
    points = with_pooled(make_points("doc-a", 40, source="/data/a.pdf", seed=3))
    store.upsert_pages(points)
    store.flush()
    two_stage = [("rows", 10), ("cols", 10)]
    for target in (points[0], points[17], points[33]):
        query = target.vectors["full"][:4]  # a page's own tokens: it must win
        exact = store.search(query, k=3)
        staged = store.search(query, k=3, prefetch=two_stage)
        assert exact[0].point_id == staged[0].point_id == target.point_id
        # the rerank scores with the full vector, not the pooled ones
        assert staged[0].score == pytest.approx(maxsim(query, target.vectors["full"]), rel=2e-2)
    # a prefetch that covers every page must reproduce exact ranking
    query = np.random.default_rng(11).standard_normal((5, SPEC.dim)).astype(np.float16)
    exact_ids = [h.point_id for h in store.search(query, k=10)]
    wide = store.search(query, k=10, prefetch=[("rows", 40)])
    assert [h.point_id for h in wide] == exact_ids
    # filters apply to every stage; a pooled vector can also be searched directly
    only_a = store.search(query, k=5, prefetch=two_stage, filter=PageFilter(document_ids=("x",)))
    assert only_a == []
    assert len(store.search(query, k=5, using="rows")) == 5


def test_search_rejects_bad_arguments(make_store: Any) -> None:
    store = make_store(SPEC)
    good = np.ones((2, SPEC.dim), dtype=np.float16)
    with pytest.raises(QueryError, match="no vector 'rows'"):
        store.search(good, k=3, prefetch=[("rows", 10)])
    with pytest.raises(QueryError, match="shape"):
        store.search(np.ones((2, SPEC.dim + 1), dtype=np.float16), k=3)
    with pytest.raises(QueryError, match="k must be"):
        store.search(good, k=0)


def test_upsert_with_unknown_vector_names_them(make_store: Any) -> None:
    store = make_store(SPEC)
    points = with_pooled(make_points("doc-a", 1, source="/a.pdf"))
    with pytest.raises(StoreError, match="rows"):
        store.upsert_pages(points)


def test_pooled_vectors_can_be_added_to_an_existing_collection(make_store: Any) -> None:
    store = make_store(SPEC)
    store.upsert_pages(make_points("doc-a", 2, source="/a.pdf"))
    store.close()
    store = make_store(POOLED)
    assert store.spec() is not None
    assert store.spec().pooled == ("rows", "cols")
    store.upsert_pages(with_pooled(make_points("doc-b", 2, source="/b.pdf", seed=5)))
    assert store.count_pages() == 4
    # only the pages that have pooled vectors are found by a pooled first stage
    query = np.ones((2, SPEC.dim), dtype=np.float16)
    staged = store.search(query, k=10, prefetch=[("rows", 10), ("cols", 10)])
    assert {h.payload["document_id"] for h in staged} == {"doc-b"}


def test_source_prefix_ignores_a_trailing_slash(make_store: Any) -> None:
    store = make_store(SPEC)
    store.upsert_pages(make_points("doc-a", 2, source="/data/q3/a.pdf"))
    store.upsert_pages(make_points("doc-b", 1, source="/database/b.pdf"))
    assert store.count_pages(PageFilter(source_prefix="/data/")) == 2
    assert store.count_pages(PageFilter(source_prefix="/")) == 3


def test_lookups_with_malformed_ids_find_nothing(make_store: Any) -> None:
    store = make_store(SPEC)
    assert store.page_image("not-a-uuid") is None
    assert store.page_vectors(["not-a-uuid"]) == {}


def test_stats_report_engine_and_disk_usage(make_store: Any, data_dir: Path) -> None:
    store = make_store(SPEC)
    store.upsert_pages(make_points("doc-a", 2, source="/a.pdf"))
    stats = store.stats()
    assert stats.engine == "qdrant-edge"
    assert stats.location == str(data_dir)
    assert stats.bytes_on_disk is not None
    assert 0 < stats.bytes_on_disk < 50_000_000  # allocated, not the sparse mmap size


def test_float16_storage_is_smaller_than_float32(tmp_path: Path) -> None:
    points = make_points("doc-a", 60, source="/a.pdf", dim=128, tokens=100)
    spec = replace(SPEC, dim=128)
    sizes = {}
    for datatype in ("float16", "float32"):
        store = EdgePageStore(tmp_path / datatype, spec.name)
        store.open(replace(spec, datatype=datatype))
        store.upsert_pages(points)
        store.flush()
        sizes[datatype] = store.stats().bytes_on_disk
        got = store.page_vectors([points[0].point_id])[points[0].point_id]
        np.testing.assert_array_equal(got, points[0].vectors["full"])
        store.close()
    assert sizes["float16"] < sizes["float32"]


@pytest.mark.parametrize("quantization", ["scalar", "binary"])
def test_quantization_is_honoured_and_scores_stay_exact(
    make_store: Any, data_dir: Path, quantization: str
) -> None:
    spec = replace(SPEC, quantization=quantization)
    store = make_store(spec, indexing_threshold_kb=1)
    points = make_points("doc-a", 30, source="/a.pdf", seed=9)
    store.upsert_pages(points)
    store.close()  # optimizes: scalar codes are built only by the optimizer
    kinds = {next(iter(q)) for q in segment_quantization(data_dir / SPEC.name) if q}
    assert kinds == {quantization}

    store = make_store(spec, create=False)
    assert store.spec() is not None
    assert store.spec().quantization == quantization
    target = points[7]
    query = target.vectors["full"][:6]
    hits = store.search(query, k=3)
    assert hits[0].point_id == target.point_id
    for hit in hits:  # rescored with the original vectors
        point = next(p for p in points if p.point_id == hit.point_id)
        assert hit.score == pytest.approx(maxsim(query, point.vectors["full"]), rel=2e-2)


def test_quantization_change_on_reopen_is_recorded_and_applied(
    make_store: Any, data_dir: Path
) -> None:
    store = make_store(SPEC, indexing_threshold_kb=1)
    store.upsert_pages(make_points("doc-a", 20, source="/a.pdf"))
    store.close()
    scalar = replace(SPEC, quantization="scalar")
    store = make_store(scalar, indexing_threshold_kb=1)
    assert store.spec() == scalar
    store.close()
    assert any(segment_quantization(data_dir / SPEC.name))
    assert make_store(scalar).count_pages() == 20


def test_background_upserts_while_the_main_thread_reads(make_store: Any) -> None:
    store = make_store(SPEC)
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for i in range(8):
                doc = f"doc-{i}"
                store.upsert_pages(make_points(doc, 3, source=f"/d/{doc}.pdf", seed=i))
                store.flush()
                store.mark_complete(record(doc, f"/d/{doc}.pdf", 3))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=ingest)
    worker.start()
    query = np.ones((2, SPEC.dim), dtype=np.float16)
    while worker.is_alive():
        store.get_document("doc-0")
        store.search(query, k=3)
        store.count_pages()
    worker.join()
    assert errors == []
    assert store.count_pages() == 24
    assert len(store.documents()) == 8


def test_delete_document_is_durable(make_store: Any) -> None:
    store = make_store(SPEC)
    store.upsert_pages(make_points("doc-a", 3, source="/a.pdf"))
    store.flush()
    store.mark_complete(record("doc-a", "/a.pdf", 3))
    assert store.delete_document("doc-a") == 3
    store.close()
    again = make_store(SPEC)
    assert again.count_pages() == 0
    assert again.get_document("doc-a") is None
    assert again.page_vectors([page_point_id("doc-a", 1)]) == {}
