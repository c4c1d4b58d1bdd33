"""What an ingestion run reports: one :class:`FileOutcome` per input file, the
:class:`IngestReport` of the run, and the :class:`IngestProgress` events a
progress callback receives. Every engine (the local threads, Ray) returns these.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipeline.errors import ModelError, ModelNotAvailableError, StoreError, StoreUnavailableError

__all__ = [
    "FileOutcome",
    "IngestProgress",
    "IngestReport",
    "RunTally",
    "Status",
    "not_started",
    "page_ranges",
    "stopped_by",
]

Status = Literal["ingested", "skipped", "partial", "failed"]


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
    # The error that stopped the whole job (the model, the store), in full, once;
    # the files it stopped say so in a few words (:func:`stopped_by`).
    error: str | None = None

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
            "error": self.error,
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
    # Pages this run renders: counted up front (the renderer's probe of every file it
    # will render; unchanged files count 0), final once ``counting`` is False.
    pages_total: int
    # Pages dealt with: stored, or failed / given up with their document.
    pages_done: int
    current: str | None = None
    counting: bool = False  # the count pass is still running: pages_total may grow
    files_skipped: int = 0  # of files_done: unchanged, copies, duplicates


def stopped_by(error: object) -> str:
    """A few words for the error that stopped a job, for each file it stopped
    (the error itself is reported once, as ``IngestReport.error``)."""
    for kind, words in (
        (ModelNotAvailableError, "model not available"),
        (ModelError, "the model failed"),
        (StoreUnavailableError, "store unavailable"),
        (StoreError, "the store failed"),
    ):
        if isinstance(error, kind):
            return words
    return type(error).__name__


def not_started(path: str, fatal: object | None) -> FileOutcome:
    """The outcome of a file the run never took up: the job stopped, or was stopped."""
    if fatal is not None:
        return FileOutcome(
            path=path,
            status="failed",
            reason="aborted",
            message=f"not ingested: {stopped_by(fatal)} (the job stopped)",
        )
    return FileOutcome(
        path=path,
        status="failed",
        reason="interrupted",
        message="not ingested: the job was interrupted; rerun to resume",
    )


def page_ranges(pages: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``: failed pages of a long document stay readable."""
    spans: list[list[int]] = []
    for page in sorted(pages):
        if spans and page == spans[-1][1] + 1:
            spans[-1][1] = page
        else:
            spans.append([page, page])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class RunTally:
    """A run's outcomes and page counts, and the progress events they make.

    An engine tells it how many pages each file renders (``expect``, exact, from
    the render; ``found``, ahead of it, from a count pass), how many pages were
    stored, and each file's outcome. Safe to share between threads (one lock).
    """

    def __init__(self, progress: Callable[[IngestProgress], None] | None = None) -> None:
        self.progress = progress
        self.files_total = 0
        self.files_failed_early = 0  # inputs discovery found nothing for: done from the start
        self.counting = False  # a count pass is running: the pages total may still grow
        self._outcomes: dict[int, FileOutcome] = {}  # by the file's place in the run's list
        self._expected: dict[int, int] = {}  # file index -> pages it renders
        self._pages_done = 0
        self._lock = threading.Lock()

    def outcome(self, index: int) -> FileOutcome | None:
        with self._lock:
            return self._outcomes.get(index)

    def expect(self, index: int, pages: int) -> None:
        """The pages file ``index`` renders, as its render found them (exact)."""
        with self._lock:
            self._expected[index] = pages

    def found(self, index: int, pages: int) -> None:
        """The pages file ``index`` renders, as a count pass found them (a render's count wins)."""
        with self._lock:
            self._expected.setdefault(index, pages)
        self.report(None)

    def knows(self, index: int) -> bool:
        with self._lock:
            return index in self._expected

    def counted(self) -> None:
        """The count pass is over: the pages total is final."""
        with self._lock:
            self.counting = False
        self.report(None)

    def stored(self, pages: int) -> None:
        with self._lock:
            self._pages_done += pages
        self.report(None)

    def finish(self, index: int, outcome: FileOutcome, *, stored: int | None = None) -> None:
        """File ``index`` is done; with ``stored``, its pages not stored are dealt with too."""
        with self._lock:
            if stored is not None:
                self._pages_done += max(0, self._expected.get(index, 0) - stored)
            self._outcomes[index] = outcome
        self.report(outcome.path)

    def report(self, current: str | None) -> None:
        """Pass the callback an :class:`IngestProgress` of the run so far."""
        if self.progress is None:
            return
        with self._lock:
            event = IngestProgress(
                files_total=self.files_total,
                files_done=len(self._outcomes) + self.files_failed_early,
                pages_total=sum(self._expected.values()),
                pages_done=self._pages_done,
                current=current,
                counting=self.counting,
                files_skipped=sum(1 for o in self._outcomes.values() if o.status == "skipped"),
            )
        self.progress(event)
