"""The ingestion job: files → rendered pages → embeddings → Qdrant, overlapped.

Three stages run at once, joined by bounded queues so memory stays flat
whatever the document length::

    render threads (N) ──pages──▶ embed (caller's thread) ──points──▶ upsert thread
    each drives poppler          batches of                         batches of
    subprocesses                 embedding.batch_size               store.upsert_batch,
                                 + pooled vectors                   + completion marks

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
the job. Only a store outage or a model that cannot load does, and then the
files not yet done are reported as failed with that reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import Image

from pipeline.embed.pooling import pool_page
from pipeline.embed.protocol import PageEmbedder
from pipeline.errors import (
    InputError,
    ModelError,
    PageRAGError,
    RenderCancelledError,
    StoreError,
)
from pipeline.ingest.render import PageFailure, RenderPlan, jpeg_to_image
from pipeline.retrieve.store import IMAGE_FIELD, KIND_PAGE, PageStore, paths_payload
from pipeline.types import (
    CollectionSpec,
    DocumentRecord,
    Page,
    PageFilter,
    PagePoint,
    page_point_id,
)

__all__ = [
    "FileOutcome",
    "IngestJob",
    "IngestProgress",
    "IngestReport",
    "PageFailure",
    "RenderPlan",
]

Status = Literal["ingested", "skipped", "partial", "failed"]


class DocumentRenderer(Protocol):
    """What the job needs from ``pipeline.ingest.render.Renderer`` (fakes implement it in tests)."""

    def open(
        self, path: Path, *, password: str | None = None, cancel: threading.Event | None = None
    ) -> RenderPlan: ...

    def iter_pages(
        self,
        plan: RenderPlan,
        *,
        document_id: str,
        source: str,
        cancel: threading.Event | None = None,
    ) -> Iterator[Page | PageFailure]: ...


@dataclass
class FileOutcome:
    """The single recorded result of one input file."""

    path: str
    status: Status
    document_id: str | None = None
    pages: int = 0  # pages stored by this run (0 when skipped)
    total_pages: int | None = None
    reason: str | None = None  # machine-readable: unchanged, damaged, needs_password, ...
    message: str | None = None  # human-readable, says what to do
    failed_pages: list[int] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # document ids of superseded versions
    seconds: float = 0.0


@dataclass
class IngestReport:
    outcomes: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0
    embed_busy_seconds: float = 0.0
    # When the first batch reached the embedder: the job's start-up latency.
    first_batch_seconds: float | None = None
    interrupted: bool = False

    @property
    def pages_ingested(self) -> int:
        return sum(o.pages for o in self.outcomes)

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def ok(self) -> bool:
        """No file failed and no stored document lacks pages that failed.

        A document skipped because it is stored incomplete with failed pages
        keeps the run from being ok, as its first run did: the store is still
        missing those pages (``--retry-incomplete`` or a changed limit redoes it).
        """
        return not self.interrupted and all(
            o.status in ("ingested", "skipped") and not o.failed_pages for o in self.outcomes
        )

    @property
    def exit_code(self) -> int:
        """0 when every file is ingested or unchanged and whole, 1 otherwise."""
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "pages_ingested": self.pages_ingested,
            "pages_per_second": round(self.pages_ingested / self.seconds, 3)
            if self.seconds
            else None,
            "embed_busy_seconds": round(self.embed_busy_seconds, 3),
            "first_batch_seconds": (
                None if self.first_batch_seconds is None else round(self.first_batch_seconds, 3)
            ),
            "files": {s: self.count(s) for s in ("ingested", "skipped", "partial", "failed")},
            "outcomes": [asdict(o) for o in self.outcomes],
        }


@dataclass
class IngestProgress:
    """Passed to the progress callback after every change."""

    files_total: int
    files_done: int
    pages_total: int  # known pages of documents opened so far
    pages_done: int
    current: str | None = None


@dataclass
class _DocState:
    path: Path
    document_id: str
    started: float
    file_bytes: int
    plan: RenderPlan | None = None
    rendered: int = 0
    stored_pages: set[int] = field(default_factory=set)
    failures: list[PageFailure] = field(default_factory=list)
    render_done: bool = False
    render_error: PageRAGError | None = None
    redo_note: str | None = None  # why a stored, incomplete version is being redone

    @property
    def stored(self) -> int:
        return len(self.stored_pages)


@dataclass(frozen=True)
class _DocEnd:
    """Queued after a document's last page: rendering of it is over."""

    state: _DocState


