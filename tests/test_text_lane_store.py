"""The store side of the text lane and hybrid search, on both engines.

* The text lane's ranking against an independent BM25 (``bm25s``, Lucene
  variant, english stopwords and the Snowball english stemmer of PyStemmer).
  Qdrant's BM25 normalises document length by a fixed ``avg_len`` (256
  tokens) where bm25s uses the corpus mean, and scales each term by
  ``k1 + 1`` where Lucene does not: with length normalisation off (``b=0``)
  the scores are proportional (factor ``k1 + 1``), so the check is exact; with
  the defaults the rankings are compared within a stated overlap.
* Hybrid search against a reference fusion of the lanes' standalone rankings
  (:func:`~pipeline.retrieve.fusion.rrf_contribution`), and the lane ranks it
  reports; DBSF; filters on every lane; the two-stage visual lane.
* Collections: manifest lanes, opening refusals naming the fix, adopting lanes
  while empty, text-only collections, filling the text lane in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient

from connectors.qdrant_client import ClientPageStore
from connectors.qdrant_edge import EdgePageStore
from pipeline.config import StoreConfig
from pipeline.errors import CollectionMismatchError, QueryError, StoreError
from pipeline.retrieve.fusion import Fuse, rrf_contribution, rrf_rank
from pipeline.retrieve.lanes import LaneStore
from pipeline.retrieve.points import PointStore
from pipeline.retrieve.store import manifest_payload, spec_from_manifest
from pipeline.types import (
    TEXT_FIELD,
    TEXT_VECTOR,
    CollectionSpec,
    PageFilter,
    PagePoint,
    ScoredPage,
    SparseVector,
)
from tests.store_contract import make_points

DIM = 8
K1 = 1.2  # BM25 term-frequency saturation, the same in Qdrant's Bm25 and bm25s
VISUAL_SPEC = CollectionSpec(name="lanes", model="pagerag/fake-colpali", dim=DIM, pooled=("rows",))
HYBRID_SPEC = dataclasses.replace(VISUAL_SPEC, lanes=("visual", "text"))
TEXT_SPEC = dataclasses.replace(VISUAL_SPEC, lanes=("text",))

# Short page texts of an imagined company archive: varied lengths, repeated terms.
TEXTS = [
    "Quarterly revenue report: revenue grew in the northern region while costs fell.",
    "Annual revenue summary for the board, with revenue by product line and region.",
    "Safety instructions for the hydraulic press. Wear gloves and protective glasses.",
    "The hydraulic pump must be inspected monthly; replace worn seals on the pump.",
    "Employee handbook: holidays, sick leave, parental leave and remote working rules.",
    "Remote working policy: employees may work remotely two days per week.",
    "Invoice from Acme Corporation for pump seals, gaskets and hydraulic hoses.",
    "Minutes of the board meeting: the board approved the new warehouse budget.",
    "Warehouse inventory list: pallets, forklifts, shelving and packing tape.",
    "Forklift maintenance log: battery replaced, forks inspected, brakes adjusted.",
    "Marketing plan for the spring campaign targeting small businesses in the region.",
    "Customer complaint about late delivery of the hydraulic hoses ordered in March.",
    "Delivery schedule for the northern warehouse: trucks arrive Monday and Thursday.",
    "Travel expense claim: train tickets, hotel nights and meals during the trade fair.",
    "Trade fair report: visitors asked about pumps, presses and maintenance contracts.",
    "Maintenance contract terms: response within four hours, spare parts included.",
    "Spare parts catalogue: seals, gaskets, hoses, valves, filters and pump impellers.",
    "Product line overview: presses, pumps, valves and the new compact hydraulic unit.",
    "Press release announcing the compact hydraulic unit for small workshops.",
    "Workshop safety checklist: guards in place, emergency stop tested, floor clean.",
    "Emergency procedures: fire exits, assembly points and the emergency contacts list.",
    "IT security policy: passwords, phishing awareness and laptop encryption.",
    "Phishing awareness training results: most employees reported the test email.",
    "Budget forecast for next year: revenue, costs, investments in the warehouse.",
    "Cost reduction ideas: cheaper packing tape, fewer trucks, energy saving lights.",
    "Energy audit of the factory: compressors and presses use most electricity.",
    "Compressor manual: oil levels, filters, pressure settings and safety valves.",
    "Valve specification sheet: pressure rating, materials, connection sizes.",
    "Supplier evaluation: Acme Corporation delivers seals on time, hoses often late.",
    "Late payment reminder sent to a customer about the unpaid invoice for valves.",
    "Recruitment plan: two technicians for maintenance and one warehouse manager.",
    "Job description: maintenance technician servicing pumps, presses and compressors.",
    "Training schedule for new technicians: hydraulic basics, safety, pump repair.",
    "Pump repair guide: dismantle the pump, replace the impeller, check the seals, "
    "reassemble the pump and test the pump under pressure before returning it.",
    "Letter to shareholders: strong revenue, record orders, expansion of the warehouse.",
    "Environmental report: waste oil recycling, packaging reduction, energy use.",
    "Quality audit findings: calibration of pressure gauges overdue in the workshop.",
    "Calibration certificates for pressure gauges and torque wrenches.",
    "Meeting notes on the spring campaign: budget approved, launch in April.",
    "Holiday calendar: the factory closes between Christmas and New Year.",
]
QUERIES = [
    "hydraulic pump seals",
    "revenue warehouse",
    "safety presses",
    "remote working employees",
    "pressure gauges calibration",
    "late delivery hoses",
    "budget board approved",
    "energy compressors",
]


def _bm25(b: float | None = None) -> qe.Bm25:
    """Qdrant's BM25 (english); ``b`` 0 turns length normalisation off."""
    return qe.Bm25(qe.Bm25Config(language="english", b=b))


