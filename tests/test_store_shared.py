"""The engine-neutral parts both store adapters share, tested without an engine where possible.

* ``pipeline.retrieve.conditions``: which payloads a condition tree selects,
  checked by a small reference evaluator of the tree over plain dicts;
* ``pipeline.retrieve.queries``: what a search is refused for, and the request
  it becomes;
* ``pipeline.retrieve.opening``: mismatch messages, adopting a collection
  without a manifest, and what an existing collection takes in place;
* ``pipeline.retrieve.points``: the bookkeeping the contract suite does not
  cover (unmarked documents, pruning, payload updates), on both adapters.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from connectors.qdrant_client import ClientPageStore
from connectors.qdrant_edge import EdgePageStore
from pipeline.config import StoreConfig
from pipeline.errors import CollectionMismatchError, QueryError, StoreError
from pipeline.retrieve.conditions import (
    Condition,
    HasVector,
    Match,
    MatchAny,
    Where,
    documents_where,
    excluding_documents,
    missing_vectors,
    pages_where,
    stale_pages,
)
from pipeline.retrieve.opening import (
    VectorLayout,
    adopt_unmanifested,
    plan_evolution,
    refuse_mismatch,
    spec_layout,
    vector_roles,
)
from pipeline.retrieve.points import PointStore, image_bytes
from pipeline.retrieve.queries import Nearest, plan_query
from pipeline.retrieve.store import IMAGE_FIELD, KIND_DOCUMENT, KIND_PAGE, paths_payload
from pipeline.types import ModelIdentity, PageFilter
from tests.store_contract import SPEC, make_points, record

# --------------------------------------------------------------------------- conditions


def _field(payload: Mapping[str, Any], key: str) -> Any:
    value: Any = payload
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _equal(stored: Any, wanted: Any) -> bool:
    """Qdrant's match: on an array field any element may equal the value."""
    return wanted in stored if isinstance(stored, list) else stored == wanted


def holds(
    cond: Condition, payload: Mapping[str, Any], vectors: frozenset[str] = frozenset()
) -> bool:
    """A reference reading of a condition tree (what both engines must do with it)."""
    if isinstance(cond, Match):
        return _equal(_field(payload, cond.key), cond.value)
    if isinstance(cond, MatchAny):
        return any(_equal(_field(payload, cond.key), v) for v in cond.values)
    if isinstance(cond, HasVector):
        return cond.name in vectors
    return (
        all(holds(c, payload, vectors) for c in cond.must)
        and (not cond.should or any(holds(c, payload, vectors) for c in cond.should))
        and not any(holds(c, payload, vectors) for c in cond.must_not)
    )


def page(document_id: str, source: str, alias: str | None = None, **meta: str) -> dict[str, Any]:
    return {
        "kind": KIND_PAGE,
        "document_id": document_id,
        "page": 1,
        **paths_payload(source, alias),
        "meta": meta,
    }


A = page("a", "/data/q3/a.pdf", alias="/link/a.pdf", team="x")
B = page("b", "/database/b.pdf", team="y")
C = page("c", "/other/c.pdf", team="x")
MARK_A = {**A, "kind": KIND_DOCUMENT}


def selected(where: Where, *payloads: dict[str, Any]) -> set[str]:
    return {p["document_id"] for p in payloads if holds(where, p)}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (None, {"a", "b", "c"}),
        (PageFilter(document_ids=("b", "c")), {"b", "c"}),
        (PageFilter(source_prefix="/data"), {"a"}),  # a folder, not a string prefix
        (PageFilter(source_prefix="/data/"), {"a"}),
        (PageFilter(source_prefix="/"), {"a", "b", "c"}),
        (PageFilter(source_prefix="/link"), {"a"}),  # the folder of the path as given
        (PageFilter(source_prefix="/data/q3/a.pdf"), {"a"}),
        (PageFilter(source="/link/a.pdf"), {"a"}),
        (PageFilter(source="/data/q3"), set()),  # source is one file, exactly
        (PageFilter(metadata={"team": "x"}), {"a", "c"}),
        (PageFilter(source_prefix="/data", metadata={"team": "x"}), {"a"}),
    ],
)
def test_page_filters_select_pages(flt: PageFilter | None, expected: set[str]) -> None:
    assert selected(pages_where(flt), A, B, C, MARK_A) == expected
    assert not holds(pages_where(flt), MARK_A)  # completion marks are never pages


