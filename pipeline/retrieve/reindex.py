"""Upgrade an existing collection in place: pooled vectors and token pooling without
re-embedding, and a retrieval lane it lacks.

Why this exists: a collection created before two-stage retrieval (or with a
config that left pooled vectors out) stores only each page's full
multivector. Pooled vectors are a pure function of it (:func:`pool_page`), so
they can be computed from what is stored — minutes of reading and writing
instead of re-running ColPali, which costs tens of seconds per page on a CPU.

How it stays safe to kill and rerun:

* The pooled vector *names* are added to the collection first, but **not** to
  its manifest, so search keeps treating the collection as exact-only (and
  refuses ``mode="two_stage"`` with a pointer to ``pagerag reindex --pooled``)
  while some pages still lack them.
* Work is found by asking the store for page points that lack a pooled vector
  (Qdrant's ``has_vector`` condition), not by remembering progress: a rerun
  after a kill picks up exactly the pages still missing, and pages ingested
  meanwhile (by a process that read the old manifest) are caught by the next
  pass.
* Writes touch only the named pooled vectors of existing points; payloads
  (page images included) and the full vectors are never rewritten.
* Only when a final count finds no page missing a pooled vector is the store
  flushed and the manifest updated to list them. A rerun on a finished
  collection counts zero missing pages and writes nothing.

The store must implement :class:`PooledVectorStore` on top of
:class:`~pipeline.retrieve.store.PageStore` (both adapters in ``connectors/`` do).

Adding a retrieval lane works the same way (:func:`fill_passes`), but its
source is each document's file: :mod:`pipeline.ingest.relane`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from pipeline.embed.pooling import (
    POOLED_VECTORS,
    pool_page,
    pool_tokens,
    supports_pooling,
)
from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    ConfigError,
    StoreError,
)
from pipeline.models import ModelSpec
from pipeline.retrieve.store import (
    PageStore,
    stored_grids,
)
from pipeline.types import (
    VISUAL,
    CollectionSpec,
    Float16Array,
    Lane,
)

__all__ = [
    "MAX_PASSES",
    "PooledVectorStore",
    "ReindexProgress",
    "ReindexReport",
    "SkippedDocument",
    "TokenPoolingStore",
    "fill_passes",
    "reindex_pooled",
    "reindex_token_pooling",
]

# Passes over "pages still missing pooled vectors" before giving up. One pass
# does the work; more are needed only when pages arrive meanwhile (a server
# with a concurrent ingest) or a page's full vectors cannot be read.
MAX_PASSES = 3


@runtime_checkable
class PooledVectorStore(PageStore, Protocol):
    """The writes an in-place reindex needs, beyond :class:`~pipeline.retrieve.store.PageStore`."""

    def add_vectors(self, names: Sequence[str]) -> None:
        """Create named multivectors laid out like the full vector (dim, datatype,
        Dot + MaxSim, no HNSW), without recording them in the manifest.

        Existing names are left alone (safe to repeat). Afterwards
        ``page_vectors(using=name)`` and :meth:`update_vectors` accept them.
        """
        ...

    def update_vectors(self, vectors: Mapping[str, Mapping[str, Float16Array]]) -> None:
        """Set named vectors on existing points: ``{point_id: {name: (n, dim) array}}``.

        Payloads and vectors not named are untouched.
        """
        ...

    def page_ids_missing(self, names: Sequence[str], *, batch: int = 256) -> Iterable[list[str]]:
        """Ids of page points lacking at least one of ``names``, in batches."""
        ...

    def count_pages_missing(self, names: Sequence[str]) -> int:
        """How many page points lack at least one of ``names``."""
        ...

    def record_pooled(self, names: Sequence[str]) -> CollectionSpec:
        """Add ``names`` to the manifest's pooled vectors; returns the spec now recorded."""
        ...


@runtime_checkable
class TokenPoolingStore(PooledVectorStore, Protocol):
    """What ``reindex --token-pooling`` needs beyond :class:`PooledVectorStore`."""

    def record_full_vector(self, name: str, token_pooling: int | None) -> CollectionSpec:
        """Make ``name`` the manifest's full vector, token-pooled by ``token_pooling``."""
        ...

    def drop_vectors(self, names: Sequence[str]) -> None:
        """Delete named vectors the manifest no longer uses (absent ones are skipped)."""
        ...


