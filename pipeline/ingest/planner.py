"""The first ingestion stage: what to do with a file, before any rendering.

A file's bytes are hashed (the hash is the document id) and looked up in the
store. :meth:`Planner.plan` returns either a :class:`FileOutcome` — nothing to
render: the file is unreadable, the same bytes came earlier in this run, or
they are stored already (unchanged, a copy, moved, or incomplete under the
same settings) — or a :class:`~pipeline.ingest.stages.Document` to render:
new bytes, or a stored incomplete version that must be redone.

Skipping reconciles the path: a moved file is relabelled, not re-embedded,
and every other version stored under the path is removed (one path, one
version). Knows nothing about threads: an engine may call ``plan`` from
several at once (its only shared state is one dict, updated atomically).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.ingest.outcome import FileOutcome
from pipeline.ingest.stages import Document, remove_other_versions
from pipeline.retrieve.store import PageStore, paths_payload
from pipeline.types import DocumentRecord

__all__ = ["Planner"]

_UNKNOWN = object()  # a limit a completion mark did not record (written by older pagerag)


class Planner:
    """Decides, per file, between skipping it and (re)ingesting it.

    ``limits`` are the render settings in force (``LIMIT_KEYS``): a document
    stored incomplete under other values is redone, as it is always with
    ``retry_incomplete``. ``metadata`` replaces that of files stored already.
    ``aliases`` maps a resolved file to the path the user gave for it.
    """

    def __init__(
        self,
        store: PageStore,
        hash_file: Callable[[Path], str],
        *,
        metadata: Mapping[str, str] | None = None,
        limits: Mapping[str, Any] | None = None,
        retry_incomplete: bool = False,
        aliases: Mapping[Path, str] | None = None,
    ) -> None:
        self.store = store
        self.hash_file = hash_file
        self.metadata = dict(metadata or {})
        self.limits = dict(limits or {})
        self.retry_incomplete = retry_incomplete
        self.aliases = dict(aliases or {})
        self._claimed: dict[str, Path] = {}  # document id -> first path with it in this run

    def plan(self, path: Path) -> FileOutcome | Document:
        """The outcome of a file there is nothing to render for, or the document to render.

        Raises ``StoreError`` (the store is down: the job ends).
        """
        started = time.monotonic()
        try:
            size = path.stat().st_size
            document_id = self.hash_file(path)
        except OSError as exc:
            return FileOutcome(
                path=str(path),
                status="failed",
                reason="unreadable",
                message=f"{path}: cannot read the file ({exc.strerror}); check it exists and "
                "is readable",
                seconds=time.monotonic() - started,
            )
        first = self._claimed.setdefault(document_id, path)  # one call: atomic
        if first != path:
            return self._duplicate(path, document_id, first, started)
        existing = self.store.get_document(document_id)
        redo_note = self.redo_note(existing)
        if existing is not None and redo_note is None:
            return self._skip(path, existing, started)
        return Document(path, document_id, started, size, redo_note=redo_note)

    def remove_other_versions(self, path: Path, keep: str) -> list[str]:
        """Delete every version stored under ``path`` (or its alias) but ``keep``."""
        return remove_other_versions(self.store, (str(path), self.aliases.get(path)), keep)

    def _duplicate(self, path: Path, document_id: str, first: Path, started: float) -> FileOutcome:
        """Same bytes under another name in this very run: one document id, so
        one set of pages; rendering it twice would interleave their pages.
        What this path held before is another version: it goes."""
        removed = self.remove_other_versions(path, document_id)
        return FileOutcome(
            path=str(path),
            status="skipped",
            document_id=document_id,
            reason="duplicate",
            message=f"same content as {first}, ingested by this job",
            replaced=removed,
            seconds=time.monotonic() - started,
        )

    def redo_note(self, existing: DocumentRecord | None) -> str | None:
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
        alias = self.aliases.get(path)
        note = "unchanged since the last run"
        if str(path) not in existing.paths and (alias is None or alias not in existing.paths):
            if self._still_holds(existing):
                note = f"same content already ingested from {existing.source}"
            else:
                fields = {**paths_payload(str(path), alias), "file_name": path.name}
                self.store.set_payload(existing.document_id, fields)
                note = f"moved from {existing.source}: relabelled, not re-embedded"
        removed = self.remove_other_versions(path, existing.document_id)
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
