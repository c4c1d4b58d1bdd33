"""The embedded page store: Qdrant's own Rust core, in-process (qdrant-edge-py).

Why this engine is the default: it is the real Qdrant segment/shard code, so
MaxSim, prefetch + rerank, float16/uint8 storage, quantization and payload
indexes behave as on a server, with no server to run. qdrant-client's
``:memory:``/``path=`` mode re-implements search in numpy, ignores those
settings and reloads a 1000-page store in ~36 s; this engine reopens it in
under a second (see /work/shared/ENVIRONMENT.md, "Qdrant engines").

Layout on disk: one shard per collection under ``path / collection``, plus a
lock file ``path / f"{collection}.lock"``. The shard holds the three kinds of
points described in :mod:`pipeline.retrieve.store` (pages, document marks, and the
collection manifest).

Design decisions, each forced by how qdrant-edge-py 0.9.0 behaves:

* **One process at a time.** The engine takes an exclusive lock on the shard's
  WAL; a second open fails with an opaque ``WouldBlock`` error. We take a
  ``filelock`` lock first so the conflict is detected before the WAL is
  touched and reported as :class:`~pipeline.errors.StoreInUseError` with what
  to do. The raw WAL error is still mapped, for holders that bypass the lock.
* **Validation on open** reads the vector layout from the shard's persisted
  ``edge_config.json`` (the engine has no accessor for it; the file is the
  engine's own record and wins over ours) and the model from the manifest
  point; anything missing falls back to the manifest.
* **No HNSW, ever.** ``m=0`` on every vector *and* globally: after
  ``optimize()`` a vector without it gets an HNSW graph and MaxSim results
  become approximate. Vectors added later (pooled vectors on an existing
  collection) inherit the global setting.
* **Quantization is global** (``EdgeConfig.quantization_config``) so pooled
  vectors added later are covered too. Binary quantization applies at once;
  scalar only to segments rebuilt by the optimizer, hence :meth:`optimize`,
  run by :meth:`close` after writes to a quantized collection. Queries on a
  quantized collection always rescore with the original vectors and
  oversample, so scores stay exact MaxSim scores.
* **One re-entrant lock** around every shard call: the ingestion job upserts
  from a background thread while the main thread reads, and close() must not
  race an in-flight call. The engine keeps the GIL for most of a call anyway
  (measured: a Python thread gets ~1/10 of its normal progress during a
  query), so the lock costs little parallelism.
"""

from __future__ import annotations

import base64
import json
import logging
import stat
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import qdrant_edge as qe
from filelock import FileLock, Timeout

from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    PageRAGError,
    QueryError,
    StoreError,
    StoreInUseError,
)
from pipeline.retrieve.store import (
    COLLECTION_POINT_ID,
    IMAGE_FIELD,
    KIND_DOCUMENT,
    KIND_PAGE,
    adopt_identity,
    check_manifest_version,
    manifest_payload,
    record_from_payload,
    record_to_payload,
    spec_from_manifest,
    weights_problem,
    weights_remedy,
)
from pipeline.types import (
    CollectionSpec,
    DocumentRecord,
    Float16Array,
    PageFilter,
    PagePoint,
    ScoredPage,
    StoreStats,
    document_point_id,
)

__all__ = ["EdgePageStore"]

log = logging.getLogger(__name__)

ENGINE = "qdrant-edge"
# Bump when the manifest or payload layout changes incompatibly.
_DISTANCE = "Dot"
_COMPARATOR = "max_sim"
# Keyword payload indexes: every page filter and every mark lookup uses these.
_INDEXED_FIELDS = ("kind", "document_id", "source", "source_alias", "source_dirs")
_DATATYPES = {
    "float16": qe.VectorStorageDatatype.Float16,
    "float32": qe.VectorStorageDatatype.Float32,
    "uint8": qe.VectorStorageDatatype.Uint8,
}
# Candidates rescored per result on a quantized collection. Binary codes rank
# MaxSim much more coarsely than int8, so they need a wider net.
_DEFAULT_OVERSAMPLING = {"scalar": 2.0, "binary": 4.0}
# m=0 disables the HNSW graph: MaxSim over page multivectors stays exact.
_NO_HNSW = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)
_SCROLL_BATCH = 256
_VECTOR_BATCH = 32  # retrieve() returns Python lists: bound the transient memory

