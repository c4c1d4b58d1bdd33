"""The state one service holds: the ``PageRAG``, its settings, and the ingest jobs."""

from __future__ import annotations

import threading
from collections.abc import Callable

from pipeline.api import PageRAG
from pipeline.config import ServeConfig
from pipeline.ingest.job import IngestProgress, IngestReport
from pipeline.serve.jobs import Job, JobQueue
from pipeline.serve.uploads import upload_folder

__all__ = ["Service"]


class Service:
    """One ``PageRAG`` (one collection, one loaded model) shared by every request.

    With ``close_rag`` the service closes ``rag`` when it stops (``pagerag
    serve``: uvicorn ends the process with the signal that stopped it, so
    nothing after the server runs); otherwise whoever built ``rag`` closes it.
    """

    def __init__(
        self, rag: PageRAG, settings: ServeConfig | None = None, *, close_rag: bool = False
    ) -> None:
        self.rag = rag
        self.close_rag = close_rag
        self.settings = settings or rag.config.serve
        self.extensions = tuple(rag.config.ingest.extensions)
        self.upload_folder = upload_folder(self.settings, rag.config.store.collection)
        self.jobs = JobQueue(
            self._ingest,
            max_queued=self.settings.max_queued_jobs,
            history=self.settings.job_history,
        )
        self._lock = threading.Lock()
        self._opened = False

    def open(self) -> None:
        """Load the model and open the collection (created empty when new), once.

        Holding the store open from the start keeps the embedded engine's
        directory to this process, and the first request pays no model load.
        """
        with self._lock:
            if self._opened:
                return
            self.rag.ingest([])  # opens, or creates, the collection with the model's weights
            self.rag.embedder.embed_query("pagerag")  # the model loads here, not on a request
            self._opened = True

    def close(self) -> None:
        """Stop the ingest jobs (the running one after its batch in flight), then maybe ``rag``."""
        self.jobs.close()
        if self.close_rag:
            self.rag.close()  # releases the embedded store's directory

    def _ingest(self, job: Job, progress: Callable[[IngestProgress], None]) -> IngestReport:
        return self.rag.ingest(
            job.files,
            metadata=job.metadata or None,
            progress=progress,
            stop=job.stop,
            retry_incomplete=job.retry_incomplete,
        )
