"""``ClientPageStore``: pages written, read and searched through qdrant-client.

The bookkeeping (documents, marks, deletes, prunes, counts, search checks)
is :class:`~pipeline.retrieve.points.PointStore`'s; this class supplies its
engine calls, the upserts (batched by count and request size, sent in
parallel) and the collection's lifecycle (:mod:`.collection`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from connectors.qdrant_client.collection import Collections
from connectors.qdrant_client.connection import Connection
from connectors.qdrant_client.translate import query_of, search_params, sparse_vector, to_filter
from pipeline.config import StoreConfig
from pipeline.errors import StoreError
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

__all__ = ["ClientPageStore"]

_UPDATE_CHUNK = 64  # pages per update_vectors request
# Ids per retrieve call in page_vectors: one page is ~130k floats on the wire.
_RETRIEVE_CHUNK = 16
# Estimated bytes per upsert request, under Qdrant's default 32 MB request limit.
_MAX_REQUEST_BYTES = 24 * 2**20


class ClientPageStore(PointStore):
    """A :class:`~pipeline.retrieve.store.PageStore` backed by ``qdrant_client.QdrantClient``.

    Construction is cheap and never connects: the client is created on first
    use. Pass ``client`` to share one (e.g. one ``:memory:`` client between
    two stores in a test); a shared client is not closed by :meth:`close`.

    ``upsert_parallel`` bounds how many upsert batches are in flight at once
    against a server (the first batch always goes alone, so the client's
    lazily built gRPC channel is created by one thread). ``retry_backoff_s`` is
    the first retry delay, doubled on each retry.
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        client: QdrantClient | None = None,
        upsert_parallel: int | None = None,
        retry_backoff_s: float = 1.0,
    ) -> None:
        self._config = config
        self._conn = Connection(config, client, retry_backoff_s=retry_backoff_s)
        self._collections = Collections(self._conn)
        self._spec: CollectionSpec | None = None
        self._text_ready = False  # the text lane's sparse vector exists (add_text_vector)
        self._upsert_parallel = upsert_parallel

    @property
    def _client(self) -> QdrantClient | None:
        """The client in use; None until the first call made one."""
        return self._conn.client

    def _make_client(self) -> QdrantClient:
        """A new client for this store's config (what its first call makes)."""
        return self._conn.make_client()

    @property
    def is_local(self) -> bool:
        """True for qdrant-client's in-process engine (``:memory:`` or ``path=``)."""
        return self._conn.is_local

    # ------------------------------------------------------------------ lifecycle

    def open(self, spec: CollectionSpec, *, create: bool = True) -> None:
        """Create the collection, or validate (and evolve) an existing one against ``spec``.

        An existing collection must have the same model, full vector name,
        dimension, distance and comparator. Changes Qdrant can apply in place
        are applied, as the embedded engine does: missing pooled vectors are
        added (server 1.18+) and the quantization is switched.
        """
        self._spec = self._collections.open(spec, create=create)
        self._text_ready = self._spec.has_text

    def spec(self) -> CollectionSpec | None:
        """The spec recorded in the collection's manifest point, or None if absent."""
        name = self._spec.name if self._spec is not None else self._config.collection
        return self._collections.recorded(name)

    def flush(self) -> None:
        """No-op: every write already waited until Qdrant applied it."""

    def stats(self) -> StoreStats:
        spec = self._open_spec()
        documents, pages = self._counts()
        manifest = self._collections.manifest(spec.name)
        return StoreStats(
            collection=spec.name,
            model=str(manifest["model"]) if manifest else None,
            documents=documents,
            pages=pages,
            bytes_on_disk=None,
            engine=self._conn.engine_name,
            location=self._conn.location,
        )

    def close(self) -> None:
        """Close the client if this store created it (a shared client stays open)."""
        self._conn.close()

    # ------------------------------------------------------------------ writes

    def upsert_pages(self, points: Sequence[PagePoint]) -> None:
        """Upsert in batches (count- and size-bounded), each waited for and retried."""
        spec = self._open_spec()
        if not points:
            return
        batches = self._batches(points)

        text = self._text_ready or spec.has_text

        def send(batch: Sequence[PagePoint]) -> None:
            structs = [_point_struct(p, spec, text=text) for p in batch]
            self._conn.call(
                f"upserting {len(structs)} pages into {spec.name!r}",
                lambda c: c.upsert(spec.name, points=structs, wait=True),
                retry=True,
            )

        send(batches[0])
        parallel = self._upsert_parallel or (1 if self.is_local else 4)
        rest = batches[1:]
        if parallel <= 1 or len(rest) <= 1:
            for batch in rest:
                send(batch)
            return
        with ThreadPoolExecutor(max_workers=min(parallel, len(rest))) as pool:
            # list() re-raises the first failure (a StoreError) after all settle.
            list(pool.map(send, rest))

    def _batches(self, points: Sequence[PagePoint]) -> list[Sequence[PagePoint]]:
        """Split into at most ``store.upsert_batch`` points and ~``_MAX_REQUEST_BYTES`` each.

        Qdrant refuses requests above ``service.max_request_size_mb`` (32 MB by
        default). A page is ~0.5 MB of floats on gRPC but ~2.5 MB as JSON, plus
        its base64 JPEG, so a count alone does not bound a request.
        """
        grpc_wire = self._config.prefer_grpc and not self.is_local
        per_float = 5 if grpc_wire else 18
        batches: list[Sequence[PagePoint]] = []
        start, size = 0, 0
        for i, point in enumerate(points):
            floats = sum(int(v.size) for v in point.vectors.values())
            floats += sum(2 * len(v) for v in point.sparse.values())
            image = point.payload.get(IMAGE_FIELD)
            cost = floats * per_float + (len(image) if isinstance(image, str) else 0) + 1024
            if i > start and (
                i - start >= self._config.upsert_batch or size + cost > _MAX_REQUEST_BYTES
            ):
                batches.append(points[start:i])
                start, size = i, 0
            size += cost
        batches.append(points[start:])
        return batches

    # ------------------------------------------------------------------ reads

    def page_image(self, point_id: str) -> bytes | None:
        spec = self._open_spec()
        records = self._conn.call(  # not retried: a person is waiting
            f"reading the image of page {point_id}",
            lambda c: c.retrieve(
                spec.name,
                ids=[point_id],
                with_payload=qm.PayloadSelectorInclude(include=[IMAGE_FIELD]),
            ),
        )
        return image_bytes(records[0].payload if records else None, point_id, spec.name)

    def page_vectors(
        self, point_ids: Iterable[str], using: str | None = None
    ) -> dict[str, Float16Array]:
        spec = self._open_spec()
        name = using or spec.full_vector
        ids = list(point_ids)
        out: dict[str, Float16Array] = {}
        for start in range(0, len(ids), _RETRIEVE_CHUNK):
            chunk = ids[start : start + _RETRIEVE_CHUNK]
            records = self._conn.call(
                f"reading vectors of {len(chunk)} pages",
                lambda c, ch=chunk: c.retrieve(  # type: ignore[misc]
                    spec.name, ids=ch, with_payload=False, with_vectors=[name]
                ),
                retry=True,
            )
            for record in records:
                vectors = record.vector
                if isinstance(vectors, Mapping) and name in vectors:
                    # Local mode hands back float64 lists, the server float32: back to float16.
                    out[str(record.id)] = np.asarray(vectors[name], dtype=np.float16)
        return out

    # ------------------------------------------ in-place reindex (pipeline.retrieve.reindex)

    def add_vectors(self, names: Sequence[str]) -> None:
        """Create pooled multivectors (not yet in the manifest); existing names are kept."""
        self._collections.add_vectors(self._open_spec(), names)

    def drop_vectors(self, names: Sequence[str]) -> None:
        """Delete named vectors no manifest entry uses, from every point; absent ones are
        skipped (safe to repeat)."""
        self._collections.drop_vectors(self._open_spec(), names)

    def add_text_vector(self) -> None:
        """Create the text lane's sparse vector (not yet in the manifest); safe to repeat."""
        self._collections.add_text_vector(self._open_spec().name)
        self._text_ready = True

    def update_page_text(self, pages: Mapping[str, tuple[Mapping[str, Any], SparseVector]]) -> None:
        """Set payload fields and the text vector per page (an empty vector removes it),
        in one batch request per chunk of pages."""
        name = self._open_spec().name
        if not self._text_ready:
            raise StoreError(f"collection {name!r} has no text lane vector: call add_text_vector()")
        items = list(pages.items())
        for start in range(0, len(items), _UPDATE_CHUNK):
            chunk = items[start : start + _UPDATE_CHUNK]
            operations = _text_operations(chunk)
            self._conn.call(
                f"storing the text of {len(chunk)} pages in {name!r}",
                lambda c, ops=operations: c.batch_update_points(name, ops, wait=True),  # type: ignore[misc]
                retry=True,
            )

    def update_vectors(self, vectors: Mapping[str, Mapping[str, Float16Array]]) -> None:
        """Set named vectors of existing points; payloads and other vectors stay."""
        name = self._open_spec().name
        points = [
            qm.PointVectors(
                id=point_id,
                vector={k: np.asarray(v, dtype=np.float32).tolist() for k, v in named.items()},
            )
            for point_id, named in vectors.items()
        ]
        # Chunked: a page's pooled vectors are ~170 KB as JSON, and Qdrant refuses
        # requests over 32 MB.
        for start in range(0, len(points), _UPDATE_CHUNK):
            chunk = points[start : start + _UPDATE_CHUNK]
            self._conn.call(
                f"updating vectors in {name!r}",
                lambda c, part=chunk: c.update_vectors(name, points=part, wait=True),  # type: ignore[misc]
                retry=True,
            )

    # ------------------------------------------ engine calls (pipeline.retrieve.points)

    def _open_spec(self) -> CollectionSpec:
        if self._spec is None:
            raise StoreError("the page store is not open: call open(spec) first")
        return self._spec

    def _searchable(self) -> tuple[str, ...]:
        spec = self._open_spec()
        return (spec.full_vector, *spec.pooled)

    def _count(self, where: Where) -> int:
        name, flt = self._open_spec().name, to_filter(where)
        result = self._conn.call(
            f"counting points of {name!r}",
            lambda c: c.count(name, count_filter=flt, exact=True),
            retry=True,
        )
        return int(result.count)

    def _scroll_page(
        self, where: Where, *, limit: int, offset: Any, fields: Fields
    ) -> tuple[list[Row], Any]:
        name, flt = self._open_spec().name, to_filter(where)
        records, next_offset = self._conn.call(
            f"listing points of {name!r}",
            lambda c: c.scroll(
                name,
                scroll_filter=flt,
                limit=limit,
                offset=offset,
                with_payload=_with_payload(fields),
                with_vectors=False,
            ),
            retry=True,
        )
        return [(str(r.id), dict(r.payload or {})) for r in records], next_offset

    def _retrieve(
        self, point_ids: Sequence[str], fields: Fields, action: str
    ) -> dict[str, dict[str, Any]]:
        name = self._open_spec().name
        ids, selector = list(point_ids), _with_payload(fields)
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _RETRIEVE_CHUNK):
            chunk = ids[start : start + _RETRIEVE_CHUNK]
            records = self._conn.call(
                action,
                lambda c, ch=chunk: c.retrieve(name, ids=ch, with_payload=selector),  # type: ignore[misc]
                retry=True,  # ingestion asks for a document before every file: ride out a blip
            )
            out.update({str(r.id): dict(r.payload or {}) for r in records})
        return out

    def _put_vectorless(self, point_id: str, payload: Mapping[str, Any], action: str) -> None:
        name = self._open_spec().name
        point = qm.PointStruct(id=point_id, vector={}, payload=dict(payload))
        self._conn.call(
            action,
            lambda c: c.upsert(name, points=[point], wait=True, ordering=qm.WriteOrdering.MEDIUM),
            retry=True,
        )

    def _delete(self, where: Where, action: str) -> None:
        name = self._open_spec().name
        selector = qm.FilterSelector(filter=to_filter(where))
        self._conn.call(
            action,
            lambda c: c.delete(
                name, points_selector=selector, wait=True, ordering=qm.WriteOrdering.MEDIUM
            ),
            retry=True,
        )

    def _set_payload(self, where: Where, fields: Mapping[str, Any], action: str) -> None:
        name = self._open_spec().name
        selector = qm.FilterSelector(filter=to_filter(where))
        self._conn.call(
            action,
            lambda c: c.set_payload(
                name,
                payload=dict(fields),
                points=selector,
                wait=True,
                ordering=qm.WriteOrdering.MEDIUM,
            ),
            retry=True,
        )

    def _record(self, spec: CollectionSpec) -> None:
        self._collections.write_manifest(spec)
        self._spec = spec

    def _query_batch(self, requests: Sequence[QueryRequest]) -> list[list[ScoredPage]]:
        spec = self._open_spec()
        # Local mode has no quantization and warns on search params.
        params = None if self.is_local else search_params(spec.quantization)
        queries = [_request(request, params) for request in requests]
        if len(queries) == 1:
            (one,) = queries
            responses = [
                self._conn.call(  # not retried: a person is waiting
                    f"searching {spec.name!r}",
                    lambda c: c.query_points(
                        spec.name,
                        query=one.query,
                        using=one.using,
                        prefetch=one.prefetch,
                        query_filter=one.filter,
                        search_params=one.params,
                        limit=requests[0].limit,
                        with_payload=qm.PayloadSelectorExclude(exclude=[IMAGE_FIELD]),
                        with_vectors=False,
                    ),
                )
            ]
        else:
            responses = self._conn.call(
                f"searching {spec.name!r}",
                lambda c: c.query_batch_points(spec.name, requests=queries),
            )
        return [
            [
                ScoredPage(point_id=str(p.id), score=float(p.score), payload=dict(p.payload or {}))
                for p in response.points
            ]
            for response in responses
        ]


