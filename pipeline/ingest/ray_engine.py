"""The Ray ingestion engine: the local job's stages on a Ray cluster (``ingest.engine: ray``).

The stage objects are the local job's own (:class:`~pipeline.ingest.planner.Planner`,
:class:`~pipeline.ingest.stages.RenderStage`, :class:`~pipeline.ingest.stages.EmbedStage`,
:class:`~pipeline.ingest.stages.UpsertStage`, :class:`~pipeline.ingest.completer.Completer`);
this module only places them::

    driver                          cluster
    ──────                          ───────
    files ───────────────────────▶ hash tasks (files_per_task per task): sha256 of the bytes
    Planner: skip / redo  ◀──────── document ids
    docs to render ──────────────▶ probe tasks: RenderStage.open (pdfinfo)
    page ranges (pages_per_task) ─▶ Ray Data stream:
                                      flat_map: RenderStage.pages over one page range (CPU task)
                                      map_batches(_EmbedActor, ActorPoolStrategy): EmbedStage
                                      [server store: map_batches(_WriterActor): upserts]
    UpsertStage (embedded store) ◀─ points (or, with writers, page acks)
    Completer: per-document acks → completion marks, outcomes, one report

The text lane rides along as in the local job: the render task reads its page
range's text layer (pdftotext, beside pdftoppm) and each page row carries its
text; the embed actor adds the BM25 vector (its text embedder built there by
``make_text_embedder``). A text-only collection builds no page embedder
(``make_embedder`` None): the actors load no model.

Guarantees are the local job's: ids are deterministic (sha256 + page), a
document is marked complete only after every page it rendered is
acknowledged by the store (the driver counts each document's pages off the
stream), one outcome per file, a bad file never stops the job, a stop
request ends it cleanly. Ray supplies the fault tolerance: a task whose
worker died is retried (``ray.max_retries``), a dead actor restarted
(``ray.max_restarts``); a range that still fails is dropped from the stream
(Ray Data's ``max_errored_blocks``) and its file reported failed, never marked.

``ray`` is imported here only (the ``pagerag[ray]`` extra).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import RayConfig
from pipeline.embed.protocol import PageEmbedder
from pipeline.embed.text import TextEmbedder
from pipeline.errors import (
    ConfigError,
    ModelError,
    OptionalDependencyError,
    PageRAGError,
    StoreError,
    TextExtractionError,
)
from pipeline.ingest.completer import Completer
from pipeline.ingest.outcome import FileOutcome, IngestProgress, IngestReport, not_started
from pipeline.ingest.planner import Planner
from pipeline.ingest.render import PageFailure
from pipeline.ingest.settings import IngestSettings
from pipeline.ingest.stages import (
    DecodedPage,
    Document,
    EmbedStage,
    RenderStage,
    UpsertStage,
    decode_page,
)
from pipeline.retrieve.store import PageStore
from pipeline.types import PagePoint

__all__ = ["RayIngestJob", "require_ray"]

# Row kinds on the stream (every row: kind, doc (the file's index), blob (pickled), busy).
_PAGE = "page"  # blob: (Page, PageText | None), rendered, on its way to the embedder
_POINT = "point"  # blob: a PagePoint or a PageFailure (the embedder's result)
_ACK = "ack"  # blob: (page number, None) stored by a writer actor, or (None, PageFailure)
_END = "end"  # blob: _RangeEnd, after a range's last page
_FATAL = "fatal"  # blob: the PageRAGError that ends the job (the model, the store)

_WRITER_CPUS = 0.5  # a writer actor mostly waits on the server


def require_ray() -> Any:
    """``import ray``, or an ``OptionalDependencyError`` (an ``ImportError``) naming the extra."""
    try:
        import ray
        import ray.data  # ray.data is used as an attribute of ray
    except ImportError:
        feature = "the Ray ingestion engine (--engine ray)"
        raise OptionalDependencyError(feature, "ray", "ray") from None
    return ray


@dataclass(frozen=True)
class _RangeEnd:
    """What rendering one page range of a document came to."""

    rendered: int  # pages sent on to the embedder
    failures: tuple[PageFailure, ...]
    render_error: PageRAGError | None
    text_error: TextExtractionError | None = None


@dataclass
class _Tracked:
    """The driver's view of one document on the stream."""

    index: int
    doc: Document
    ranges_left: int
    rendered: int = 0  # pages the finished ranges sent to the embedder
    seen: int = 0  # of those, results that came back (stored, buffered or failed)
    acked: set[int] = field(default_factory=set)  # writer mode: pages a writer stored
    embed_failures: list[PageFailure] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        return self.ranges_left == 0 and self.seen >= self.rendered