def test_document_filters_select_marks_of_the_same_documents() -> None:
    marks = documents_where(PageFilter(source_prefix="/link"), KIND_DOCUMENT)
    assert holds(marks, MARK_A)
    assert not holds(marks, A)


@pytest.mark.parametrize("key", ["a.b", "x[0]", ""])
def test_metadata_keys_that_read_as_paths_are_refused(key: str) -> None:
    with pytest.raises(QueryError, match="metadata key"):
        pages_where(PageFilter(metadata={key: "v"}))


def test_stale_pages_and_excluded_documents() -> None:
    pages = [{**A, "page": n} for n in (1, 2, 3)]
    assert [p["page"] for p in pages if holds(stale_pages("a", {1, 3}), p)] == [2]
    assert [p["page"] for p in pages if holds(stale_pages("a", ()), p)] == [1, 2, 3]
    assert not any(holds(stale_pages("b", ()), p) for p in pages)
    everything = pages_where()
    assert excluding_documents(everything, ()) is everything
    assert selected(excluding_documents(everything, {"a", "c"}), A, B, C) == {"b"}


def test_missing_vectors_selects_pages_lacking_any_name() -> None:
    where = missing_vectors(["rows", "cols"])
    assert holds(where, A, frozenset({"full", "rows"}))
    assert not holds(where, A, frozenset({"full", "rows", "cols"}))
    assert not holds(where, MARK_A, frozenset())


# --------------------------------------------------------------------------- queries

POOLED = dataclasses.replace(SPEC, pooled=("rows", "cols"))
QUERY = np.ones((3, SPEC.dim), np.float16)


def test_a_planned_search_reranks_every_stage_by_the_full_vector() -> None:
    flt = PageFilter(document_ids=("a",))
    request = plan_query(
        POOLED, {"full", "rows", "cols"}, QUERY, k=5, filter=flt, prefetch=[("rows", 2)]
    )
    assert isinstance(request.query, Nearest)
    assert (request.query.using, request.limit) == ("full", 5)
    assert request.query.vectors is QUERY or np.shares_memory(request.query.vectors, QUERY)
    assert [(s.query.using, s.limit) for s in request.prefetch] == [("rows", 5)]  # raised to k
    assert request.where == pages_where(flt)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"k": 0}, "k must be at least 1"),
        ({"query": np.ones((3, SPEC.dim + 1), np.float16)}, "shape"),
        ({"query": np.ones((0, SPEC.dim), np.float16)}, "non-empty"),
        ({"using": "rows"}, "unknown vector 'rows'"),
        ({"prefetch": [("cols", 10)]}, "has no vector 'cols'"),
        ({"prefetch": [("full", 0)]}, "prefetch limit for 'full'"),
    ],
)
def test_bad_searches_are_refused(kwargs: dict[str, Any], words: str) -> None:
    args: dict[str, Any] = {"query": QUERY, "k": 3, **kwargs}
    with pytest.raises(QueryError, match=words):
        plan_query(SPEC, {"full"}, args.pop("query"), **args)


# --------------------------------------------------------------------------- opening

LAYOUT = spec_layout(POOLED)


def test_a_matching_collection_is_accepted() -> None:
    refuse_mismatch("c", POOLED, POOLED, LAYOUT, where="/data", delete="/data/c")
    assert list(vector_roles(POOLED).items()) == [
        ("full", "full"),
        ("rows", "pooled"),
        ("cols", "pooled"),
    ]


def test_every_difference_is_named_with_the_fix() -> None:
    layout = {
        "full": VectorLayout(32, "Cosine", None),
        "rows": VectorLayout(16, "Dot", "max_sim"),
    }
    other = dataclasses.replace(POOLED, model="someone/else")
    with pytest.raises(CollectionMismatchError) as info:
        refuse_mismatch("c", other, POOLED, layout, where="/data", delete="/data/c")
    message = str(info.value)
    for words in (
        "collection 'c' in /data",
        "filled by model 'pagerag/fake-colpali'",
        "'full' has 32 dimensions",
        "distance 'Cosine'",
        "comparator 'none (single vectors)'",
        "delete /data/c",
        "set embedding.model back to 'pagerag/fake-colpali'",
    ):
        assert words in message
    renamed = dataclasses.replace(SPEC, full_vector="colpali")
    with pytest.raises(CollectionMismatchError, match=r"no vector named 'colpali' \(it has: full"):
        refuse_mismatch("c", renamed, SPEC, spec_layout(SPEC), where="/data", delete="/data/c")


