"""Which points a store call touches, as an engine-neutral condition tree.

Why this exists: both store adapters select points the same way — pages of a
:class:`~pipeline.types.PageFilter`, the points of one document, a
document's stale pages, pages lacking a vector — but their libraries spell a
filter with different classes (``qdrant_client.models.Filter`` and
``qdrant_edge.Filter``). The *decision* of what to match lives here, once;
each adapter turns a :class:`Where` into its library's classes with one small
recursive function. Every condition here exists in both engines:

* :class:`Match` — a keyword (or integer) payload field equals a value; on an
  array field (``source_dirs``) any element may equal it;
* :class:`MatchAny` — the field equals one of several values;
* :class:`HasVector` — the point has the named vector;
* :class:`IsEmpty` — the payload field is missing, null or an empty list;
* :class:`Where` — ``must`` (all), ``should`` (at least one, when given) and
  ``must_not`` (none), nestable.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.errors import QueryError
from pipeline.retrieve.store import KIND_DOCUMENT, KIND_PAGE
from pipeline.types import PageFilter

__all__ = [
    "INDEXED_FIELDS",
    "Condition",
    "HasVector",
    "IsEmpty",
    "Match",
    "MatchAny",
    "Where",
    "documents_at",
    "documents_where",
    "excluding_documents",
    "missing_vectors",
    "of_document",
    "of_kind",
    "pages_where",
    "pages_without_field",
    "stale_pages",
]

# Keyword payload fields every page filter, count and delete matches on: each
# engine keeps a payload index on them where it supports one.
INDEXED_FIELDS = ("kind", "document_id", "source", "source_alias", "source_dirs")

Value = str | int


@dataclass(frozen=True)
class Match:
    key: str
    value: Value


@dataclass(frozen=True)
class MatchAny:
    key: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class HasVector:
    name: str


@dataclass(frozen=True)
class IsEmpty:
    key: str


@dataclass(frozen=True)
class Where:
    must: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()


Condition = Match | MatchAny | HasVector | IsEmpty | Where


def of_kind(kind: str) -> Match:
    return Match("kind", kind)


def of_document(document_id: str) -> Where:
    """Every point of a document: its pages and its completion mark."""
    return Where(must=(Match("document_id", document_id),))


def documents_at(source: str | None = None) -> Where:
    """Completion marks, all or those stored from exactly ``source``."""
    must: list[Condition] = [of_kind(KIND_DOCUMENT)]
    if source is not None:
        must.append(Match("source", source))
    return Where(must=tuple(must))


def pages_where(flt: PageFilter | None = None) -> Where:
    """Page points matching ``flt`` (every page when None)."""
    return documents_where(flt or PageFilter(), KIND_PAGE)


def documents_where(where: PageFilter, kind: str) -> Where:
    """Points of ``kind`` (pages or completion marks) matching ``where``; all must hold.

    ``source_prefix`` is an exact keyword match on ``source``, ``source_alias``
    or any entry of ``source_dirs`` (the folders above both, see
    :func:`~pipeline.retrieve.store.paths_payload`), so it uses the payload
    indexes instead of a prefix scan.
    """
    must: list[Condition] = [of_kind(kind)]
    if where.document_ids:
        must.append(MatchAny("document_id", tuple(where.document_ids)))
    if where.source_prefix is not None:
        must.append(_under(where.source_prefix))
    if where.source is not None:
        must.append(_at(where.source))
    must.extend(_metadata(where.metadata))
    return Where(must=tuple(must))


def excluding_documents(where: Where, document_ids: Collection[str]) -> Where:
    """``where`` without the points of ``document_ids`` (unchanged when there are none)."""
    if not document_ids:
        return where
    return Where(must=(where,), must_not=(MatchAny("document_id", tuple(sorted(document_ids))),))


def stale_pages(document_id: str, keep: Collection[int]) -> Where:
    """The document's pages whose page number is not in ``keep``."""
    return Where(
        must=(of_kind(KIND_PAGE), Match("document_id", document_id)),
        must_not=(MatchAny("page", tuple(sorted(keep))),) if keep else (),
    )


def missing_vectors(names: Sequence[str]) -> Where:
    """Pages lacking at least one of the named vectors."""
    return Where(
        must=(of_kind(KIND_PAGE),),
        should=tuple(Where(must_not=(HasVector(name),)) for name in names),
    )


def pages_without_field(key: str) -> Where:
    """Pages whose payload lacks ``key`` (missing or null; "" counts as present)."""
    return Where(must=(of_kind(KIND_PAGE), IsEmpty(key)))


def _at(source: str) -> Where:
    """Points stored from exactly ``source`` (its resolved path or the path given)."""
    return Where(should=(Match("source", source), Match("source_alias", source)))


def _under(prefix: str) -> Where:
    """Points stored from ``prefix`` (a file, by resolved or given path) or below it."""
    prefix = prefix.rstrip("/") or "/"
    return Where(
        should=(
            Match("source", prefix),
            Match("source_alias", prefix),
            Match("source_dirs", prefix),
        )
    )


def _metadata(metadata: Mapping[str, str]) -> Iterable[Match]:
    """User metadata (``ingest --meta``) is stored under ``meta``; keys are matched literally."""
    for key, value in sorted(metadata.items()):
        if not key or any(c in key for c in ".[]"):
            # Both engines read "meta.a.b" as a nested path: a dotted key could never match.
            raise QueryError(
                f"metadata key {key!r} cannot be filtered on: use keys without '.', '[' or ']'"
            )
        yield Match(f"meta.{key}", str(value))