def _sparse(vector: qe.SparseVector) -> SparseVector:
    return SparseVector.of(vector.indices, vector.values)


def _points(texts: list[str], *, bm25: qe.Bm25, visual: bool = True) -> list[PagePoint]:
    """One page per text in two documents (odd/even), with its text and BM25 vector."""
    out = []
    for doc, parity in (("doc-a", 0), ("doc-b", 1)):
        mine = [t for i, t in enumerate(texts) if i % 2 == parity]
        for point, text in zip(
            make_points(doc, len(mine), source=f"/r/{doc}.pdf", dim=DIM, seed=parity),
            mine,
            strict=True,
        ):
            payload = {**point.payload, TEXT_FIELD: text}
            vectors = dict(point.vectors) if visual else {}
            if visual:
                full = point.vectors["full"]
                vectors["rows"] = full[:3].copy()
            sparse = {TEXT_VECTOR: _sparse(bm25.embed_document(text))}
            out.append(PagePoint(point.point_id, vectors, payload, sparse))
    return out


Factory = Callable[..., Any]  # (spec, create=True) -> an opened PointStore


@pytest.fixture(params=["edge", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """``(spec, create=True) -> opened store`` on one backing collection; each call closes
    the store the previous one opened (the embedded engine locks its directory)."""
    client = QdrantClient(location=":memory:") if request.param == "memory" else None
    opened: list[PointStore] = []

    def factory(spec: CollectionSpec, *, create: bool = True) -> Any:
        for earlier in opened:
            if isinstance(earlier, EdgePageStore):
                earlier.close()
        store: PointStore
        if client is None:
            store = EdgePageStore(tmp_path / "data", spec.name)
        else:
            store = ClientPageStore(
                StoreConfig(url=":memory:", collection=spec.name), client=client
            )
        store.open(spec, create=create)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        if isinstance(store, EdgePageStore):
            store.close()
    if client is not None:
        client.close()


def _bm25s_scores(texts: list[str], queries: list[str], **params: float) -> np.ndarray:
    """(queries, texts) BM25 scores from bm25s, Lucene variant, english stopwords + stemmer."""
    bm25s = pytest.importorskip("bm25s")
    stemmer_module = pytest.importorskip("Stemmer")
    stemmer = stemmer_module.Stemmer("english")
    retriever = bm25s.BM25(method="lucene", k1=K1, **params)
    retriever.index(
        bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    words = bm25s.tokenize(
        queries, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
    )
    return np.asarray([retriever.get_scores(tokens) for tokens in words])


def _text_scores(store: PointStore, query: SparseVector, n: int) -> dict[str, float]:
    return {p.payload[TEXT_FIELD]: p.score for p in store.search_text(query, k=n)}


# ------------------------------------------------------------------ text lane vs BM25


def test_text_lane_scores_are_bm25_exactly_without_length_normalisation(
    make_store: Factory,
) -> None:
    bm25 = _bm25(b=0.0)
    store = make_store(HYBRID_SPEC)
    store.upsert_pages(_points(TEXTS, bm25=bm25))
    reference = _bm25s_scores(TEXTS, QUERIES, b=0.0)
    for query, expected in zip(QUERIES, reference, strict=True):
        got = _text_scores(store, _sparse(bm25.embed_query(query)), len(TEXTS))
        want = {TEXTS[i]: float(s) * (K1 + 1) for i, s in enumerate(expected) if s > 0}
        assert set(got) == set(want), query
        for text, score in got.items():
            assert score == pytest.approx(want[text], rel=1e-4), (query, text)


def test_text_lane_ranking_is_close_to_bm25_with_length_normalisation(
    make_store: Factory,
) -> None:
    """Qdrant normalises by a fixed avg_len of 256 tokens, bm25s by the corpus mean
    (~7 tokens here): long pages are penalised less. The top 5 must still agree on
    at least 4 of 5 pages on average, the best page on most queries."""
    bm25 = _bm25()
    store = make_store(HYBRID_SPEC)
    store.upsert_pages(_points(TEXTS, bm25=bm25))
    reference = _bm25s_scores(TEXTS, QUERIES)
    overlaps, firsts = [], 0
    for query, expected in zip(QUERIES, reference, strict=True):
        got = [
            p.payload[TEXT_FIELD] for p in store.search_text(_sparse(bm25.embed_query(query)), k=5)
        ]
        want = [TEXTS[i] for i in np.argsort(-expected, kind="stable")[:5] if expected[i] > 0]
        overlaps.append(len(set(got) & set(want)) / max(len(want), 1))
        firsts += got[0] == want[0]
    assert np.mean(overlaps) >= 0.8, overlaps
    assert firsts >= len(QUERIES) - 2


def test_text_lane_reports_text_ranks_and_skips_pages_without_text(make_store: Factory) -> None:
    bm25 = _bm25()
    store = make_store(HYBRID_SPEC)
    points = _points(TEXTS, bm25=bm25)
    blank = dataclasses.replace(points[0], sparse={TEXT_VECTOR: SparseVector.of([], [])})
    store.upsert_pages([blank, *points[1:]])
    hits = store.search_text(_sparse(bm25.embed_query("revenue report")), k=5)
    assert [dict(h.lanes) for h in hits] == [{"text": r} for r in range(1, len(hits) + 1)]
    assert blank.point_id not in {
        h.point_id for h in store.search_text(_sparse(bm25.embed_query(TEXTS[0])), k=len(TEXTS))
    }
    assert store.search_text(SparseVector.of([], []), k=5) == []


# ------------------------------------------------------------------ hybrid


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 2.0), (0.5, 1.0)])
def test_rrf_rank_inverts_a_float32_fused_score(weights: tuple[float, float]) -> None:
    """The visual rank comes back from a float32 fused score, whatever the text rank."""
    k = 60
    for visual in (1, 2, 7, 100, 1000, 5000):
        for text in (None, 1, 3, 100):
            text_part = rrf_contribution(text, weights[1], k) if text else 0.0
            fused = float(np.float32(rrf_contribution(visual, weights[0], k) + text_part))
            assert rrf_rank(fused - text_part, weights[0], k) == visual
    assert (
        rrf_rank(
            float(np.float32(rrf_contribution(4, 1.0, k))) - rrf_contribution(4, 1.0, k), 1.0, k
        )
        is None
    )


