"""Ingest jobs of the service: one at a time, a bounded queue, progress, cancel.

The embedded store admits one writer and ingestion already uses every core,
so the service runs one ingest job at a time (per service, which serves one
collection). Up to ``serve.max_queued_jobs`` more wait their turn; beyond
that a job is refused with why (:class:`JobsFullError`, a 429). Searches are
not jobs: they run beside the job, in the server's thread pool.

A job runs in one worker thread through ``PageRAG.ingest`` with a progress
callback and a stop event. Cancelling a queued job drops it; cancelling the
running one stops it after the batch in flight, like Ctrl-C on the CLI (the
report so far is kept). Every change bumps a version number that
:meth:`JobQueue.changed` waits on, from any event loop, for the SSE streams.

Jobs live in memory: a restarted service forgets them (what they stored stays
stored, and a rerun skips it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import PageRAGError
from pipeline.ingest.job import IngestProgress, IngestReport
from pipeline.serve.problems import ServeError, problem, problem_for

__all__ = ["Job", "JobQueue", "JobState", "JobsFullError"]

log = logging.getLogger("pagerag.serve")

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})

Runner = Callable[["Job", Callable[[IngestProgress], None]], IngestReport]


@dataclass(eq=False)
class Job:
    """One ingest request: what to ingest, and how far it got."""

    kind: Literal["upload", "paths"]
    inputs: list[str]  # as the client named them (upload file names, or paths)
    files: list[Path]  # what PageRAG.ingest is given
    metadata: dict[str, str] = field(default_factory=dict)
    retry_incomplete: bool = False
    # Uploads wait in a staging folder and move to their final path when the job starts,
    # so a queued upload never replaces a file a running job is reading.
    staged: list[tuple[Path, Path]] = field(default_factory=list)
    staging_dir: Path | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: JobState = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: IngestProgress | None = None
    report: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_wire(self, position: int | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "inputs": list(self.inputs),
            "position": position,  # place in the queue (0: next), None unless queued
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": None if self.progress is None else dataclasses.asdict(self.progress),
            "report": self.report,
            "error": self.error,
        }

    def discard_staged(self) -> None:
        if self.staging_dir is not None:
            shutil.rmtree(self.staging_dir, ignore_errors=True)

    def unstage(self) -> None:
        """Move uploaded files from staging to the paths they are ingested (and recorded) as."""
        for staged, final in self.staged:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
        self.discard_staged()


class JobsFullError(ServeError):
    """An ingest job is running and the queue behind it is full."""

    def __init__(self, running: Job | None, waiting: int, limit: int) -> None:
        busy = f"job {running.id} is running" if running is not None else "a job is running"
        super().__init__(
            429,
            f"ingest jobs run one at a time: {busy} and {waiting} wait behind it "
            f"(serve.max_queued_jobs: {limit}). Retry when one finishes "
            "(GET /v1/jobs shows them), or raise serve.max_queued_jobs",
            headers={"Retry-After": "30"},
        )


class JobQueue:
    """Runs :class:`Job` objects one at a time in a worker thread, through ``run``."""

    def __init__(self, run: Runner, *, max_queued: int, history: int) -> None:
        self._run = run
        self._max_queued = max_queued
        self._history = history
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._pending: list[Job] = []
        self._running: Job | None = None
        self._wakeup = threading.Condition(self._lock)
        self._closed = False
        self._worker: threading.Thread | None = None
        self._version = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # -- reading -------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(reversed(self._jobs.values()))

    def wire(self, job: Job) -> dict[str, Any]:
        with self._lock:
            position = self._pending.index(job) if job in self._pending else None
            return job.to_wire(position)

    @property
    def version(self) -> int:
        return self._version

    async def changed(self, seen: int, timeout: float) -> int:
        """Wait until any job changed after version ``seen`` (or ``timeout`` s); the version."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        with self._lock:
            if self._version != seen:
                return self._version
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return self._version

    # -- changing ------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue ``job``, or raise :class:`JobsFullError` (the job's staged files are removed)."""
        with self._lock:
            if self._closed:
                job.discard_staged()
                raise ServeError(503, "the service is shutting down: retry on its next start")
            if len(self._pending) >= self._max_queued and (
                self._running is not None or self._pending
            ):
                job.discard_staged()
                raise JobsFullError(self._running, len(self._pending), self._max_queued)
            self._jobs[job.id] = job
            self._pending.append(job)
            self._forget_old()
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="pagerag-serve-ingest", daemon=True
                )
                self._worker.start()
            self._wakeup.notify()
        self._changed()
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Drop a queued job, or ask the running one to stop after its batch in flight."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished:
                return job
            job.stop.set()
            if job in self._pending:
                self._pending.remove(job)
                self._finish(job, "cancelled")
                job.discard_staged()
        self._changed()
        return job

    def close(self, timeout: float = 60.0) -> None:
        """Cancel queued jobs, stop the running one and wait for it (the service is stopping)."""
        with self._lock:
            self._closed = True
            for job in self._pending:
                job.stop.set()
                self._finish(job, "cancelled")
                job.discard_staged()
            self._pending.clear()
            if self._running is not None:
                self._running.stop.set()
            self._wakeup.notify_all()
            worker = self._worker
        self._changed()
        if worker is not None:
            worker.join(timeout)

    # -- the worker ----------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wakeup.wait()
                if self._closed and not self._pending:
                    return
                job = self._pending.pop(0)
                self._running = job
                job.state = "running"
                job.started_at = time.time()
            self._changed()
            self._run_one(job)
            with self._lock:
                self._running = None
            self._changed()

    def _run_one(self, job: Job) -> None:
        def progress(event: IngestProgress) -> None:
            job.progress = dataclasses.replace(event)
            self._changed()

        state: JobState = "done"
        try:
            job.unstage()
            report = self._run(job, progress)
            job.report = report.to_dict()
            if report.interrupted or job.stop.is_set():
                state = "cancelled"
        except PageRAGError as exc:
            job.error, state = problem_for(exc), "failed"
        except Exception as exc:  # a bug must not kill the worker: the job fails, logged
            log.exception("ingest job %s failed", job.id)
            job.error = problem(
                500, f"the ingest job failed unexpectedly ({type(exc).__name__}): see the log"
            )
            state = "failed"
        with self._lock:
            self._finish(job, state)

    def _finish(self, job: Job, state: JobState) -> None:
        job.state = state
        job.finished_at = time.time()

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished]
        for job in finished[: max(0, len(finished) - self._history)]:
            del self._jobs[job.id]

    def _changed(self) -> None:
        with self._lock:
            self._version += 1
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)
