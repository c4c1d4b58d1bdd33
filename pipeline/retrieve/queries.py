"""What one ``PageStore.search`` call asks the engine, checked and engine-neutral.

Why this exists: both adapters take the same arguments (a query multivector,
``k``, a filter, the vector to rank by and first stages to prefetch), refuse
the same mistakes and send Qdrant the same query — first stages whose union
is reranked by exact MaxSim — in two libraries' spellings.
:func:`plan_query` makes every decision once and returns a
:class:`QueryRequest`; each adapter turns it into its library's request with
one small function per query kind.

Where a new lane plugs in: a new query kind (a sparse text query, a fusion of
stages) is a new frozen dataclass beside :class:`Nearest`, added to
:data:`QueryKind`, built by the planner, and translated by each adapter's
query function — the request shape (stages, then a final ranking) stays.

The lanes: :func:`plan_text` is one sparse query; :func:`plan_hybrid` fuses
two stages (the visual lane — exact, or itself two-stage — and the text lane)
in one request, and asks for the lanes alone in the same batch so each fused
page's lane ranks can be told (:class:`HybridRequest`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import QueryError
from pipeline.retrieve.conditions import Where, pages_where
from pipeline.retrieve.fusion import Fuse
from pipeline.types import TEXT_VECTOR, CollectionSpec, Float16Array, PageFilter, SparseVector

__all__ = [
    "OVERSAMPLING",
    "Fuse",
    "HybridRequest",
    "Nearest",
    "QueryKind",
    "QueryRequest",
    "SparseNearest",
    "Stage",
    "plan_hybrid",
    "plan_query",
    "plan_text",
]

# Candidates rescored per result on a quantized collection: binary codes rank
# MaxSim far more coarsely than int8, so they need a wider net.
OVERSAMPLING = {"scalar": 2.0, "binary": 4.0}


@dataclass(frozen=True, eq=False)
class Nearest:
    """Pages nearest to the query's token vectors by MaxSim on the multivector ``using``."""

    vectors: npt.NDArray[Any]  # (tokens, dim), as given (float16 from the embedder)
    using: str


@dataclass(frozen=True, eq=False)
class SparseNearest:
    """Pages by dot product of the query's sparse vector with the sparse vector ``using``
    (the text lane: BM25, with the IDF the engine computes over the collection)."""

    vector: SparseVector
    using: str


QueryKind = Nearest | SparseNearest | Fuse


@dataclass(frozen=True)
class Stage:
    """A first stage: the ``limit`` best pages by ``query``, reranked by the request's query.

    A stage may have first stages of its own (``prefetch``): a hybrid search's
    visual lane is a two-stage search (pooled candidates reranked by exact
    MaxSim) nested under the fusion.
    """

    query: QueryKind
    limit: int
    prefetch: tuple[Stage, ...] = ()


@dataclass(frozen=True)
class QueryRequest:
    """The top ``limit`` pages matching ``where`` by ``query``, over the union of ``prefetch``
    (every page when there is none). Payloads come back without the page image, or not at
    all without ``payload`` (a lane run alone only for its ranks)."""

    query: QueryKind
    limit: int
    where: Where
    prefetch: tuple[Stage, ...] = ()
    payload: bool = True


def plan_query(
    spec: CollectionSpec,
    vector_names: Collection[str],
    query: Float16Array,
    *,
    k: int,
    filter: PageFilter | None = None,
    using: str | None = None,
    prefetch: Sequence[tuple[str, int]] = (),
) -> QueryRequest:
    """The request for one search of the collection ``spec`` (vectors ``vector_names``).

    ``using`` defaults to the full vector. A prefetch limit below ``k`` is
    raised to ``k``, so a two-stage search never returns fewer pages than an
    exact one. The filter applies to every stage. Raises
    :class:`~pipeline.errors.QueryError` naming what is wrong.
    """
    _check_k(k)
    _require_lane(spec, "visual")
    vectors = np.asarray(query)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] != spec.dim:
        raise QueryError(
            f"a query must be a non-empty (tokens, {spec.dim}) array of token vectors, "
            f"got shape {vectors.shape}"
        )
    target = using or spec.full_vector
    for name in (target, *(name for name, _ in prefetch)):
        if name not in vector_names:
            known = ", ".join(repr(n) for n in sorted(vector_names))
            raise QueryError(
                f"unknown vector {name!r}: collection {spec.name!r} has no vector {name!r} "
                f"(it has {known})"
            )
    for name, limit in prefetch:
        if limit < 1:
            raise QueryError(f"prefetch limit for {name!r} must be at least 1, got {limit}")
    return QueryRequest(
        query=Nearest(vectors, target),
        limit=k,
        where=pages_where(filter),
        prefetch=tuple(Stage(Nearest(vectors, name), max(limit, k)) for name, limit in prefetch),
    )