def _reference_rrf(visual: list[str], text: list[str], fuse: Fuse) -> dict[str, float]:
    scores: dict[str, float] = {}
    for ranking, weight in ((visual, fuse.weights[0]), (text, fuse.weights[1])):
        for rank, point_id in enumerate(ranking, 1):
            scores[point_id] = scores.get(point_id, 0.0) + rrf_contribution(rank, weight, fuse.k)
    return scores


def _assert_lane_ranks(hits: list[ScoredPage], **lanes: list[str]) -> None:
    """Each hit's lanes are its 1-based ranks in the standalone rankings that hold it."""
    for hit in hits:
        want = {
            lane: ids.index(hit.point_id) + 1 for lane, ids in lanes.items() if hit.point_id in ids
        }
        assert dict(hit.lanes) == want, hit.point_id


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 2.0)])
@pytest.mark.parametrize("two_stage", [False, True])
def test_hybrid_rrf_equals_a_reference_fusion_of_the_standalone_lanes(
    make_store: Factory, weights: tuple[float, float], two_stage: bool
) -> None:
    bm25 = _bm25()
    store = make_store(HYBRID_SPEC)
    store.upsert_pages(_points(TEXTS, bm25=bm25))
    rng = np.random.default_rng(7)
    fuse = Fuse("rrf", weights, k=60)
    prefetch = (("rows", 12),) if two_stage else ()
    lane_k, k = 10, 8
    for query in QUERIES[:4]:
        visual_q = rng.standard_normal((4, DIM)).astype(np.float16)
        text_q = _sparse(bm25.embed_query(query))
        visual = [p.point_id for p in store.search(visual_q, k=lane_k, prefetch=prefetch)]
        text = [p.point_id for p in store.search_text(text_q, k=lane_k)]
        reference = _reference_rrf(visual, text, fuse)
        hits = store.search_hybrid(
            visual_q, text_q, k=k, fusion=fuse, lane_k=lane_k, prefetch=prefetch
        )
        assert [h.score for h in hits] == pytest.approx(
            sorted(reference.values(), reverse=True)[:k], rel=1e-5
        )
        for hit in hits:
            assert hit.score == pytest.approx(reference[hit.point_id], rel=1e-5)
        _assert_lane_ranks(hits, visual=visual, text=text)