def _request(request: QueryRequest, params: qm.SearchParams | None) -> qm.QueryRequest:
    """One planned request; the filter on every stage, quantization params on dense ones."""
    flt = to_filter(request.where)

    def prefetch(stage: Stage) -> qm.Prefetch:
        query, using = query_of(stage.query)
        return qm.Prefetch(
            query=query,
            using=using,
            limit=stage.limit,
            prefetch=[prefetch(inner) for inner in stage.prefetch] or None,
            filter=flt,
            params=params if isinstance(stage.query, Nearest) else None,
        )

    query, using = query_of(request.query)
    return qm.QueryRequest(
        query=query,
        using=using,
        prefetch=[prefetch(stage) for stage in request.prefetch] or None,
        filter=flt,
        params=params if isinstance(request.query, Nearest) else None,
        limit=request.limit,
        with_payload=qm.PayloadSelectorExclude(exclude=[IMAGE_FIELD]) if request.payload else False,
        with_vector=False,
    )


def _text_operations(
    pages: Sequence[tuple[str, tuple[Mapping[str, Any], SparseVector]]],
) -> list[qm.UpdateOperation]:
    """Payload fields and the text vector of each page, as one batch of update operations."""
    operations: list[qm.UpdateOperation] = [
        qm.SetPayloadOperation(set_payload=qm.SetPayload(payload=dict(fields), points=[point_id]))
        for point_id, (fields, _) in pages
    ]
    filled = [
        qm.PointVectors(id=point_id, vector={TEXT_VECTOR: sparse_vector(vector)})
        for point_id, (_, vector) in pages
        if len(vector)
    ]
    if filled:
        operations.append(qm.UpdateVectorsOperation(update_vectors=qm.UpdateVectors(points=filled)))
    empty: list[Any] = [point_id for point_id, (_, vector) in pages if not len(vector)]
    if empty:
        operations.append(
            qm.DeleteVectorsOperation(
                delete_vectors=qm.DeleteVectors(points=empty, vector=[TEXT_VECTOR])
            )
        )
    return operations


