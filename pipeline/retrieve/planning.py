"""Search planning: what one query asks for, and how the store is searched for it.

* :class:`SearchOptions` — the query-independent options every search, ask and
  their async forms take: how many pages (``k``), which pages (``filter``) and
  how to find them (``mode``). ``None`` means the configured default.
* :func:`plan_search` — the options against the collection and the
  ``retrieval`` config. The visual lane: exact MaxSim over every page, or a
  pooled first stage (``prefetch``) and an exact rerank (``visual`` picks by the
  collection's size). The text lane: BM25 over each page's text (``text``). Both,
  fused in one engine query (``hybrid``). ``auto`` is ``visual`` on a collection
  with the visual lane, ``text`` on a text-only one.

Engine-neutral: the plan is what a :class:`~pipeline.retrieve.store.PageStore`
``search`` / ``search_text`` / ``search_hybrid`` takes; the engine-specific
query it becomes lives in each store connector.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, get_args

from pipeline.config import RetrievalConfig
from pipeline.errors import QueryError
from pipeline.retrieve.fusion import Fuse
from pipeline.types import CollectionSpec, Lane, PageFilter

__all__ = [
    "MAX_K",
    "MODES",
    "FilterLike",
    "Mode",
    "PlannedMode",
    "SearchArgs",
    "SearchOptions",
    "SearchPlan",
    "VisualMode",
    "parse_filter",
    "plan_search",
]

# auto: visual on a collection with the visual lane, text on a text-only one. visual:
# exact or two_stage by the collection's size. exact / two_stage: the visual lane so.
# text: the text lane (BM25) alone. hybrid: both lanes fused in one engine query.
Mode = Literal["auto", "visual", "exact", "two_stage", "text", "hybrid"]
MODES: tuple[str, ...] = get_args(Mode)
# What a plan resolves to (auto and visual become one of the others).
PlannedMode = Literal["exact", "two_stage", "text", "hybrid"]
VisualMode = Literal["exact", "two_stage"]
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
            raise QueryError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
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
    """What the store is asked for the top ``k`` pages (``filter`` on every lane).

    ``mode`` exact / two_stage: the visual lane alone, exact MaxSim on the full
    vectors (``using`` None) over every page, or over the union of the
    ``prefetch`` candidates (pooled vector name, candidates per name). ``text``:
    the text lane alone (BM25). ``hybrid``: both lanes, the visual one searched as
    ``visual`` says (with its ``prefetch``), each handing its ``lane_k`` best
    pages to ``fusion``; ``hybrid_visual`` is that visual search (exact or
    two_stage). :attr:`visual` says it for every mode.
    """

    mode: PlannedMode
    k: int
    filter: PageFilter | None
    prefetch: tuple[tuple[str, int], ...] = ()
    using: str | None = None
    hybrid_visual: VisualMode | None = None
    fusion: Fuse | None = None
    lane_k: int = 0

    @property
    def visual(self) -> VisualMode | None:
        """How the visual lane is searched: exact, two_stage, or None (text mode)."""
        if self.mode == "exact" or self.mode == "two_stage":
            return self.mode
        return self.hybrid_visual

    @property
    def lanes(self) -> tuple[Lane, ...]:
        """The lanes this plan searches, visual first."""
        if self.mode == "hybrid":
            return ("visual", "text")
        return ("text",) if self.mode == "text" else ("visual",)


def plan_search(
    options: SearchOptions,
    spec: CollectionSpec,
    retrieval: RetrievalConfig,
    count_pages: Callable[[], int],
) -> SearchPlan:
    """The plan for ``options`` on the collection ``spec`` describes.

    ``count_pages`` is called only when the visual lane's search is picked by
    size (``visual``, ``auto``, ``hybrid``) on a collection with pooled vectors:
    two_stage from ``retrieval.two_stage_min_pages`` pages on. Raises
    :class:`~pipeline.errors.QueryError`, naming the fix, for a mode the
    collection cannot serve: ``two_stage`` without pooled vectors, a text lane
    search without the text lane, a visual lane search without the visual lane.
    """
    k = retrieval.k if options.k is None else options.k
    chosen = options.mode or retrieval.mode
    flt = options.page_filter()
    if chosen == "auto":
        chosen = "visual" if spec.has_visual or not spec.has_text else "text"
    _check_lanes(chosen, spec)
    if chosen == "text":
        return SearchPlan("text", k, flt)
    lane_k = max(retrieval.lane_k, k)
    limit = max(retrieval.prefetch_k, lane_k if chosen == "hybrid" else k)
    visual = _visual_mode(chosen, spec, retrieval, count_pages)
    prefetch = _prefetch(spec, retrieval, limit) if visual == "two_stage" else ()
    if chosen != "hybrid":
        return SearchPlan(visual, k, flt, prefetch)
    weights = (retrieval.visual_weight, retrieval.text_weight)
    fusion = Fuse(retrieval.fusion, weights, retrieval.rrf_k)
    return SearchPlan(
        "hybrid", k, flt, prefetch, hybrid_visual=visual, fusion=fusion, lane_k=lane_k
    )


def _check_lanes(chosen: str, spec: CollectionSpec) -> None:
    """Refuse a mode whose lane (or pooled vectors) the collection lacks, naming the fix."""
    if chosen in ("text", "hybrid") and not spec.has_text:
        raise QueryError(
            f"collection {spec.name!r} has no text lane, so {chosen} search is unavailable: "
            "run `pagerag reindex --text` to add each page's text to it"
        )
    if chosen != "text" and not spec.has_visual:
        raise QueryError(
            f"collection {spec.name!r} has no visual lane (its pages were stored as text "
            f"only), so {chosen} search is unavailable: run `pagerag reindex --visual`, "
            "or search with --mode text"
        )
    if chosen == "two_stage" and not spec.pooled:
        raise QueryError(
            f"collection {spec.name!r} has no pooled vectors, so two_stage retrieval is "
            "unavailable: run `pagerag reindex --pooled` or search with --mode exact"
        )


def _visual_mode(
    chosen: str, spec: CollectionSpec, retrieval: RetrievalConfig, count_pages: Callable[[], int]
) -> VisualMode:
    """exact / two_stage as asked; else two_stage on a pooled collection of enough pages."""
    if chosen in ("exact", "two_stage"):
        return "exact" if chosen == "exact" else "two_stage"
    big = bool(spec.pooled) and count_pages() >= retrieval.two_stage_min_pages
    return "two_stage" if big else "exact"


def _prefetch(
    spec: CollectionSpec, retrieval: RetrievalConfig, limit: int
) -> tuple[tuple[str, int], ...]:
    names = [name for name in retrieval.prefetch_vectors if name in spec.pooled]
    return tuple((name, limit) for name in names or spec.pooled)


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