# --------------------------------------------------------------------------- remote functions


def _hash_files(paths: list[Path], hash_file: Callable[[Path], str]) -> list[str | OSError]:
    """A hash task: each file's sha256 (or the OSError the planner reports)."""
    out: list[str | OSError] = []
    for path in paths:
        try:
            out.append(hash_file(path))
        except OSError as exc:
            out.append(exc)
    return out


def _probe(docs: list[Document], render: RenderStage) -> list[Document]:
    """A probe task: ``RenderStage.open`` of each document (its plan or its render error)."""
    for doc in docs:
        render.open(doc)
    return docs


def _render_range(row: dict[str, Any], render: RenderStage) -> Iterator[dict[str, Any]]:
    """flat_map: one page range of one document → a page row per page, then an end row."""
    index = int(row["doc"])
    doc: Document = pickle.loads(row["blob"])
    rendered = 0
    for item in render.pages(doc):
        if isinstance(item, DecodedPage):  # the JPEG travels, not the decoded pixels
            rendered += 1
            yield _row(_PAGE, index, (item.page, item.text))
    end = _RangeEnd(rendered, tuple(doc.failures), doc.render_error, doc.text_error)
    yield _row(_END, index, end)


def _row(kind: str, doc: int, value: object, busy: float = 0.0) -> dict[str, Any]:
    return {"kind": kind, "doc": doc, "blob": pickle.dumps(value), "busy": busy}


def _passed(kind: str, doc: Any, blob: bytes, busy: Any) -> dict[str, Any]:
    """A row an actor passes on untouched."""
    return {"kind": kind, "doc": int(doc), "blob": blob, "busy": float(busy)}


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = ("kind", "doc", "blob", "busy")
    return {key: [r[key] for r in rows] for key in keys}


def _rows(batch: Mapping[str, Any]) -> Iterator[tuple[str, int, bytes, float]]:
    yield from zip(batch["kind"], batch["doc"], batch["blob"], batch["busy"], strict=True)


class _EmbedActor:
    """An embed actor: builds the embedders from config once (the page embedder for the
    visual lane, the text embedder for the text lane), runs ``EmbedStage`` on batches."""

    def __init__(
        self,
        make_embedder: Callable[[], PageEmbedder] | None,
        make_text_embedder: Callable[[], TextEmbedder] | None,
        **stage: Any,
    ) -> None:
        self.error: PageRAGError | None = None
        embedder = None if make_embedder is None else make_embedder()
        warm_up = getattr(embedder, "warm_up", None)
        try:
            if callable(warm_up):
                warm_up()
        except PageRAGError as exc:  # reported once, by the driver: the job ends
            self.error = exc
        text_embedder = None if make_text_embedder is None else make_text_embedder()
        self.stage = EmbedStage(embedder, text_embedder=text_embedder, **stage)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        out: list[dict[str, Any]] = []
        pages: list[tuple[int, DecodedPage]] = []
        for kind, doc, blob, _busy in _rows(batch):
            if kind != _PAGE:
                out.append(_passed(kind, doc, blob, _busy))
                continue
            page, text = pickle.loads(blob)
            decoded = (
                decode_page(Path(page.source), page)
                if self.stage.spec.has_visual
                else DecodedPage(page, None)
            )
            if isinstance(decoded, PageFailure):
                out.append(_row(_POINT, int(doc), decoded))
            else:
                pages.append((int(doc), decoded._replace(text=text)))
        if pages:
            out.extend(self._embed(pages))
        return _columns(out)

    def _embed(self, pages: list[tuple[int, DecodedPage]]) -> list[dict[str, Any]]:
        if self.error is not None:
            return [_row(_FATAL, pages[0][0], self.error)]
        started = time.monotonic()
        try:
            results = self.stage.embed([decoded for _, decoded in pages])
        except ModelError as exc:
            return [_row(_FATAL, pages[0][0], exc)]
        busy = (time.monotonic() - started) / len(pages)
        return [_row(_POINT, doc, r, busy) for (doc, _), r in zip(pages, results, strict=True)]


