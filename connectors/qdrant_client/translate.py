"""pagerag's engine-neutral store values as qdrant-client models (``qdrant_client.models``).

One small function per kind of value: condition trees
(:mod:`pipeline.retrieve.conditions`), vector roles and layouts
(:mod:`pipeline.retrieve.opening`), query kinds (:mod:`pipeline.retrieve.queries`).
A new condition, vector role or query kind is added to the matching function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qdrant_client import models as qm

from pipeline.retrieve.conditions import Condition as NeutralCondition
from pipeline.retrieve.conditions import HasVector, IsEmpty, Match, MatchAny, Where, pages_where
from pipeline.retrieve.fusion import Fuse
from pipeline.retrieve.opening import Role, VectorLayout
from pipeline.retrieve.queries import OVERSAMPLING, QueryKind, SparseNearest
from pipeline.types import CollectionSpec, PageFilter, SparseVector

__all__ = [
    "NO_HNSW",
    "added_sparse_vector",
    "added_vector",
    "layout_of",
    "page_filter",
    "quantization",
    "query_of",
    "search_params",
    "sparse_layout_of",
    "sparse_params",
    "sparse_vector",
    "to_filter",
    "vector_params",
]

_DATATYPES = {"float16": qm.Datatype.FLOAT16, "float32": qm.Datatype.FLOAT32}
_VECTOR_DATATYPES = {
    "float16": qm.VectorStorageDatatype.FLOAT16,
    "float32": qm.VectorStorageDatatype.FLOAT32,
}
_MAX_SIM = qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM)
# Exact MaxSim: no HNSW graph on any multivector, now or added later.
NO_HNSW = qm.HnswConfigDiff(m=0)


def to_filter(where: Where) -> qm.Filter:
    return qm.Filter(
        must=_conditions(where.must),
        should=_conditions(where.should),
        must_not=_conditions(where.must_not),
    )


def _conditions(conditions: Sequence[NeutralCondition]) -> list[qm.Condition] | None:
    return [_condition(c) for c in conditions] or None


def _condition(condition: NeutralCondition) -> qm.Condition:
    if isinstance(condition, Match):
        return qm.FieldCondition(key=condition.key, match=qm.MatchValue(value=condition.value))
    if isinstance(condition, MatchAny):
        values: Any = list(condition.values)  # all str or all int
        return qm.FieldCondition(key=condition.key, match=qm.MatchAny(any=values))
    if isinstance(condition, HasVector):
        return qm.HasVectorCondition(has_vector=condition.name)
    if isinstance(condition, IsEmpty):
        return qm.IsEmptyCondition(is_empty=qm.PayloadField(key=condition.key))
    return to_filter(condition)


def page_filter(flt: PageFilter | None) -> qm.Filter:
    """A ``PageFilter`` as a Qdrant filter, always restricted to page points."""
    return to_filter(pages_where(flt))


def sparse_params() -> qm.SparseVectorParams:
    """The text lane's sparse vector of a new collection: IDF computed by Qdrant."""
    return qm.SparseVectorParams(modifier=qm.Modifier.IDF)


def added_sparse_vector() -> qm.SparseVectorNameConfig:
    """The text lane's sparse vector added to an existing collection (``create_vector_name``)."""
    return qm.SparseVectorNameConfig(sparse=qm.SparseVectorConfig(modifier=qm.Modifier.IDF))


def sparse_layout_of(params: qm.SparseVectorParams) -> VectorLayout:
    modifier = params.modifier.value if params.modifier is not None else None
    return VectorLayout(None, None, None, sparse=True, modifier=modifier)


def sparse_vector(vector: SparseVector) -> qm.SparseVector:
    return qm.SparseVector(indices=vector.indices.tolist(), values=vector.values.tolist())


def vector_params(spec: CollectionSpec, role: Role) -> qm.VectorParams:
    """A vector of a new collection; pooled vectors are small and scanned by every
    two-stage query, so they stay in RAM whatever ``store.on_disk`` says."""
    return qm.VectorParams(
        size=spec.dim,
        distance=qm.Distance.DOT,
        multivector_config=_MAX_SIM,
        hnsw_config=NO_HNSW,
        datatype=_DATATYPES[spec.datatype],
        on_disk=spec.on_disk if role == "full" else False,
    )


def added_vector(spec: CollectionSpec) -> qm.DenseVectorNameConfig:
    """A pooled vector added to an existing collection (``create_vector_name``)."""
    return qm.DenseVectorNameConfig(
        dense=qm.DenseVectorConfig(
            size=spec.dim,
            distance=qm.Distance.DOT,
            multivector_config=_MAX_SIM,
            datatype=_VECTOR_DATATYPES[spec.datatype],
        )
    )


def layout_of(params: qm.VectorParams) -> VectorLayout:
    config = params.multivector_config
    return VectorLayout(
        size=params.size,
        distance=params.distance.value,
        comparator=config.comparator.value if config is not None else None,
        datatype=params.datatype.value if params.datatype is not None else None,
    )


def quantization(kind: str) -> qm.QuantizationConfig | None:
    """Quantized copies kept in RAM; Qdrant rescores with the stored vectors."""
    if kind == "scalar":
        return qm.ScalarQuantization(
            scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, always_ram=True)
        )
    if kind == "binary":
        return qm.BinaryQuantization(binary=qm.BinaryQuantizationConfig(always_ram=True))
    return None


def search_params(kind: str) -> qm.SearchParams | None:
    """On a quantized collection: rescore with the stored vectors, so scores stay exact
    MaxSim, after oversampling the quantized candidates (as the embedded engine does)."""
    if kind == "none":
        return None
    return qm.SearchParams(
        quantization=qm.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING[kind])
    )


def query_of(query: QueryKind) -> tuple[Any, str | None]:
    """A query kind as ``query_points``/``Prefetch`` arguments: (query, using)."""
    if isinstance(query, Fuse):
        if query.method == "dbsf":
            return qm.FusionQuery(fusion=qm.Fusion.DBSF), None
        return qm.RrfQuery(rrf=qm.Rrf(k=query.k, weights=list(query.weights))), None
    if isinstance(query, SparseNearest):
        return sparse_vector(query.vector), query.using
    # A float16 array's tolist() yields Python floats exactly; pydantic
    # validates plain lists far faster than numpy arrays.
    return query.vectors.tolist(), query.using
