"""A collection's lifecycle on Qdrant: create, or open, validate and evolve; indexes; manifest.

What to refuse, adopt or change is decided in :mod:`pipeline.retrieve.opening`;
this module reads the collection and applies the decisions. Changes Qdrant
can make in place are made, as the embedded engine does: missing pooled
vectors are added (server 1.18+) and the quantization is switched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from qdrant_client import models as qm

from connectors.qdrant_client.connection import Connection
from connectors.qdrant_client.translate import (
    NO_HNSW,
    added_sparse_vector,
    added_vector,
    layout_of,
    quantization,
    sparse_layout_of,
    sparse_params,
    to_filter,
    vector_params,
)
from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from pipeline.retrieve.conditions import INDEXED_FIELDS, pages_where
from pipeline.retrieve.opening import (
    VectorLayout,
    adopt_unmanifested,
    plan_evolution,
    reconcile_lanes,
    refuse_mismatch,
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

__all__ = ["Collections"]

_log = logging.getLogger(__name__)


class Collections:
    """Creates, opens and records pagerag collections through one :class:`Connection`."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def open(self, spec: CollectionSpec, *, create: bool) -> CollectionSpec:
        """Create the collection, or validate (and evolve) an existing one; the recorded spec."""
        name = spec.name
        if not self._conn.is_local:
            self._check_server_version()
        if self.exists(name):
            return self._open_existing(spec, writing=create)
        if not create:
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist in {self._conn.describe()}: nothing "
                "has been ingested yet. Run `pagerag ingest <folder>` first, or check "
                "store.collection and store.url."
            )
        return self._create(spec)

    def exists(self, name: str) -> bool:
        return self._conn.call(f"checking collection {name!r}", lambda c: c.collection_exists(name))

    def recorded(self, name: str) -> CollectionSpec | None:
        """The spec in the collection's manifest point; None without one (or a collection)."""
        if not self.exists(name):
            return None
        manifest = self.manifest(name)
        return spec_from_manifest(name, manifest) if manifest is not None else None

    def manifest(self, name: str) -> dict[str, Any] | None:
        records = self._conn.call(
            f"reading the manifest of collection {name!r}",
            lambda c: c.retrieve(name, ids=[COLLECTION_POINT_ID], with_payload=True),
        )
        if not records or not records[0].payload:
            return None
        manifest = dict(records[0].payload)
        where = f"collection {name!r} in {self._conn.describe()}"
        check_manifest_version(manifest, where=where)
        return manifest

    def write_manifest(self, spec: CollectionSpec) -> None:
        payload = manifest_payload(spec, engine=self._conn.engine_name)
        point = qm.PointStruct(id=COLLECTION_POINT_ID, vector={}, payload=payload)
        self._conn.call(
            f"recording the model of collection {spec.name!r}",
            lambda c: c.upsert(spec.name, points=[point], wait=True),
            retry=True,
        )

    def add_vectors(self, recorded: CollectionSpec, names: Sequence[str]) -> None:
        """Create the pooled multivectors among ``names`` the collection lacks."""
        layout = self._layout(recorded.name)
        missing = [name for name in names if name not in layout]
        if missing:
            self._add_pooled_vectors(recorded, missing)

    def add_text_vector(self, name: str) -> None:
        """Create the text lane's sparse vector unless the collection has it."""
        if TEXT_VECTOR in self._sparse_layout(name):
            return
        with self._adding(name, TEXT_VECTOR):
            self._conn.call(
                f"adding the text lane to {name!r}",
                lambda c: c.create_vector_name(
                    name,
                    vector_name=TEXT_VECTOR,
                    vector_name_config=added_sparse_vector(),
                    wait=True,
                ),
            )

    def drop_vectors(self, spec: CollectionSpec, names: Sequence[str]) -> None:
        """Delete named vectors the manifest does not use, from every point (absent: skipped)."""
        for vector_name in vectors_to_drop(spec, names, self._layout(spec.name)):
            self._conn.call(
                f"deleting vector {vector_name!r} of {spec.name!r}",
                lambda c, v=vector_name: c.delete_vector_name(  # type: ignore[misc]
                    spec.name, vector_name=v, wait=True
                ),
            )

    # ------------------------------------------------------------------ internals

    def _check_server_version(self) -> None:
        from importlib.metadata import version

        from qdrant_client.common.version_check import is_compatible

        info = self._conn.call("connecting", lambda c: c.info())
        client_version = version("qdrant-client")
        if not is_compatible(client_version, info.version):
            _log.warning(
                "Qdrant server %s at %s and qdrant-client %s differ by more than one minor "
                "version; some requests may fail. Pin the server image to a matching version.",
                info.version,
                self._conn.location,
                client_version,
            )

    def _create(self, spec: CollectionSpec) -> CollectionSpec:
        config = self._conn.config
        roles = vector_roles(spec).items()
        vectors = {name: vector_params(spec, role) for name, role in roles if role != "sparse"}
        sparse = {name: sparse_params() for name, role in roles if role == "sparse"}
        kwargs: dict[str, Any] = {
            key: getattr(config, key)
            for key in ("shard_number", "replication_factor", "write_consistency_factor")
            if getattr(config, key) is not None
        }
        try:
            self._conn.call(
                f"creating collection {spec.name!r}",
                lambda c: c.create_collection(
                    spec.name,
                    vectors_config=vectors,
                    sparse_vectors_config=sparse or None,
                    # Also collection-wide: vectors added later inherit "no HNSW".
                    hnsw_config=NO_HNSW,
                    quantization_config=quantization(spec.quantization),
                    # Payloads hold page JPEGs: keep them on disk, not in RAM.
                    on_disk_payload=True,
                    **kwargs,
                ),
            )
        except StoreError as exc:
            # Another worker created it between our check and our create: use theirs.
            if "already exists" not in str(exc):
                raise
            return self._open_existing(spec)
        self.write_manifest(spec)
        self._ensure_indexes(spec.name)
        return spec

    def _ensure_indexes(self, name: str) -> None:
        if self._conn.is_local:  # local mode ignores payload indexes (and warns about them)
            return
        for field in INDEXED_FIELDS:  # idempotent on the server
            self._conn.call(
                f"indexing payload field {field!r} of {name!r}",
                lambda c, f=field: c.create_payload_index(  # type: ignore[misc]
                    name, field_name=f, field_schema=qm.PayloadSchemaType.KEYWORD, wait=True
                ),
                retry=True,
            )

    def _layout(self, name: str) -> Mapping[str, qm.VectorParams]:
        info = self._conn.call(f"reading collection {name!r}", lambda c: c.get_collection(name))
        vectors = info.config.params.vectors
        if not isinstance(vectors, Mapping):
            raise CollectionMismatchError(
                f"collection {name!r} in {self._conn.describe()} has a single unnamed vector: "
                "it was not created by pagerag. Use another collection (store.collection), or "
                "delete it and re-ingest."
            )
        return vectors

    def _sparse_layout(self, name: str) -> dict[str, VectorLayout]:
        info = self._conn.call(f"reading collection {name!r}", lambda c: c.get_collection(name))
        sparse = info.config.params.sparse_vectors or {}
        return {n: sparse_layout_of(params) for n, params in sparse.items()}

    def _pages(self, name: str) -> int:
        flt = to_filter(pages_where())
        result = self._conn.call(
            f"counting points of {name!r}",
            lambda c: c.count(name, count_filter=flt, exact=True),
            retry=True,
        )
        return int(result.count)

    def _open_existing(self, spec: CollectionSpec, *, writing: bool = True) -> CollectionSpec:
        name = spec.name
        manifest = self.manifest(name)
        layout = {n: layout_of(params) for n, params in self._layout(name).items()}
        layout.update(self._sparse_layout(name))
        recorded = spec_from_manifest(name, manifest) if manifest is not None else None
        where = self._conn.describe()
        refuse_mismatch(name, spec, recorded, layout, where=where, delete="this collection")
        if recorded is None:
            # Created, then interrupted before the manifest was written: adopt it.
            pages = self._pages(name)
            recorded = adopt_unmanifested(
                name, spec, layout, pages, where=where, delete="this collection"
            )
            self.write_manifest(recorded)
        lanes = reconcile_lanes(
            name, spec, recorded, lambda: self._pages(name), writing=writing, where=where
        )
        evolution = plan_evolution(name, spec, recorded, layout, lanes=lanes)
        if evolution.add:
            self._add_pooled_vectors(recorded, evolution.add)
        if evolution.add_text:
            self.add_text_vector(name)
        if evolution.quantization is not None:
            wanted = evolution.quantization
            self._conn.call(
                f"changing the quantization of {name!r} to {wanted!r}",
                lambda c: c.update_collection(
                    name, quantization_config=quantization(wanted) or qm.Disabled.DISABLED
                ),
            )
        if evolution.changed:
            self.write_manifest(evolution.spec)
        return evolution.spec

    def _add_pooled_vectors(self, recorded: CollectionSpec, missing: Sequence[str]) -> None:
        name = recorded.name
        warn_vectors_added(name, missing, self._pages(name))
        config = added_vector(recorded)
        for vector_name in missing:
            with self._adding(name, vector_name, ", or search with --mode exact"):
                self._conn.call(
                    f"adding vector {vector_name!r} to {name!r}",
                    lambda c, v=vector_name: c.create_vector_name(  # type: ignore[misc]
                        name, vector_name=v, vector_name_config=config, wait=True
                    ),
                )
                # The new vector's index is inferred; make "exact MaxSim" explicit.
                self._conn.call(
                    f"disabling HNSW on vector {vector_name!r} of {name!r}",
                    lambda c, v=vector_name: c.update_collection(  # type: ignore[misc]
                        name, vectors_config={v: qm.VectorParamsDiff(hnsw_config=NO_HNSW)}
                    ),
                )

    @contextmanager
    def _adding(self, name: str, vector_name: str, fix: str = "") -> Iterator[None]:
        """Adding a named vector; a server that cannot (older than 1.18) is a mismatch."""
        try:
            yield
        except StoreUnavailableError:
            raise
        except StoreError as exc:  # 404 / UNIMPLEMENTED from a server older than 1.18
            raise CollectionMismatchError(
                f"collection {name!r} in {self._conn.describe()} has no vector named "
                f"{vector_name!r} and Qdrant could not add it ({exc}). Adding named "
                "vectors needs Qdrant 1.18 or newer: upgrade the server, or use another "
                f"collection (store.collection){fix}."
            ) from None
