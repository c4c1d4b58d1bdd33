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

Adding a retrieval lane (:func:`reindex_text`, :func:`reindex_visual`) works the
same way — the lane's vector added unrecorded, the pages still lacking it
asked of the store on every pass (:func:`_passes`), the manifest changed last —
but its source is each document's file, not a stored vector: the file must
still hold the bytes ingested (its sha256 is the document id), else the
document is skipped and reported and the lane stays unrecorded. Text is read
again with pdftotext; images are rendered and embedded by the ingest's own
:class:`~pipeline.ingest.stages.RenderStage` and
:class:`~pipeline.ingest.stages.EmbedStage`. Such a store is a
:class:`LaneReindexStore`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pipeline.embed.pooling import (
    POOLED_VECTORS,
    pool_page,
    pool_tokens,
    require_token_pooler,
    supports_pooling,
)
from pipeline.embed.protocol import PageEmbedder, identity_of
from pipeline.embed.text import TextEmbedder
from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    ConfigError,
    InputError,
    StoreError,
    TextExtractionError,
)
from pipeline.ingest.counting import HashMemo
from pipeline.ingest.render import PageFailure
from pipeline.ingest.sources import hash_file
from pipeline.ingest.stages import (
    DecodedPage,
    Document,
    DocumentRenderer,
    EmbedStage,
    RenderStage,
)
from pipeline.ingest.text import PageText, TextExtractor, text_payload
from pipeline.models import ModelSpec
from pipeline.retrieve.lanes import LaneStore
from pipeline.retrieve.store import (
    PageStore,
    PayloadReader,
    stored_grids,
    weights_problem,
    weights_remedy,
)
from pipeline.types import (
    LANES,
    TEXT_FIELD,
    VISUAL,
    CollectionSpec,
    Float16Array,
    Lane,
    ModelIdentity,
    PagePoint,
)

