"""The local ingestion engine: files → rendered pages → embeddings → Qdrant, overlapped.

The stages (:mod:`~pipeline.ingest.planner`, :mod:`~pipeline.ingest.stages`,
:mod:`~pipeline.ingest.completer`) hold the logic; :class:`IngestJob` runs
them at once, joined by bounded queues so memory stays flat whatever the
document length::

    render threads (N) ──pages──▶ embed (caller's thread) ──points──▶ upsert thread
    Planner + RenderStage         EmbedStage, batches of             UpsertStage, batches of
    (poppler subprocesses)        embedding.batch_size               store.upsert_batch,
                                                                     + Completer (marks)

Embedding is the slowest stage with a real model, so the others work ahead
and behind it: renderers fill the page queue while a batch is embedded, and
upserts of batch *n* overlap the embedding of batch *n+1*.

Crash safety (any kill, any moment): point ids are deterministic
(sha256 of the file bytes + page number), so a redo overwrites instead of
duplicating; a document is marked complete — a vectorless marker point —
only after its pages are flushed; a rerun skips completed documents and
redoes the rest. Superseded versions of a changed file are deleted only
after the new version is complete, so a crash never loses what was stored.

Each file ends in exactly one :class:`FileOutcome`; a bad file never stops
the job. Only a store outage or a model that cannot load does: the error is
reported once (``IngestReport.error``) and the files not yet done are failed
with a few words naming it. The model is loaded before the first file is
rendered (and only when one is), so a model that cannot load stops the job
before any rendering.

The text lane (a collection whose lanes include text): each render worker
reads its document's text layer with pdftotext in a thread beside pdftoppm
(:class:`~pipeline.ingest.stages.RenderStage`), and the embed stage adds each
page's text and BM25 vector. A text-only collection needs no embedding model:
``embedder`` is None and nothing loads one; pages are still rendered, for
their stored JPEGs.

Progress: a count pass (:class:`~pipeline.ingest.counting.PageCounter`)
probes, ahead of the render workers, how many pages each file to render has,
so the progress total is known early and does not grow as files are opened;
pages that fail count as dealt with, so the total is always reached.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.embed.protocol import PageEmbedder
from pipeline.embed.text import TextEmbedder
from pipeline.errors import ModelError, PageRAGError, StoreError
from pipeline.ingest.completer import Completer
from pipeline.ingest.counting import HashMemo, PageCounter
from pipeline.ingest.outcome import (
    FileOutcome,
    IngestProgress,
    IngestReport,
    RunTally,
    not_started,
)
from pipeline.ingest.planner import Planner
from pipeline.ingest.render import PageFailure, RenderPlan
from pipeline.ingest.settings import IngestSettings
from pipeline.ingest.stages import (
    DecodedPage,
    Document,
    EmbedStage,
    RenderStage,
    UpsertStage,
)
from pipeline.types import PagePoint

__all__ = [
    "FileOutcome",
    "IngestJob",
    "IngestProgress",
    "IngestReport",
    "IngestSettings",
    "PageFailure",
    "RenderPlan",
]


@dataclass(frozen=True)
class _DocEnd:
    """Queued after a document's last page: rendering of it is over."""

    index: int  # the file's place in the run's list
    doc: Document


@dataclass(frozen=True)
class _Stages:
    """One run's stage objects (they hold its aliases and its claims)."""

    planner: Planner
    render: RenderStage
    embed: EmbedStage
    upsert: UpsertStage
    completer: Completer


_STOP = object()
_Points = list[tuple[str, PagePoint | PageFailure]]  # (document id, result) per embedded page


