"""Search planning: what one query asks for, and how the store is searched for it.

* :class:`SearchOptions` — the query-independent options every search, ask and
  their async forms take: how many pages (``k``), which pages (``filter``) and
  how to find them (``mode``). ``None`` means the configured default.
* :func:`plan_search` — the options against the collection and the
  ``retrieval`` config: exact MaxSim over every page, or a pooled first stage
  (``prefetch``) and an exact rerank; ``auto`` picks by the collection's size.

Engine-neutral: the plan is what a :class:`~pipeline.retrieve.store.PageStore`
``search`` takes. New retrieval modes and lanes (text, hybrid) are planned here;
the engine-specific query they become lives in each store connector.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, get_args

from pipeline.config import RetrievalConfig
from pipeline.errors import QueryError
from pipeline.types import CollectionSpec, PageFilter

__all__ = [
    "MAX_K",
    "MODES",
    "FilterLike",
    "Mode",
    "SearchArgs",
    "SearchOptions",
    "SearchPlan",
    "parse_filter",
    "plan_search",
]

Mode = Literal["exact", "two_stage", "auto"]
MODES: tuple[str, ...] = get_args(Mode)
MAX_K = 1000
FilterLike = PageFilter | Mapping[str, Any] | None


class SearchArgs(TypedDict, total=False):
    """The keyword form of :class:`SearchOptions` (``rag.search(q, k=5, mode="exact")``)."""

    k: int | None
    filter: FilterLike
    mode: Mode | None


@dataclass(frozen=True)
class SearchOptions:
    """How many pages, which, and how to find them; ``None`` takes the config's default.

    ``filter`` is a :class:`~pipeline.types.PageFilter` or a dict (see
    :func:`parse_filter`). Values are checked on construction, so a bad ``k``
    or ``mode`` is refused before any model or store is touched.

    >>> SearchOptions(k=3, filter={"source": "reports/"}, mode="exact")  # doctest: +SKIP
    """

    k: int | None = None
    filter: FilterLike = None
    mode: Mode | None = None

    def __post_init__(self) -> None:
        k = self.k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K):
            raise QueryError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        if self.mode is not None and self.mode not in MODES:
            raise QueryError(f"mode must be exact, two_stage or auto, got {self.mode!r}")
        parse_filter(self.filter)  # refuse a malformed filter now; resolved at search time

    @classmethod
    def of(cls, options: SearchOptions | int | None = None, **given: Any) -> SearchOptions:
        """``options`` (a SearchOptions, or just ``k``) with keyword ``k``/``filter``/``mode``
        applied over it: how ``search``, ``ask`` and their async forms read their arguments."""
        unknown = sorted(set(given) - set(SearchArgs.__annotations__))
        if unknown:
            raise TypeError(
                f"unexpected argument(s) {', '.join(unknown)}: the search options are "
                "k, filter and mode (or a SearchOptions)"
            )
        if options is None or isinstance(options, SearchOptions):
            base = options or cls()
        else:
            if "k" in given:
                raise TypeError("k given twice: positionally and as k=")
            base = cls(k=options)
        return dataclasses.replace(base, **given) if given else base

    def page_filter(self) -> PageFilter | None:
        """The filter as a :class:`PageFilter` (relative paths resolved now); None when empty."""
        flt = parse_filter(self.filter)
        return None if flt is None or flt.is_empty() else flt


@dataclass(frozen=True)
class SearchPlan:
    """What the store is asked: the top ``k`` by exact MaxSim on the full vectors (``using``
    None), over every page or over the union of the ``prefetch`` candidates
    (pooled vector name, candidates per name)."""

    mode: Literal["exact", "two_stage"]
    k: int
    filter: PageFilter | None
    prefetch: tuple[tuple[str, int], ...] = ()
    using: str | None = None


def plan_search(
    options: SearchOptions,
    spec: CollectionSpec,
    retrieval: RetrievalConfig,
    count_pages: Callable[[], int],
) -> SearchPlan:
    """The plan for ``options`` on the collection ``spec`` describes.

    ``count_pages`` is called only for ``auto`` on a collection with pooled
    vectors: two_stage from ``retrieval.two_stage_min_pages`` pages on.
    Raises :class:`~pipeline.errors.QueryError` for ``two_stage`` on a
    collection without pooled vectors, naming the fix.
    """
    k = retrieval.k if options.k is None else options.k
    chosen = options.mode or retrieval.mode
    flt = options.page_filter()
    if chosen == "two_stage" and not spec.pooled:
        raise QueryError(
            f"collection {spec.name!r} has no pooled vectors, so two_stage retrieval is "
            "unavailable: run `pagerag reindex --pooled` or search with --mode exact"
        )
    if chosen == "auto":
        big = bool(spec.pooled) and count_pages() >= retrieval.two_stage_min_pages
        chosen = "two_stage" if big else "exact"
    if chosen == "exact":
        return SearchPlan("exact", k, flt)
    limit = max(retrieval.prefetch_k, k)
    names = [name for name in retrieval.prefetch_vectors if name in spec.pooled]
    prefetch = tuple((name, limit) for name in names or spec.pooled)
    return SearchPlan("two_stage", k, flt, prefetch)


def parse_filter(value: FilterLike) -> PageFilter | None:
    """Build a :class:`PageFilter` from a user's dict.

    Keys: ``document_id`` (str or list), ``source`` (a file or folder path;
    relative paths are resolved against the current directory, like at
    ingest), anything else is user metadata from ``ingest --meta``.
    """
    if value is None or isinstance(value, PageFilter):
        return value
    if not isinstance(value, Mapping):
        raise QueryError(f"filter must be a mapping or PageFilter, got {type(value).__name__}")
    document_ids: tuple[str, ...] = ()
    source = None
    metadata: dict[str, str] = {}
    for key, item in value.items():
        if key in ("document_id", "document_ids"):
            document_ids = (item,) if isinstance(item, str) else tuple(item)
        elif key in ("source", "source_prefix"):
            source = absolute_path(str(item))
        else:
            metadata[str(key)] = str(item)
    return PageFilter(document_ids=document_ids, source_prefix=source, metadata=metadata)


def absolute_path(path: str) -> str:
    """``path`` with ``~`` expanded, made absolute against the current directory."""
    return os.path.abspath(os.path.expanduser(path))
