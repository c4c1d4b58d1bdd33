"""The contract every PageStore adapter must pass.

Subclass :class:`PageStoreContract` and provide a ``make_store`` fixture that
returns a factory ``(spec) -> opened PageStore`` on a fresh, empty collection
(same backing location on each call within one test, so reopen is testable
where the engine persists). See tests/test_store_*.py.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pipeline.errors import CollectionMismatchError, CollectionNotFoundError
from pipeline.retrieve.store import IMAGE_FIELD, KIND_PAGE, PageStore, source_dirs
from pipeline.types import (
    CollectionSpec,
    DocumentRecord,
    ModelIdentity,
    PageFilter,
    PagePoint,
    page_point_id,
)

SPEC = CollectionSpec(name="contract", model="pagerag/fake-colpali", dim=16)
StoreFactory = Callable[..., PageStore]


def maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    """Brute-force late interaction: sum over query tokens of the best dot product."""
    sims = query.astype(np.float32) @ doc.astype(np.float32).T
    return float(sims.max(axis=1).sum())


def make_points(
    document_id: str,
    n_pages: int,
    *,
    source: str,
    dim: int = 16,
    tokens: int = 12,
    seed: int = 0,
    meta: dict[str, str] | None = None,
    image: bytes | None = None,
) -> list[PagePoint]:
    rng = np.random.default_rng(seed)
    points = []
    for page in range(1, n_pages + 1):
        vec = rng.standard_normal((tokens, dim)).astype(np.float16)
        payload: dict[str, Any] = {
            "kind": KIND_PAGE,
            "document_id": document_id,
            "source": source,
            "source_dirs": source_dirs(source),
            "file_name": source.rsplit("/", 1)[-1],
            "page": page,
            "page_count": n_pages,
            "width": 100,
            "height": 130,
            "dpi": 150,
            "ingested_at": "2026-11-22T00:00:00+00:00",
            "model": SPEC.model,
            "meta": meta or {},
        }
        if image is not None:
            payload[IMAGE_FIELD] = base64.b64encode(image).decode("ascii")
        points.append(
            PagePoint(
                point_id=page_point_id(document_id, page), vectors={"full": vec}, payload=payload
            )
        )
    return points


def record(document_id: str, source: str, pages: int) -> DocumentRecord:
    return DocumentRecord(
        document_id=document_id,
        source=source,
        file_name=source.rsplit("/", 1)[-1],
        page_count=pages,
        total_pages=pages,
        ingested_at="2026-11-22T00:00:00+00:00",
        model=SPEC.model,
        bytes=1234,
    )


class PageStoreContract:
    """Behaviour shared by every adapter. Subclasses provide ``make_store``."""

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> PageStore:
        return make_store(SPEC)

    def test_empty_collection_has_no_pages(self, store: PageStore) -> None:
        assert store.count_pages() == 0
        assert store.documents() == []
        assert store.spec() is not None

    def test_upsert_is_idempotent_by_point_id(self, store: PageStore) -> None:
        points = make_points("doc-a", 3, source="/data/a.pdf")
        store.upsert_pages(points)
        store.upsert_pages(points)
        store.flush()
        assert store.count_pages() == 3

    def test_completion_mark_round_trip(self, store: PageStore) -> None:
        store.upsert_pages(make_points("doc-a", 2, source="/data/a.pdf"))
        store.flush()
        assert store.get_document("doc-a") is None  # pages alone do not mean complete
        store.mark_complete(record("doc-a", "/data/a.pdf", 2))
        got = store.get_document("doc-a")
        assert got is not None
        assert (got.source, got.page_count, got.model) == ("/data/a.pdf", 2, SPEC.model)
        assert [d.document_id for d in store.documents(source="/data/a.pdf")] == ["doc-a"]
        assert store.documents(source="/data/other.pdf") == []
        # marker points are not pages
        assert store.count_pages() == 2

    def test_maxsim_ranking_equals_numpy_bruteforce(self, store: PageStore) -> None:
        points = make_points("doc-a", 20, source="/data/a.pdf", seed=1)
        points += make_points("doc-b", 15, source="/data/b.pdf", seed=2)
        store.upsert_pages(points)
        store.flush()
        rng = np.random.default_rng(7)
        for _ in range(3):
            query = rng.standard_normal((5, SPEC.dim)).astype(np.float16)
            hits = store.search(query, k=10)
            expected = sorted(points, key=lambda p: -maxsim(query, p.vectors["full"]))[:10]
            assert [h.point_id for h in hits] == [p.point_id for p in expected]
            for hit, point in zip(hits, expected, strict=True):
                assert hit.score == pytest.approx(maxsim(query, point.vectors["full"]), rel=2e-2)

    def test_search_payload_has_fields_but_not_image(self, store: PageStore) -> None:
        store.upsert_pages(make_points("doc-a", 2, source="/data/a.pdf", image=b"\xff\xd8jpeg"))
        hits = store.search(np.ones((2, SPEC.dim), dtype=np.float16), k=5)
        assert len(hits) == 2
        assert IMAGE_FIELD not in hits[0].payload
        assert hits[0].payload["document_id"] == "doc-a"
        assert {h.payload["page"] for h in hits} == {1, 2}
        assert store.page_image(hits[0].point_id) == b"\xff\xd8jpeg"

    def test_page_image_missing_is_none(self, store: PageStore) -> None:
        store.upsert_pages(make_points("doc-a", 1, source="/data/a.pdf"))
        assert store.page_image(page_point_id("doc-a", 1)) is None

    def test_filters(self, store: PageStore) -> None:
        store.upsert_pages(make_points("doc-a", 3, source="/data/q3/a.pdf", meta={"team": "x"}))
        store.upsert_pages(make_points("doc-b", 3, source="/data/q4/b.pdf", meta={"team": "y"}))
        store.upsert_pages(make_points("doc-c", 3, source="/other/c.pdf", meta={"team": "x"}))
        query = np.ones((2, SPEC.dim), dtype=np.float16)

        def docs(flt: PageFilter) -> set[str]:
            return {h.payload["document_id"] for h in store.search(query, k=50, filter=flt)}

        assert docs(PageFilter(document_ids=("doc-b",))) == {"doc-b"}
        assert docs(PageFilter(source_prefix="/data")) == {"doc-a", "doc-b"}
        assert docs(PageFilter(source_prefix="/data/q3/a.pdf")) == {"doc-a"}
        assert docs(PageFilter(metadata={"team": "x"})) == {"doc-a", "doc-c"}
        assert docs(PageFilter(source_prefix="/data", metadata={"team": "x"})) == {"doc-a"}
        assert store.count_pages(PageFilter(source_prefix="/other")) == 3

    def test_delete_document_removes_pages_and_mark(self, store: PageStore) -> None:
        store.upsert_pages(make_points("doc-a", 4, source="/data/a.pdf"))
        store.upsert_pages(make_points("doc-b", 2, source="/data/b.pdf"))
        store.flush()
        store.mark_complete(record("doc-a", "/data/a.pdf", 4))
        assert store.delete_document("doc-a") == 4
        assert store.get_document("doc-a") is None
        assert store.count_pages() == 2
        assert store.delete_document("doc-a") == 0

    def test_page_vectors_round_trip_float16(self, store: PageStore) -> None:
        points = make_points("doc-a", 2, source="/data/a.pdf")
        store.upsert_pages(points)
        got = store.page_vectors([p.point_id for p in points])
        for p in points:
            assert got[p.point_id].dtype == np.float16
            np.testing.assert_allclose(got[p.point_id], p.vectors["full"], rtol=1e-3)

    def test_iter_page_ids_lists_only_pages(self, store: PageStore) -> None:
        points = make_points("doc-a", 7, source="/data/a.pdf")
        store.upsert_pages(points)
        store.mark_complete(record("doc-a", "/data/a.pdf", 7))
        ids = [i for batch in store.iter_page_ids(batch=3) for i in batch]
        assert sorted(ids) == sorted(p.point_id for p in points)

    def test_stats_count_documents_and_pages(self, store: PageStore) -> None:
        store.upsert_pages(make_points("doc-a", 3, source="/data/a.pdf"))
        store.flush()
        store.mark_complete(record("doc-a", "/data/a.pdf", 3))
        stats = store.stats()
        assert (stats.documents, stats.pages, stats.model) == (1, 3, SPEC.model)

    def test_reopen_with_same_spec_is_accepted(self, make_store: StoreFactory) -> None:
        first = make_store(SPEC)
        first.upsert_pages(make_points("doc-a", 1, source="/data/a.pdf"))
        first.flush()
        first.close()
        again = make_store(SPEC)
        assert again.count_pages() == 1

    @pytest.mark.parametrize(
        ("change", "words"),
        [
            ({"model": "someone/other-model"}, "someone/other-model"),
            ({"dim": 32}, "32"),
            ({"full_vector": "colpali"}, "colpali"),
        ],
    )
    def test_mismatched_collection_is_refused(
        self, make_store: StoreFactory, change: dict[str, Any], words: str
    ) -> None:
        make_store(SPEC).close()
        other = CollectionSpec(**{**SPEC.__dict__, **change})
        with pytest.raises(CollectionMismatchError) as info:
            make_store(other)
        message = str(info.value)
        assert words in message
        assert "collection" in message.lower()

    def test_other_weights_of_the_same_model_are_refused(self, make_store: StoreFactory) -> None:
        weights = ModelIdentity(name=SPEC.model, source="/models/a", fingerprint="a" * 16)
        filled = CollectionSpec(**{**SPEC.__dict__, "identity": weights})
        make_store(filled).close()
        same = CollectionSpec(
            **{**SPEC.__dict__, "identity": ModelIdentity(SPEC.model, "/copy/a", "a" * 16)}
        )
        make_store(same).close()  # same fingerprint from elsewhere: the same weights
        reader = make_store(SPEC)  # no identity: a reading open checks no weights
        assert reader.spec() == filled
        reader.close()
        other = ModelIdentity(name=SPEC.model, source="/models/b", fingerprint="b" * 16)
        with pytest.raises(CollectionMismatchError) as info:
            make_store(CollectionSpec(**{**SPEC.__dict__, "identity": other}))
        message = str(info.value)
        for words in ("a" * 16, "b" * 16, "/models/b", "store.collection", "re-embed"):
            assert words in message
        assert "set embedding.model_path back to /models/a" in message

    def test_a_manifest_without_weights_adopts_the_first_ones(
        self, make_store: StoreFactory
    ) -> None:
        make_store(SPEC).close()  # the manifest an older pagerag wrote
        weights = ModelIdentity(name=SPEC.model, source="hub:x@1", fingerprint="c" * 16)
        filled = CollectionSpec(**{**SPEC.__dict__, "identity": weights})
        make_store(filled).close()
        again = make_store(SPEC)
        assert again.spec() == filled
        again.close()

    def test_open_without_create_on_missing_collection(self, make_store: StoreFactory) -> None:
        with pytest.raises(CollectionNotFoundError):
            make_store(SPEC, create=False)