__all__ = [
    "MAX_PASSES",
    "LaneReindexStore",
    "PooledVectorStore",
    "ReindexProgress",
    "ReindexReport",
    "SkippedDocument",
    "SourceFiles",
    "TokenPoolingStore",
    "reindex_pooled",
    "reindex_text",
    "reindex_token_pooling",
    "reindex_visual",
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
    return _passes(
        lambda: store.count_pages_missing(names),
        lambda: store.page_ids_missing(names, batch=batch),
        write,
        stalled=lambda todo: _incomplete(store, spec, names, todo),
        progress=progress,
    )


def _passes(
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


@runtime_checkable
class LaneReindexStore(LaneStore, PooledVectorStore, PayloadReader, Protocol):
    """What ``reindex --text`` / ``--visual`` need of a store (both adapters have it)."""


@dataclass(frozen=True)
class SourceFiles:
    """How a lane reindex reaches the stored documents' files again: the ingest's
    renderer (its probe resolves passwords as an ingest does), the password lookup,
    and the hash that must still be the document id."""

    renderer: DocumentRenderer
    password_for: Callable[[Path], str | None] = lambda _path: None
    hash_file: Callable[[Path], str] = hash_file


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


def reindex_text(
    store: PageStore,
    files: SourceFiles,
    extractor: TextExtractor,
    embedder: TextEmbedder,
    *,
    batch: int = 64,
    progress: Callable[[ReindexProgress], None] | None = None,
) -> ReindexReport:
    """Give every page of the opened ``store`` the text lane, in place, then record it.

    Nothing is rendered and no visual vector is touched: each document's file is
    checked (still at its recorded path, still the bytes ingested), its pages'
    text read again (``extractor``, with the password the renderer's probe
    resolves) and written with its BM25 vector (``embedder``, whose language
    the manifest then records). A document whose file is gone, changed or
    unreadable is skipped (:class:`SkippedDocument`) and the lane is then not
    recorded (``report.pages_missing``). When the lane exists in another
    language, every stored page text is re-embedded first (no extraction) and
    the new language recorded after; a killed rebuild redoes it all on rerun.
    """
    started = time.perf_counter()
    lanes_store, spec = _lane_store(store, batch, "--text")
    language = embedder.language
    rebuilt = 0
    if spec.has_text and spec.text_language != language:
        rebuilt = _rebuild_text(lanes_store, embedder, batch, progress)
        lanes_store.flush()  # every vector in the new language before the manifest says so
        spec = lanes_store.record_lanes(spec.lanes, text_language=language)
    lanes_store.add_text_vector()
    docs = _Documents(lanes_store, files, "text")

    def write(ids: list[str]) -> int:
        for document in docs.group(ids):
            texts = docs.texts(document, extractor)
            if texts:
                vectors = embedder.embed_texts([t.text for t in texts.values()])
                lanes_store.update_page_text(
                    {
                        document.pages[number]: (text_payload(text), vector)
                        for (number, text), vector in zip(texts.items(), vectors, strict=True)
                    }
                )
                docs.written += len(texts)
        return len(ids)

    return _fill_lane(
        lanes_store,
        spec,
        docs,
        lambda: lanes_store.count_pages_without_field(TEXT_FIELD),
        lambda: lanes_store.page_ids_without_field(TEXT_FIELD, batch=batch),
        write,
        progress,
        started=started,
        rebuilt=rebuilt,
        text_language=language,
    )


def reindex_visual(
    store: PageStore,
    files: SourceFiles,
    embedder: PageEmbedder,
    text: TextEmbedder,
    *,
    embed_batch: int = 4,
    store_images: bool = True,
    batch: int = 64,
    progress: Callable[[ReindexProgress], None] | None = None,
) -> ReindexReport:
    """Give every page of the opened ``store`` the visual lane, in place, then record it.

    Each document's file is checked as for :func:`reindex_text`, its pages
    rendered and embedded by the ingest's own stages (RenderStage, EmbedStage:
    the vectors, pooled and token-pooled as the collection declares, equal those
    of an ingest), and written onto the existing points; their text lane is
    rewritten from the stored text by ``text`` (the collection's language, so it
    is unchanged). The manifest then records the lane and the weights that
    filled it. Costs what an ingest's embedding costs; resumable.
    """
    started = time.perf_counter()
    lanes_store, spec = _lane_store(store, batch, "--visual")
    docs = _Documents(lanes_store, files, "visual")
    names = [spec.full_vector, *spec.pooled]
    if spec.has_visual and lanes_store.count_pages_missing(names) == 0:
        return _lane_report(lanes_store, spec, docs, 0, 0, False, 0, started)
    lanes_store.add_vectors(names)  # declared by a text-only collection; safe to repeat
    spec = _visual_weights(lanes_store, spec, embedder)
    if spec.token_pooling:
        require_token_pooler()  # before any page is rendered
    if spec.has_text and text.language != spec.text_language:
        raise ValueError(
            f"the text embedder's language is {text.language!r}; collection {spec.name!r} "
            f"is in {spec.text_language!r}"
        )
    render = RenderStage(files.renderer, files.password_for)
    embed = EmbedStage(embedder, replace(spec, lanes=VISUAL), store_images=store_images)

    def write(ids: list[str]) -> int:
        for document in docs.group(ids):
            for pages in docs.rendered(document, render, embed_batch):
                _write_visual(lanes_store, docs, document, embed.embed(pages), text)
        return len(ids)

    return _fill_lane(
        lanes_store,
        spec,
        docs,
        lambda: lanes_store.count_pages_missing(names),
        lambda: lanes_store.page_ids_missing(names, batch=batch),
        write,
        progress,
        started=started,
        identity=spec.identity,
    )


def _fill_lane(
    store: LaneReindexStore,
    spec: CollectionSpec,
    docs: _Documents,
    count: Callable[[], int],
    batches: Callable[[], Iterable[list[str]]],
    write: Callable[[list[str]], int],
    progress: Callable[[ReindexProgress], None] | None,
    *,
    started: float,
    rebuilt: int = 0,
    text_language: str | None = None,
    identity: ModelIdentity | None = None,
) -> ReindexReport:
    """Fill the ``count()`` pages lacking ``docs.lane`` (their ids from ``batches()``, one
    ``write`` each); when none is left, record the lane if the manifest lacked it."""
    passes = docs.fill(count, batches, write, progress)
    missing = count()
    added = missing == 0 and docs.lane not in spec.lanes
    if docs.written or added:
        store.flush()  # every page's lane durable before the manifest lists it
    if added:
        lanes = _with_lane(spec, docs.lane)
        spec = store.record_lanes(lanes, text_language=text_language, identity=identity)
    return _lane_report(store, spec, docs, rebuilt, passes, added or rebuilt > 0, missing, started)


@dataclass(frozen=True)
class _StoredDocument:
    document_id: str
    path: Path  # the file, checked: it still holds the bytes ingested
    pages: dict[int, str]  # page number -> point id, of the pages to do in this batch


class _Documents:
    """The documents behind batches of page ids, each file checked once per run.

    A file must still be at its recorded path (or the path given at ingest) and
    still hash to the document id. A document that fails (gone, changed, cannot
    be opened) is skipped: remembered with its reason, its pages left out of the
    batches of every later pass, and counted out of the work left.
    """

    def __init__(self, store: LaneReindexStore, files: SourceFiles, lane: Lane) -> None:
        self.store = store
        self.files = files
        self.lane = lane
        self.written = 0  # pages given the lane by this run
        self._hash = HashMemo(files.hash_file)
        self._paths: dict[str, Path] = {}
        self._skipped: dict[str, SkippedDocument] = {}
        self._skipped_ids: set[str] = set()

    @property
    def skipped(self) -> tuple[SkippedDocument, ...]:
        return tuple(self._skipped.values())

    def fill(
        self,
        count: Callable[[], int],
        batches: Callable[[], Iterable[list[str]]],
        write: Callable[[list[str]], int],
        progress: Callable[[ReindexProgress], None] | None,
    ) -> int:
        """:func:`_passes` over the pages lacking the lane, skipped pages left out;
        returns the passes made."""

        def pending() -> Iterator[list[str]]:
            for ids in batches():
                if kept := [i for i in ids if i not in self._skipped_ids]:
                    yield kept

        return _passes(
            lambda: count() - len(self._skipped_ids),
            pending,
            write,
            stalled=self._stalled,
            progress=progress,
        )[1]

    def group(self, ids: list[str]) -> list[_StoredDocument]:
        """The documents of ``ids`` whose file checks out (the others are skipped);
        pages deleted meanwhile are left out."""
        fields = ["document_id", "page", "source", "source_alias"]
        by_document: dict[str, dict[int, str]] = {}
        named: dict[str, list[str]] = {}
        for point_id, payload in self.store.page_payloads(ids, fields).items():
            document_id = str(payload["document_id"])
            by_document.setdefault(document_id, {})[int(payload["page"])] = point_id
            paths = named.setdefault(document_id, [])
            paths += [p for p in (payload.get("source"), payload.get("source_alias")) if p]
        found = []
        for document_id, pages in by_document.items():
            path = self._path(document_id, named[document_id], list(pages.values()))
            if path is not None:
                found.append(_StoredDocument(document_id, path, dict(sorted(pages.items()))))
        return found

    def texts(self, document: _StoredDocument, extractor: TextExtractor) -> dict[int, PageText]:
        """The text of the document's pages; pages that cannot be read are skipped."""
        numbers = list(document.pages)
        try:
            plan = self.files.renderer.open(
                document.path, password=self.files.password_for(document.path)
            )
            return extractor.extract(document.path, numbers, password=plan.password)
        except TextExtractionError as exc:
            read: dict[int, PageText] = getattr(exc, "pages", {})
            failed = [document.pages[n] for n in numbers if n not in read]
            self.skip(document.document_id, str(document.path), exc, failed)
            return {n: read[n] for n in numbers if n in read}
        except InputError as exc:
            self.skip(document.document_id, str(document.path), exc, document.pages.values())
            return {}

    def rendered(
        self, document: _StoredDocument, render: RenderStage, size: int
    ) -> Iterator[list[DecodedPage]]:
        """The document's pages rendered and decoded, ``size`` at a time; pages that
        cannot be rendered are skipped."""
        doc = Document(
            path=document.path,
            document_id=document.document_id,
            started=time.monotonic(),
            file_bytes=document.path.stat().st_size,
        )
        rendered: set[int] = set()
        if render.open(doc) and doc.plan is not None:
            wanted = tuple(p for p in doc.plan.pages if p.number in document.pages)
            doc.plan = replace(doc.plan, pages=wanted)
            pages: list[DecodedPage] = []
            for item in render.pages(doc):
                if isinstance(item, DecodedPage):
                    pages.append(item)
                    rendered.add(item.page.page_number)
                if len(pages) >= size:
                    yield pages
                    pages = []
            if pages:
                yield pages
        failed = {f.page_number: f.error for f in doc.failures}
        for number, point_id in document.pages.items():
            if number in rendered:
                continue
            error = failed.get(number) or doc.render_error
            if not isinstance(error, InputError):
                why = error or "render.max_pages is lower than when it was ingested"
                error = InputError(
                    document.path, f"page {number} was not rendered ({why})", page=number
                )
            self.skip(document.document_id, str(document.path), error, [point_id])

    def skip(
        self,
        document_id: str,
        source: str,
        error: InputError | tuple[str, str],
        point_ids: Iterable[str],
    ) -> None:
        """Leave ``point_ids`` of a document without the lane, for ``error``'s reason
        (the document's first reason is the one reported)."""
        new = set(point_ids) - self._skipped_ids
        self._skipped_ids |= new
        known = self._skipped.get(document_id)
        if known is not None:
            self._skipped[document_id] = replace(known, pages=known.pages + len(new))
            return
        reason, message = (
            error
            if isinstance(error, tuple)
            else (error.reason, f"{error}; fix that, then rerun `pagerag reindex --{self.lane}`")
        )
        self._skipped[document_id] = SkippedDocument(document_id, source, reason, message, len(new))

    def _path(self, document_id: str, named: list[str], point_ids: list[str]) -> Path | None:
        if document_id in self._paths:
            return self._paths[document_id]
        if (known := self._skipped.get(document_id)) is not None:
            self.skip(document_id, known.source, (known.reason, known.message), point_ids)
            return None
        record = self.store.get_document(document_id)
        candidates = list(dict.fromkeys([*(record.paths if record else ()), *named]))
        changed = None
        for candidate in candidates:
            path = Path(candidate)
            try:
                if self._hash(path) == document_id:
                    self._paths[document_id] = path
                    return path
                changed = changed or candidate
            except OSError:
                continue
        self.skip(
            document_id,
            changed or candidates[0],
            _moved(document_id, changed, candidates[0], self.lane),
            point_ids,
        )
        return None

    def _stalled(self, todo: int) -> StoreError:
        return StoreError(
            f"{todo} pages still lack the {self.lane} lane after {MAX_PASSES} passes: an "
            f"ingest kept adding pages meanwhile. Let it finish, then rerun `pagerag reindex "
            f"--{self.lane}`."
        )


def _moved(document_id: str, changed: str | None, source: str, lane: Lane) -> tuple[str, str]:
    """(reason, message) for a document whose file no longer holds what was ingested."""
    rerun = f"then rerun `pagerag reindex --{lane}`"
    if changed is not None:
        return (
            "changed",
            f"{changed} has changed since it was ingested (its sha256 is no longer the "
            f"document id {document_id[:12]}), so its pages cannot get the {lane} lane from "
            f"it: re-ingest it (`pagerag ingest {changed}` replaces the stored version), "
            f"{rerun}",
        )
    return (
        "missing",
        f"{source} is gone (moved or deleted since it was ingested), so its pages cannot "
        f"get the {lane} lane: re-ingest the file from where it is now (`pagerag ingest "
        f"PATH`), or delete it (`pagerag delete {document_id[:12]}`), {rerun}",
    )


def _write_visual(
    store: LaneReindexStore,
    docs: _Documents,
    document: _StoredDocument,
    results: list[PagePoint | PageFailure],
    text: TextEmbedder,
) -> None:
    """Write one embedded batch: the page payload the visual lane adds and the text
    lane as it was (rewritten from the stored text), then the vectors — last, so a
    page counts as done only when all of it is written."""
    points = [r for r in results if isinstance(r, PagePoint)]
    for failure in (r for r in results if isinstance(r, PageFailure)):
        point_id = document.pages[failure.page_number]
        docs.skip(document.document_id, str(document.path), failure.error, [point_id])
    if not points:
        return
    ids = [p.point_id for p in points]
    stored = store.page_payloads(ids, [TEXT_FIELD])
    bodies = [str(stored.get(i, {}).get(TEXT_FIELD) or "") for i in ids]
    sparse = text.embed_texts(bodies)
    store.update_page_text(
        {
            p.point_id: ({k: v for k, v in p.payload.items() if k not in _PAGE_FIELDS}, terms)
            for p, terms in zip(points, sparse, strict=True)
        }
    )
    store.update_vectors({p.point_id: dict(p.vectors) for p in points})
    docs.written += len(points)


# Page payload fields that do not depend on the lanes: a lane reindex keeps them as stored.
_PAGE_FIELDS = frozenset(
    {
        "kind",
        "document_id",
        "source",
        "source_alias",
        "source_dirs",
        "file_name",
        "page",
        "page_count",
        "ingested_at",
        "meta",
        TEXT_FIELD,
        "has_text",
        "text_cut",
    }
)


def _lane_store(
    store: PageStore, batch: int, option: str
) -> tuple[LaneReindexStore, CollectionSpec]:
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    spec = store.spec()
    if spec is None:
        raise CollectionNotFoundError(
            "the collection does not exist yet: nothing to reindex. Run `pagerag ingest` first."
        )
    if not isinstance(store, LaneReindexStore):
        raise StoreError(
            f"the page store {type(store).__name__} cannot add a lane to stored pages, so "
            f"`pagerag reindex {option}` cannot upgrade collection {spec.name!r} in place: "
            "re-ingest its documents into a new collection (store.collection) with "
            "ingest.lanes: visual+text"
        )
    return store, spec


def _visual_weights(
    store: LaneReindexStore, spec: CollectionSpec, embedder: PageEmbedder
) -> CollectionSpec:
    """Refuse a model unlike the collection's declared vectors, or weights other than
    those that filled some pages already; record the weights before filling any page,
    so a rerun after a kill is checked against them."""
    model = embedder.spec
    if spec.model != model.name or spec.dim != model.dim:
        raise CollectionMismatchError(
            f"collection {spec.name!r} declares visual vectors of {spec.model} (dim "
            f"{spec.dim}), but embedding.model is {model.name} (dim {model.dim}): set "
            f"embedding.model: {spec.model} to fill them, or ingest into a new collection "
            "(another store.collection) to use the other model"
        )
    wanted = replace(spec, identity=identity_of(embedder))
    problem = weights_problem(spec, wanted)
    filled = store.count_pages() - store.count_pages_missing([spec.full_vector])
    if problem and (filled or spec.has_visual):
        raise CollectionMismatchError(
            f"collection {spec.name!r}: {problem}. Configure the weights that filled its "
            f"pages{weights_remedy(spec, wanted)}, or re-ingest into a new collection"
        )
    if spec.identity != wanted.identity and not spec.has_visual:
        return store.record_lanes(spec.lanes, identity=wanted.identity)
    return spec


def _rebuild_text(
    store: LaneReindexStore,
    embedder: TextEmbedder,
    batch: int,
    progress: Callable[[ReindexProgress], None] | None,
) -> int:
    """Re-embed every stored page text in ``embedder``'s language (nothing extracted);
    returns the pages rewritten. Pages without the text field are left to the fill."""
    total, done = store.count_pages(), 0
    for ids in store.iter_page_ids(batch=batch):
        stored = store.page_payloads(ids, [TEXT_FIELD])
        texts = {i: str(p[TEXT_FIELD]) for i, p in stored.items() if p.get(TEXT_FIELD) is not None}
        vectors = embedder.embed_texts(list(texts.values()))
        store.update_page_text(
            {
                i: ({"has_text": bool(t)}, v)
                for (i, t), v in zip(texts.items(), vectors, strict=True)
            }
        )
        done += len(texts)
        if progress is not None:
            progress(ReindexProgress(done, max(total, done), 1))
    return done


def _with_lane(spec: CollectionSpec, lane: Lane) -> tuple[Lane, ...]:
    return tuple(name for name in LANES if name in spec.lanes or name == lane)


def _lane_report(
    store: PageStore,
    spec: CollectionSpec,
    docs: _Documents,
    rebuilt: int,
    passes: int,
    recorded: bool,
    missing: int,
    started: float,
) -> ReindexReport:
    return ReindexReport(
        collection=spec.name,
        pooled=tuple(spec.pooled),
        pages=store.count_pages(),
        pages_updated=docs.written + rebuilt,
        passes=passes,
        recorded=recorded,
        seconds=time.perf_counter() - started,
        token_pooling=spec.token_pooling,
        lane=docs.lane,
        lanes=spec.lanes,
        text_language=spec.text_language if spec.has_text else None,
        skipped=docs.skipped,
        pages_missing=missing,
    )
