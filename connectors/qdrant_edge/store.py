"""``EdgePageStore``: pages written, read and searched in an embedded Qdrant Edge shard.

The bookkeeping (documents, marks, deletes, prunes, counts, search checks)
is :class:`~pipeline.retrieve.points.PointStore`'s; this class holds the open
shard and its locks, supplies the engine calls, and leaves creating, loading
and evolving the shard to :class:`~connectors.qdrant_edge.collection.ShardDirectory`.
"""

from __future__ import annotations

import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import qdrant_edge as qe
from filelock import FileLock

from connectors.qdrant_edge.collection import ENGINE, ShardDirectory
from connectors.qdrant_edge.translate import (
    named_arrays,
    query_of,
    search_params,
    sparse_vector,
    to_filter,
)
from pipeline.errors import QueryError, StoreError
from pipeline.retrieve.conditions import Where
from pipeline.retrieve.points import Fields, PointStore, Row, image_bytes
from pipeline.retrieve.queries import Nearest, QueryRequest, Stage
from pipeline.retrieve.store import IMAGE_FIELD
from pipeline.types import (
    TEXT_VECTOR,
    CollectionSpec,
    Float16Array,
    PagePoint,
    ScoredPage,
    SparseVector,
    StoreStats,
)

__all__ = ["EdgePageStore"]

_VECTOR_BATCH = 32  # retrieve() returns Python lists: bound the transient memory

T = TypeVar("T")
P = ParamSpec("P")