_STOP = object()
_UNKNOWN = object()  # a limit a completion mark did not record (written by older pagerag)


class _Fatal(Exception):
    """Wraps the error that ends the whole job (store down, model missing)."""

    def __init__(self, error: PageRAGError) -> None:
        super().__init__(str(error))
        self.error = error


class IngestJob:
    """One run over a list of files. Build with :meth:`PageRAG.ingest`, or directly."""

    def __init__(
        self,
        *,
        store: PageStore,
        embedder: PageEmbedder,
        renderer: DocumentRenderer,
        spec: CollectionSpec,
        hash_file: Callable[[Path], str],
        password_for: Callable[[Path], str | None] = lambda _p: None,
        render_workers: int = 2,
        embed_batch: int = 2,
        upsert_batch: int = 8,
        queue_pages: int = 16,
        store_images: bool = True,
        metadata: dict[str, str] | None = None,
        progress: Callable[[IngestProgress], None] | None = None,
        limits: Mapping[str, Any] | None = None,
        retry_incomplete: bool = False,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.renderer = renderer
        self.spec = spec
        self.hash_file = hash_file
        self.password_for = password_for
        self.render_workers = max(1, render_workers)
        self.embed_batch = max(1, embed_batch)
        self.upsert_batch = max(1, upsert_batch)
        self.queue_pages = max(1, queue_pages)
        self.store_images = store_images
        self.metadata = dict(metadata or {})
        self.progress = progress
        # The render settings in force (LIMIT_KEYS): recorded in completion marks;
        # a document stored incomplete under other values is redone.
        self.limits = dict(limits or {})
        self.retry_incomplete = retry_incomplete
        self._aliases: dict[Path, str] = {}
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._fatal: PageRAGError | None = None
        self._outcomes: dict[int, FileOutcome] = {}
        self._pages_total = 0
        self._pages_done = 0
        self._files_total = 0
        self._first_batch: float | None = None
        self._claimed: dict[str, Path] = {}  # document id -> first path with it in this job

    # -- public ---------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop after the batch in flight (SIGINT/SIGTERM handlers call this)."""
        self.stop_event.set()

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
        self._aliases = dict(aliases or {})
        self._files_total = len(files) + len(failed)
        pages: queue.Queue[Any] = queue.Queue(maxsize=self.queue_pages)
        points: queue.Queue[Any] = queue.Queue(maxsize=max(2, self.queue_pages // self.embed_batch))
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
        for thread in renderers:
            thread.start()
        upserter.start()

        def close_pages() -> None:
            for thread in renderers:
                thread.join()
            pages.put(_STOP)

        closer = threading.Thread(target=close_pages, daemon=True, name="pagerag-render-join")
        closer.start()
        busy = 0.0
        try:
            busy = self._embed_stage(pages, points)
        finally:
            points.put(_STOP)
            upserter.join()
            # Unblock renderers still waiting on a full queue after a fatal error.
            while closer.is_alive():
                with contextlib.suppress(queue.Empty):
                    pages.get(timeout=0.05)
            closer.join()

        report = IngestReport(
            seconds=time.monotonic() - started,
            embed_busy_seconds=busy,
            first_batch_seconds=(
                None if self._first_batch is None else self._first_batch - started
            ),
            interrupted=self.stop_event.is_set() and self._fatal is None,
        )
        report.outcomes = list(failed)
        for index, path in enumerate(files):
            outcome = self._outcomes.get(index)
            if outcome is None:  # never started: fatal error or stop request
                if self._fatal is not None:
                    outcome = FileOutcome(
                        path=str(path),
                        status="failed",
                        reason="aborted",
                        message=f"not ingested: the job stopped because {self._fatal}",
                    )
                else:
                    outcome = FileOutcome(
                        path=str(path),
                        status="failed",
                        reason="interrupted",
                        message="not ingested: the job was interrupted; rerun to resume",
                    )
            report.outcomes.append(outcome)
        return report

    # -- stage 1: render --------------------------------------------------------

    def _render_worker(self, todo: queue.Queue[tuple[int, Path]], pages: queue.Queue[Any]) -> None:
        while not self._should_stop():
            try:
                index, path = todo.get_nowait()
            except queue.Empty:
                return
            self._render_one(index, path, pages)

    def _render_one(self, index: int, path: Path, pages: queue.Queue[Any]) -> None:
        started = time.monotonic()
        try:
            size = path.stat().st_size
            document_id = self.hash_file(path)
        except OSError as exc:
            self._finish(
                index,
                FileOutcome(
                    path=str(path),
                    status="failed",
                    reason="unreadable",
                    message=f"{path}: cannot read the file ({exc.strerror}); check it exists and "
                    "is readable",
                    seconds=time.monotonic() - started,
                ),
            )
            return
        with self._lock:
            first = self._claimed.setdefault(document_id, path)
        if first != path:
            # Same bytes under another name in this very job: one document id, so
            # one set of pages; rendering it twice would interleave their pages.
            # What this path held before is another version: it goes.
            try:
                removed = self._reconcile(path, document_id)
            except StoreError as exc:
                self._set_fatal(exc)
                return
            self._finish(
                index,
                FileOutcome(
                    path=str(path),
                    status="skipped",
                    document_id=document_id,
                    reason="duplicate",
                    message=f"same content as {first}, ingested by this job",
                    replaced=removed,
                    seconds=time.monotonic() - started,
                ),
            )
            return
        try:
            existing = self.store.get_document(document_id)
            redo_note = self._redo_note(existing)
            if existing is not None and redo_note is None:
                self._finish(index, self._skip(path, existing, started))
                return
        except StoreError as exc:
            self._set_fatal(exc)
            return

        state = _DocState(
            path=path,
            document_id=document_id,
            started=started,
            file_bytes=size,
            redo_note=redo_note,
        )
        try:
            state.plan = self.renderer.open(
                path, password=self.password_for(path), cancel=self.stop_event
            )
            with self._lock:
                self._pages_total += state.plan.page_count
            for item in self.renderer.iter_pages(
                state.plan, document_id=document_id, source=str(path), cancel=self.stop_event
            ):
                if isinstance(item, PageFailure):
                    state.failures.append(item)
                else:
                    # Decode here, not in the embed stage: the embedder's thread
                    # should spend its time embedding.
                    try:
                        image = jpeg_to_image(item.jpeg)
                    except Exception as exc:  # a corrupt page image
                        state.failures.append(
                            PageFailure(
                                item.page_number,
                                InputError(
                                    path,
                                    f"rendered page cannot be decoded: {exc}",
                                    page=item.page_number,
                                ),
                            )
                        )
                        continue
                    state.rendered += 1
                    if not self._put(pages, (index, item, image)):
                        break
                if self._should_stop():
                    break
        except RenderCancelledError:
            pass  # the job is stopping: the document ends as interrupted
        except InputError as exc:
            state.render_error = exc
        except PageRAGError as exc:  # e.g. poppler missing: every file would fail alike
            state.render_error = exc
        except Exception as exc:  # a renderer bug must not kill the job
            state.render_error = InputError(path, f"unexpected rendering failure: {exc!r}")
        state.render_done = True
        self._put(pages, (index, _DocEnd(state)), force=True)

    def _redo_note(self, existing: DocumentRecord | None) -> str | None:
        """Why a stored version must be redone (None: keep it).

        A whole document is never redone. An incomplete one is, when asked
        (``retry_incomplete``) or when a setting that can cut a document short
        changed since it was stored: it would come out differently now.
        """
        if existing is None or existing.is_complete:
            return None
        stored = f"stored with {existing.page_count} of {existing.total_pages} pages"
        if self.retry_incomplete:
            return f"redone ({stored}, --retry-incomplete)"
        changed = [
            f"render.{key} {existing.limits.get(key)} → {value}"
            for key, value in sorted(self.limits.items())
            if existing.limits.get(key, _UNKNOWN) != value
        ]
        if not changed:
            return None
        return f"redone ({stored}; changed since: {', '.join(changed)})"

    def _skip(self, path: Path, existing: DocumentRecord, started: float) -> FileOutcome:
        """Outcome of a file whose bytes are stored already; reconciles its path.

        The bytes may be stored under this path (unchanged), or under another
        path that still holds them (a copy: kept there, as one clean run would
        keep it under the first path). If that other path no longer holds
        them, the file was moved or renamed: the stored document is relabelled
        to this path, no re-embedding. Either way, any other version stored
        under this path (an old version a crash left behind, the content it
        had before) is removed: one path, one version.
        """
        alias = self._aliases.get(path)
        note = "unchanged since the last run"
        if str(path) not in existing.paths and (alias is None or alias not in existing.paths):
            if self._still_holds(existing):
                note = f"same content already ingested from {existing.source}"
            else:
                fields = {**paths_payload(str(path), alias), "file_name": path.name}
                self.store.set_payload(existing.document_id, fields)
                note = f"moved from {existing.source}: relabelled, not re-embedded"
        removed = self._reconcile(path, existing.document_id)
        if self.metadata and dict(existing.metadata) != self.metadata:
            self.store.set_payload(existing.document_id, {"meta": self.metadata})
            note += "; metadata updated"
        reason = "unchanged"
        if not existing.is_complete:
            reason = "incomplete"
            note = (
                f"stored incomplete ({existing.incomplete}: {existing.page_count} of "
                f"{existing.total_pages} pages) and the settings are the same; "
                "rerun with --retry-incomplete to redo it, or raise the limit that cut it short"
            )
        return FileOutcome(
            path=str(path),
            status="skipped",
            document_id=existing.document_id,
            total_pages=existing.total_pages,
            reason=reason,
            message=note,
            failed_pages=list(existing.failed_pages),
            replaced=removed,
            seconds=time.monotonic() - started,
        )

    def _still_holds(self, record: DocumentRecord) -> bool:
        """Whether ``record``'s own path still has its bytes (hashes it: rare path)."""
        try:
            return self.hash_file(Path(record.source)) == record.document_id
        except OSError:
            return False

    def _reconcile(self, path: Path, keep: str) -> list[str]:
        """Delete every version stored under ``path`` but ``keep``, marked or not."""
        alias = self._aliases.get(path)
        found: set[str] = set()
        for name in {str(path), alias} - {None}:
            found |= self.store.document_ids(PageFilter(source=name))
        removed = sorted(found - {keep})
        for old_id in removed:
            self.store.delete_document(old_id)
        return removed

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
        busy = 0.0
        batch: list[tuple[int, Page, Image.Image]] = []
        ends: list[tuple[int, _DocEnd]] = []

        def emit() -> None:
            nonlocal busy
            if batch:
                t0 = time.monotonic()
                if self._first_batch is None:
                    self._first_batch = t0
                try:
                    built = self._embed_batch(batch)
                except _Fatal as fatal:
                    self._set_fatal(fatal.error)
                    built = []
                busy += time.monotonic() - t0
                if built:
                    self._put(points, built, force=True)
                batch.clear()
            for end in ends:
                self._put(points, end, force=True)
            ends.clear()

        while True:
            item = pages.get()
            if item is _STOP:
                emit()
                return busy
            if self._fatal is not None:
                continue  # drain so renderers can finish
            if isinstance(item[1], _DocEnd):
                # Forwarded only after the batch holding the document's last page.
                ends.append((item[0], item[1]))
                if not batch:
                    emit()
                continue
            if self.stop_event.is_set():
                continue  # drop pages rendered after the stop request
            batch.append(item)
            if len(batch) >= self.embed_batch:
                emit()

    def _embed_batch(
        self, batch: list[tuple[int, Page, Image.Image]]
    ) -> list[tuple[int, PagePoint | PageFailure, str]]:
        images = [image for _, _, image in batch]
        results: list[Any]
        try:
            results = list(self.embedder.embed_images(images))
        except ModelError as exc:
            raise _Fatal(exc) from exc
        except Exception:  # find the page that breaks the batch
            results = []
            for image in images:
                try:
                    results.extend(self.embedder.embed_images([image]))
                except ModelError as exc:
                    raise _Fatal(exc) from exc
                except Exception as exc:
                    results.append(exc)
        out: list[tuple[int, PagePoint | PageFailure, str]] = []
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for (index, page, _image), vec in zip(batch, results, strict=True):
            if isinstance(vec, Exception):
                failure = PageFailure(
                    page.page_number,
                    InputError(page.source, f"embedding failed: {vec}", page=page.page_number),
                )
                out.append((index, failure, page.document_id))
                continue
            out.append((index, self._point(page, vec, now), page.document_id))
        return out

    def _point(self, page: Page, vectors: Any, now: str) -> PagePoint:
        named = {self.spec.full_vector: vectors}
        if self.spec.pooled:
            pooled = pool_page(vectors, self.embedder.spec)
            named.update({name: pooled[name] for name in self.spec.pooled})
        identity = self.spec.identity
        payload: dict[str, Any] = {
            "kind": KIND_PAGE,
            "document_id": page.document_id,
            **paths_payload(page.source, self._aliases.get(Path(page.source))),
            "file_name": Path(page.source).name,
            "page": page.page_number,
            "page_count": page.page_count,
            "width": page.width,
            "height": page.height,
            "dpi": page.dpi,
            "ingested_at": now,
            # the label says "stand-in" for random test weights; the fingerprint
            # names the exact weights (as in the collection manifest)
            "model": self.spec.model_label,
            "model_fingerprint": None if identity is None else identity.fingerprint,
            "meta": self.metadata,
        }
        if self.store_images:
            import base64

            payload[IMAGE_FIELD] = base64.b64encode(page.jpeg).decode("ascii")
        return PagePoint(
            point_id=page_point_id(page.document_id, page.page_number),
            vectors=named,
            payload=payload,
        )

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
        pending: list[PagePoint] = []
        stored: dict[str, set[int]] = {}
        failures: dict[str, list[PageFailure]] = {}

        def write() -> None:
            if not pending or self._fatal is not None:
                pending.clear()
                return
            try:
                for start in range(0, len(pending), self.upsert_batch):
                    self.store.upsert_pages(pending[start : start + self.upsert_batch])
            except StoreError as exc:
                self._set_fatal(exc)
                pending.clear()
                return
            for point in pending:
                doc = point.payload["document_id"]
                stored.setdefault(doc, set()).add(int(point.payload["page"]))
            with self._lock:
                self._pages_done += len(pending)
            pending.clear()
            self._report_progress(None)

        while True:
            item = points.get()
            if item is _STOP:
                write()
                return
            if isinstance(item, tuple) and isinstance(item[1], _DocEnd):
                write()
                index, end = item
                state = end.state
                state.stored_pages = stored.pop(state.document_id, set())
                state.failures.extend(failures.pop(state.document_id, []))
                self._complete(index, state)
                continue
            for _index, point, doc in item:
                if isinstance(point, PageFailure):
                    failures.setdefault(doc, []).append(point)
                else:
                    pending.append(point)
            if len(pending) >= self.upsert_batch:
                write()

    def _complete(self, index: int, state: _DocState) -> None:
        """Decide a rendered document's outcome; mark it complete if it is."""
        failure = self._failure(state)
        if failure is not None:
            reason, message = failure
            self._finish(index, self._outcome(state, "failed", reason=reason, message=message))
            return
        plan = state.plan
        if isinstance(state.render_error, InputError) and plan is not None:
            # Rendering broke off (timeout, damaged page): keep what was stored,
            # record every page that was not as failed.
            done = state.stored_pages | {f.page_number for f in state.failures}
            state.failures.extend(
                PageFailure(n, state.render_error)
                for n in range(1, plan.page_count + 1)
                if n not in done
            )
        failed_pages = sorted({f.page_number for f in state.failures})
        incomplete: str | None = None
        if isinstance(state.render_error, InputError):
            incomplete = state.render_error.reason  # e.g. timeout: broke off midway
        elif failed_pages:
            incomplete = "page_errors"
        elif plan and plan.truncated:
            incomplete = "truncated"
        record = DocumentRecord(
            document_id=state.document_id,
            source=str(state.path),
            file_name=state.path.name,
            page_count=state.stored,
            total_pages=plan.total_pages if plan else state.stored,
            ingested_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            model=self.spec.model_label,
            bytes=state.file_bytes,
            failed_pages=tuple(failed_pages),
            metadata=self.metadata,
            incomplete=incomplete,
            limits=self.limits,
            source_alias=self._aliases.get(state.path),
        )
        try:
            self.store.flush()
            # An earlier attempt (killed, or under other limits) may have stored
            # pages this one did not: they must not outlive it.
            self.store.prune_pages(state.document_id, state.stored_pages)
            self.store.mark_complete(record)
            # Only now that the new version is complete may older ones go.
            replaced = self._reconcile(state.path, state.document_id)
        except StoreError as exc:
            self._set_fatal(exc)
            self._finish(
                index,
                self._outcome(state, "failed", reason="store", message=f"{exc}; rerun to resume"),
            )
            return
        if failed_pages:
            outcome = self._outcome(
                state,
                "partial",
                reason=incomplete or "page_errors",
                message=f"{len(failed_pages)} page(s) failed ({_ranges(failed_pages)}): "
                f"{state.failures[-1].error.detail}",
            )
        elif plan and plan.truncated:
            outcome = self._outcome(
                state,
                "ingested",
                reason="truncated",
                message=f"truncated to the first {plan.page_count} of {plan.total_pages} pages "
                "(render.max_pages); raise render.max_pages and rerun to add the rest",
            )
        else:
            outcome = self._outcome(state, "ingested")
        if state.redo_note:
            outcome.message = (
                state.redo_note
                if outcome.message is None
                else f"{outcome.message} [{state.redo_note}]"
            )
        outcome.replaced = replaced
        self._finish(index, outcome)

    def _failure(self, state: _DocState) -> tuple[str, str] | None:
        """``(reason, message)`` when the document cannot be marked complete."""
        if self._fatal is not None:
            return "aborted", f"not completed: {self._fatal}; rerun to resume"
        error = state.render_error
        if error is not None and (state.stored == 0 or not isinstance(error, InputError)):
            return getattr(error, "reason", type(error).__name__), str(error)
        expected = state.plan.page_count if state.plan else 0
        if (
            error is None
            and self.stop_event.is_set()
            and (state.plan is None or state.stored + len(state.failures) < expected)
        ):
            return "interrupted", "interrupted before all pages were stored; rerun to resume"
        if state.stored == 0:
            if state.failures:
                first = state.failures[0].error
                return first.reason, str(first)
            return "empty", f"{state.path}: the document has no pages"
        return None

    @staticmethod
    def _outcome(
        state: _DocState, status: Status, *, reason: str | None = None, message: str | None = None
    ) -> FileOutcome:
        return FileOutcome(
            path=str(state.path),
            status=status,
            document_id=state.document_id,
            pages=state.stored if status != "failed" else 0,
            total_pages=state.plan.total_pages if state.plan else None,
            reason=reason,
            message=message,
            failed_pages=sorted({f.page_number for f in state.failures}),
            seconds=time.monotonic() - state.started,
        )

    # -- bookkeeping ----------------------------------------------------------------

    def _finish(self, index: int, outcome: FileOutcome) -> None:
        with self._lock:
            self._outcomes[index] = outcome
        self._report_progress(outcome.path)

    def _set_fatal(self, error: PageRAGError) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = error

    def _report_progress(self, current: str | None) -> None:
        if self.progress is None:
            return
        with self._lock:
            event = IngestProgress(
                files_total=self._files_total,
                files_done=len(self._outcomes),
                pages_total=self._pages_total,
                pages_done=self._pages_done,
                current=current,
            )
        self.progress(event)


def _ranges(pages: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``: failed pages of a long document stay readable."""
    spans: list[list[int]] = []
    for page in sorted(pages):
        if spans and page == spans[-1][1] + 1:
            spans[-1][1] = page
        else:
            spans.append([page, page])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
