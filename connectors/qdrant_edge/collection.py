"""A collection's shard on disk: its lock, creation, loading, validation and evolution.

What to refuse, adopt or change is decided in :mod:`pipeline.retrieve.opening`;
this module reads the shard (its persisted ``edge_config.json`` for the
vector layout, the manifest point for the model) and applies the decisions.
Every method works on a raw ``qe.EdgeShard`` before the store holds it, so
the caller owns the directory lock and closes the shard on failure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import qdrant_edge as qe
from filelock import FileLock, Timeout

from connectors.qdrant_edge.translate import (
    DATATYPES,
    NO_HNSW,
    create_sparse_vector,
    create_vector,
    layout_of,
    quantization_config,
    sparse_layout_of,
    sparse_params,
    to_filter,
    vector_params,
)
from pipeline.errors import (
    CollectionNotFoundError,
    PageRAGError,
    StoreError,
    StoreInUseError,
)
from pipeline.retrieve.conditions import INDEXED_FIELDS, pages_where
from pipeline.retrieve.opening import (
    VectorLayout,
    adopt_unmanifested,
    plan_evolution,
    reconcile_lanes,
    refuse_mismatch,
    spec_layout,
    vector_roles,
    vectors_to_drop,
    warn_vectors_added,
)
from pipeline.retrieve.store import (
    COLLECTION_POINT_ID,
    check_manifest_version,
    manifest_payload,
    spec_from_manifest,
)
from pipeline.types import TEXT_VECTOR, CollectionSpec

__all__ = ["ENGINE", "ShardDirectory"]

ENGINE = "qdrant-edge"

log = logging.getLogger(__name__)


class ShardDirectory:
    """Where one collection's shard lives (``path / collection``, lock file beside it)."""

    def __init__(self, path: Path, collection: str, *, indexing_threshold_kb: int | None) -> None:
        if not collection or any(c in collection for c in "/\\ ") or collection.startswith("."):
            raise ValueError(
                f"collection must be a non-empty name without slashes or spaces, got {collection!r}"
            )
        self.path = path
        self.collection = collection
        self._indexing_threshold_kb = indexing_threshold_kb

    @property
    def shard_dir(self) -> Path:
        return self.path / self.collection

    @property
    def lock_path(self) -> Path:
        return self.path / f"{self.collection}.lock"

    def exists(self) -> bool:
        return (self.shard_dir / "edge_config.json").is_file() or (
            self.shard_dir / "segments"
        ).is_dir()

    # ------------------------------------------------------------------ open, close

    def open(
        self, spec: CollectionSpec, *, create: bool
    ) -> tuple[qe.EdgeShard, FileLock, CollectionSpec, bool]:
        """Lock the directory, then load and evolve the shard or create it.

        Returns the shard, the held lock, the recorded spec and whether the
        shard was re-quantized (the next optimize() rebuilds its codes). On
        failure nothing stays locked or open.
        """
        if not create and not self.exists():
            raise self.not_found()
        self.path.mkdir(parents=True, exist_ok=True)
        file_lock = self.acquire()
        try:
            if self.exists():
                shard, recorded, requantized = self.open_existing(spec, writing=create)
            elif create:
                (shard, recorded), requantized = self.create(spec), False
            else:
                raise self.not_found()
        except BaseException:
            file_lock.release()
            raise
        return shard, file_lock, recorded, requantized

    def release(
        self, shard: qe.EdgeShard | None, file_lock: FileLock | None, *, optimize: bool
    ) -> None:
        """Optimize (when asked) and close the shard, then release the directory lock.

        A failed optimize is logged, never blocks the close: the data is
        already durable, only the quantized copy waits for next time.
        """
        try:
            if shard is not None:
                if optimize:
                    try:
                        shard.optimize()
                    except Exception:
                        log.exception("optimize of %s failed; it will be retried", self.shard_dir)
                shard.close()
        finally:
            if file_lock is not None:
                file_lock.release()

    # ------------------------------------------------------------------ lock, load

    def acquire(self) -> FileLock:
        # thread_local=False: the job may close the store from another thread
        # than the one that opened it; a thread-local lock would not release.
        lock = FileLock(str(self.lock_path), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise self.in_use(f"lock file {self.lock_path} is held") from None
        return lock

    def in_use(self, detail: str) -> StoreInUseError:
        return StoreInUseError(
            f"the page store {self.shard_dir} is in use by another pagerag process "
            f"(or another open store in this one; {detail}); wait for it to finish "
            "or use another store.path"
        )

    def not_found(self) -> CollectionNotFoundError:
        return CollectionNotFoundError(
            f"collection {self.collection!r} does not exist in {self.path}: nothing has been "
            "ingested yet. Run `pagerag ingest <files or folders>` first, or check store.path "
            "and store.collection."
        )

    def load(self, config: qe.EdgeConfig | None = None) -> qe.EdgeShard:
        try:
            return qe.EdgeShard.load(str(self.shard_dir), config)
        except Exception as exc:
            if "WouldBlock" in str(exc):
                raise self.in_use("its write-ahead log is locked") from exc
            raise StoreError(f"cannot open the page store {self.shard_dir}: {exc}") from exc

    def read_spec(self) -> CollectionSpec | None:
        """The recorded spec, read with a short-lived load under the directory lock."""
        if not self.exists():
            return None
        file_lock = self.acquire()
        try:
            shard = self.load()
            try:
                manifest = self.read_manifest(shard)
            finally:
                shard.close()
        finally:
            file_lock.release()
        return spec_from_manifest(self.collection, manifest) if manifest else None

    # ------------------------------------------------------------------ create, open

    def create(self, spec: CollectionSpec) -> tuple[qe.EdgeShard, CollectionSpec]:
        if spec.datatype not in DATATYPES:
            raise StoreError(
                f"store.datatype {spec.datatype!r} is not supported; use one of {sorted(DATATYPES)}"
            )
        try:
            shard = qe.EdgeShard.create(str(self.shard_dir), self._edge_config(spec))
        except Exception as exc:
            raise StoreError(f"cannot create the page store {self.shard_dir}: {exc}") from exc
        recorded = replace(spec, name=self.collection)
        try:
            self._ensure_indexes(shard)
            self.write_manifest(shard, recorded)
        except BaseException as exc:
            shard.close()
            if isinstance(exc, Exception):
                raise StoreError(f"cannot create the page store {self.shard_dir}: {exc}") from exc
            raise
        return shard, recorded

    def open_existing(
        self, spec: CollectionSpec, *, writing: bool = True
    ) -> tuple[qe.EdgeShard, CollectionSpec, bool]:
        """Load, validate and evolve the shard: (shard, recorded spec, whether re-quantized).

        A quantization change reloads the shard with the new config; the
        next ``optimize()`` rebuilds the quantized copies. ``writing``: an
        opening for ingest, whose wanted lanes must match (or, empty, are adopted).
        """
        shard = self.load()

        def pages() -> int:
            return shard.count(qe.CountRequest(exact=True, filter=to_filter(pages_where())))

        try:
            manifest = self.read_manifest(shard)
            recorded = spec_from_manifest(self.collection, manifest) if manifest else None
            layout = self._read_layout() or (spec_layout(recorded) if recorded else {})
            name, where, delete = self.collection, str(self.path), str(self.shard_dir)
            refuse_mismatch(name, spec, recorded, layout, where=where, delete=delete)
            if recorded is None:
                # Created, then interrupted before the manifest was written.
                recorded = adopt_unmanifested(
                    name, spec, layout, pages(), where=where, delete=delete
                )
                self.write_manifest(shard, recorded)
            lanes = reconcile_lanes(name, spec, recorded, pages, writing=writing, where=where)
            evolution = plan_evolution(name, spec, recorded, layout, lanes=lanes)
            if evolution.add:
                warn_vectors_added(name, evolution.add, pages())
                for vector_name in evolution.add:
                    shard.update(create_vector(vector_name, recorded))
            if evolution.add_text:
                shard.update(create_sparse_vector(TEXT_VECTOR))
            if evolution.quantization is not None:
                # Only a config passed to load() changes quantization; it must
                # restate every vector, or per-vector settings are dropped.
                text = evolution.spec.has_text or TEXT_VECTOR in layout
                shard.flush()
                shard.close()
                shard = self.load(self._edge_config(evolution.spec, text=text))
            self._ensure_indexes(shard)
            if evolution.changed:
                self.write_manifest(shard, evolution.spec)
            return shard, evolution.spec, evolution.quantization is not None
        except BaseException as exc:
            shard.close()
            if isinstance(exc, Exception) and not isinstance(exc, PageRAGError):
                raise StoreError(f"cannot open the page store {self.shard_dir}: {exc}") from exc
            raise

    def add_vectors(self, shard: qe.EdgeShard, spec: CollectionSpec, names: Sequence[str]) -> None:
        """Create the named pooled multivectors the shard lacks (existing names are kept)."""
        layout = self._read_layout() or {}
        for name in names:
            if name in layout:
                continue
            try:
                shard.update(create_vector(name, spec))
            except Exception as exc:
                if "exist" not in str(exc).lower():
                    raise StoreError(
                        f"qdrant-edge could not add vector {name!r} in {self.shard_dir}: {exc}"
                    ) from exc

    def add_text_vector(self, shard: qe.EdgeShard) -> None:
        """Create the text lane's sparse vector unless the shard has it."""
        if TEXT_VECTOR not in (self._read_layout() or {}):
            shard.update(create_sparse_vector(TEXT_VECTOR))

    def drop_vectors(self, shard: qe.EdgeShard, spec: CollectionSpec, names: Sequence[str]) -> None:
        """Delete named vectors the manifest does not use, from every point (absent: skipped)."""
        for name in vectors_to_drop(spec, names, self._read_layout() or {}):
            shard.update(qe.UpdateOperation.delete_vector_name(name))

    # ------------------------------------------------------------------ manifest, layout

    def write_manifest(self, shard: qe.EdgeShard, spec: CollectionSpec) -> None:
        payload = manifest_payload(spec, engine=ENGINE)
        point = qe.Point(id=COLLECTION_POINT_ID, vector={}, payload=payload)
        shard.update(qe.UpdateOperation.upsert_points([point]))
        shard.flush()

    def read_manifest(self, shard: qe.EdgeShard) -> dict[str, Any] | None:
        records = shard.retrieve([COLLECTION_POINT_ID], True, False)
        if not records or not records[0].payload:
            return None
        manifest = dict(records[0].payload)
        check_manifest_version(manifest, where=f"collection {self.collection!r} in {self.path}")
        return manifest

    def _read_layout(self) -> dict[str, VectorLayout] | None:
        """Vector params as the engine persisted them, or None if unreadable."""
        try:
            config = json.loads((self.shard_dir / "edge_config.json").read_text(encoding="utf-8"))
            layout = {name: layout_of(params) for name, params in config["vectors"].items()}
            for name, params in (config.get("sparse_vectors") or {}).items():
                layout[name] = sparse_layout_of(params)
            return layout
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _edge_config(self, spec: CollectionSpec, *, text: bool | None = None) -> qe.EdgeConfig:
        """The shard's config for ``spec``; ``text`` whether it declares the text lane's
        sparse vector (default: when ``spec`` has the text lane)."""
        roles = vector_roles(spec).items()
        vectors = {name: vector_params(spec, role) for name, role in roles if role != "sparse"}
        with_text = spec.has_text if text is None else text
        optimizers = (
            qe.EdgeOptimizersConfig(indexing_threshold=self._indexing_threshold_kb)
            if self._indexing_threshold_kb is not None
            else None
        )
        return qe.EdgeConfig(
            vectors=vectors,
            sparse_vectors={TEXT_VECTOR: sparse_params()} if with_text else None,
            hnsw_config=NO_HNSW,
            quantization_config=quantization_config(spec.quantization),
            optimizers=optimizers,
        )

    def _ensure_indexes(self, shard: qe.EdgeShard) -> None:
        existing = set(shard.info().payload_schema)
        for field in INDEXED_FIELDS:
            if field not in existing:
                shard.update(
                    qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword)
                )