class EdgePageStore(PointStore):
    """:class:`pipeline.retrieve.store.PageStore` on an embedded Qdrant Edge shard.

    The constructor only records where the data lives; :meth:`open` takes the
    directory lock and loads or creates the shard.

    ``indexing_threshold_kb`` is the optimizer's segment size (KB of vectors)
    above which :meth:`optimize` rebuilds a segment (and applies scalar
    quantization); ``None`` keeps the engine default (~40 ColPali pages).
    ``oversampling`` overrides how many candidates per result a quantized
    search rescores. ``optimize_on_close`` runs :meth:`optimize` when a
    quantized collection was written to.
    """

    def __init__(
        self,
        path: Path | str,
        collection: str = "pagerag",
        *,
        indexing_threshold_kb: int | None = None,
        oversampling: float | None = None,
        optimize_on_close: bool = True,
    ) -> None:
        self._path = Path(path)
        self._collection = collection
        self._files = ShardDirectory(
            self._path, collection, indexing_threshold_kb=indexing_threshold_kb
        )
        self._oversampling = oversampling
        self._optimize_on_close = optimize_on_close
        self._lock = threading.RLock()
        self._shard: qe.EdgeShard | None = None
        self._file_lock: FileLock | None = None
        self._spec: CollectionSpec | None = None  # as recorded in the manifest
        self._vector_names: frozenset[str] = frozenset()
        self._sparse_names: frozenset[str] = frozenset()  # the text lane's, once it exists
        self._dirty = False  # written since the last optimize()

    @property
    def shard_dir(self) -> Path:
        """The directory of this collection's shard."""
        return self._files.shard_dir

    @property
    def lock_path(self) -> Path:
        return self._files.lock_path

    def __repr__(self) -> str:
        state = "open" if self._shard is not None else "closed"
        return f"EdgePageStore({str(self._path)!r}, {self._collection!r}, {state})"

    # -------------------------------------------------------------- lifecycle

    def open(self, spec: CollectionSpec, *, create: bool = True) -> None:
        """Create the shard, or load it and validate it against ``spec``.

        On an existing collection, ``spec`` may *add* pooled vectors (they are
        created, and pages stored before lack them until reindexed) and change
        the quantization (applied by the next :meth:`optimize`). Datatype and
        on-disk placement are fixed at creation; a different request is logged
        and the recorded value kept.
        """
        with self._lock:
            if self._shard is not None:
                self.close()
            shard, file_lock, recorded, self._dirty = self._files.open(spec, create=create)
            self._shard, self._file_lock, self._spec = shard, file_lock, recorded
            self._vector_names = frozenset((recorded.full_vector, *recorded.pooled))
            self._sparse_names = frozenset({TEXT_VECTOR} if recorded.has_text else ())

    def close(self) -> None:
        """Optimize if needed, close the shard and release the directory lock.

        Idempotent. A failed optimize is logged, never blocks the close: the
        data is already durable, only the quantized copy waits for next time.
        """
        with self._lock:
            shard, file_lock = self._shard, self._file_lock
            self._shard, self._file_lock = None, None
            quantized = self._spec is not None and self._spec.quantization != "none"
            optimize = self._dirty and self._optimize_on_close and quantized
            self._dirty = False
            self._files.release(shard, file_lock, optimize=optimize)

    def __enter__(self) -> EdgePageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spec(self) -> CollectionSpec | None:
        """The recorded spec: cached while open, else read with a short-lived load.

        The engine cannot open a shard read-only, so reading a closed store
        briefly takes the directory lock (``StoreInUseError`` if another
        process holds it).
        """
        with self._lock:
            if self._spec is not None and self._shard is not None:
                return self._spec
            return self._files.read_spec()

    def optimize(self) -> bool:
        """Run the engine's segment optimizers now (blocking).

        Needed for scalar quantization (and a quantization change) to take
        effect; also merges small segments. Returns whether anything changed.
        """
        changed = self._call("optimizing", qe.EdgeShard.optimize)
        self._dirty = False
        return changed

    def stats(self) -> StoreStats:
        spec = self._open_spec()
        documents, pages = self._counts()
        return StoreStats(
            collection=self._collection,
            model=spec.model,
            documents=documents,
            pages=pages,
            bytes_on_disk=_disk_usage(self.shard_dir),
            engine=ENGINE,
            location=str(self._path),
        )

    # ------------------------------------------------------- writes and vectors

    def upsert_pages(self, points: Sequence[PagePoint]) -> None:
        """Upsert a batch in one engine update (see ``named_arrays`` for the format)."""
        if not points:
            return
        self._open_spec()
        unknown = {name for p in points for name in p.vectors} - self._vector_names
        unknown |= {name for p in points for name in p.sparse} - self._sparse_names
        if unknown:
            known = sorted(self._vector_names | self._sparse_names)
            raise StoreError(
                f"collection {self._collection!r} in {self._path} has no vectors named "
                f"{sorted(unknown)} (it has {known}); open it with a spec whose pooled vectors "
                "and lanes include them"
            )
        edge_points = [
            qe.Point(
                id=p.point_id,
                vector={**named_arrays(p.vectors), **_sparse_named(p.sparse)},
                payload=dict(p.payload),
            )
            for p in points
        ]
        self._update("storing pages", qe.UpdateOperation.upsert_points(edge_points))

    def flush(self) -> None:
        self._call("flushing", qe.EdgeShard.flush)

    def page_image(self, point_id: str) -> bytes | None:
        action = f"reading the image of page {point_id}"
        payload = self._retrieve([point_id], (IMAGE_FIELD,), action).get(point_id)
        return image_bytes(payload, point_id, self._collection)

    def page_vectors(
        self, point_ids: Iterable[str], using: str | None = None
    ) -> dict[str, Float16Array]:
        """Stored vectors as float16 arrays; unknown ids are left out."""
        spec = self._open_spec()
        name = using or spec.full_vector
        if name not in self._vector_names:
            raise QueryError(
                f"collection {self._collection!r} has no vector {name!r}; "
                f"it has {sorted(self._vector_names)}"
            )
        ids: list[Any] = [i for i in point_ids if _is_uuid(i)]
        out: dict[str, Float16Array] = {}
        for start in range(0, len(ids), _VECTOR_BATCH):
            chunk = ids[start : start + _VECTOR_BATCH]
            records = self._call("reading vectors", qe.EdgeShard.retrieve, chunk, False, [name])
            for rec in records:
                vectors = rec.vector if isinstance(rec.vector, dict) else {}
                vec = vectors.get(name)
                if vec is not None:
                    out[str(rec.id)] = np.asarray(vec, dtype=np.float16)
        return out

    # ------------------------------------------ in-place reindex (pipeline.retrieve.reindex)

    def add_vectors(self, names: Sequence[str]) -> None:
        """Create pooled multivectors (not yet in the manifest); existing names are kept."""
        with self._lock:
            shard, spec = self._opened()
            self._files.add_vectors(shard, spec, names)
            # Usable for writes and reads now; listed in the manifest only by record_pooled.
            self._vector_names = self._vector_names | set(names)
            self._dirty = True

    def drop_vectors(self, names: Sequence[str]) -> None:
        """Delete named vectors no manifest entry uses, from every point; absent ones are
        skipped (safe to repeat)."""
        with self._lock:
            shard, spec = self._opened()
            self._files.drop_vectors(shard, spec, names)
            self._vector_names = self._vector_names - set(names)
            self._dirty = True

    def add_text_vector(self) -> None:
        """Create the text lane's sparse vector (not yet in the manifest); safe to repeat."""
        with self._lock:
            shard, _ = self._opened()
            try:
                self._files.add_text_vector(shard)
            except Exception as exc:
                raise StoreError(
                    f"qdrant-edge could not add the text lane in {self.shard_dir}: {exc}"
                ) from exc
            self._sparse_names = self._sparse_names | {TEXT_VECTOR}
            self._dirty = True

    def update_page_text(self, pages: Mapping[str, tuple[Mapping[str, Any], SparseVector]]) -> None:
        """Set payload fields and the text vector per page (an empty vector removes it)."""
        if TEXT_VECTOR not in self._sparse_names:
            self._open_spec()
            raise StoreError(
                f"collection {self._collection!r} has no text lane vector: call add_text_vector()"
            )
        operations = [
            qe.UpdateOperation.set_payload([point_id], dict(fields))
            for point_id, (fields, _) in pages.items()
        ]
        filled = [
            qe.PointVectors(id=point_id, vector=_sparse_named({TEXT_VECTOR: vector}))
            for point_id, (_, vector) in pages.items()
            if len(vector)
        ]
        if filled:
            operations.append(qe.UpdateOperation.update_vectors(filled))
        empty: list[Any] = [point_id for point_id, (_, vector) in pages.items() if not len(vector)]
        if empty:
            operations.append(qe.UpdateOperation.delete_vectors(empty, [TEXT_VECTOR]))
        with self._lock:
            for operation in operations:
                self._update("storing page text", operation)

    def update_vectors(self, vectors: Mapping[str, Mapping[str, Float16Array]]) -> None:
        """Set named vectors of existing points; payloads and other vectors stay."""
        points = [
            qe.PointVectors(id=point_id, vector=named_arrays(named))
            for point_id, named in vectors.items()
        ]
        if points:
            self._update("updating vectors", qe.UpdateOperation.update_vectors(points))

    # ------------------------------------------ engine calls (pipeline.retrieve.points)

    def _open_spec(self) -> CollectionSpec:
        return self._opened()[1]

    def _searchable(self) -> frozenset[str]:
        return self._vector_names

    def _exclusive(self) -> AbstractContextManager[Any]:
        return self._lock

    def _count(self, where: Where) -> int:
        request = qe.CountRequest(exact=True, filter=to_filter(where))
        return self._call("counting points", qe.EdgeShard.count, request)

    def _scroll_page(
        self, where: Where, *, limit: int, offset: Any, fields: Fields
    ) -> tuple[list[Row], Any]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=to_filter(where),
            with_payload=_selector(fields),
            with_vector=False,
        )
        records, next_offset = self._call("listing points", qe.EdgeShard.scroll, request)
        return [(str(rec.id), dict(rec.payload or {})) for rec in records], next_offset

    def _retrieve(
        self, point_ids: Sequence[str], fields: Fields, action: str
    ) -> dict[str, dict[str, Any]]:
        # The engine raises ValueError on a malformed id; for lookups, unknown.
        ids: list[Any] = [i for i in point_ids if _is_uuid(i)]
        if not ids:
            self._open_spec()
            return {}
        records = self._call(action, qe.EdgeShard.retrieve, ids, _selector(fields), False)
        return {str(rec.id): dict(rec.payload or {}) for rec in records}

    def _put_vectorless(self, point_id: str, payload: Mapping[str, Any], action: str) -> None:
        point = qe.Point(id=point_id, vector={}, payload=dict(payload))
        self._apply(action, qe.UpdateOperation.upsert_points([point]))

    def _delete(self, where: Where, action: str) -> None:
        self._apply(action, qe.UpdateOperation.delete_points_by_filter(to_filter(where)))

    def _set_payload(self, where: Where, fields: Mapping[str, Any], action: str) -> None:
        self._apply(
            action, qe.UpdateOperation.set_payload_by_filter(to_filter(where), dict(fields))
        )

    def _record(self, spec: CollectionSpec) -> None:
        with self._lock:
            shard, _ = self._opened()
            self._files.write_manifest(shard, spec)
            self._spec = spec

    def _query_batch(self, requests: Sequence[QueryRequest]) -> list[list[ScoredPage]]:
        params = search_params(self._open_spec().quantization, self._oversampling)
        queries = [self._request(request, params) for request in requests]
        if len(queries) == 1:
            batches = [self._call("searching", qe.EdgeShard.query, queries[0])]
        else:
            batch = qe.QueryBatchRequest(queries)
            batches = self._call("searching", qe.EdgeShard.query_batch, batch)
        return [
            [
                ScoredPage(
                    point_id=str(hit.id),
                    score=float(hit.score),
                    payload={k: v for k, v in (hit.payload or {}).items() if k != IMAGE_FIELD},
                )
                for hit in hits
            ]
            for hits in batches
        ]

    def _request(self, request: QueryRequest, params: qe.SearchParams | None) -> qe.QueryRequest:
        """One planned request; the filter on every stage, quantization params on dense ones."""
        flt = to_filter(request.where)

        def prefetch(stage: Stage) -> qe.Prefetch:
            return qe.Prefetch(
                limit=stage.limit,
                query=query_of(stage.query),
                prefetches=[prefetch(inner) for inner in stage.prefetch] or None,
                filter=flt,
                params=params if isinstance(stage.query, Nearest) else None,
            )

        return qe.QueryRequest(
            limit=request.limit,
            query=query_of(request.query),
            prefetches=[prefetch(stage) for stage in request.prefetch] or None,
            filter=flt,
            params=params if isinstance(request.query, Nearest) else None,
            with_payload=qe.PayloadSelector.Exclude([IMAGE_FIELD]) if request.payload else False,
            with_vector=False,
        )

    # ------------------------------------------------------- call internals

    def _opened(self) -> tuple[qe.EdgeShard, CollectionSpec]:
        shard, spec = self._shard, self._spec
        if shard is None or spec is None:
            raise StoreError(
                f"the page store {self.shard_dir} is closed; call open(spec) before using it"
            )
        return shard, spec

    def _call(
        self,
        action: str,
        method: Callable[Concatenate[qe.EdgeShard, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``method(shard, ...)`` under the lock, engine errors turned into StoreError."""
        with self._lock:
            shard, _ = self._opened()
            try:
                return method(shard, *args, **kwargs)
            except Exception as exc:
                raise StoreError(
                    f"qdrant-edge failed while {action} in {self.shard_dir}: {exc}"
                ) from exc

    def _update(self, action: str, operation: qe.UpdateOperation) -> None:
        self._call(action, qe.EdgeShard.update, operation)
        self._dirty = True

    def _apply(self, action: str, operation: qe.UpdateOperation) -> None:
        """One update made durable before returning (marks, deletes, payload changes)."""
        with self._lock:
            self._update(action, operation)
            self.flush()


def _sparse_named(vectors: Mapping[str, SparseVector]) -> dict[str, Any]:
    """The non-empty sparse vectors by name (an empty one is not stored)."""
    return {name: sparse_vector(vec) for name, vec in vectors.items() if len(vec)}


def _selector(fields: Fields) -> bool | qe.PayloadSelector:
    return fields if isinstance(fields, bool) else qe.PayloadSelector.Include(list(fields))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _disk_usage(root: Path) -> int:
    """Bytes allocated under ``root``, like ``du``.

    The engine preallocates sparse 32 MiB mmap chunks, so apparent file sizes
    overstate a small store by orders of magnitude; allocated blocks do not.
    """
    total = 0
    for path in root.rglob("*"):
        try:
            st = path.lstat()
        except OSError:  # removed by the optimizer meanwhile
            continue
        if stat.S_ISREG(st.st_mode):
            blocks = getattr(st, "st_blocks", None)
            total += blocks * 512 if blocks is not None else st.st_size
    return total
