"""Add a retrieval lane to an existing collection, in place: ``pagerag reindex --text``
and ``--visual``.

Why this lives with ingestion: a lane's source is each document's file, not a
stored vector — text is read again with pdftotext, images rendered and embedded
by the ingest's own :class:`~pipeline.ingest.stages.RenderStage` and
:class:`~pipeline.ingest.stages.EmbedStage` — so it depends on the ingest
stages, which depend on the store; the in-place pass loop it shares with the
pooled reindexes (:func:`~pipeline.retrieve.reindex.fill_passes`: the lane's
vector added unrecorded, the pages still lacking it asked of the store on every
pass, the manifest changed last) stays in :mod:`pipeline.retrieve.reindex`.

The file must still hold the bytes ingested (its sha256 is the document id),
else the document is skipped and reported and the lane stays unrecorded. Such a
store is a :class:`LaneReindexStore`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from pipeline.embed.pooling import (
    require_token_pooler,
)
from pipeline.embed.protocol import PageEmbedder, identity_of
from pipeline.embed.text import TextEmbedder
from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
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
from pipeline.retrieve.lanes import LaneStore
from pipeline.retrieve.reindex import (
    MAX_PASSES,
    PooledVectorStore,
    ReindexProgress,
    ReindexReport,
    SkippedDocument,
    fill_passes,
)
from pipeline.retrieve.store import (
    PageStore,
    PayloadReader,
    weights_problem,
    weights_remedy,
)
from pipeline.types import (
    LANES,
    TEXT_FIELD,
    VISUAL,
    CollectionSpec,
    Lane,
    ModelIdentity,
    PagePoint,
)

__all__ = [
    "LaneReindexStore",
    "SourceFiles",
    "reindex_text",
    "reindex_visual",
]


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
        """:func:`fill_passes` over the pages lacking the lane, skipped pages left out;
        returns the passes made."""

        def pending() -> Iterator[list[str]]:
            for ids in batches():
                if kept := [i for i in ids if i not in self._skipped_ids]:
                    yield kept

        return fill_passes(
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
