"""Upgrade an existing collection in place: add pooled vectors without re-embedding.

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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from pipeline.embed.pooling import POOLED_VECTORS, pool_page, supports_pooling
from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    ConfigError,
    StoreError,
)
from pipeline.models import ModelSpec
from pipeline.retrieve.store import PageStore
from pipeline.types import CollectionSpec, Float16Array

__all__ = [
    "MAX_PASSES",
    "PooledVectorStore",
    "ReindexProgress",
    "ReindexReport",
    "reindex_pooled",
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


@dataclass(frozen=True)
class ReindexProgress:
    """Sent after every batch: pages written so far out of those found missing."""

    pages_done: int
    pages_total: int
    pass_number: int


@dataclass(frozen=True)
class ReindexReport:
    """What a reindex did. ``pages_updated == 0`` and ``recorded is False`` on a no-op."""

    collection: str
    pooled: tuple[str, ...]
    pages: int  # page points in the collection
    pages_updated: int  # pages given pooled vectors by this run
    passes: int  # passes over missing pages (0: nothing was missing)
    recorded: bool  # this run added the pooled names to the manifest
    seconds: float

    @property
    def no_op(self) -> bool:
        return self.pages_updated == 0 and not self.recorded

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pooled"] = list(self.pooled)
        data["seconds"] = round(self.seconds, 3)
        data["no_op"] = self.no_op
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
    updated = 0
    passes = 0
    while (todo := store.count_pages_missing(names)) > 0:
        if passes == MAX_PASSES:
            raise _incomplete(store, spec, names, todo)
        passes += 1
        done = 0
        for ids in store.page_ids_missing(names, batch=batch):
            written = _reindex_batch(store, spec_model, ids, names)
            done += written
            updated += written
            if progress is not None:
                progress(ReindexProgress(done, max(todo, done), passes))
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


def _check(store: PageStore, spec_model: ModelSpec) -> CollectionSpec:
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
    if not supports_pooling(spec_model):
        raise ConfigError(
            f"{spec_model.name} has no fixed patch grid, so pooled vectors (and two_stage "
            "retrieval) are unavailable for it; keep retrieval.mode: exact"
        )
    return spec


def _reindex_batch(
    store: PooledVectorStore, spec_model: ModelSpec, ids: list[str], names: Sequence[str]
) -> int:
    """Pool and write one batch; returns pages written (pages deleted meanwhile are skipped)."""
    writes: dict[str, dict[str, Float16Array]] = {}
    for point_id, vectors in store.page_vectors(ids).items():
        try:
            pooled = pool_page(vectors, spec_model)
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
        f"{todo} pages of collection {spec.name!r} still lack pooled vectors after "
        f"{MAX_PASSES} passes (e.g. {', '.join(sample)}): their full vectors could not be "
        "read, or an ingest kept adding pages. Stop other ingests and rerun "
        "`pagerag reindex --pooled`; if it persists, delete and re-ingest those documents. "
        "The collection stays exact-only meanwhile."
    )
