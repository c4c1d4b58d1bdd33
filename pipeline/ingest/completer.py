"""The last ingestion stage: a rendered document's outcome, and its completion mark.

A document is marked complete — a vectorless marker point holding its
:class:`~pipeline.types.DocumentRecord` — only after its pages are flushed,
and pages an earlier attempt stored but this one did not are pruned first.
Only then are other versions stored under its path removed, so a crash
never loses what was stored. A document whose rendering broke off, or some
of whose pages failed, is marked too, as incomplete (a rerun redoes it when
a limit changed, or with ``--retry-incomplete``); one with no stored page,
or cut short by a stop request or a job-ending error, is not marked. A
document whose text layer could not be read (the text lane) is marked
incomplete as ``text_failed``, its outcome saying so: its images are stored,
so it counts as ingested, and ``--retry-incomplete`` reads the text again.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import InputError, PageRAGError, StoreError
from pipeline.ingest.outcome import FileOutcome, Status, page_ranges, stopped_by
from pipeline.ingest.render import PageFailure
from pipeline.ingest.stages import Document, remove_other_versions
from pipeline.retrieve.store import PageStore
from pipeline.types import CollectionSpec, DocumentRecord

__all__ = ["Completer"]


class Completer:
    """Decides a rendered document's outcome; marks it complete when it is.

    ``metadata`` and ``limits`` (the render settings in force) go into the
    completion mark; ``aliases`` maps a resolved file to the path the user
    gave for it.
    """

    def __init__(
        self,
        store: PageStore,
        spec: CollectionSpec,
        *,
        metadata: Mapping[str, str] | None = None,
        limits: Mapping[str, Any] | None = None,
        aliases: Mapping[Path, str] | None = None,
    ) -> None:
        self.store = store
        self.spec = spec
        self.metadata = dict(metadata or {})
        self.limits = dict(limits or {})
        self.aliases = dict(aliases or {})

    def complete(
        self, doc: Document, *, aborted: PageRAGError | None = None, stopping: bool = False
    ) -> FileOutcome:
        """``doc``'s outcome, after marking it complete if it can be.

        ``aborted``: the error that is ending the job (nothing is marked then);
        ``stopping``: a stop was requested. Raises ``StoreError`` when the
        store fails while marking: ``store_failed`` gives the outcome then.
        """
        failure = self._failure(doc, aborted, stopping)
        if failure is not None:
            reason, message = failure
            return _outcome(doc, "failed", reason=reason, message=message)
        failed_pages, incomplete = self._account(doc)
        record = self._record(doc, failed_pages, incomplete)
        self.store.flush()
        # An earlier attempt (killed, or under other limits) may have stored
        # pages this one did not: they must not outlive it.
        self.store.prune_pages(doc.document_id, doc.stored_pages)
        self.store.mark_complete(record)
        # Only now that the new version is complete may older ones go.
        names = (str(doc.path), self.aliases.get(doc.path))
        replaced = remove_other_versions(self.store, names, doc.document_id)
        outcome = self._decide(doc, failed_pages, incomplete)
        outcome.replaced = replaced
        return outcome

    @staticmethod
    def store_failed(doc: Document, error: StoreError) -> FileOutcome:
        """The outcome of a document whose completion the store refused."""
        return _outcome(doc, "failed", reason="store", message=f"{error}; rerun to resume")

    @staticmethod
    def _failure(
        doc: Document, aborted: PageRAGError | None, stopping: bool
    ) -> tuple[str, str] | None:
        """``(reason, message)`` when the document cannot be marked complete."""
        if aborted is not None:
            return "aborted", f"not completed: {stopped_by(aborted)} (the job stopped); rerun"
        error = doc.render_error
        if error is not None and (doc.stored == 0 or not isinstance(error, InputError)):
            return getattr(error, "reason", type(error).__name__), str(error)
        expected = doc.plan.page_count if doc.plan else 0
        if (
            error is None
            and stopping
            and (doc.plan is None or doc.stored + len(doc.failures) < expected)
        ):
            return "interrupted", "interrupted before all pages were stored; rerun to resume"
        if doc.stored == 0:
            if doc.failures:
                first = doc.failures[0].error
                return first.reason, str(first)
            return "empty", f"{doc.path}: the document has no pages"
        lost = expected - doc.stored - len({f.page_number for f in doc.failures})
        if error is None and doc.plan is not None and lost > 0:
            # No stage reported these pages stored or failed: an engine lost them.
            return "pages_lost", (
                f"{lost} of {expected} pages never reached the store and no error was "
                "reported for them; not marked complete: rerun to resume"
            )
        return None

    @staticmethod
    def _account(doc: Document) -> tuple[list[int], str | None]:
        """The failed pages and why the document is incomplete (None: it is whole).

        When rendering broke off (timeout, damaged page), every page that was
        not stored is recorded as failed; what was stored is kept.
        """
        plan = doc.plan
        if isinstance(doc.render_error, InputError) and plan is not None:
            done = doc.stored_pages | {f.page_number for f in doc.failures}
            doc.failures.extend(
                PageFailure(n, doc.render_error)
                for n in range(1, plan.page_count + 1)
                if n not in done
            )
        failed_pages = sorted({f.page_number for f in doc.failures})
        if isinstance(doc.render_error, InputError):
            return failed_pages, doc.render_error.reason  # e.g. timeout: broke off midway
        if failed_pages:
            return failed_pages, "page_errors"
        if plan and plan.truncated:
            return failed_pages, "truncated"
        if doc.text_error is not None:
            return failed_pages, doc.text_error.reason
        return failed_pages, None

    def _record(
        self, doc: Document, failed_pages: list[int], incomplete: str | None
    ) -> DocumentRecord:
        plan = doc.plan
        return DocumentRecord(
            document_id=doc.document_id,
            source=str(doc.path),
            file_name=doc.path.name,
            page_count=doc.stored,
            total_pages=plan.total_pages if plan else doc.stored,
            ingested_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            model=self.spec.model_label,
            bytes=doc.file_bytes,
            failed_pages=tuple(failed_pages),
            metadata=self.metadata,
            incomplete=incomplete,
            limits=self.limits,
            source_alias=self.aliases.get(doc.path),
        )

    @staticmethod
    def _decide(doc: Document, failed_pages: list[int], incomplete: str | None) -> FileOutcome:
        """The outcome of a document just marked complete."""
        plan = doc.plan
        if failed_pages:
            outcome = _outcome(
                doc,
                "partial",
                reason=incomplete or "page_errors",
                message=f"{len(failed_pages)} page(s) failed ({page_ranges(failed_pages)}): "
                f"{doc.failures[-1].error.detail}",
            )
        elif plan and plan.truncated:
            outcome = _outcome(
                doc,
                "ingested",
                reason="truncated",
                message=f"truncated to the first {plan.page_count} of {plan.total_pages} pages "
                "(render.max_pages); raise render.max_pages and rerun to add the rest",
            )
        else:
            outcome = _outcome(doc, "ingested")
        if doc.text_error is not None:
            note = (
                f"text lane: {doc.text_error.detail}; rerun with --retry-incomplete to read "
                "the text again"
            )
            outcome.reason = outcome.reason or doc.text_error.reason
            outcome.message = note if outcome.message is None else f"{outcome.message}; {note}"
        if doc.redo_note:
            outcome.message = (
                doc.redo_note if outcome.message is None else f"{outcome.message} [{doc.redo_note}]"
            )
        return outcome


def _outcome(
    doc: Document, status: Status, *, reason: str | None = None, message: str | None = None
) -> FileOutcome:
    return FileOutcome(
        path=str(doc.path),
        status=status,
        document_id=doc.document_id,
        pages=doc.stored if status != "failed" else 0,
        total_pages=doc.plan.total_pages if doc.plan else None,
        reason=reason,
        message=message,
        failed_pages=sorted({f.page_number for f in doc.failures}),
        seconds=time.monotonic() - doc.started,
    )