@dataclass(frozen=True)
class SkippedDocument:
    """A document whose pages a lane reindex left without the lane, and why."""

    document_id: str
    source: str
    reason: str  # missing | changed | an InputError reason (needs_password, damaged, ...)
    message: str  # which file, what is wrong, and the fix
    pages: int  # its pages left without the lane

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReindexProgress:
    """Sent after every batch: pages written so far out of those found missing."""

    pages_done: int
    pages_total: int
    pass_number: int


@dataclass(frozen=True)
class ReindexReport:
    """What a reindex did. ``pages_updated == 0`` and ``recorded is False`` on a no-op.

    A lane reindex (``lane`` set) also reports the collection's lanes afterwards,
    the documents it had to skip and the pages still lacking the lane
    (``pages_missing``; not 0: the lane was not recorded, ``complete`` is False).
    """

    collection: str
    pooled: tuple[str, ...]
    pages: int  # page points in the collection
    pages_updated: int  # pages given pooled vectors (or the lane) by this run
    passes: int  # passes over missing pages (0: nothing was missing)
    recorded: bool  # this run changed the manifest (pooled names, the token-pooled vector, lanes)
    seconds: float
    token_pooling: int | None = None  # the collection's token pooling factor afterwards
    lane: Lane | None = None  # the lane a `reindex --text / --visual` filled
    lanes: tuple[Lane, ...] = VISUAL  # the collection's lanes afterwards
    text_language: str | None = None  # the text lane's language afterwards (None: no lane)
    skipped: tuple[SkippedDocument, ...] = ()
    pages_missing: int = 0  # pages still without the lane

    @property
    def no_op(self) -> bool:
        return self.pages_updated == 0 and not self.recorded

    @property
    def complete(self) -> bool:
        return self.pages_missing == 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pooled"] = list(self.pooled)
        data["lanes"] = list(self.lanes)
        data["skipped"] = [document.to_dict() for document in self.skipped]
        data["seconds"] = round(self.seconds, 3)
        data["no_op"] = self.no_op
        data["complete"] = self.complete
        return data


def reindex_pooled(
    store: PageStore,
    spec_model: ModelSpec,
    *,
    batch: int = 64,
    progress: Callable[[ReindexProgress], None] | None = None,
) -> ReindexReport:
    """Give every page of the opened ``store`` its pooled vectors, then record them.

    ``spec_model`` is the model that filled the collection (its patch grid
    drives the pooling). Raises :class:`~pipeline.errors.ConfigError` for a
    model without a fixed grid, ``CollectionMismatchError`` when the
    collection was filled by another model, ``StoreError`` when the store
    cannot add vectors in place or some pages cannot be completed.
    """
    started = time.perf_counter()
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    spec = _check(store, spec_model)
    if not isinstance(store, PooledVectorStore):
        raise StoreError(
            f"the page store {type(store).__name__} cannot add vectors to stored pages, so "
            f"collection {spec.name!r} cannot be upgraded in place: re-ingest its documents "
            "into a new collection (store.collection), or keep retrieval.mode: exact"
        )
    names = POOLED_VECTORS
    store.add_vectors(names)
    updated, passes = _fill_missing(
        store,
        spec,
        names,
        lambda ids: _reindex_batch(store, spec_model, ids, names),
        batch=batch,
        progress=progress,
    )
    recorded = not set(names) <= set(spec.pooled)
    if updated or recorded:
        store.flush()  # every pooled vector durable before the manifest says so
    if recorded:
        spec = store.record_pooled(names)
    return ReindexReport(
        collection=spec.name,
        pooled=tuple(spec.pooled),
        pages=store.count_pages(),
        pages_updated=updated,
        passes=passes,
        recorded=recorded,
        seconds=time.perf_counter() - started,
    )


