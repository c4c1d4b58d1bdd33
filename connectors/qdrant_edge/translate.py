"""pagerag's engine-neutral store values as qdrant-edge-py objects.

One small function per kind of value: condition trees
(:mod:`pipeline.retrieve.conditions`), vector roles and layouts
(:mod:`pipeline.retrieve.opening`), query kinds (:mod:`pipeline.retrieve.queries`),
page vectors. A new condition, vector role or query kind is added to the
matching function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import qdrant_edge as qe

from pipeline.errors import StoreError
from pipeline.retrieve.conditions import Condition as NeutralCondition
from pipeline.retrieve.conditions import HasVector, IsEmpty, Match, MatchAny, Where
from pipeline.retrieve.fusion import Fuse
from pipeline.retrieve.opening import Role, VectorLayout
from pipeline.retrieve.queries import OVERSAMPLING, QueryKind, SparseNearest
from pipeline.types import CollectionSpec, Float16Array, SparseVector

__all__ = [
    "DATATYPES",
    "NO_HNSW",
    "create_sparse_vector",
    "create_vector",
    "layout_of",
    "named_arrays",
    "quantization_config",
    "query_of",
    "search_params",
    "sparse_layout_of",
    "sparse_params",
    "sparse_vector",
    "to_filter",
    "vector_params",
]

DATATYPES = {
    "float16": qe.VectorStorageDatatype.Float16,
    "float32": qe.VectorStorageDatatype.Float32,
    "uint8": qe.VectorStorageDatatype.Uint8,
}
# m=0 disables the HNSW graph: MaxSim over page multivectors stays exact.
NO_HNSW = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)


def to_filter(where: Where) -> qe.Filter:
    return qe.Filter(
        must=_conditions(where.must),
        should=_conditions(where.should),
        must_not=_conditions(where.must_not),
    )


def _conditions(conditions: Sequence[NeutralCondition]) -> list[Any] | None:
    return [_condition(c) for c in conditions] or None


def _condition(condition: NeutralCondition) -> Any:
    if isinstance(condition, Match):
        return qe.FieldCondition(key=condition.key, match=qe.MatchValue(condition.value))
    if isinstance(condition, MatchAny):
        values: Any = list(condition.values)  # all str or all int
        return qe.FieldCondition(key=condition.key, match=qe.MatchAny(values))
    if isinstance(condition, HasVector):
        return qe.HasVectorCondition(condition.name)
    if isinstance(condition, IsEmpty):
        return qe.IsEmptyCondition(condition.key)
    return to_filter(condition)


def _max_sim() -> qe.MultiVectorConfig:
    return qe.MultiVectorConfig(comparator=qe.MultiVectorComparator.MaxSim)


def vector_params(spec: CollectionSpec, role: Role) -> qe.EdgeVectorParams:
    """A multivector of the shard's config (``role`` full or pooled); every role follows
    ``store.on_disk``."""
    return qe.EdgeVectorParams(
        size=spec.dim,
        distance=qe.Distance.Dot,
        multivector_config=_max_sim(),
        datatype=DATATYPES[spec.datatype],
        hnsw_config=NO_HNSW,
        memory=qe.Memory.Cold if spec.on_disk else None,
    )


def create_vector(name: str, spec: CollectionSpec) -> qe.UpdateOperation:
    """Add a pooled multivector to a live shard (it inherits the global "no HNSW")."""
    return qe.UpdateOperation.create_dense_vector(
        name, spec.dim, qe.Distance.Dot, _max_sim(), DATATYPES[spec.datatype]
    )


def sparse_params() -> qe.EdgeSparseVectorParams:
    """The text lane's sparse vector: BM25 term weights, IDF computed by the engine."""
    return qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)


def create_sparse_vector(name: str) -> qe.UpdateOperation:
    """Add the text lane's sparse vector to a live shard."""
    return qe.UpdateOperation.create_sparse_vector(name, qe.Modifier.Idf)


def sparse_layout_of(params: Mapping[str, Any]) -> VectorLayout:
    """A sparse vector's entry in the shard's ``edge_config.json``."""
    modifier = params.get("modifier")
    return VectorLayout(
        None, None, None, sparse=True, modifier=str(modifier).lower() if modifier else None
    )


def sparse_vector(vector: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(vector.indices.tolist(), vector.values.tolist())


def layout_of(params: Mapping[str, Any]) -> VectorLayout:
    """A vector's entry in the shard's ``edge_config.json``."""
    return VectorLayout(
        size=params.get("size"),
        distance=params.get("distance"),
        comparator=(params.get("multivector_config") or {}).get("comparator"),
        datatype=params.get("datatype"),
    )


def quantization_config(
    quantization: str,
) -> qe.ScalarQuantizationConfig | qe.BinaryQuantizationConfig | None:
    # Quantized codes stay in RAM (Pinned); originals follow store.on_disk.
    if quantization == "scalar":
        return qe.ScalarQuantizationConfig(
            qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned
        )
    if quantization == "binary":
        return qe.BinaryQuantizationConfig(memory=qe.Memory.Pinned)
    if quantization == "none":
        return None
    raise StoreError(
        f"store.quantization {quantization!r} is not supported; use 'none', 'scalar' or 'binary'"
    )


def search_params(quantization: str, oversampling: float | None) -> qe.SearchParams | None:
    """On a quantized collection: oversample the quantized candidates, then rescore them
    with the original vectors, so scores stay exact MaxSim."""
    if quantization == "none":
        return None
    factor = oversampling or OVERSAMPLING[quantization]
    return qe.SearchParams(
        quantization=qe.QuantizationSearchParams(rescore=True, oversampling=factor)
    )


def query_of(query: QueryKind) -> Any:
    """A query kind as the engine's scoring query (``qe.Query`` or ``qe.Fusion``)."""
    if isinstance(query, Fuse):
        if query.method == "dbsf":
            return qe.Fusion.Dbsf()
        return qe.Fusion.Rrf(k=query.k, weights=list(query.weights))
    if isinstance(query, SparseNearest):
        return qe.Query.Nearest(sparse_vector(query.vector), using=query.using)
    vectors = query.vectors
    if vectors.dtype not in (np.float16, np.float32):
        vectors = vectors.astype(np.float32)
    # The binding takes a contiguous float16/float32 array, whatever its stub says.
    array: Any = np.ascontiguousarray(vectors)
    return qe.Query.Nearest(array, using=query.using)


def named_arrays(vectors: Mapping[str, Float16Array]) -> dict[str, Any]:
    """Named vectors in the form the engine ingests fastest: nested Python lists.

    Counter-intuitive but measured (qdrant-edge-py 0.9.0, 1030×128 page):
    building a ``Point`` from a numpy array takes ~7 ms (float16 or float32;
    the binding reads it element by element), from ``.tolist()`` ~4 ms
    including the conversion. The upsert itself is ~2.7 ms either way. The
    lists live only until the update call returns.
    """
    return {name: np.asarray(vec, dtype=np.float16).tolist() for name, vec in vectors.items()}