def _with_payload(fields: Fields) -> bool | list[str]:
    return fields if isinstance(fields, bool) else list(fields)


def _point_struct(point: PagePoint, spec: CollectionSpec, *, text: bool) -> qm.PointStruct:
    """A page as qdrant-client's point; refuses vectors the collection cannot take.

    The visual vectors may be absent only on a collection without the visual lane;
    ``text``: whether the collection has the text lane's sparse vector. An empty
    sparse vector is not stored."""
    vectors: dict[str, Any] = {}
    for vector_name, array in point.vectors.items():
        if array.ndim != 2 or array.shape[1] != spec.dim or array.shape[0] == 0:
            raise ValueError(
                f"point {point.point_id}: vector {vector_name!r} has shape {array.shape}, "
                f"expected (tokens, {spec.dim})"
            )
        # A float16 array's tolist() yields Python floats exactly; pydantic
        # validates plain lists far faster than numpy arrays.
        vectors[vector_name] = array.tolist()
    if spec.full_vector not in vectors and (vectors or spec.has_visual):
        raise ValueError(f"point {point.point_id} has no {spec.full_vector!r} vector")
    known = [spec.full_vector, *spec.pooled, *([TEXT_VECTOR] if text else [])]
    unknown = (set(vectors) | set(point.sparse)) - set(known)
    if unknown:
        raise ValueError(
            f"point {point.point_id} has vectors {sorted(unknown)} that collection "
            f"{spec.name!r} does not define (it has {known})"
        )
    vectors.update({n: sparse_vector(v) for n, v in point.sparse.items() if len(v)})
    return qm.PointStruct(id=point.point_id, vector=vectors, payload=dict(point.payload))
