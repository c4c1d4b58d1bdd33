"""Ingestion: files → rendered pages → embeddings → the page store.

* :mod:`~pipeline.ingest.sources` — discover files, folders and globs; hash
  them (sha256 = document id); passwords.
* :mod:`~pipeline.ingest.render` — the poppler driver: page plans, page
  images, timeouts, memory caps, passwords, cancellation.
* :mod:`~pipeline.ingest.job` — the job: render → embed → upsert → mark,
  overlapped, crash-safe, one outcome per file.
"""

from pipeline.ingest.job import FileOutcome, IngestJob, IngestProgress, IngestReport

__all__ = ["FileOutcome", "IngestJob", "IngestProgress", "IngestReport"]