def test_hybrid_dbsf_reports_the_standalone_lane_ranks(make_store: Factory) -> None:
    bm25 = _bm25()
    store = make_store(HYBRID_SPEC)
    store.upsert_pages(_points(TEXTS, bm25=bm25))
    visual_q = np.random.default_rng(3).standard_normal((4, DIM)).astype(np.float16)
    text_q = _sparse(bm25.embed_query("pump seals hydraulic"))
    visual = [p.point_id for p in store.search(visual_q, k=10)]
    text = [p.point_id for p in store.search_text(text_q, k=10)]
    hits = store.search_hybrid(visual_q, text_q, k=10, fusion=Fuse("dbsf", (1.0, 1.0)), lane_k=10)
    assert len(hits) == 10 and {h.point_id for h in hits} <= set(visual) | set(text)
    _assert_lane_ranks(hits, visual=visual, text=text)


def test_filters_apply_to_both_lanes(make_store: Factory) -> None:
    bm25 = _bm25()
    store = make_store(HYBRID_SPEC)
    store.upsert_pages(_points(TEXTS, bm25=bm25))
    only_b = PageFilter(document_ids=("doc-b",))
    visual_q = np.random.default_rng(5).standard_normal((4, DIM)).astype(np.float16)
    text_q = _sparse(bm25.embed_query("revenue warehouse pump"))
    texts = store.search_text(text_q, k=40, filter=only_b)
    assert texts and {h.payload["document_id"] for h in texts} == {"doc-b"}
    # Each lane hands max(lane_k, k) = 6 pages to the fusion.
    visual = [p.point_id for p in store.search(visual_q, k=6, filter=only_b)]
    text = [p.point_id for p in store.search_text(text_q, k=6, filter=only_b)]
    hits = store.search_hybrid(
        visual_q, text_q, k=6, fusion=Fuse("rrf", (1.0, 1.0)), lane_k=5, filter=only_b
    )
    assert {h.payload["document_id"] for h in hits} == {"doc-b"}
    _assert_lane_ranks(hits, visual=visual, text=text)