def test_a_collection_without_manifest_is_adopted_only_when_empty() -> None:
    layout = {"full": VectorLayout(16, "Dot", "max_sim", "float32"), "rows": LAYOUT["rows"]}
    adopted = adopt_unmanifested("c", SPEC, layout, 0, where="/data", delete="/data/c")
    assert (adopted.pooled, adopted.datatype) == (("rows",), "float32")
    with pytest.raises(CollectionMismatchError, match="holds 3 pages but no pagerag manifest"):
        adopt_unmanifested("c", SPEC, layout, 3, where="/data", delete="/data/c")


def test_evolution_adds_vectors_switches_quantization_and_keeps_fixed_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    weights = ModelIdentity(SPEC.model, "hub:x@1", "f" * 16)
    wanted = dataclasses.replace(
        POOLED, quantization="scalar", datatype="float32", identity=weights
    )
    with caplog.at_level(logging.WARNING):
        evolution = plan_evolution("c", wanted, SPEC, {"full"})
    assert evolution.add == ("rows", "cols")
    assert evolution.quantization == "scalar"
    assert evolution.changed
    assert evolution.spec == dataclasses.replace(
        SPEC, pooled=("rows", "cols"), quantization="scalar", identity=weights
    )  # datatype stays as created
    assert "keeps datatype='float16'" in caplog.text
    assert "records no fingerprint" in caplog.text
    same = plan_evolution("c", POOLED, POOLED, LAYOUT)
    assert (same.add, same.quantization, same.changed) == ((), None, False)


# --------------------------------------------------------------------------- points


def test_image_bytes_decodes_or_says_what_to_do() -> None:
    assert image_bytes({IMAGE_FIELD: base64.b64encode(b"jpeg").decode()}, "p", "c") == b"jpeg"
    assert image_bytes({}, "p", "c") is None
    assert image_bytes(None, "p", "c") is None
    with pytest.raises(StoreError, match="not valid base64; re-ingest"):
        image_bytes({IMAGE_FIELD: "%%%"}, "p", "c")


@pytest.fixture(params=["edge", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PointStore]:
    """An opened store of each adapter (both are PointStores)."""
    if request.param == "edge":
        edge = EdgePageStore(tmp_path / "data", SPEC.name)
        edge.open(SPEC)
        yield edge
        edge.close()
        return
    client = QdrantClient(location=":memory:")
    memory = ClientPageStore(StoreConfig(url=":memory:"), client=client)
    memory.open(SPEC)
    yield memory
    client.close()


def test_document_ids_include_documents_without_a_mark(store: Any) -> None:
    for doc in ("marked", "killed-1", "killed-2", "elsewhere"):
        folder = "/other" if doc == "elsewhere" else "/data"
        store.upsert_pages(make_points(doc, 3, source=f"{folder}/{doc}.pdf"))
    store.flush()
    store.mark_complete(record("marked", "/data/marked.pdf", 3))
    assert store.document_ids(PageFilter(source_prefix="/data")) == {
        "marked",
        "killed-1",
        "killed-2",
    }
    assert store.document_ids(PageFilter(source="/other/elsewhere.pdf")) == {"elsewhere"}


def test_prune_keeps_the_pages_named_and_set_payload_reaches_every_point(store: Any) -> None:
    store.upsert_pages(make_points("doc", 5, source="/data/doc.pdf"))
    store.flush()
    store.mark_complete(record("doc", "/data/doc.pdf", 2))
    assert store.prune_pages("doc", {1, 2}) == 3
    assert store.prune_pages("doc", {1, 2}) == 0
    assert store.count_pages() == 2
    store.set_payload("doc", {"meta": {"team": "z"}})
    assert store.count_pages(PageFilter(metadata={"team": "z"})) == 2
    mark = store.get_document("doc")
    assert mark is not None
    assert mark.metadata == {"team": "z"}
    assert [len(ids) for ids in store.iter_page_ids(batch=1)] == [1, 1]
    with pytest.raises(ValueError, match="batch"):
        next(iter(store.iter_page_ids(batch=0)))


def test_both_engines_refuse_a_dotted_metadata_key(store: Any) -> None:
    store.upsert_pages(make_points("doc", 1, source="/data/doc.pdf", meta={"a.b": "x"}))
    with pytest.raises(QueryError, match=r"metadata key 'a\.b'"):
        store.search(QUERY, k=1, filter=PageFilter(metadata={"a.b": "x"}))