def reindex_token_pooling(
    store: PageStore,
    spec_model: ModelSpec,
    factor: int,
    *,
    batch: int = 64,
    progress: Callable[[ReindexProgress], None] | None = None,
) -> ReindexReport:
    """Token-pool every stored page of the opened ``store`` by ``factor``, in place.

    Nothing is embedded: each page's stored full vectors are merged by
    colpali-engine's hierarchical pooler (:func:`~pipeline.embed.pooling.pool_tokens`).
    Row/column vectors, which need the unmerged patch grid, are added first
    when the model has a grid and the collection lacks them
    (:func:`reindex_pooled`). Kill-safe like it: the merged vectors go to a
    new named vector (``<full>_tp<factor>``); pages still lacking it are found
    by the store on every pass; only when none is left does the manifest
    switch search (and later ingests) to it, and then the old full vectors
    are deleted to free their space. A rerun finishes what a killed run left.
    """
    started = time.perf_counter()
    if factor < 2:
        raise ConfigError(f"--token-pooling must be 2 or more, got {factor}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    spec = _check_model(store, spec_model)
    if not isinstance(store, TokenPoolingStore):
        raise StoreError(
            f"the page store {type(store).__name__} cannot replace stored vectors, so "
            f"collection {spec.name!r} cannot be token-pooled in place: re-ingest its "
            "documents into a new collection with embedding.token_pooling set"
        )
    target = f"full_tp{factor}"
    if spec.token_pooling == factor and spec.full_vector == target:
        store.drop_vectors(["full"])  # finish a run killed after the switch
        return _token_report(store, spec, 0, 0, recorded=False, started=started)
    if spec.token_pooling:
        raise ConfigError(
            f"collection {spec.name!r} is already token-pooled (factor {spec.token_pooling}); "
            "merged vectors cannot be unmerged: re-ingest into a new collection "
            f"(store.collection) with embedding.token_pooling: {factor}"
        )
    if supports_pooling(spec_model) and not set(POOLED_VECTORS) <= set(spec.pooled):
        spec = _pooled_first(store, spec_model, batch, progress)
    source = spec.full_vector
    store.add_vectors([target])

    def merge(ids: list[str]) -> int:
        merged = {
            point_id: {target: pool_tokens(vectors, factor)}
            for point_id, vectors in store.page_vectors(ids, using=source).items()
        }
        if merged:
            store.update_vectors(merged)
        return len(merged)

    updated, passes = _fill_missing(store, spec, [target], merge, batch=batch, progress=progress)
    store.flush()  # every merged vector durable before the manifest points at them
    spec = store.record_full_vector(target, factor)
    store.drop_vectors([source])
    return _token_report(store, spec, updated, passes, recorded=True, started=started)


def _fill_missing(
    store: PooledVectorStore,
    spec: CollectionSpec,
    names: Sequence[str],
    write: Callable[[list[str]], int],
    *,
    batch: int,
    progress: Callable[[ReindexProgress], None] | None,
) -> tuple[int, int]:
    """Pass over the pages lacking ``names`` until none is left; ``write`` fills one
    batch of ids and returns how many pages it wrote. Returns (pages written, passes)."""
    return fill_passes(
        lambda: store.count_pages_missing(names),
        lambda: store.page_ids_missing(names, batch=batch),
        write,
        stalled=lambda todo: _incomplete(store, spec, names, todo),
        progress=progress,
    )


def fill_passes(
    left: Callable[[], int],
    batches: Callable[[], Iterable[list[str]]],
    write: Callable[[list[str]], int],
    *,
    stalled: Callable[[int], StoreError],
    progress: Callable[[ReindexProgress], None] | None,
) -> tuple[int, int]:
    """The loop every reindex runs: while ``left()`` pages are still to do, one more pass
    over ``batches()`` (at most :data:`MAX_PASSES`, then ``stalled(left)`` is raised);
    ``write`` handles one batch of ids and returns how many pages it handled. The work
    is found anew on every pass, so a killed run's rerun picks up where it stopped.
    Returns (pages handled, passes)."""
    updated = passes = 0
    while (todo := left()) > 0:
        if passes == MAX_PASSES:
            raise stalled(todo)
        passes += 1
        done = 0
        for ids in batches():
            written = write(ids)
            done += written
            updated += written
            if progress is not None:
                progress(ReindexProgress(done, max(todo, done), passes))
    return updated, passes


def _pooled_first(
    store: PageStore,
    spec_model: ModelSpec,
    batch: int,
    progress: Callable[[ReindexProgress], None] | None,
) -> CollectionSpec:
    reindex_pooled(store, spec_model, batch=batch, progress=progress)
    spec = store.spec()
    if spec is None:  # pragma: no cover - reindex_pooled checked it exists
        raise CollectionNotFoundError("the collection disappeared during reindexing")
    return spec


def _token_report(
    store: PageStore,
    spec: CollectionSpec,
    updated: int,
    passes: int,
    *,
    recorded: bool,
    started: float,
) -> ReindexReport:
    return ReindexReport(
        collection=spec.name,
        pooled=tuple(spec.pooled),
        pages=store.count_pages(),
        pages_updated=updated,
        passes=passes,
        recorded=recorded,
        seconds=time.perf_counter() - started,
        token_pooling=spec.token_pooling,
    )


def _check_model(store: PageStore, spec_model: ModelSpec) -> CollectionSpec:
    spec = store.spec()
    if spec is None:
        raise CollectionNotFoundError(
            "the collection does not exist yet: nothing to reindex. Run `pagerag ingest` first."
        )
    if spec.model != spec_model.name or spec.dim != spec_model.dim:
        raise CollectionMismatchError(
            f"collection {spec.name!r} was filled by {spec.model} (dim {spec.dim}), not by "
            f"{spec_model.name} (dim {spec_model.dim}): pooling needs the model that made the "
            f"vectors. Set embedding.model to {spec.model}."
        )
    return spec


def _check(store: PageStore, spec_model: ModelSpec) -> CollectionSpec:
    spec = _check_model(store, spec_model)
    if not supports_pooling(spec_model):
        raise ConfigError(
            f"{spec_model.name} has no fixed patch grid and records none per page, so pooled "
            "vectors (and two_stage retrieval) are unavailable for it; keep retrieval.mode: exact"
        )
    if spec.token_pooling and not set(POOLED_VECTORS) <= set(spec.pooled):
        raise ConfigError(
            f"collection {spec.name!r} stores token-pooled vectors (factor "
            f"{spec.token_pooling}), which no longer sit on the patch grid, so row/column "
            "vectors cannot be computed from them: re-ingest into a new collection to have "
            "both, or keep retrieval.mode: exact"
        )
    return spec


def _reindex_batch(
    store: PooledVectorStore, spec_model: ModelSpec, ids: list[str], names: Sequence[str]
) -> int:
    """Pool and write one batch; returns pages written (pages deleted meanwhile are skipped)."""
    writes: dict[str, dict[str, Float16Array]] = {}
    stored = store.page_vectors(ids)
    grids = stored_grids(store, spec_model, stored)  # each page's own, when it varies
    for point_id, vectors in stored.items():
        try:
            pooled = pool_page(vectors, spec_model, grids[point_id])
        except ValueError as exc:
            raise StoreError(
                f"page {point_id} cannot be pooled ({exc}); delete and re-ingest its document"
            ) from None
        writes[point_id] = {name: pooled[name] for name in names}
    if writes:
        store.update_vectors(writes)
    return len(writes)


def _incomplete(
    store: PooledVectorStore, spec: CollectionSpec, names: Sequence[str], todo: int
) -> StoreError:
    sample = next(iter(store.page_ids_missing(names, batch=5)), [])
    return StoreError(
        f"{todo} pages of collection {spec.name!r} still lack vectors {', '.join(names)} after "
        f"{MAX_PASSES} passes (e.g. {', '.join(sample)}): their full vectors could not be "
        "read, or an ingest kept adding pages. Stop other ingests and rerun `pagerag "
        "reindex`; if it persists, delete and re-ingest those documents. Search keeps "
        "using the vectors it used before meanwhile."
    )


# --------------------------------------------------------------------------- lanes
#
# `reindex --text` / `--visual` add a retrieval lane to a collection that lacks it,
# from the documents' files (which must still hold the bytes that were ingested):
# text by pdftotext + BM25 (milliseconds a page, nothing rendered), images by the
# ingest's own RenderStage and EmbedStage (the model's cost, as an ingest). Kill-safe
# like the pooled upgrade: the pages still lacking the lane are asked of the store on
# every pass, and the manifest lists the lane only once every page has it.
