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
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import QueryError
from pipeline.retrieve.conditions import Where, pages_where
from pipeline.retrieve.fusion import Fuse
from pipeline.types import CollectionSpec, Float16Array, PageFilter, SparseVector

__all__ = [
    "OVERSAMPLING",
    "Fuse",
    "Nearest",
    "QueryKind",
    "QueryRequest",
    "SparseNearest",
    "Stage",
    "plan_query",
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
    (every page when there is none). Payloads come back without the page image."""

    query: QueryKind
    limit: int
    where: Where
    prefetch: tuple[Stage, ...] = ()


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
    if k < 1:
        raise QueryError(f"k must be at least 1, got {k}")
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
