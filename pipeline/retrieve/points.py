"""The page store's bookkeeping, written once over a handful of engine calls.

Why this exists: listing and deleting documents, pruning a redo's stale
pages, completion marks, counting, scrolling page ids and searching are the
same logic on every Qdrant engine — only the calls that reach the engine
differ. :class:`PointStore` implements those parts of
:class:`~pipeline.retrieve.store.PageStore` (and of the reindex protocol)
on top of a few abstract methods, each one call into the adapter's library
with conditions from :mod:`pipeline.retrieve.conditions` and requests from
:mod:`pipeline.retrieve.queries`. An adapter subclasses it and adds opening,
upserts, vectors and stats.
"""

from __future__ import annotations

import base64
import binascii
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

from pipeline.errors import StoreError
from pipeline.retrieve.conditions import (
    Where,
    documents_at,
    documents_where,
    excluding_documents,
    missing_vectors,
    of_document,
    pages_where,
    pages_without_field,
    stale_pages,
)
from pipeline.retrieve.fusion import Fuse, rrf_contribution, rrf_rank
from pipeline.retrieve.opening import with_pooled
from pipeline.retrieve.queries import (
    HybridRequest,
    QueryRequest,
    plan_hybrid,
    plan_query,
    plan_text,
)
from pipeline.retrieve.store import (
    IMAGE_FIELD,
    KIND_DOCUMENT,
    KIND_PAGE,
    ordered_lanes,
    record_from_payload,
    record_to_payload,
)
from pipeline.types import (
    CollectionSpec,
    DocumentRecord,
    Float16Array,
    Lane,
    ModelIdentity,
    PageFilter,
    ScoredPage,
    SparseVector,
    document_point_id,
)

__all__ = ["SCROLL_LIMIT", "Fields", "PointStore", "Row", "image_bytes"]

Row = tuple[str, dict[str, Any]]  # a point's id and the payload fields asked for
Fields = bool | Sequence[str]  # which payload to return: all, none, or these keys
SCROLL_LIMIT = 256  # points per scroll request
# Pages per request while listing documents without a mark: each request
# excludes the documents already found, so this only bounds one answer.
_UNMARKED_LIMIT = 16


