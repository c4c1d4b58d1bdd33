"""What a collection holds: documents found by id, prefix, path or folder, and its status.

* :func:`find_documents` — what ``delete`` and ``pagerag delete`` resolve a
  target to (documents a killed job left unmarked included);
* :class:`Status` — what ``pagerag status`` shows, with :func:`vector_bytes_per_page`:
  a page's vector bytes under this collection's storage and every other option.

Engine-neutral: everything is read through the :class:`~pipeline.retrieve.store.PageStore`
protocol and the model registry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import StoreConfig
from pipeline.errors import QueryError
from pipeline.models import MODELS
from pipeline.retrieve.planning import absolute_path
from pipeline.retrieve.store import PageStore
from pipeline.types import CollectionSpec, DocumentRecord, PageFilter, StoreStats

__all__ = ["Status", "find_documents", "measure_tokens", "vector_bytes_per_page"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHORT_ID = re.compile(r"^[0-9a-f]{4,63}$")
_WIDTH = {"float16": 2, "float32": 4}
_CODE = {"none": 0.0, "scalar": 1.0, "binary": 1 / 8}


# --------------------------------------------------------------------------- documents


def find_documents(store: PageStore, target: str | Path) -> list[DocumentRecord]:
    """The documents ``target`` names, in an opened ``store``.

    ``target`` is a document id, a unique prefix of one (the short id
    ``status --documents`` shows), a file path (resolved, or as given when
    it was a symlink) or a folder (every document under it). Documents a
    killed job left without a completion mark are found too: they come
    back as records with ``page_count`` 0 and ``incomplete="unfinished"``.
    Raises ``QueryError`` listing the matches when a prefix is ambiguous.
    """
    text = str(target)
    ids: set[str] = set()
    if _SHA256.match(text):
        ids = store.document_ids(PageFilter(document_ids=(text,)))
    elif _SHORT_ID.match(text) and not os.path.exists(text):
        ids = _by_prefix(store, text)
    if not ids:
        path = absolute_path(text)
        for name in {path, os.path.realpath(path)}:
            ids |= store.document_ids(PageFilter(source_prefix=name))
    return [_record_or_leftover(store, i) for i in sorted(ids)]


def _by_prefix(store: PageStore, prefix: str) -> set[str]:
    matches = [r for r in store.documents() if r.document_id.startswith(prefix)]
    if len(matches) > 1:
        listed = "; ".join(f"{r.document_id[:16]} {r.source}" for r in matches[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise QueryError(
            f"document id prefix {prefix!r} is ambiguous: it matches {len(matches)} "
            f"documents ({listed}{more}); give more characters"
        )
    return {r.document_id for r in matches}


def _record_or_leftover(store: PageStore, document_id: str) -> DocumentRecord:
    record = store.get_document(document_id)
    if record is not None:
        return record
    pages = store.count_pages(PageFilter(document_ids=(document_id,)))
    return DocumentRecord(
        document_id=document_id,
        source="",
        file_name="",
        page_count=0,
        total_pages=pages,
        ingested_at="",
        model="",
        bytes=0,
        incomplete="unfinished",
    )


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Status:
    """What ``pagerag status`` shows (``spec`` is None before anything was ingested)."""

    stats: StoreStats
    spec: CollectionSpec | None
    configured_model: str
    documents: tuple[DocumentRecord, ...]
    # Mean vectors per page by vector name, measured on stored pages (measure_tokens):
    # set when the model's count varies by page or the pages were token-pooled.
    measured_tokens: dict[str, float] | None = None

    @classmethod
    def empty(cls, config: StoreConfig, configured_model: str) -> Status:
        """The status before anything was ingested: no collection yet."""
        stats = StoreStats(
            collection=config.collection,
            model=None,
            documents=0,
            pages=0,
            bytes_on_disk=None,
            engine="qdrant-server" if config.url else "qdrant-edge",
            location=config.url or str(config.path),
        )
        return cls(stats, None, configured_model, ())

    @property
    def incomplete_documents(self) -> int:
        """Documents stored with pages missing (truncated, timed out, failed pages)."""
        return sum(not d.is_complete for d in self.documents)

    def to_dict(self) -> dict[str, Any]:
        """The ``status --json`` object."""
        spec, stats = self.spec, self.stats
        # The weights that made the vectors, as the manifest records them (None
        # for a collection written before pagerag fingerprinted weights).
        identity = None if spec is None else spec.identity
        # A text-only collection declares the visual vectors but no page has them yet.
        visual = spec is not None and spec.has_visual
        per_page = (
            vector_bytes_per_page(spec, self.measured_tokens)
            if spec is not None and visual
            else None
        )
        vector_bytes = None if per_page is None else per_page["total"] * stats.pages
        if spec is not None and not visual:
            vector_bytes = 0
        return {
            "collection": stats.collection,
            "engine": stats.engine,
            "location": stats.location,
            "model": stats.model if identity is None else identity.label,
            "model_source": None if identity is None else identity.source,
            "model_fingerprint": None if identity is None else identity.fingerprint,
            "model_stand_in": None if identity is None else identity.stand_in,
            "configured_model": self.configured_model,
            "lanes": None if spec is None else list(spec.lanes),
            "text_language": None if spec is None or not spec.has_text else spec.text_language,
            "documents": stats.documents,
            "incomplete_documents": self.incomplete_documents,
            "pages": stats.pages,
            "bytes_on_disk": stats.bytes_on_disk,
            "bytes_per_page": (
                round(stats.bytes_on_disk / stats.pages)
                if stats.bytes_on_disk and stats.pages
                else None
            ),
            "vector_bytes_per_page": per_page,
            # Computed from the layout, like vector_bytes_per_page; what is left of
            # bytes_on_disk is page images (when stored), payloads, indexes and the WAL.
            "vector_bytes": vector_bytes,
            "other_bytes_on_disk": (
                max(0, stats.bytes_on_disk - vector_bytes)
                if stats.bytes_on_disk is not None and vector_bytes is not None
                else None
            ),
            "vectors": None
            if spec is None
            else {
                "full": spec.full_vector,
                "pooled": list(spec.pooled),
                "dim": spec.dim,
                "datatype": spec.datatype,
                "quantization": spec.quantization,
            },
        }


def vector_bytes_per_page(
    spec: CollectionSpec, measured: dict[str, float] | None = None
) -> dict[str, Any] | None:
    """Vector bytes per page in this collection, and under every storage option.

    For a model with a fixed layout, computed from it (tokens per page, patch
    grid) and the pooled vectors stored; matches measured on-disk sizes within
    ~1.5% (docs/retrieval.md). When the count varies by page (dynamic
    resolution) or pages were token-pooled, from ``measured``: the mean
    vectors per page of each vector name over stored pages
    (:func:`measure_tokens`), reported as ``tokens_per_page``. None when
    neither is known.
    """
    fixed = _fixed_counts(spec)
    from_store = fixed is None or bool(spec.token_pooling)
    counts: dict[str, float] = fixed or {}
    if from_store:
        if not measured or spec.full_vector not in measured:
            return None
        counts = {name: measured.get(name, 0.0) for name in (spec.full_vector, *spec.pooled)}
    full_tokens = counts[spec.full_vector]
    pooled_tokens = sum(counts.get(name, 0.0) for name in spec.pooled)
    tokens = full_tokens + pooled_tokens

    def total(datatype: str, quantization: str) -> int:
        return round(tokens * spec.dim * (_WIDTH[datatype] + _CODE[quantization]))

    width = _WIDTH[spec.datatype]
    result: dict[str, Any] = {
        "full": round(full_tokens * spec.dim * width),
        "pooled": round(pooled_tokens * spec.dim * width),
        "quantized": round(tokens * spec.dim * _CODE[spec.quantization]),
        "total": total(spec.datatype, spec.quantization),
        "options": {
            "float16": total("float16", "none"),
            "float32": total("float32", "none"),
            "scalar": total("float16", "scalar"),
            "binary": total("float16", "binary"),
        },
    }
    if from_store and measured is not None:
        result["tokens_per_page"] = {name: round(value, 1) for name, value in counts.items()}
        result["measured_pages"] = int(measured.get("pages", 0))
    return result


def _fixed_counts(spec: CollectionSpec) -> dict[str, float] | None:
    """Vectors per page of each vector name, from a fixed model layout (None if it varies)."""
    model = MODELS.get(spec.model)
    if model is None or model.tokens_per_page is None:
        return None
    rows, cols = model.patch_grid or (0, 0)
    extra = model.tokens_per_page - rows * cols
    per_name = {"rows": rows + extra, "cols": cols + extra}
    counts = {spec.full_vector: float(model.tokens_per_page)}
    counts.update({name: float(per_name.get(name, 0)) for name in spec.pooled})
    return counts


def measure_tokens(
    store: PageStore, spec: CollectionSpec, *, sample: int = 64
) -> dict[str, float] | None:
    """Mean vectors per page of each stored vector name, over up to ``sample`` pages.

    For :func:`vector_bytes_per_page` when the count is not fixed by the model
    (dynamic resolution, token pooling); None when that is not needed or no
    page is stored. ``pages`` in the result is how many pages were read.
    """
    model = MODELS.get(spec.model)
    if model is not None and model.tokens_per_page is not None and not spec.token_pooling:
        return None
    ids = next(iter(store.iter_page_ids(batch=sample)), [])
    if not ids:
        return None
    means: dict[str, float] = {"pages": float(len(ids))}
    for name in (spec.full_vector, *spec.pooled):
        vectors = store.page_vectors(ids, using=name)
        if vectors:
            means[name] = sum(v.shape[0] for v in vectors.values()) / len(vectors)
    return means