class IngestJob:
    """One run over a list of files. Build with :meth:`PageRAG.ingest`, or directly."""

    def __init__(
        self,
        settings: IngestSettings | None = None,
        *,
        embedder: PageEmbedder | None,
        text_embedder: TextEmbedder | None = None,
        render_workers: int = 2,
        queue_pages: int = 16,
        progress: Callable[[IngestProgress], None] | None = None,
        **parts: Any,
    ) -> None:
        """``settings``: what every engine shares (:class:`IngestSettings`); or its
        fields as keywords (``store=``, ``renderer=``, ``spec=``, ``hash_file=`` …).
        ``text_embedder``: the text lane's BM25 vectors (when ``spec`` has it)."""
        if settings is None:
            settings = IngestSettings(**parts)
        elif parts:
            raise TypeError(f"pass IngestSettings or its fields, not both: {sorted(parts)}")
        self.settings = settings
        self.embedder = embedder
        self.text_embedder = text_embedder
        self.render_workers = max(1, render_workers)
        self.queue_pages = max(1, queue_pages)
        self.progress = progress
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._fatal: PageRAGError | None = None
        self._tally = RunTally(progress)  # outcomes, page counts, progress events
        self._count_cancel = threading.Event()
        self._first_batch: float | None = None
        self._model_loader: threading.Thread | None = None
        self._model_loaded = threading.Event()
        self._model_lock = threading.Lock()
        self._hash: Callable[[Path], str] = settings.hash_file
        self._stages = self._build_stages(None)

    # -- public ---------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop after the batch in flight (SIGINT/SIGTERM handlers call this)."""
        self.stop_event.set()

    def _build_stages(self, aliases: Mapping[Path, str] | None) -> _Stages:
        """The stage objects of one run, configured as this job is."""
        s = self.settings
        return _Stages(
            planner=s.planner(self._hash, aliases),
            render=s.render_stage(),
            embed=EmbedStage(
                self.embedder,
                s.spec,
                text_embedder=self.text_embedder,
                store_images=s.store_images,
                metadata=s.metadata,
                aliases=aliases,
            ),
            upsert=UpsertStage(s.store, s.upsert_batch),
            completer=s.completer(aliases),
        )

    def run(
        self,
        files: Sequence[Path],
        *,
        failed: Sequence[FileOutcome] = (),
        aliases: Mapping[Path, str] | None = None,
    ) -> IngestReport:
        """Ingest ``files`` (already discovered); ``failed`` are outcomes found earlier.

        ``aliases`` maps a resolved file to the path the user gave for it
        (a symlink), stored beside the resolved one.
        """
        started = time.monotonic()
        # the planner and the count pass share hashes
        self._hash = HashMemo(self.settings.hash_file)
        self._stages = self._build_stages(aliases)
        self._tally.progress = self.progress
        self._tally.files_total = len(files) + len(failed)
        self._tally.files_failed_early = len(failed)
        busy = self._overlap(files)
        report = IngestReport(
            seconds=time.monotonic() - started,
            embed_busy_seconds=busy,
            first_batch_seconds=(
                None if self._first_batch is None else self._first_batch - started
            ),
            interrupted=self.stop_event.is_set() and self._fatal is None,
            error=None if self._fatal is None else str(self._fatal),
        )
        report.outcomes = list(failed)
        for index, path in enumerate(files):
            outcome = self._tally.outcome(index)  # None: never started (fatal error or stop)
            report.outcomes.append(outcome or not_started(str(path), self._fatal))
        return report

    # -- the threads ----------------------------------------------------------------

    def _overlap(self, files: Sequence[Path]) -> float:
        """Run the three stages at once until every file is done; returns embedding seconds."""
        pages: queue.Queue[Any] = queue.Queue(maxsize=self.queue_pages)
        per_batch = self.queue_pages // self.settings.embed_batch
        points: queue.Queue[Any] = queue.Queue(maxsize=max(2, per_batch))
        todo: queue.Queue[tuple[int, Path]] = queue.Queue()
        for index, path in enumerate(files):
            todo.put((index, path))
        renderers = [
            threading.Thread(
                target=self._render_worker,
                args=(todo, pages),
                daemon=True,
                name=f"pagerag-render-{i}",
            )
            for i in range(min(self.render_workers, max(1, len(files))))
        ]
        upserter = threading.Thread(
            target=self._upsert_stage, args=(points,), daemon=True, name="pagerag-upsert"
        )
        counter = threading.Thread(
            target=self._count_pages, args=(files,), daemon=True, name="pagerag-count"
        )
        self._tally.counting = True
        counter.start()
        for thread in renderers:
            thread.start()
        upserter.start()

        def close_pages() -> None:
            for thread in renderers:
                thread.join()
            pages.put(_STOP)

        closer = threading.Thread(target=close_pages, daemon=True, name="pagerag-render-join")
        closer.start()
        try:
            return self._embed_stage(pages, points)
        finally:
            self._count_cancel.set()  # every file is rendered: counting has no use left
            counter.join()
            points.put(_STOP)
            upserter.join()
            # Unblock renderers still waiting on a full queue after a fatal error.
            while closer.is_alive():
                with contextlib.suppress(queue.Empty):
                    pages.get(timeout=0.05)
            closer.join()

    # -- stage 1: plan + render --------------------------------------------------

    def _render_worker(self, todo: queue.Queue[tuple[int, Path]], pages: queue.Queue[Any]) -> None:
        while not self._should_stop():
            try:
                index, path = todo.get_nowait()
            except queue.Empty:
                return
            self._render_one(index, path, pages)

    def _render_one(self, index: int, path: Path, pages: queue.Queue[Any]) -> None:
        try:
            planned = self._stages.planner.plan(path)
        except StoreError as exc:
            self._set_fatal(exc)
            return
        if isinstance(planned, FileOutcome):  # nothing to render
            self._tally.expect(index, 0)
            self._tally.finish(index, planned)
            return
        self._load_model()  # in the background, while this file is probed
        doc, render = planned, self._stages.render
        opened = render.open(doc, cancel=self.stop_event) and doc.plan is not None
        self._tally.expect(index, doc.plan.page_count if opened and doc.plan is not None else 0)
        if opened and self._model_ready():  # a model that cannot load: nothing is rendered
            for item in render.pages(doc, cancel=self.stop_event):
                if isinstance(item, DecodedPage) and not self._put(pages, item):
                    break
                if self._should_stop():
                    break
        self._put(pages, _DocEnd(index, doc), force=True)

    def _load_model(self) -> None:
        """Start loading the model, once, when the first file to render comes up (a run
        of unchanged files never loads it)."""
        with self._model_lock:
            if self._model_loader is None:
                self._model_loader = threading.Thread(
                    target=self._warm_up, daemon=True, name="pagerag-model"
                )
                self._model_loader.start()

    def _warm_up(self) -> None:
        """The model loader: a model that cannot load ends the job, with its error
        (no embedder, a text-only collection: nothing to load)."""
        warm_up = None if self.embedder is None else getattr(self.embedder, "warm_up", None)
        try:
            if callable(warm_up):
                warm_up()
        except PageRAGError as exc:
            self._set_fatal(exc)
        finally:
            self._model_loaded.set()

    def _model_ready(self) -> bool:
        """Wait for the model before the first page is rendered; False when it cannot
        load or the job is stopping (a stop does not wait for the model to load)."""
        while not self._model_loaded.wait(0.1):
            if self._should_stop():
                return False
        return self._fatal is None

    def _count_pages(self, files: Sequence[Path]) -> None:
        """The count pass: the pages of every file this run renders, ahead of rendering."""
        counter = PageCounter(
            store=self.settings.store,
            planner=self._stages.planner,
            renderer=self.settings.renderer,
            hash_file=self._hash,
            password_for=self.settings.password_for,
            cancel=self._count_cancel,
        )
        tally = self._tally
        try:
            counter.run(files, tally.found, skip=lambda i: tally.knows(i) or self._should_stop())
        finally:
            tally.counted()

    def _put(self, q: queue.Queue[Any], item: Any, *, force: bool = False) -> bool:
        while True:
            if self._fatal is not None and not force:
                return False
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self._fatal is not None:
                    return False

    def _should_stop(self) -> bool:
        return self.stop_event.is_set() or self._fatal is not None

    # -- stage 2: embed ---------------------------------------------------------

    def _embed_stage(self, pages: queue.Queue[Any], points: queue.Queue[Any]) -> float:
        """Batches pages for the embedder; a document's end goes on after its last batch."""
        busy = 0.0
        batch: list[DecodedPage] = []
        ends: list[_DocEnd] = []
        while True:
            item = pages.get()
            if item is _STOP:
                return busy + self._emit(batch, ends, points)
            if self._fatal is not None:
                continue  # drain so renderers can finish
            if isinstance(item, _DocEnd):
                # Forwarded only after the batch holding the document's last page.
                ends.append(item)
                if not batch:
                    busy += self._emit(batch, ends, points)
                continue
            if self.stop_event.is_set():
                continue  # drop pages rendered after the stop request
            batch.append(item)
            if len(batch) >= self.settings.embed_batch:
                busy += self._emit(batch, ends, points)

    def _emit(
        self, batch: list[DecodedPage], ends: list[_DocEnd], points: queue.Queue[Any]
    ) -> float:
        """Embed ``batch``, pass its points on, then ``ends``; returns the seconds embedding."""
        busy = 0.0
        if batch:
            t0 = time.monotonic()
            if self._first_batch is None:
                self._first_batch = t0
            try:
                results = self._stages.embed.embed(batch)
            except ModelError as exc:  # the model cannot run: every page would fail
                self._set_fatal(exc)
                results = []
            busy = time.monotonic() - t0
            if results:
                built: _Points = [
                    (d.page.document_id, r) for d, r in zip(batch, results, strict=True)
                ]
                self._put(points, built, force=True)
            batch.clear()
        for end in ends:
            self._put(points, end, force=True)
        ends.clear()
        return busy

    # -- stage 3: upsert + completion -------------------------------------------

    def _upsert_stage(self, points: queue.Queue[Any]) -> None:
        """Runs in its own thread: any failure must end the job, never kill the
        thread silently (the embed stage would block on a full queue forever)."""
        try:
            self._upsert_loop(points)
        except Exception as exc:  # an adapter bug: a StoreError it did not translate
            self._set_fatal(
                StoreError(f"the page store failed unexpectedly: {exc!r}; rerun to resume")
            )
            while points.get() is not _STOP:  # keep the embed stage unblocked
                pass

    def _upsert_loop(self, points: queue.Queue[Any]) -> None:
        upsert = self._stages.upsert
        failures: dict[str, list[PageFailure]] = {}  # pages that failed to embed
        while True:
            item = points.get()
            if item is _STOP:
                self._write(upsert)
                return
            if isinstance(item, _DocEnd):
                self._write(upsert)
                doc = item.doc
                doc.stored_pages = upsert.stored_pages(doc.document_id)
                doc.failures.extend(failures.pop(doc.document_id, []))
                self._complete(item.index, doc)
                continue
            stored: list[PagePoint] = []
            for document_id, result in item:
                if isinstance(result, PageFailure):
                    failures.setdefault(document_id, []).append(result)
                else:
                    stored.append(result)
            if upsert.add(stored):
                self._write(upsert)

    def _write(self, upsert: UpsertStage) -> None:
        if self._fatal is not None:
            upsert.discard()
            return
        try:
            written = upsert.flush()
        except StoreError as exc:
            self._set_fatal(exc)
            return
        if written:
            self._tally.stored(written)

    def _complete(self, index: int, doc: Document) -> None:
        """Decide a rendered document's outcome; mark it complete if it is."""
        completer = self._stages.completer
        try:
            outcome = completer.complete(
                doc, aborted=self._fatal, stopping=self.stop_event.is_set()
            )
        except StoreError as exc:
            self._set_fatal(exc)
            outcome = completer.store_failed(doc, exc)
        self._tally.finish(index, outcome, stored=doc.stored)

    # -- bookkeeping ----------------------------------------------------------------

    def _set_fatal(self, error: PageRAGError) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = error