class PointStore(ABC):
    """PageStore operations over an engine's points; subclasses make the engine calls."""

    # ------------------------------------------------ what an adapter provides

    @abstractmethod
    def _open_spec(self) -> CollectionSpec:
        """The open collection's recorded spec; StoreError (saying what to do) when closed."""

    @abstractmethod
    def _searchable(self) -> Collection[str]:
        """Names of the vectors a search or page_vectors call may use now."""

    @abstractmethod
    def _count(self, where: Where) -> int:
        """Exact count of the points matching ``where``."""

    @abstractmethod
    def _scroll_page(
        self, where: Where, *, limit: int, offset: Any, fields: Fields
    ) -> tuple[list[Row], Any]:
        """Up to ``limit`` matching points from ``offset`` on, and the next offset (None: done)."""

    @abstractmethod
    def _retrieve(
        self, point_ids: Sequence[str], fields: Fields, action: str
    ) -> dict[str, dict[str, Any]]:
        """Payloads by id of the points that exist (unknown or malformed ids are left out)."""

    @abstractmethod
    def _put_vectorless(self, point_id: str, payload: Mapping[str, Any], action: str) -> None:
        """Write a point without vectors (a completion mark); durable when it returns."""

    @abstractmethod
    def _delete(self, where: Where, action: str) -> None:
        """Delete the matching points; durable when it returns."""

    @abstractmethod
    def _set_payload(self, where: Where, fields: Mapping[str, Any], action: str) -> None:
        """Set top-level payload ``fields`` on the matching points; durable when it returns."""

    @abstractmethod
    def _record(self, spec: CollectionSpec) -> None:
        """Write ``spec`` as the collection's manifest; it is the open spec from now on."""

    @abstractmethod
    def _query_batch(self, requests: Sequence[QueryRequest]) -> list[list[ScoredPage]]:
        """Run planned searches as one engine batch (payloads without the page image)."""

    def _exclusive(self) -> AbstractContextManager[Any]:
        """Held around a count and the write it reports on (engines without a lock: none)."""
        return nullcontext()

    # ------------------------------------------------------------ PageStore

    def mark_complete(self, record: DocumentRecord) -> None:
        self._put_vectorless(
            document_point_id(record.document_id),
            record_to_payload(record),
            f"marking document {record.document_id!r} complete",
        )

    def get_document(self, document_id: str) -> DocumentRecord | None:
        point_id = document_point_id(document_id)
        action = f"reading document {document_id!r}"
        payload = self._retrieve([point_id], True, action).get(point_id)
        if not payload or payload.get("kind") != KIND_DOCUMENT:
            return None
        return record_from_payload(payload)

    def documents(self, *, source: str | None = None) -> list[DocumentRecord]:
        records = [
            record_from_payload(payload)
            for batch in self._scroll(documents_at(source), fields=True)
            for _, payload in batch
        ]
        return sorted(records, key=lambda r: (r.source, r.document_id))

    def document_ids(self, where: PageFilter) -> set[str]:
        """Marked documents in one scroll; then one small scroll per unmarked one.

        Pages are many per document, so they are never scrolled row by row:
        each request excludes the ids already found and returns a new one.
        """
        fields = ("document_id",)
        marks = documents_where(where, KIND_DOCUMENT)
        found = {
            str(p["document_id"]) for rows in self._scroll(marks, fields=fields) for _, p in rows
        }
        pages = documents_where(where, KIND_PAGE)
        while True:
            rows, _ = self._scroll_page(
                excluding_documents(pages, found), limit=_UNMARKED_LIMIT, offset=None, fields=fields
            )
            ids = {str(payload["document_id"]) for _, payload in rows}
            if not ids:
                return found
            found |= ids

    def delete_document(self, document_id: str) -> int:
        """Delete pages and mark in one filter delete; pages counted first, together."""
        with self._exclusive():
            pages = self._count(pages_where(PageFilter(document_ids=(document_id,))))
            self._delete(of_document(document_id), f"deleting document {document_id!r}")
        return pages

    def prune_pages(self, document_id: str, keep: Collection[int]) -> int:
        stale = stale_pages(document_id, keep)
        with self._exclusive():
            extra = self._count(stale)
            if extra:
                self._delete(stale, f"removing stale pages of {document_id!r}")
        return extra

    def set_payload(self, document_id: str, fields: Mapping[str, Any]) -> None:
        self._set_payload(
            of_document(document_id), dict(fields), f"updating metadata of {document_id!r}"
        )

    def count_pages(self, filter: PageFilter | None = None) -> int:
        return self._count(pages_where(filter))

    def search(
        self,
        query: Float16Array,
        *,
        k: int,
        filter: PageFilter | None = None,
        using: str | None = None,
        prefetch: Sequence[tuple[str, int]] = (),
    ) -> list[ScoredPage]:
        """Top-``k`` pages by exact MaxSim; ``prefetch`` stages are reranked by ``using``.

        See :func:`~pipeline.retrieve.queries.plan_query` for what is checked.
        """
        spec = self._open_spec()
        request = plan_query(
            spec, self._searchable(), query, k=k, filter=filter, using=using, prefetch=prefetch
        )
        return self._query(request)

    def search_text(
        self, query: SparseVector, *, k: int, filter: PageFilter | None = None
    ) -> list[ScoredPage]:
        """Top-``k`` pages by BM25 (see :func:`~pipeline.retrieve.queries.plan_text`)."""
        request = plan_text(self._open_spec(), query, k=k, filter=filter)
        if not len(query):
            return []
        return _ranked(self._query(request), "text")

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
        """Both lanes fused in one engine query, the lanes alone beside it in one batch.

        Lane ranks: the text lane's from its own pass (a sparse search, cheap);
        the visual lane's, under RRF, from each fused score minus the text
        contribution (:func:`~pipeline.retrieve.fusion.rrf_rank`), under DBSF from
        a visual pass of its own (DBSF costs one more visual search).
        """
        spec = self._open_spec()
        request = plan_hybrid(
            spec,
            self._searchable(),
            visual,
            text,
            k=k,
            fusion=fusion,
            lane_k=lane_k,
            filter=filter,
            prefetch=prefetch,
        )
        results = self._query_batch(request.batch)
        if request.fusion is None:  # no text terms: the visual lane alone
            return _ranked(results[0], "visual")
        return _with_lanes(request, results)

    def _query(self, request: QueryRequest) -> list[ScoredPage]:
        """Run one planned search."""
        return self._query_batch([request])[0]

    def iter_page_ids(self, *, batch: int = 256) -> Iterator[list[str]]:
        """Page ids in scroll order, ``batch`` at a time (no engine lock held across yields)."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        for rows in self._scroll(pages_where(None), limit=batch, fields=False):
            yield [point_id for point_id, _ in rows]

    # ----------------------------- in-place reindex (pipeline.retrieve.reindex)

    def page_ids_missing(self, names: Sequence[str], *, batch: int = 256) -> Iterator[list[str]]:
        for rows in self._scroll(missing_vectors(names), limit=batch, fields=False):
            yield [point_id for point_id, _ in rows]

    def count_pages_missing(self, names: Sequence[str]) -> int:
        return self._count(missing_vectors(names))

    def record_pooled(self, names: Sequence[str]) -> CollectionSpec:
        with self._exclusive():
            spec = self._open_spec()
            updated = with_pooled(spec, names)
            if updated != spec:
                self._record(updated)
            return updated

    def record_full_vector(self, name: str, token_pooling: int | None) -> CollectionSpec:
        """Make ``name`` the manifest's full vector, token-pooled by ``token_pooling``."""
        with self._exclusive():
            spec = self._open_spec()
            updated = replace(spec, full_vector=name, token_pooling=token_pooling)
            if updated != spec:
                self._record(updated)
            return updated

    def count_pages_without_field(self, key: str) -> int:
        """Pages whose payload lacks ``key`` (missing or null)."""
        return self._count(pages_without_field(key))

    def page_ids_without_field(self, key: str, *, batch: int = 256) -> Iterator[list[str]]:
        """Ids of the pages whose payload lacks ``key``, ``batch`` at a time."""
        for rows in self._scroll(pages_without_field(key), limit=batch, fields=False):
            yield [point_id for point_id, _ in rows]

    def record_lanes(
        self,
        lanes: Sequence[Lane],
        *,
        text_language: str | None = None,
        identity: ModelIdentity | None = None,
    ) -> CollectionSpec:
        """Make ``lanes`` the manifest's (after a reindex filled a lane); ``identity``, when
        given, becomes the weights (and model) of the visual vectors."""
        with self._exclusive():
            spec = self._open_spec()
            updated = replace(spec, lanes=ordered_lanes(lanes))
            if text_language is not None:
                updated = replace(updated, text_language=text_language)
            if identity is not None:
                updated = replace(updated, model=identity.name, identity=identity)
            if updated != spec:
                self._record(updated)
            return updated

    def page_payloads(
        self, point_ids: Iterable[str], fields: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """The named payload fields of pages by point id; unknown ids are left out."""
        ids = list(point_ids)
        return self._retrieve(ids, tuple(fields), f"reading payloads of {len(ids)} pages")

    # -------------------------------------------------------------- helpers

    def _scroll(
        self, where: Where, *, limit: int = SCROLL_LIMIT, fields: Fields
    ) -> Iterator[list[Row]]:
        """Non-empty batches of the matching points, one engine request per batch."""
        offset: Any = None
        while True:
            rows, offset = self._scroll_page(where, limit=limit, offset=offset, fields=fields)
            if rows:
                yield rows
            if offset is None:
                return

    def _counts(self) -> tuple[int, int]:
        """(completed documents, pages), counted together."""
        with self._exclusive():
            return self._count(documents_at()), self._count(pages_where())


def _ranked(pages: list[ScoredPage], lane: Lane) -> list[ScoredPage]:
    """``pages`` of one lane, each with its 1-based rank in it."""
    return [replace(page, lanes={lane: rank}) for rank, page in enumerate(pages, 1)]


def _with_lanes(request: HybridRequest, results: list[list[ScoredPage]]) -> list[ScoredPage]:
    """The fused pages, each with its rank in every lane that found it."""
    fused, text = results[0], results[1]
    text_ranks = {page.point_id: rank for rank, page in enumerate(text, 1)}
    fusion = request.fusion
    assert fusion is not None  # planned with a text query
    if request.visual is not None:
        visual_ranks = {page.point_id: rank for rank, page in enumerate(results[2], 1)}
    else:
        visual_ranks = {}
        for page in fused:
            rank = text_ranks.get(page.point_id)
            text_part = rrf_contribution(rank, fusion.weights[1], fusion.k) if rank else 0.0
            found = rrf_rank(page.score - text_part, fusion.weights[0], fusion.k)
            if found is not None:
                visual_ranks[page.point_id] = found
    out = []
    for page in fused:
        lanes: dict[str, int] = {}
        if page.point_id in visual_ranks:
            lanes["visual"] = visual_ranks[page.point_id]
        if page.point_id in text_ranks:
            lanes["text"] = text_ranks[page.point_id]
        out.append(replace(page, lanes=lanes))
    return out


def image_bytes(payload: Mapping[str, Any] | None, point_id: str, collection: str) -> bytes | None:
    """The page JPEG stored in ``payload``, or None when none was stored."""
    encoded = (payload or {}).get(IMAGE_FIELD)
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise StoreError(
            f"the stored image of page {point_id} in {collection!r} is not valid base64; "
            "re-ingest its document"
        ) from None