def test_hybrid_without_text_terms_is_the_visual_lane(make_store: Factory) -> None:
    store = make_store(HYBRID_SPEC)
    store.upsert_pages(_points(TEXTS, bm25=_bm25()))
    visual_q = np.random.default_rng(9).standard_normal((4, DIM)).astype(np.float16)
    visual = store.search(visual_q, k=5)
    hits = store.search_hybrid(
        visual_q, SparseVector.of([], []), k=5, fusion=Fuse("rrf", (1.0, 1.0)), lane_k=20
    )
    assert [h.point_id for h in hits] == [h.point_id for h in visual]
    assert [dict(h.lanes) for h in hits] == [{"visual": r} for r in range(1, 6)]


# ------------------------------------------------------------------ collections


def test_manifest_records_lanes_and_schema_version() -> None:
    visual = manifest_payload(VISUAL_SPEC, engine="x")
    hybrid = manifest_payload(dataclasses.replace(HYBRID_SPEC, text_language="german"), engine="x")
    assert visual["schema_version"] == 1 and hybrid["schema_version"] == 2
    spec = spec_from_manifest("lanes", hybrid)
    assert spec.lanes == ("visual", "text") and spec.text_language == "german"
    old = {k: v for k, v in visual.items() if k not in ("lanes", "text_language")}
    assert spec_from_manifest("lanes", old).lanes == ("visual",)
    assert spec_from_manifest("lanes", old).text_language == "english"


def test_lanes_round_trip_through_reopening(make_store: Factory) -> None:
    store = make_store(dataclasses.replace(HYBRID_SPEC, text_language="german"))
    store.upsert_pages(_points(TEXTS[:4], bm25=_bm25()))
    reader = make_store(VISUAL_SPEC, create=False)  # readers take the recorded lanes
    recorded = reader.spec()
    assert recorded is not None and recorded.lanes == ("visual", "text")
    assert recorded.text_language == "german"


def test_opening_for_ingest_with_other_lanes_is_refused_with_the_fix(make_store: Factory) -> None:
    store = make_store(VISUAL_SPEC)
    points = _points(TEXTS[:4], bm25=_bm25())
    with pytest.raises((StoreError, ValueError), match=TEXT_VECTOR):  # no text lane to store in
        store.upsert_pages(points)
    store.upsert_pages([dataclasses.replace(p, sparse={}) for p in points])
    with pytest.raises(CollectionMismatchError, match=r"pagerag reindex --text"):
        make_store(HYBRID_SPEC)
    store = make_store(VISUAL_SPEC, create=False)
    assert store.spec() is not None and store.spec().lanes == ("visual",)


def test_fewer_lanes_or_another_language_is_refused(make_store: Factory) -> None:
    store = make_store(HYBRID_SPEC)
    store.upsert_pages(_points(TEXTS[:4], bm25=_bm25()))
    with pytest.raises(CollectionMismatchError, match=r"--lanes auto"):
        make_store(VISUAL_SPEC)
    with pytest.raises(CollectionMismatchError, match=r"text\.language"):
        make_store(dataclasses.replace(HYBRID_SPEC, text_language="german"))


def test_an_empty_collection_adopts_the_wanted_lanes(make_store: Factory) -> None:
    make_store(VISUAL_SPEC)
    store = make_store(HYBRID_SPEC)
    assert store.spec() is not None and store.spec().lanes == ("visual", "text")
    bm25 = _bm25()
    store.upsert_pages(_points(TEXTS, bm25=bm25))
    assert store.search_text(_sparse(bm25.embed_query("hydraulic pump")), k=3)


