"""The page store: where page vectors, payloads and completion marks live.

Two adapters implement :class:`PageStore` and pass one contract suite
(``tests/store_contract.py``):

* ``connectors.qdrant_edge.EdgePageStore`` — the embedded default: Qdrant's own
  Rust core in-process, persisted under ``store.path``;
* ``connectors.qdrant_client.ClientPageStore`` — a Qdrant server (``store.url``)
  or qdrant-client's in-process ``:memory:`` mode.

Everything lives in *one* Qdrant collection so that every deployment
(embedded, one server, a cluster) has the same durability story:

* a **page point** per page: the full multivector (+ pooled vectors) and the
  page payload (``kind="page"``);
* a vectorless **document point** per completed document (``kind="document"``),
  written only after all its pages are durably stored — the crash-safe
  completion mark that makes reruns skip finished files and redo half-written
  ones (deterministic point ids make the redo overwrite, never duplicate);
* one vectorless **collection point** (``kind="collection"``, the manifest)
  recording the model, the weights that made its vectors (source and
  fingerprint, see :mod:`pipeline.embed.fingerprint`) and the vector layout,
  checked on every open.

Vectorless points are never returned by vector search.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from pipeline.embed.pooling import GRID_FIELD, page_grid
from pipeline.errors import StoreError
from pipeline.models import ModelSpec
from pipeline.retrieve.fusion import Fuse
from pipeline.types import (
    LANES,
    VISUAL,
    CollectionSpec,
    DocumentRecord,
    Float16Array,
    Lane,
    ModelIdentity,
    PageFilter,
    PagePoint,
    PatchGrid,
    ScoredPage,
    SparseVector,
    StoreStats,
)

__all__ = [
    "COLLECTION_POINT_ID",
    "IMAGE_FIELD",
    "KIND_COLLECTION",
    "KIND_DOCUMENT",
    "KIND_PAGE",
    "MANIFEST_SCHEMA_VERSION",
    "PageStore",
    "PayloadReader",
    "adopt_identity",
    "check_manifest_version",
    "manifest_payload",
    "ordered_lanes",
    "paths_payload",
    "record_from_payload",
    "record_to_payload",
    "source_dirs",
    "spec_from_manifest",
    "stored_grids",
    "weights_problem",
    "weights_remedy",
]

log = logging.getLogger(__name__)

KIND_PAGE = "page"
KIND_DOCUMENT = "document"
KIND_COLLECTION = "collection"
# Payload key of the page's base64 JPEG. Excluded from search results (it is
# large); fetched on demand by PageStore.page_image.
IMAGE_FIELD = "image_jpeg_b64"
COLLECTION_POINT_ID = "00000000-0000-5000-8000-00000000c011"


# Bumped when the stored layout changes in a way older pagerag cannot read: the
# newest schema this pagerag reads. 2: a collection with a text lane, or without the
# visual lane (an older pagerag would misread it as visual-only); visual-only
# collections are still written as 1, so older pagerag keeps reading them.
MANIFEST_SCHEMA_VERSION = 2
_VISUAL_ONLY_SCHEMA = 1


def manifest_payload(spec: CollectionSpec, *, engine: str) -> dict[str, Any]:
    """The payload of the collection point: what every adapter records and checks on open."""
    return {
        "kind": KIND_COLLECTION,
        "schema_version": _VISUAL_ONLY_SCHEMA if spec.lanes == VISUAL else MANIFEST_SCHEMA_VERSION,
        "engine": engine,
        "collection": spec.name,
        "model": spec.model,
        "dim": spec.dim,
        "full_vector": spec.full_vector,
        "pooled": list(spec.pooled),
        "datatype": spec.datatype,
        "quantization": spec.quantization,
        "on_disk": spec.on_disk,
        "distance": "Dot",
        "comparator": "max_sim",
        "token_pooling": spec.token_pooling,
        "lanes": list(spec.lanes),
        "text_language": spec.text_language,
        **_identity_payload(spec.identity),
    }


def _identity_payload(identity: ModelIdentity | None) -> dict[str, Any]:
    # Absent (not null) without an identity: the layout of manifests written
    # before weights were fingerprinted, which an opening for ingest adopts.
    if identity is None:
        return {}
    return {
        "model_source": identity.source,
        "model_fingerprint": identity.fingerprint,
        "model_stand_in": identity.stand_in,
    }


def check_manifest_version(manifest: Mapping[str, Any], *, where: str) -> None:
    """Refuse a collection written by a newer pagerag instead of misreading it."""
    version = int(manifest.get("schema_version", 0))
    if version > MANIFEST_SCHEMA_VERSION:
        raise StoreError(
            f"{where} was written by a newer pagerag (store schema {version}, this one reads "
            f"{MANIFEST_SCHEMA_VERSION}); upgrade pagerag"
        )


def spec_from_manifest(name: str, manifest: Mapping[str, Any]) -> CollectionSpec:
    return CollectionSpec(
        name=name,
        model=str(manifest["model"]),
        dim=int(manifest["dim"]),
        full_vector=str(manifest.get("full_vector", "full")),
        pooled=tuple(manifest.get("pooled", ())),
        datatype=manifest.get("datatype", "float16"),
        quantization=manifest.get("quantization", "none"),
        on_disk=bool(manifest.get("on_disk", False)),
        identity=_identity_from_manifest(manifest),
        token_pooling=int(manifest["token_pooling"]) if manifest.get("token_pooling") else None,
        lanes=ordered_lanes(manifest.get("lanes") or VISUAL),
        text_language=str(manifest.get("text_language") or "english"),
    )


def ordered_lanes(lanes: Iterable[str]) -> tuple[Lane, ...]:
    """``lanes`` in the canonical order (visual, text), each once; StoreError on an unknown
    lane (a manifest from a newer pagerag that bumped no schema) or none at all."""
    given = set(lanes)
    unknown = given - set(LANES)
    if unknown or not given:
        raise StoreError(
            f"unknown retrieval lanes {sorted(unknown) or '(none)'} recorded; this pagerag "
            f"knows {list(LANES)}: upgrade pagerag"
        )
    return tuple(lane for lane in LANES if lane in given)


def _identity_from_manifest(manifest: Mapping[str, Any]) -> ModelIdentity | None:
    fingerprint = manifest.get("model_fingerprint")
    if not fingerprint:
        return None  # written before pagerag fingerprinted weights
    return ModelIdentity(
        name=str(manifest["model"]),
        source=str(manifest.get("model_source", "unknown")),
        fingerprint=str(fingerprint),
        stand_in=bool(manifest.get("model_stand_in", False)),
    )


def weights_problem(recorded: CollectionSpec | None, wanted: CollectionSpec) -> str | None:
    """Why the vectors of ``recorded`` cannot be mixed with ``wanted``'s weights, or None.

    Only weights of one model name are compared (another model is its own
    problem). No identity on either side means nothing to compare: ``wanted``
    without one is an opening that reads only; ``recorded`` without one
    predates fingerprints and takes the wanted identity (see the adapters).
    """
    if recorded is None or recorded.identity is None or wanted.identity is None:
        return None
    if (
        recorded.model != wanted.model
        or recorded.identity.fingerprint == wanted.identity.fingerprint
    ):
        return None
    return (
        f"its vectors were made by {recorded.identity.describe()}, but the configured weights "
        f"are {wanted.identity.describe()}; vectors of different weights cannot be compared, "
        "so pagerag never mixes them in one collection"
    )


def adopt_identity(recorded: CollectionSpec, wanted: CollectionSpec) -> CollectionSpec:
    """``recorded`` taking ``wanted``'s weights when it predates fingerprints, else unchanged.

    A manifest written before pagerag fingerprinted weights cannot say which
    weights made its vectors. The first opening that will write or search
    with known weights (same model name) adopts them, with a warning: refusing
    every such collection would strand them, and in the usual case they were
    indeed made by the weights still configured.
    """
    if recorded.identity is not None or wanted.identity is None or recorded.model != wanted.model:
        return recorded
    log.warning(
        "collection %r records no fingerprint of the weights that made its vectors (it was "
        "written by an older pagerag); assuming they are the configured weights, %s, and "
        "recording those from now on. If its pages were embedded with other weights, re-ingest "
        "them into a new collection (another store.collection).",
        recorded.name,
        wanted.identity.describe(),
    )
    return replace(recorded, identity=wanted.identity)


def weights_remedy(recorded: CollectionSpec | None, wanted: CollectionSpec) -> str:
    """What to append to the fix of a :func:`weights_problem` ("" when there is none).

    Besides a new collection or re-ingesting (which re-embeds every page), the
    way back to the weights that filled the collection. ``pagerag reindex``
    only derives pooled vectors from stored ones: it cannot re-embed.
    """
    if recorded is None or recorded.identity is None or not weights_problem(recorded, wanted):
        return ""
    source = recorded.identity.source
    back = (
        "unset embedding.model_path to use the hub weights that filled it"
        if source.startswith("hub:")
        else f"set embedding.model_path back to {source}, the weights that filled it"
    )
    return f"; or {back} (`pagerag reindex` does not re-embed pages)"


def source_dirs(source: str) -> list[str]:
    """Every folder above ``source`` (``/a/b/c.pdf`` -> ``/a/b``, ``/a``, ``/``).

    Stored in the payload so a source-prefix filter is an exact keyword match
    that works on every engine and can use a payload index.
    """
    parts = source.rstrip("/").split("/")
    dirs = []
    for i in range(len(parts) - 1, 0, -1):
        dirs.append("/".join(parts[:i]) or "/")
    return dirs


def paths_payload(source: str, alias: str | None) -> dict[str, Any]:
    """The payload fields that place a point under its path(s).

    ``source`` is the resolved path; ``source_alias`` the path as the user
    gave it when that differs (a symlink), so deleting or filtering by
    either finds the document. ``source_dirs`` holds the folders above both.
    """
    dirs = source_dirs(source)
    fields: dict[str, Any] = {"source": source}
    if alias and alias != source:
        fields["source_alias"] = alias
        dirs += [d for d in source_dirs(alias) if d not in dirs]
    fields["source_dirs"] = dirs
    return fields


def record_to_payload(record: DocumentRecord) -> dict[str, Any]:
    return {
        "kind": KIND_DOCUMENT,
        "document_id": record.document_id,
        **paths_payload(record.source, record.source_alias),
        "file_name": record.file_name,
        "page_count": record.page_count,
        "total_pages": record.total_pages,
        "ingested_at": record.ingested_at,
        "model": record.model,
        "bytes": record.bytes,
        "failed_pages": list(record.failed_pages),
        "incomplete": record.incomplete,
        "limits": dict(record.limits),
        "meta": dict(record.metadata),
    }


def record_from_payload(payload: dict[str, Any]) -> DocumentRecord:
    failed = tuple(payload.get("failed_pages", ()))
    page_count = int(payload["page_count"])
    total = int(payload.get("total_pages", page_count))
    incomplete = payload.get("incomplete")
    if "incomplete" not in payload and (failed or page_count < total):
        # Marks written before pagerag recorded why: infer it, limits unknown.
        incomplete = "page_errors" if failed else "truncated"
    return DocumentRecord(
        document_id=payload["document_id"],
        source=payload["source"],
        file_name=payload["file_name"],
        page_count=page_count,
        total_pages=total,
        ingested_at=payload["ingested_at"],
        model=payload["model"],
        bytes=int(payload.get("bytes", 0)),
        failed_pages=failed,
        metadata=dict(payload.get("meta", {})),
        incomplete=incomplete,
        limits=dict(payload.get("limits") or {}),
        source_alias=payload.get("source_alias"),
    )


@runtime_checkable
class PageStore(Protocol):
    """A Qdrant collection of page multivectors. See the module docstring."""

    def open(self, spec: CollectionSpec, *, create: bool = True) -> None:
        """Create the collection, or validate an existing one against ``spec``.

        Raises ``CollectionMismatchError`` (with how to fix it) when the
        existing collection has another model, dimension, vector name,
        distance or comparator, or was filled by other weights than
        ``spec.identity`` (a different fingerprint; :func:`weights_problem`);
        ``CollectionNotFoundError`` when it is missing and ``create`` is
        false. ``spec.identity`` None checks no weights (reading); a manifest
        without an identity takes ``spec.identity`` (:func:`adopt_identity`).
        """
        ...

    def spec(self) -> CollectionSpec | None:
        """The spec recorded in an existing collection, without opening it for writes."""
        ...

    def upsert_pages(self, points: Sequence[PagePoint]) -> None:
        """Insert or overwrite page points (idempotent by point id)."""
        ...

    def flush(self) -> None:
        """Durability barrier: everything upserted so far survives a crash."""
        ...

    def mark_complete(self, record: DocumentRecord) -> None:
        """Write the document point. Call only after ``flush()`` of its pages."""
        ...

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """The completion record of a document, or None if not (fully) stored."""
        ...

    def documents(self, *, source: str | None = None) -> list[DocumentRecord]:
        """Completed documents, all or those stored from exactly ``source``."""
        ...

    def document_ids(self, where: PageFilter) -> set[str]:
        """Ids of every document with a point (page or mark) matching ``where``.

        Unlike :meth:`documents` this sees documents without a completion
        mark too (a killed job's pages): what reconciling a path and deleting
        by path or folder need, so nothing stays behind unlisted.
        """
        ...

    def delete_document(self, document_id: str) -> int:
        """Remove a document's pages (complete or partial) and its mark; returns pages removed."""
        ...

    def prune_pages(self, document_id: str, keep: Collection[int]) -> int:
        """Delete the document's page points whose page number is not in ``keep``.

        A redo that stores fewer pages than an earlier attempt (a lowered
        render.max_pages, a page that now fails) must not leave the earlier
        attempt's pages behind. Returns how many were removed.
        """
        ...

    def set_payload(self, document_id: str, fields: Mapping[str, Any]) -> None:
        """Set top-level payload ``fields`` on every point of a document (pages and mark).

        For what changes without re-embedding: user metadata, a moved file's path.
        """
        ...

    def search(
        self,
        query: Float16Array,
        *,
        k: int,
        filter: PageFilter | None = None,
        using: str | None = None,
        prefetch: Sequence[tuple[str, int]] = (),
    ) -> list[ScoredPage]:
        """Top-``k`` pages by MaxSim of ``query`` against vector ``using``.

        ``using`` defaults to the full multivector. ``prefetch`` is a list of
        ``(vector_name, limit)`` first stages whose union is reranked by
        ``using`` (two-stage retrieval). Payloads exclude the page image.
        """
        ...

    def search_text(
        self, query: SparseVector, *, k: int, filter: PageFilter | None = None
    ) -> list[ScoredPage]:
        """Top-``k`` pages of the text lane: BM25 of the query's terms (``TEXT_VECTOR``,
        IDF computed by the engine over the collection). Each result's ``lanes`` is
        ``{"text": rank}``. Pages without text are never returned; an empty query
        vector returns no pages. ``QueryError`` when the collection has no text lane."""
        ...

    def search_hybrid(
        self,
        visual: Float16Array,
        text: SparseVector,
        *,
        k: int,
        fusion: Fuse,
        lane_k: int,
        filter: PageFilter | None = None,
        prefetch: Sequence[tuple[str, int]] = (),
    ) -> list[ScoredPage]:
        """Top-``k`` pages of both lanes fused in one engine query.

        The visual lane is exact MaxSim over every page, or with ``prefetch``
        (pooled vector name, limit) the two-stage search; the text lane is as
        :meth:`search_text`. Each lane hands its ``lane_k`` best pages (at least
        ``k``) to ``fusion`` (weights in lane order: visual, text). The filter
        applies to every lane. Each result's ``lanes`` holds its 1-based rank in
        each lane that found it. An empty text vector fuses the visual lane alone.
        """
        ...

    def page_image(self, point_id: str) -> bytes | None:
        """The stored JPEG of a page, or None if images were not stored."""
        ...

    def page_vectors(
        self, point_ids: Iterable[str], using: str | None = None
    ) -> dict[str, Float16Array]:
        """Stored vectors by point id (for reindexing and similarity maps)."""
        ...

    def iter_page_ids(self, *, batch: int = 256) -> Iterable[list[str]]:
        """All page point ids, in batches (for reindexing and audits)."""
        ...

    def count_pages(self, filter: PageFilter | None = None) -> int: ...

    def stats(self) -> StoreStats: ...

    def close(self) -> None:
        """Release the engine (the embedded data directory lock)."""
        ...


@runtime_checkable
class PayloadReader(Protocol):
    """Reads chosen payload fields of stored pages (both adapters in ``connectors/`` do)."""

    def page_payloads(
        self, point_ids: Iterable[str], fields: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """``{point_id: {field: value}}`` for the pages found; unknown ids are left out."""
        ...


def stored_grids(
    store: PageStore, model: ModelSpec, point_ids: Iterable[str]
) -> dict[str, PatchGrid | None]:
    """Each stored page's patch grid: the one its payload recorded (models whose grid
    varies by page), else the model's fixed one; None for a page without one (a
    token-pooled page, a model without a grid)."""
    ids = list(point_ids)
    payloads: dict[str, dict[str, Any]] = {}
    if model.patch_grid is None and model.per_page_grid and isinstance(store, PayloadReader):
        payloads = store.page_payloads(ids, [GRID_FIELD])
    return {point_id: page_grid(model, payloads.get(point_id)) for point_id in ids}
