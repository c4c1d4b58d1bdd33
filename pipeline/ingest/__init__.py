"""Ingestion: files → rendered pages → embeddings → the page store.

* :mod:`~pipeline.ingest.sources` — discover files, folders and globs; hash
  them (sha256 = document id); passwords.
* :mod:`~pipeline.ingest.poppler` — poppler process control, one driver for
  every poppler tool: process groups, deadlines, the ``timeout -s KILL``
  backstop, the ``prlimit`` memory cap, cancellation, work folders.
* :mod:`~pipeline.ingest.render` — page planning and page images: probe,
  passwords, DPI and pixel caps, page ranges, image files, errors with advice.
* The stages, small objects with the logic and no threads or queues:
  :mod:`~pipeline.ingest.planner` (hash → stored record → skip, redo or
  reconcile), :mod:`~pipeline.ingest.stages` (render + decode, embed,
  upsert), :mod:`~pipeline.ingest.completer` (outcome, completion mark,
  prune, reconcile).
* :mod:`~pipeline.ingest.settings` — :class:`IngestSettings`, what every
  engine shares (built once by ``PageRAG.ingest``).
* :mod:`~pipeline.ingest.job` — the local engine: the stages overlapped on
  threads and bounded queues, crash-safe, one outcome per file
  (:mod:`~pipeline.ingest.outcome`).
"""

from pipeline.ingest.job import FileOutcome, IngestJob, IngestProgress, IngestReport
from pipeline.ingest.settings import IngestSettings

__all__ = ["FileOutcome", "IngestJob", "IngestProgress", "IngestReport", "IngestSettings"]