def test_text_only_collection_is_searchable_by_text_and_refuses_visual_search(
    make_store: Factory,
) -> None:
    bm25 = _bm25()
    store = make_store(TEXT_SPEC)
    store.upsert_pages(_points(TEXTS, bm25=bm25, visual=False))
    assert store.count_pages() == len(TEXTS)
    assert store.page_vectors([i for batch in store.iter_page_ids() for i in batch]) == {}
    hits = store.search_text(_sparse(bm25.embed_query("calibration gauges")), k=3)
    assert (
        hits[0].payload[TEXT_FIELD]
        == "Calibration certificates for pressure gauges and torque wrenches."
    )
    query = np.ones((2, DIM), dtype=np.float16)
    with pytest.raises(QueryError, match=r"pagerag reindex --visual"):
        store.search(query, k=3)
    with pytest.raises(QueryError, match=r"pagerag reindex --visual"):
        store.search_hybrid(
            query,
            _sparse(bm25.embed_query("pump")),
            k=3,
            fusion=Fuse("rrf", (1.0, 1.0)),
            lane_k=5,
        )
    # No page has visual vectors: another model of the same size is no mismatch...
    make_store(dataclasses.replace(TEXT_SPEC, model="other/model"))
    # ...but wanting the visual lane on it needs its pages embedded first.
    with pytest.raises(CollectionMismatchError, match=r"pagerag reindex --visual"):
        make_store(HYBRID_SPEC)


def test_visual_collection_refuses_text_search_with_the_fix(make_store: Factory) -> None:
    store = make_store(VISUAL_SPEC)
    with pytest.raises(QueryError, match=r"pagerag reindex --text"):
        store.search_text(SparseVector.of([1], [1.0]), k=3)


def test_filling_the_text_lane_in_place_keeps_visual_vectors(make_store: Factory) -> None:
    bm25 = _bm25()
    store = make_store(VISUAL_SPEC)
    points = _points(TEXTS, bm25=bm25)
    store.upsert_pages(
        [
            dataclasses.replace(
                p, sparse={}, payload={k: v for k, v in p.payload.items() if k != TEXT_FIELD}
            )
            for p in points
        ]
    )
    assert isinstance(cast(object, store), LaneStore)  # both adapters implement it
    ids = [p.point_id for p in points]
    before = {name: store.page_vectors(ids, name) for name in ("full", "rows")}
    assert store.count_pages_without_field(TEXT_FIELD) == len(points)
    store.add_text_vector()
    store.add_text_vector()  # safe to repeat
    first, rest = points[0], points[1:]
    store.update_page_text({first.point_id: ({TEXT_FIELD: ""}, SparseVector.of([], []))})
    assert store.count_pages_without_field(TEXT_FIELD) == len(points) - 1
    todo = [i for batch in store.page_ids_without_field(TEXT_FIELD, batch=7) for i in batch]
    assert sorted(todo) == sorted(p.point_id for p in rest)
    store.update_page_text(
        {p.point_id: ({TEXT_FIELD: p.payload[TEXT_FIELD]}, p.sparse[TEXT_VECTOR]) for p in rest}
    )
    assert store.count_pages_without_field(TEXT_FIELD) == 0
    after = {name: store.page_vectors(ids, name) for name in ("full", "rows")}
    for name, vectors in before.items():
        assert set(after[name]) == set(vectors)
        for point_id, array in vectors.items():
            assert after[name][point_id].tobytes() == array.tobytes()
    recorded = store.record_lanes(("text", "visual"))
    assert recorded.lanes == ("visual", "text")
    hits = store.search_text(_sparse(bm25.embed_query(TEXTS[0])), k=len(TEXTS))
    assert hits and first.point_id not in {h.point_id for h in hits}
    payload = store.page_payloads([rest[0].point_id], ["document_id", TEXT_FIELD])
    assert payload[rest[0].point_id] == {
        "document_id": rest[0].payload["document_id"],
        TEXT_FIELD: rest[0].payload[TEXT_FIELD],
    }
    reopened = make_store(HYBRID_SPEC)  # now an ingest with both lanes is accepted
    assert reopened.spec() is not None and reopened.spec().lanes == ("visual", "text")