class _WriterActor:
    """A writer actor (a Qdrant server only): upserts points, passes page acks on."""

    def __init__(self, make_store: Callable[[], PageStore], batch: int) -> None:
        self.upsert = UpsertStage(make_store(), batch)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        out: list[dict[str, Any]] = []
        points: list[tuple[int, PagePoint]] = []
        for kind, doc, blob, busy in _rows(batch):
            value = pickle.loads(blob)
            if kind == _POINT and isinstance(value, PagePoint):
                points.append((int(doc), value))
            elif kind == _POINT:
                out.append(_row(_ACK, int(doc), (None, value), busy))
            else:
                out.append(_passed(kind, doc, blob, busy))
        try:
            self.upsert.add(p for _, p in points)
            self.upsert.flush()
        except StoreError as exc:
            return _columns([*out, _row(_FATAL, points[0][0], exc)])
        for doc, point in points:
            self.upsert.stored_pages(point.payload["document_id"])  # acks travel in rows
            out.append(_row(_ACK, doc, (int(point.payload["page"]), None)))
        return _columns(out)


# --------------------------------------------------------------------------- the driver


class RayIngestJob:
    """One run over a list of files on Ray; returns the local job's :class:`IngestReport`.

    ``settings`` are the local job's (:class:`IngestSettings`), ``cluster`` the
    ``ray`` config. ``make_embedder`` builds the embedder inside each embed
    actor (the model loads there, once per actor; None for a text-only
    collection), and ``make_text_embedder`` the text lane's (when the spec has
    it, with ``settings.text_extractor`` reading page texts in the render
    tasks); ``make_store``, given only for a store several processes may write
    (a Qdrant server), builds one per writer actor. ``settings.store`` is the
    driver's: skip checks, completion marks, and the writes themselves when
    there are no writers. A local Ray (no ``cluster.address``) gets room for
    ``render_workers`` (the local engine's ``render.workers``) rendering tasks
    beside the actors; a cluster that cannot fit one beside them, or lacks the
    embed actors' GPUs, is refused with a ``ConfigError`` before any work.
    """

    def __init__(
        self,
        settings: IngestSettings,
        *,
        cluster: RayConfig,
        make_embedder: Callable[[], PageEmbedder] | None,
        make_text_embedder: Callable[[], TextEmbedder] | None = None,
        make_store: Callable[[], PageStore] | None = None,
        progress: Callable[[IngestProgress], None] | None = None,
        render_workers: int = 2,
    ) -> None:
        spec = settings.spec
        if spec.has_visual and make_embedder is None:
            raise ValueError(f"collection {spec.name!r} has the visual lane: pass make_embedder")
        if spec.has_text and make_text_embedder is None:
            raise ValueError(f"collection {spec.name!r} has the text lane: pass make_text_embedder")
        self.settings = settings
        self.cluster = cluster
        self.make_embedder = make_embedder
        self.make_text_embedder = make_text_embedder
        self.make_store = make_store
        self.progress = progress
        self.render_workers = render_workers
        self.stop_event = threading.Event()
        self._fatal: PageRAGError | None = None
        self._outcomes: dict[int, FileOutcome] = {}
        self._files_total = 0
        self._files_failed_early = 0
        self._pages_total = 0
        self._pages_done = 0
        self._counting = True
        self._busy = 0.0
        self._first_batch: float | None = None

    def request_stop(self) -> None:
        """Stop after the batch in flight (SIGINT/SIGTERM handlers call this)."""
        self.stop_event.set()

    # -- the run ------------------------------------------------------------------

    def run(
        self,
        files: Sequence[Path],
        *,
        failed: Sequence[FileOutcome] = (),
        aliases: Mapping[Path, str] | None = None,
    ) -> IngestReport:
        """Ingest ``files`` (already discovered); ``failed`` are outcomes found earlier."""
        started = time.monotonic()
        ray = self._connect()
        self._files_total = len(files) + len(failed)
        self._files_failed_early = len(failed)
        hashes = self._hashes(ray, files)
        known = self.settings.hash_file
        planner = self.settings.planner(lambda path: _known_hash(hashes, known, path), aliases)
        completer = self.settings.completer(aliases)
        try:
            docs = self._plan(planner, files)
            if docs and not self.stop_event.is_set():
                self._stream(ray, self._probed(ray, docs), completer, aliases)
        except StoreError as exc:
            self._fatal = self._fatal or exc
        report = IngestReport(
            seconds=time.monotonic() - started,
            embed_busy_seconds=self._busy,
            first_batch_seconds=None if self._first_batch is None else self._first_batch - started,
            interrupted=self.stop_event.is_set() and self._fatal is None,
            error=None if self._fatal is None else str(self._fatal),
        )
        report.outcomes = list(failed)
        for index, path in enumerate(files):
            outcome = self._outcomes.get(index)
            report.outcomes.append(outcome or not_started(str(path), self._fatal))
        return report

    def _connect(self) -> Any:
        ray = require_ray()
        if not ray.is_initialized():
            # ray.init replaces the SIGTERM handler (with sys.exit): keep the job's own,
            # which stops it cleanly after the batch in flight.
            main = threading.current_thread() is threading.main_thread()
            sigterm = signal.getsignal(signal.SIGTERM) if main else None
            try:
                ray.init(
                    address=self.cluster.address,
                    num_cpus=None if self.cluster.address else self._local_cpus(),
                    include_dashboard=False,
                    log_to_driver=False,
                )
            except ConnectionError as exc:
                raise ConfigError(
                    f"cannot reach the Ray cluster at ray.address {self.cluster.address!r}: "
                    f"{exc}; start one (`ray start --head`) or leave ray.address unset for a "
                    "local Ray"
                ) from None
            finally:
                if sigterm is not None:
                    signal.signal(signal.SIGTERM, sigterm)
        self._check_resources(ray)
        return ray

    def _demand(self, rendering_tasks: int) -> tuple[float, float]:
        """(CPUs, GPUs) the embed pool's first actors, the writers and ``rendering_tasks``
        rendering tasks hold at once."""
        s = self.cluster
        cpus = s.embed_actors * s.cpus_per_actor + rendering_tasks * s.render_cpus
        if self.make_store is not None:
            cpus += s.writers * _WRITER_CPUS
        return cpus, s.embed_actors * s.gpus_per_actor

    def _local_cpus(self) -> int:
        """A local Ray's logical CPUs: ``ray.num_cpus``, else the cores, or the local
        engine's concurrency if that is more (``render_workers`` rendering tasks beside
        the actors). Ray's CPUs are scheduling tokens: with one each, an embed actor that
        mostly waits on its model would leave a 2-core machine one rendering task where
        the local engine runs two."""
        if self.cluster.num_cpus is not None:
            return self.cluster.num_cpus
        cpus, _ = self._demand(self.render_workers)
        return max(os.cpu_count() or 1, math.ceil(cpus))

    def _check_resources(self, ray: Any) -> None:
        """Refuse a job the cluster can never run: Ray would wait forever for the embed
        pool's GPUs, or for a CPU left to render on beside the actors (``ray.check_resources``
        false: an autoscaling cluster adds them on demand)."""
        if not self.cluster.check_resources:
            return
        have = ray.cluster_resources()
        cpus, gpus = self._demand(1)
        has_cpus, has_gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
        if has_gpus < gpus:
            raise ConfigError(
                f"the Ray cluster has {has_gpus:g} GPU(s); the embed actors need {gpus:g} "
                f"(ray.embed_actors {self.cluster.embed_actors} × ray.gpus_per_actor "
                f"{self.cluster.gpus_per_actor:g}), so they would never start: add GPU nodes "
                "(`ray start --num-gpus N`) or lower --gpus-per-actor (0 embeds on CPU); "
                "an autoscaling cluster that adds them on demand: ray.check_resources: false"
            )
        if has_cpus < cpus:
            writers, lower = "", "ray.cpus_per_actor / ray.render_cpus"
            if self.make_store is not None:
                writers = f" + {self.cluster.writers} writer(s) × {_WRITER_CPUS:g}"
                lower += " / ray.writers"
            raise ConfigError(
                f"the Ray cluster has {has_cpus:g} CPU(s); this job needs {cpus:g} at once "
                f"({self.cluster.embed_actors} embed actor(s) × ray.cpus_per_actor "
                f"{self.cluster.cpus_per_actor:g}{writers} + one rendering task × "
                f"ray.render_cpus {self.cluster.render_cpus:g}), so rendering would never "
                f"start: lower {lower} / --embed-actors, or give the cluster more CPUs "
                "(`ray start --num-cpus N`; "
                "ray.num_cpus for a local Ray; an autoscaling cluster: "
                "ray.check_resources: false)"
            )

    def _remote(self, ray: Any, fn: Callable[..., Any]) -> Any:
        return ray.remote(fn).options(
            num_cpus=self.cluster.render_cpus, max_retries=self.cluster.max_retries
        )

    def _hashes(self, ray: Any, files: Sequence[Path]) -> dict[Path, str | OSError]:
        """Every file's sha256, computed by tasks on the cluster (not on the driver)."""
        size = self.cluster.files_per_task
        chunks = [list(files[i : i + size]) for i in range(0, len(files), size)]
        task = self._remote(ray, _hash_files)
        results = ray.get([task.remote(chunk, self.settings.hash_file) for chunk in chunks])
        return {
            path: value
            for chunk, values in zip(chunks, results, strict=True)
            for path, value in zip(chunk, values, strict=True)
        }

    def _plan(self, planner: Planner, files: Sequence[Path]) -> list[tuple[int, Document]]:
        """Skip checks against the store, on the driver (cheap: the hashes are known)."""
        docs: list[tuple[int, Document]] = []
        for index, path in enumerate(files):
            if self.stop_event.is_set():
                break
            planned = planner.plan(path)
            if isinstance(planned, FileOutcome):
                self._finish(index, planned)
            else:
                docs.append((index, planned))
        return docs

    def _probed(self, ray: Any, docs: list[tuple[int, Document]]) -> list[tuple[int, Document]]:
        """Each document's render plan (page count), probed by tasks on the cluster."""
        render = RenderStage(self.settings.renderer, self.settings.password_for)
        size = self.cluster.files_per_task
        chunks = [docs[i : i + size] for i in range(0, len(docs), size)]
        task = self._remote(ray, _probe)
        results = ray.get([task.remote([d for _, d in chunk], render) for chunk in chunks])
        probed = [
            (index, doc)
            for chunk, done in zip(chunks, results, strict=True)
            for (index, _), doc in zip(chunk, done, strict=True)
        ]
        self._pages_total = sum(d.plan.page_count for _, d in probed if d.plan is not None)
        self._counting = False
        self._report_progress(None)
        return probed

    def _units(self, docs: list[tuple[int, Document]]) -> list[dict[str, Any]]:
        """One row per page range of each document (``pages_per_task`` pages)."""
        size = self.cluster.pages_per_task
        units = []
        for index, doc in docs:
            plan = doc.plan
            if plan is None:
                continue  # not opened: completed before the stream
            for start in range(0, len(plan.pages), size):
                part = dataclasses.replace(plan, pages=plan.pages[start : start + size])
                units.append(_row(_PAGE, index, dataclasses.replace(doc, plan=part)))
        return units

    # -- the stream ---------------------------------------------------------------

    def _stream(
        self,
        ray: Any,
        docs: list[tuple[int, Document]],
        completer: Completer,
        aliases: Mapping[Path, str] | None,
    ) -> None:
        tracked: dict[int, _Tracked] = {}
        opened: list[tuple[int, Document]] = []
        for index, doc in docs:
            if doc.plan is None or not doc.plan.pages:  # could not be opened: nothing to render
                self._complete(completer, _Tracked(index, doc, 0), None)
            else:
                ranges = -(-len(doc.plan.pages) // self.cluster.pages_per_task)
                tracked[index] = _Tracked(index, doc, ranges)
                opened.append((index, doc))
        if not opened:
            return
        upsert = UpsertStage(self.settings.store, self.settings.upsert_batch)
        dataset = self._dataset(ray, self._units(opened), aliases)
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                self._take(batch, tracked, upsert, completer)
                if self._fatal is not None or self.stop_event.is_set():
                    break
        except ray.exceptions.RayError as exc:  # the cluster itself failed: the job ends
            self._fatal = self._fatal or PageRAGError(f"the Ray job failed: {exc}; rerun to resume")
        finally:
            self._write(upsert)
            for index in sorted(tracked):
                self._complete(completer, tracked.pop(index), upsert, lost=True)

    def _dataset(
        self, ray: Any, units: list[dict[str, Any]], aliases: Mapping[Path, str] | None
    ) -> Any:
        s = self.cluster
        retries = {"max_retries": s.max_retries}
        actor = {"max_restarts": s.max_restarts, "max_task_retries": s.max_retries}
        with warnings.catch_warnings():
            # Only Ray's code runs here. Ray 2.60 deprecates **ray_remote_args in favour of
            # named parameters, but max_retries / max_restarts / max_task_retries have no
            # named form yet; and its DataContext warns about deprecated settings it copies.
            warnings.simplefilter("ignore", DeprecationWarning)
            source = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
            # This dataset's own context (a copy Ray Data takes at creation), not the
            # process's: other Ray Data work in the same process keeps its settings.
            source.context.max_errored_blocks = -1  # a range failing for good: file failed
            source.context.enable_progress_bars = False
            return self._stages(ray, source, aliases, retries, actor)

    def _stages(
        self,
        ray: Any,
        source: Any,
        aliases: Mapping[Path, str] | None,
        retries: dict[str, int],
        actor: dict[str, int],
    ) -> Any:
        s = self.cluster
        low, high = s.pool
        dataset = source.flat_map(
            _render_range,
            fn_kwargs={"render": self.settings.render_stage()},
            num_cpus=s.render_cpus,
            **retries,
        ).map_batches(
            _EmbedActor,
            fn_constructor_args=(self.make_embedder, self.make_text_embedder),
            fn_constructor_kwargs={
                "spec": self.settings.spec,
                "store_images": self.settings.store_images,
                "metadata": self.settings.metadata,
                "aliases": aliases,
            },
            batch_size=self.settings.embed_batch,
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
            num_cpus=s.cpus_per_actor,
            num_gpus=s.gpus_per_actor or None,
            **actor,
        )
        if self.make_store is not None:
            dataset = dataset.map_batches(
                _WriterActor,
                fn_constructor_args=(self.make_store, self.settings.upsert_batch),
                batch_size=self.settings.upsert_batch,
                compute=ray.data.ActorPoolStrategy(size=s.writers),
                num_cpus=_WRITER_CPUS,
                **actor,
            )
        return dataset

    def _take(
        self,
        batch: Mapping[str, Any],
        tracked: dict[int, _Tracked],
        upsert: UpsertStage,
        completer: Completer,
    ) -> None:
        """One batch off the stream: points to the store, acks and range ends counted."""
        settled: list[_Tracked] = []
        for kind, index, blob, busy in _rows(batch):
            item = tracked.get(int(index))
            value = pickle.loads(blob)
            if kind == _FATAL:
                self._fatal = self._fatal or value
                return
            if item is None:
                continue
            if kind == _END:
                item.ranges_left -= 1
                item.rendered += value.rendered
                item.doc.failures.extend(value.failures)
                item.doc.render_error = item.doc.render_error or value.render_error
                item.doc.text_error = item.doc.text_error or value.text_error
            else:
                self._busy += float(busy)
                self._first_batch = self._first_batch or time.monotonic()
                item.seen += 1
                self._result(kind, value, item, upsert)
            if item.settled:
                settled.append(item)
        if upsert.add(()) or settled:  # a batch is full, or a document's pages are all back
            self._write(upsert)
        for item in settled:
            self._complete(completer, tracked.pop(item.index), upsert)

    def _result(self, kind: str, value: Any, item: _Tracked, upsert: UpsertStage) -> None:
        if kind == _ACK:
            number, failure = value
            if failure is not None:
                item.embed_failures.append(failure)
            else:
                item.acked.add(number)
                self._pages_done += 1
        elif isinstance(value, PageFailure):
            item.embed_failures.append(value)
        else:
            upsert.add([value])

    def _write(self, upsert: UpsertStage) -> None:
        if self._fatal is not None:
            upsert.discard()
            return
        try:
            written = upsert.flush()
        except StoreError as exc:
            self._fatal = exc
            return
        self._pages_done += written
        if written:
            self._report_progress(None)

    def _complete(
        self,
        completer: Completer,
        item: _Tracked,
        upsert: UpsertStage | None,
        *,
        lost: bool = False,
    ) -> None:
        """Decide a document's outcome (marking it complete if it is); ``lost``: the
        stream ended before all its pages came back."""
        doc = item.doc
        stored = set() if upsert is None else upsert.stored_pages(doc.document_id)
        doc.stored_pages = stored | item.acked
        doc.failures.extend(item.embed_failures)
        stopping = self.stop_event.is_set()
        if lost and not item.settled and self._fatal is None and not stopping:
            outcome = FileOutcome(
                path=str(doc.path),
                status="failed",
                document_id=doc.document_id,
                total_pages=doc.plan.total_pages if doc.plan else None,
                reason="worker_lost",
                message=f"{item.ranges_left} page range(s) never came back from the Ray "
                f"workers (a task or actor died more than ray.max_retries / max_restarts "
                "times: see the Ray logs); not marked complete; rerun to resume",
                seconds=time.monotonic() - doc.started,
            )
        else:
            try:
                outcome = completer.complete(doc, aborted=self._fatal, stopping=stopping)
            except StoreError as exc:
                self._fatal = self._fatal or exc
                outcome = completer.store_failed(doc, exc)
        expected = doc.plan.page_count if doc.plan else 0
        self._pages_done += max(0, expected - doc.stored)
        self._finish(item.index, outcome)

    # -- bookkeeping -------------------------------------------------------------

    def _finish(self, index: int, outcome: FileOutcome) -> None:
        self._outcomes[index] = outcome
        self._report_progress(outcome.path)

    def _report_progress(self, current: str | None) -> None:
        if self.progress is None:
            return
        self.progress(
            IngestProgress(
                files_total=self._files_total,
                files_done=len(self._outcomes) + self._files_failed_early,
                pages_total=self._pages_total,
                pages_done=min(self._pages_done, self._pages_total),
                current=current,
                counting=self._counting,
                files_skipped=sum(1 for o in self._outcomes.values() if o.status == "skipped"),
            )
        )


def _known_hash(
    hashes: Mapping[Path, str | OSError], hash_file: Callable[[Path], str], path: Path
) -> str:
    """A hash the cluster computed; any other file (a moved file's old path) on the driver."""
    known = hashes.get(path)
    if known is None:
        return hash_file(path)
    if isinstance(known, OSError):
        raise known
    return known