@dataclass(frozen=True)
class HybridRequest:
    """A hybrid search as one batch: the ``fused`` request (its stages: visual, text),
    and the lanes alone, for each fused page's lane ranks: ``text`` always (a sparse
    pass is cheap), ``visual`` only when the fusion's scores cannot be inverted (DBSF).
    Without a text query (no terms) ``fused`` is the visual lane alone and ``text`` None.
    """

    fused: QueryRequest
    fusion: Fuse | None
    text: QueryRequest | None = None
    visual: QueryRequest | None = None

    @property
    def batch(self) -> tuple[QueryRequest, ...]:
        """The requests to run together, ``fused`` first."""
        return tuple(r for r in (self.fused, self.text, self.visual) if r is not None)


def plan_text(
    spec: CollectionSpec, query: SparseVector, *, k: int, filter: PageFilter | None = None
) -> QueryRequest:
    """The text lane alone: pages by BM25 of ``query`` against ``TEXT_VECTOR``.

    Raises :class:`~pipeline.errors.QueryError` naming the fix when the
    collection has no text lane.
    """
    _check_k(k)
    _require_lane(spec, "text")
    return QueryRequest(SparseNearest(query, TEXT_VECTOR), k, pages_where(filter))


def plan_hybrid(
    spec: CollectionSpec,
    vector_names: Collection[str],
    visual: Float16Array,
    text: SparseVector,
    *,
    k: int,
    fusion: Fuse,
    lane_k: int,
    filter: PageFilter | None = None,
    prefetch: Sequence[tuple[str, int]] = (),
) -> HybridRequest:
    """Both lanes fused: each hands its ``max(lane_k, k)`` best pages to ``fusion``.

    The visual stage is exact MaxSim on the full vector over every page, or
    with ``prefetch`` a two-stage search nested under the fusion (its pooled
    stages raised to the lane's limit); the text stage is :func:`plan_text`'s.
    The filter applies to every stage. An empty ``text`` plans the visual lane
    alone. Raises :class:`~pipeline.errors.QueryError` naming the fix.
    """
    if len(fusion.weights) != 2 or any(w <= 0 for w in fusion.weights):
        raise QueryError(f"a hybrid fusion needs two positive lane weights, got {fusion.weights}")
    _require_lane(spec, "text")
    if lane_k < 1:
        raise QueryError(f"lane_k must be at least 1, got {lane_k}")
    limit = max(lane_k, k)
    lane = plan_query(
        spec, vector_names, visual, k=limit, filter=filter, prefetch=prefetch
    )  # checks k, the query and the visual lane
    if not len(text):
        return HybridRequest(replace(lane, limit=k), None)
    where = lane.where
    visual_stage = Stage(lane.query, limit, lane.prefetch)
    text_stage = Stage(SparseNearest(text, TEXT_VECTOR), limit)
    fused = QueryRequest(fusion, k, where, (visual_stage, text_stage))
    text_alone = QueryRequest(text_stage.query, limit, where, payload=False)
    # RRF scores give each page's visual rank back (fusion.rrf_rank); DBSF's do not.
    visual_alone = replace(lane, payload=False) if fusion.method == "dbsf" else None
    return HybridRequest(fused, fusion, text_alone, visual_alone)


def _check_k(k: int) -> None:
    if k < 1:
        raise QueryError(f"k must be at least 1, got {k}")


def _require_lane(spec: CollectionSpec, lane: str) -> None:
    if lane in spec.lanes:
        return
    flag = "--text" if lane == "text" else "--visual"
    raise QueryError(
        f"collection {spec.name!r} has no {lane} lane (it has {list(spec.lanes)}): run "
        f"`pagerag reindex {flag}` to add it, or search with a mode that uses its lanes"
    )