T = TypeVar("T")
P = ParamSpec("P")


class EdgePageStore:
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
        if not collection or any(c in collection for c in "/\\ ") or collection.startswith("."):
            raise ValueError(
                f"collection must be a non-empty name without slashes or spaces, got {collection!r}"
            )
        self._path = Path(path)
        self._collection = collection
        self._indexing_threshold_kb = indexing_threshold_kb
        self._oversampling = oversampling
        self._optimize_on_close = optimize_on_close
        self._lock = threading.RLock()
        self._shard: qe.EdgeShard | None = None
        self._file_lock: FileLock | None = None
        self._spec: CollectionSpec | None = None  # as recorded in the manifest
        self._vector_names: frozenset[str] = frozenset()
        self._dirty = False  # written since the last optimize()

    # ------------------------------------------------------------------ paths

    @property
    def shard_dir(self) -> Path:
        """The directory of this collection's shard."""
        return self._path / self._collection

    @property
    def lock_path(self) -> Path:
        return self._path / f"{self._collection}.lock"

    def _shard_exists(self) -> bool:
        return (self.shard_dir / "edge_config.json").is_file() or (
            self.shard_dir / "segments"
        ).is_dir()

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
            self._dirty = False
            if not create and not self._shard_exists():
                raise self._not_found()
            self._path.mkdir(parents=True, exist_ok=True)
            file_lock = self._acquire_file_lock()
            try:
                if self._shard_exists():
                    shard, recorded = self._open_existing(spec)
                elif create:
                    shard, recorded = self._create(spec)
                else:
                    raise self._not_found()
            except BaseException:
                file_lock.release()
                raise
            self._shard, self._file_lock, self._spec = shard, file_lock, recorded
            self._vector_names = frozenset((recorded.full_vector, *recorded.pooled))

    def close(self) -> None:
        """Optimize if needed, close the shard and release the directory lock.

        Idempotent. A failed optimize is logged, never blocks the close: the
        data is already durable, only the quantized copy waits for next time.
        """
        with self._lock:
            shard, file_lock = self._shard, self._file_lock
            self._shard, self._file_lock = None, None
            try:
                if shard is not None:
                    if self._dirty and self._optimize_on_close and self._quantized():
                        try:
                            shard.optimize()
                        except Exception:
                            log.exception(
                                "optimize of %s failed; it will be retried", self.shard_dir
                            )
                    shard.close()
            finally:
                self._dirty = False
                if file_lock is not None:
                    file_lock.release()

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
            if not self._shard_exists():
                return None
            file_lock = self._acquire_file_lock()
            try:
                shard = self._load()
                try:
                    manifest = self._read_manifest(shard)
                finally:
                    shard.close()
            finally:
                file_lock.release()
            return spec_from_manifest(self._collection, manifest) if manifest else None

    def optimize(self) -> bool:
        """Run the engine's segment optimizers now (blocking).

        Needed for scalar quantization (and a quantization change) to take
        effect; also merges small segments. Returns whether anything changed.
        """
        changed = self._call("optimize", qe.EdgeShard.optimize)
        self._dirty = False
        return changed

    # ---------------------------------------------------------------- writing

    def upsert_pages(self, points: Sequence[PagePoint]) -> None:
        """Upsert a batch in one engine update (see :func:`_named_arrays` for the format)."""
        if not points:
            return
        self._opened_spec()
        unknown = {name for p in points for name in p.vectors} - self._vector_names
        if unknown:
            raise StoreError(
                f"collection {self._collection!r} in {self._path} has no vectors named "
                f"{sorted(unknown)} (it has {sorted(self._vector_names)}); open it with a spec "
                "whose pooled vectors include them"
            )
        edge_points = [
            qe.Point(
                id=p.point_id,
                vector=_named_arrays(p.vectors),
                payload=dict(p.payload),
            )
            for p in points
        ]
        self._update("store pages", qe.UpdateOperation.upsert_points(edge_points))

    def flush(self) -> None:
        self._call("flush", qe.EdgeShard.flush)

    def mark_complete(self, record: DocumentRecord) -> None:
        point = qe.Point(
            id=document_point_id(record.document_id), vector={}, payload=record_to_payload(record)
        )
        with self._lock:
            self._update("mark a document complete", qe.UpdateOperation.upsert_points([point]))
            self.flush()

    def delete_document(self, document_id: str) -> int:
        """Delete pages and mark in one filter delete; counted first, under the lock."""
        by_document = _match("document_id", document_id)
        with self._lock:
            pages = self._count(qe.Filter(must=[_match("kind", KIND_PAGE), by_document]))
            self._update(
                "delete a document",
                qe.UpdateOperation.delete_points_by_filter(qe.Filter(must=[by_document])),
            )
            self.flush()
        return pages

    def prune_pages(self, document_id: str, keep: Collection[int]) -> int:
        flt = qe.Filter(
            must=[_match("kind", KIND_PAGE), _match("document_id", document_id)],
            must_not=[qe.FieldCondition(key="page", match=qe.MatchAny(sorted(keep)))]
            if keep
            else [],
        )
        with self._lock:
            extra = self._count(flt)
            if extra:
                self._update("remove stale pages", qe.UpdateOperation.delete_points_by_filter(flt))
                self.flush()
        return extra

    def set_payload(self, document_id: str, fields: Mapping[str, Any]) -> None:
        flt = qe.Filter(must=[_match("document_id", document_id)])
        with self._lock:
            self._update(
                "update document metadata",
                qe.UpdateOperation.set_payload_by_filter(flt, dict(fields)),
            )
            self.flush()

    # ---------------------------------------------------------------- reading

    def document_ids(self, where: PageFilter) -> set[str]:
        """Marked documents in one scroll; then one small scroll per unmarked one.

        Pages are many per document, so they are never scrolled row by row:
        each request excludes the ids already found and returns a new one.
        """
        selector = qe.PayloadSelector.Include(["document_id"])
        marks = _document_filter(where, KIND_DOCUMENT)
        found = {
            str((rec.payload or {})["document_id"])
            for batch in self._scroll(marks, with_payload=selector)
            for rec in batch
        }
        pages = _document_filter(where, KIND_PAGE)
        while True:
            exclude = qe.FieldCondition(key="document_id", match=qe.MatchAny(sorted(found)))
            request = qe.ScrollRequest(
                limit=16,
                filter=qe.Filter(must=[pages], must_not=[exclude] if found else []),
                with_payload=selector,
                with_vector=False,
            )
            records, _next = self._call("scroll", qe.EdgeShard.scroll, request)
            ids = {str((rec.payload or {})["document_id"]) for rec in records}
            if not ids:
                return found
            found |= ids

    def get_document(self, document_id: str) -> DocumentRecord | None:
        payloads = self._retrieve_payloads([document_point_id(document_id)], True)
        payload = payloads.get(document_point_id(document_id))
        if payload is None or payload.get("kind") != KIND_DOCUMENT:
            return None
        return record_from_payload(payload)

    def documents(self, *, source: str | None = None) -> list[DocumentRecord]:
        must: list[Any] = [_match("kind", KIND_DOCUMENT)]
        if source is not None:
            must.append(_match("source", source))
        records = [
            record_from_payload(rec.payload or {})
            for batch in self._scroll(qe.Filter(must=must), with_payload=True)
            for rec in batch
        ]
        return sorted(records, key=lambda r: (r.source, r.document_id))

    def search(
        self,
        query: Float16Array,
        *,
        k: int,
        filter: PageFilter | None = None,
        using: str | None = None,
        prefetch: Sequence[tuple[str, int]] = (),
    ) -> list[ScoredPage]:
        """MaxSim top-``k``; with ``prefetch``, a Qdrant prefetch per pooled vector.

        A prefetch limit below ``k`` is raised to ``k`` so a two-stage search
        never returns fewer pages than an exact one. Filters apply to every
        stage.
        """
        spec = self._opened_spec()
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        q = self._query_array(query, spec)
        target = using or spec.full_vector
        for name in (target, *(name for name, _ in prefetch)):
            if name not in self._vector_names:
                raise QueryError(
                    f"collection {self._collection!r} has no vector {name!r}; "
                    f"it has {sorted(self._vector_names)}"
                )
        for name, limit in prefetch:
            if limit < 1:
                raise QueryError(f"prefetch limit for {name!r} must be at least 1, got {limit}")
        flt = _page_filter(filter)
        params = self._search_params()
        prefetches = [
            qe.Prefetch(
                limit=max(limit, k),
                query=qe.Query.Nearest(q, using=name),
                filter=flt,
                params=params,
            )
            for name, limit in prefetch
        ]
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(q, using=target),
            prefetches=prefetches or None,
            filter=flt,
            params=params,
            with_payload=qe.PayloadSelector.Exclude([IMAGE_FIELD]),
            with_vector=False,
        )
        hits = self._call("search", qe.EdgeShard.query, request)
        return [
            ScoredPage(
                point_id=str(hit.id),
                score=float(hit.score),
                payload={k: v for k, v in (hit.payload or {}).items() if k != IMAGE_FIELD},
            )
            for hit in hits
        ]

    def page_image(self, point_id: str) -> bytes | None:
        payload = self._retrieve_payloads(
            [point_id], qe.PayloadSelector.Include([IMAGE_FIELD])
        ).get(point_id)
        encoded = (payload or {}).get(IMAGE_FIELD)
        return base64.b64decode(encoded) if encoded else None

    def page_vectors(
        self, point_ids: Iterable[str], using: str | None = None
    ) -> dict[str, Float16Array]:
        """Stored vectors as float16 arrays; unknown ids are left out."""
        spec = self._opened_spec()
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
            records = self._call("read vectors", qe.EdgeShard.retrieve, chunk, False, [name])
            for rec in records:
                vectors = rec.vector if isinstance(rec.vector, dict) else {}
                vec = vectors.get(name)
                if vec is not None:
                    out[str(rec.id)] = np.asarray(vec, dtype=np.float16)
        return out

    def iter_page_ids(self, *, batch: int = 256) -> Iterator[list[str]]:
        """Page ids in scroll order; the lock is held per batch, not across yields."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        for records in self._scroll(_page_filter(None), limit=batch, with_payload=False):
            yield [str(rec.id) for rec in records]

    def count_pages(self, filter: PageFilter | None = None) -> int:
        return self._count(_page_filter(filter))

    def stats(self) -> StoreStats:
        spec = self._opened_spec()
        with self._lock:
            documents = self._count(qe.Filter(must=[_match("kind", KIND_DOCUMENT)]))
            pages = self._count(_page_filter(None))
        return StoreStats(
            collection=self._collection,
            model=spec.model,
            documents=documents,
            pages=pages,
            bytes_on_disk=_disk_usage(self.shard_dir),
            engine=ENGINE,
            location=str(self._path),
        )

    # -------------------------------------------------------- open internals

    def _acquire_file_lock(self) -> FileLock:
        # thread_local=False: the job may close the store from another thread
        # than the one that opened it; a thread-local lock would not release.
        lock = FileLock(str(self.lock_path), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise self._in_use(f"lock file {self.lock_path} is held") from None
        return lock

    def _in_use(self, detail: str) -> StoreInUseError:
        return StoreInUseError(
            f"the page store {self.shard_dir} is in use by another pagerag process "
            f"(or another open store in this one; {detail}); wait for it to finish "
            "or use another store.path"
        )

    def _not_found(self) -> CollectionNotFoundError:
        return CollectionNotFoundError(
            f"collection {self._collection!r} does not exist in {self._path}: nothing has been "
            "ingested yet. Run `pagerag ingest <files or folders>` first, or check store.path "
            "and store.collection."
        )

    def _load(self, config: qe.EdgeConfig | None = None) -> qe.EdgeShard:
        try:
            return qe.EdgeShard.load(str(self.shard_dir), config)
        except Exception as exc:
            if "WouldBlock" in str(exc):
                raise self._in_use("its write-ahead log is locked") from exc
            raise StoreError(f"cannot open the page store {self.shard_dir}: {exc}") from exc

    def _edge_config(self, spec: CollectionSpec) -> qe.EdgeConfig:
        memory = qe.Memory.Cold if spec.on_disk else None
        vectors = {
            name: qe.EdgeVectorParams(
                size=spec.dim,
                distance=qe.Distance.Dot,
                multivector_config=qe.MultiVectorConfig(comparator=qe.MultiVectorComparator.MaxSim),
                datatype=_DATATYPES[spec.datatype],
                hnsw_config=_NO_HNSW,
                memory=memory,
            )
            for name in (spec.full_vector, *spec.pooled)
        }
        optimizers = (
            qe.EdgeOptimizersConfig(indexing_threshold=self._indexing_threshold_kb)
            if self._indexing_threshold_kb is not None
            else None
        )
        return qe.EdgeConfig(
            vectors=vectors,
            hnsw_config=_NO_HNSW,
            quantization_config=_quantization_config(spec.quantization),
            optimizers=optimizers,
        )

    def _create(self, spec: CollectionSpec) -> tuple[qe.EdgeShard, CollectionSpec]:
        if spec.datatype not in _DATATYPES:
            raise StoreError(
                f"store.datatype {spec.datatype!r} is not supported; "
                f"use one of {sorted(_DATATYPES)}"
            )
        try:
            shard = qe.EdgeShard.create(str(self.shard_dir), self._edge_config(spec))
        except Exception as exc:
            raise StoreError(f"cannot create the page store {self.shard_dir}: {exc}") from exc
        recorded = replace(spec, name=self._collection)
        try:
            self._ensure_indexes(shard)
            self._write_manifest(shard, recorded)
        except BaseException as exc:
            shard.close()
            if isinstance(exc, Exception):
                raise StoreError(f"cannot create the page store {self.shard_dir}: {exc}") from exc
            raise
        return shard, recorded

    def _open_existing(self, spec: CollectionSpec) -> tuple[qe.EdgeShard, CollectionSpec]:
        shard = self._load()
        try:
            manifest = self._read_manifest(shard)
            if manifest is None:
                if shard.count(qe.CountRequest(exact=True)) > 0:
                    raise CollectionMismatchError(
                        f"collection {self._collection!r} in {self._path} holds points but no "
                        "pagerag manifest: it was not created by pagerag. Use another "
                        f"store.collection name or store.path, or delete {self.shard_dir}."
                    )
                recorded = None  # created, then interrupted before the manifest was written
            else:
                recorded = spec_from_manifest(self._collection, manifest)
            layout = self._read_layout() or (_layout_from_spec(recorded) if recorded else {})
            self._validate(spec, recorded, layout)
            if recorded is None:
                full = layout.get(spec.full_vector) or {}
                recorded = replace(
                    spec,
                    name=self._collection,
                    pooled=tuple(n for n in layout if n != spec.full_vector),
                    datatype=full.get("datatype", spec.datatype),
                )
                self._write_manifest(shard, recorded)
            return self._evolve(shard, spec, recorded, layout)
        except BaseException as exc:
            shard.close()
            if isinstance(exc, Exception) and not isinstance(exc, PageRAGError):
                raise StoreError(f"cannot open the page store {self.shard_dir}: {exc}") from exc
            raise

    def _validate(
        self,
        spec: CollectionSpec,
        recorded: CollectionSpec | None,
        layout: Mapping[str, Mapping[str, Any]] | None,
    ) -> None:
        """Refuse a collection built differently, naming every difference."""
        problems: list[str] = []
        if recorded is not None and recorded.model != spec.model:
            problems.append(
                f"it was built with model {recorded.model!r}, but embedding.model is {spec.model!r}"
            )
        weights = weights_problem(recorded, spec)
        if weights:
            problems.append(weights)
        if layout is not None:
            full = layout.get(spec.full_vector)
            if full is None:
                problems.append(
                    f"its vectors are named {sorted(layout)}, but the full vector should be "
                    f"named {spec.full_vector!r}"
                )
            else:
                size = full.get("size")
                if size != spec.dim:
                    problems.append(
                        f"its vectors have {size} dimensions, but the model produces {spec.dim}"
                    )
                if full.get("distance") != _DISTANCE:
                    problems.append(f"it uses distance {full.get('distance')!r}, not {_DISTANCE!r}")
                comparator = (full.get("multivector_config") or {}).get("comparator")
                if comparator != _COMPARATOR:
                    problems.append(
                        f"its multivector comparator is {comparator!r}, not {_COMPARATOR!r}"
                    )
        if not problems:
            return
        back = (
            f", or set embedding.model back to {recorded.model!r}"
            if recorded is not None and recorded.model != spec.model
            else ""
        )
        raise CollectionMismatchError(
            f"collection {self._collection!r} in {self._path} was built differently: "
            + "; ".join(problems)
            + ". To fix it: use another store.collection name (a new collection) and re-ingest "
            + f"into it, or delete {self.shard_dir} and re-ingest to re-embed every page with "
            + f"the configured model and weights{back}{weights_remedy(recorded, spec)}."
        )

    def _evolve(
        self,
        shard: qe.EdgeShard,
        spec: CollectionSpec,
        recorded: CollectionSpec,
        layout: Mapping[str, Any],
    ) -> tuple[qe.EdgeShard, CollectionSpec]:
        """Apply the changes an existing collection accepts; record them in the manifest.

        Returns the shard (reloaded when the quantization changed) and the
        spec now recorded. The caller closes the shard if this raises.
        """
        for field in ("datatype", "on_disk"):
            if getattr(spec, field) != getattr(recorded, field):
                log.warning(
                    "collection %r keeps %s=%r (fixed at creation); store.%s=%r applies to new "
                    "collections only",
                    self._collection,
                    field,
                    getattr(recorded, field),
                    field,
                    getattr(spec, field),
                )
        updated = adopt_identity(recorded, spec)
        missing = [name for name in spec.pooled if name not in layout]
        if missing:
            pages = shard.count(qe.CountRequest(exact=True, filter=_page_filter(None)))
            if pages:
                log.warning(
                    "adding pooled vectors %s to collection %r: its %d existing pages lack them "
                    "and two-stage search will miss those pages until they are reindexed",
                    missing,
                    self._collection,
                    pages,
                )
            for name in missing:
                shard.update(
                    qe.UpdateOperation.create_dense_vector(
                        name,
                        recorded.dim,
                        qe.Distance.Dot,
                        qe.MultiVectorConfig(comparator=qe.MultiVectorComparator.MaxSim),
                        _DATATYPES[recorded.datatype],
                    )
                )
            updated = replace(updated, pooled=(*updated.pooled, *missing))
        if spec.quantization != recorded.quantization:
            # Only a config passed to load() changes quantization; it must
            # restate every vector, or per-vector settings are dropped.
            updated = replace(updated, quantization=spec.quantization)
            shard.flush()
            shard.close()
            shard = self._load(self._edge_config(updated))
            self._dirty = True  # the next optimize() re-quantizes
        self._ensure_indexes(shard)
        if updated != recorded:
            self._write_manifest(shard, updated)
        return shard, updated

    def _ensure_indexes(self, shard: qe.EdgeShard) -> None:
        existing = set(shard.info().payload_schema)
        for field in _INDEXED_FIELDS:
            if field not in existing:
                shard.update(
                    qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword)
                )

    def _write_manifest(self, shard: qe.EdgeShard, spec: CollectionSpec) -> None:
        payload = manifest_payload(spec, engine=ENGINE)
        point = qe.Point(id=COLLECTION_POINT_ID, vector={}, payload=payload)
        shard.update(qe.UpdateOperation.upsert_points([point]))
        shard.flush()

    def _read_manifest(self, shard: qe.EdgeShard) -> dict[str, Any] | None:
        records = shard.retrieve([COLLECTION_POINT_ID], True, False)
        if not records or not records[0].payload:
            return None
        manifest = dict(records[0].payload)
        check_manifest_version(manifest, where=f"collection {self._collection!r} in {self._path}")
        return manifest

    def _read_layout(self) -> dict[str, dict[str, Any]] | None:
        """Vector params as the engine persisted them, or None if unreadable."""
        try:
            text = (self.shard_dir / "edge_config.json").read_text(encoding="utf-8")
            vectors = json.loads(text)["vectors"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return vectors if isinstance(vectors, dict) else None

    # ------------------------------------------ in-place reindex (pipeline.retrieve.reindex)

    def add_vectors(self, names: Sequence[str]) -> None:
        """Create pooled multivectors (not yet in the manifest); existing names are kept."""
        layout = self._read_layout() or {}
        with self._lock:
            shard, spec = self._opened()
            for name in names:
                if name in layout:
                    continue
                try:
                    shard.update(
                        qe.UpdateOperation.create_dense_vector(
                            name,
                            spec.dim,
                            qe.Distance.Dot,
                            qe.MultiVectorConfig(comparator=qe.MultiVectorComparator.MaxSim),
                            _DATATYPES[spec.datatype],
                        )
                    )
                except Exception as exc:
                    if "exist" not in str(exc).lower():
                        raise StoreError(
                            f"qdrant-edge could not add vector {name!r} in {self.shard_dir}: {exc}"
                        ) from exc
            # Usable for writes and reads now; listed in the manifest only by record_pooled.
            self._vector_names = self._vector_names | set(names)
            self._dirty = True

    def update_vectors(self, vectors: Mapping[str, Mapping[str, Float16Array]]) -> None:
        """Set named vectors of existing points; payloads and other vectors stay."""
        points = [
            qe.PointVectors(id=point_id, vector=_named_arrays(named))
            for point_id, named in vectors.items()
        ]
        if points:
            self._update("update vectors", qe.UpdateOperation.update_vectors(points))

    def page_ids_missing(self, names: Sequence[str], *, batch: int = 256) -> Iterator[list[str]]:
        for records in self._scroll(_missing_filter(names), limit=batch, with_payload=False):
            yield [str(rec.id) for rec in records]

    def count_pages_missing(self, names: Sequence[str]) -> int:
        return self._count(_missing_filter(names))

    def record_pooled(self, names: Sequence[str]) -> CollectionSpec:
        with self._lock:
            shard, spec = self._opened()
            updated = replace(spec, pooled=tuple(dict.fromkeys((*spec.pooled, *names))))
            if updated != spec:
                self._write_manifest(shard, updated)
                self._spec = updated
            return updated

    # ------------------------------------------------------- call internals

    def _opened(self) -> tuple[qe.EdgeShard, CollectionSpec]:
        shard, spec = self._shard, self._spec
        if shard is None or spec is None:
            raise StoreError(
                f"the page store {self.shard_dir} is closed; call open(spec) before using it"
            )
        return shard, spec

    def _opened_spec(self) -> CollectionSpec:
        return self._opened()[1]

    def _call(
        self,
        what: str,
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
                    f"qdrant-edge could not {what} in {self.shard_dir}: {exc}"
                ) from exc

    def _update(self, what: str, operation: qe.UpdateOperation) -> None:
        self._call(what, qe.EdgeShard.update, operation)
        self._dirty = True

    def _count(self, flt: qe.Filter) -> int:
        return self._call("count", qe.EdgeShard.count, qe.CountRequest(exact=True, filter=flt))

    def _scroll(
        self,
        flt: qe.Filter,
        *,
        limit: int = _SCROLL_BATCH,
        with_payload: bool | qe.PayloadSelector,
    ) -> Iterator[list[qe.Record]]:
        """Non-empty batches of matching points, one locked engine call per batch."""
        offset: Any = None
        while True:
            request = qe.ScrollRequest(
                offset=offset, limit=limit, filter=flt, with_payload=with_payload, with_vector=False
            )
            records, offset = self._call("scroll", qe.EdgeShard.scroll, request)
            if records:
                yield records
            if offset is None:
                return

    def _retrieve_payloads(
        self, point_ids: list[str], with_payload: bool | qe.PayloadSelector
    ) -> dict[str, dict[str, Any]]:
        # The engine raises ValueError on a malformed id; for lookups, unknown.
        ids: list[Any] = [i for i in point_ids if _is_uuid(i)]
        if not ids:
            self._opened_spec()
            return {}
        records = self._call("read points", qe.EdgeShard.retrieve, ids, with_payload, False)
        return {str(rec.id): dict(rec.payload or {}) for rec in records}

    def _quantized(self) -> bool:
        return self._spec is not None and self._spec.quantization != "none"

    def _search_params(self) -> qe.SearchParams | None:
        spec = self._spec
        if spec is None or spec.quantization == "none":
            return None
        oversampling = self._oversampling or _DEFAULT_OVERSAMPLING[spec.quantization]
        return qe.SearchParams(
            quantization=qe.QuantizationSearchParams(rescore=True, oversampling=oversampling)
        )

    def _query_array(self, query: Float16Array, spec: CollectionSpec) -> Any:
        q = np.asarray(query)
        if q.ndim != 2 or q.shape[0] == 0 or q.shape[1] != spec.dim:
            raise QueryError(
                f"a query must be a non-empty (tokens, {spec.dim}) array of token vectors, "
                f"got shape {q.shape}"
            )
        if q.dtype not in (np.float16, np.float32):
            q = q.astype(np.float32)
        return np.ascontiguousarray(q)


# ---------------------------------------------------------------- helpers


def _match(key: str, value: str) -> qe.FieldCondition:
    return qe.FieldCondition(key=key, match=qe.MatchValue(value))


def _page_filter(flt: PageFilter | None) -> qe.Filter:
    """Qdrant filter for pages matching ``flt`` (all conditions must hold)."""
    must: list[Any] = [_match("kind", KIND_PAGE)]
    if flt is not None:
        if flt.document_ids:
            must.append(
                qe.FieldCondition(key="document_id", match=qe.MatchAny(list(flt.document_ids)))
            )
        if flt.source_prefix is not None:
            prefix = flt.source_prefix.rstrip("/") or "/"
            must.append(_under(prefix))
        if flt.source is not None:
            must.append(_at(flt.source))
        for key, value in sorted(flt.metadata.items()):
            must.append(_match(f"meta.{key}", value))
    return qe.Filter(must=must)


def _at(source: str) -> qe.Filter:
    """Points stored from exactly ``source`` (its resolved path or the path given)."""
    return qe.Filter(should=[_match("source", source), _match("source_alias", source)])


def _under(prefix: str) -> qe.Filter:
    """Points stored from ``prefix`` (a file, by resolved or given path) or below it."""
    return qe.Filter(
        should=[
            _match("source", prefix),
            _match("source_alias", prefix),
            _match("source_dirs", prefix),
        ]
    )


def _document_filter(where: PageFilter, kind: str) -> qe.Filter:
    """Points of ``kind`` (pages or completion marks) matching ``where``."""
    must: list[Any] = [_match("kind", kind)]
    if where.document_ids:
        must.append(
            qe.FieldCondition(key="document_id", match=qe.MatchAny(list(where.document_ids)))
        )
    if where.source_prefix is not None:
        must.append(_under(where.source_prefix.rstrip("/") or "/"))
    if where.source is not None:
        must.append(_at(where.source))
    for key, value in sorted(where.metadata.items()):
        must.append(_match(f"meta.{key}", value))
    return qe.Filter(must=must)


def _missing_filter(names: Sequence[str]) -> qe.Filter:
    """Pages lacking at least one of the named vectors."""
    return qe.Filter(
        must=[_match("kind", KIND_PAGE)],
        should=[qe.Filter(must_not=[qe.HasVectorCondition(name)]) for name in names],
    )


def _quantization_config(
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


def _layout_from_spec(spec: CollectionSpec) -> dict[str, dict[str, Any]]:
    params = {
        "size": spec.dim,
        "distance": _DISTANCE,
        "multivector_config": {"comparator": _COMPARATOR},
        "datatype": spec.datatype,
    }
    return {name: dict(params) for name in (spec.full_vector, *spec.pooled)}


def _named_arrays(vectors: Mapping[str, Float16Array]) -> dict[str, Any]:
    """Named vectors in the form the engine ingests fastest: nested Python lists.

    Counter-intuitive but measured (qdrant-edge-py 0.9.0, 1030×128 page):
    building a ``Point`` from a numpy array takes ~7 ms (float16 or float32;
    the binding reads it element by element), from ``.tolist()`` ~4 ms
    including the conversion. The upsert itself is ~2.7 ms either way. The
    lists live only until the update call returns.
    """
    return {name: np.asarray(vec, dtype=np.float16).tolist() for name, vec in vectors.items()}


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
