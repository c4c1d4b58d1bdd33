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
* one vectorless **collection point** (``kind="collection"``) recording the
  model and vector layout, checked on every open.

Vectorless points are never returned by vector search.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from pipeline.errors import StoreError
from pipeline.types import (
    CollectionSpec,
    DocumentRecord,
    Float16Array,
    PageFilter,
    PagePoint,
    ScoredPage,
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
    "check_manifest_version",
    "manifest_payload",
    "record_from_payload",
    "record_to_payload",
    "source_dirs",
    "spec_from_manifest",
]

KIND_PAGE = "page"
KIND_DOCUMENT = "document"
KIND_COLLECTION = "collection"
# Payload key of the page's base64 JPEG. Excluded from search results (it is
# large); fetched on demand by PageStore.page_image.
IMAGE_FIELD = "image_jpeg_b64"
COLLECTION_POINT_ID = "00000000-0000-5000-8000-00000000c011"


# Bumped when the stored layout changes in a way older pagerag cannot read.
MANIFEST_SCHEMA_VERSION = 1


def manifest_payload(spec: CollectionSpec, *, engine: str) -> dict[str, Any]:
    """The payload of the collection point: what every adapter records and checks on open."""
    return {
        "kind": KIND_COLLECTION,
        "schema_version": MANIFEST_SCHEMA_VERSION,
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
    )


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


def record_to_payload(record: DocumentRecord) -> dict[str, Any]:
    return {
        "kind": KIND_DOCUMENT,
        "document_id": record.document_id,
        "source": record.source,
        "source_dirs": source_dirs(record.source),
        "file_name": record.file_name,
        "page_count": record.page_count,
        "total_pages": record.total_pages,
        "ingested_at": record.ingested_at,
        "model": record.model,
        "bytes": record.bytes,
        "failed_pages": list(record.failed_pages),
        "meta": dict(record.metadata),
    }


def record_from_payload(payload: dict[str, Any]) -> DocumentRecord:
    return DocumentRecord(
        document_id=payload["document_id"],
        source=payload["source"],
        file_name=payload["file_name"],
        page_count=int(payload["page_count"]),
        total_pages=int(payload.get("total_pages", payload["page_count"])),
        ingested_at=payload["ingested_at"],
        model=payload["model"],
        bytes=int(payload.get("bytes", 0)),
        failed_pages=tuple(payload.get("failed_pages", ())),
        metadata=dict(payload.get("meta", {})),
    )


@runtime_checkable
class PageStore(Protocol):
    """A Qdrant collection of page multivectors. See the module docstring."""

    def open(self, spec: CollectionSpec, *, create: bool = True) -> None:
        """Create the collection, or validate an existing one against ``spec``.

        Raises ``CollectionMismatchError`` (with how to fix it) when the
        existing collection has another model, dimension, vector name,
        distance or comparator; ``CollectionNotFoundError`` when it is missing
        and ``create`` is false.
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

    def delete_document(self, document_id: str) -> int:
        """Remove a document's pages (complete or partial) and its mark; returns pages removed."""
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
