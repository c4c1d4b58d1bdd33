"""Counting a run's pages up front, so its progress total does not grow as it goes.

While the first files render, :class:`PageCounter` walks the run's files in
order and, for each one the run will render, asks the renderer's probe
(``Renderer.open``: ``pdfinfo`` for a PDF, the header for an image) how many
pages it will render. "Will render" is the planner's rule
(:class:`~pipeline.ingest.planner.Planner`): bytes not stored yet, or a
stored incomplete version due to be redone; unchanged files, copies and a
second path to the same bytes count 0, and so does a file that cannot be read
or probed (its render reports why). Nothing is changed in the store.

The file hashes are shared with the planner through :class:`HashMemo`, so no
file is hashed twice; the probe is the renderer's own (poppler runs under the
same timeouts, memory cap and cancellation as when rendering).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.errors import PageRAGError
from pipeline.ingest.planner import Planner
from pipeline.ingest.stages import DocumentRenderer
from pipeline.retrieve.store import PageStore

__all__ = ["HashMemo", "PageCounter"]


class HashMemo:
    """``hash_file`` computed once per file version in a run (keyed by path, size, mtime)."""

    def __init__(self, hash_file: Callable[[Path], str]) -> None:
        self._hash_file = hash_file
        self._known: dict[tuple[Path, int, int], str] = {}
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> str:
        status = Path(path).stat()
        key = (Path(path), status.st_size, status.st_mtime_ns)
        with self._lock:
            known = self._known.get(key)
        if known is None:
            known = self._hash_file(Path(path))
            with self._lock:
                self._known[key] = known
        return known


class PageCounter:
    """The pages each file of a run will render, probed ahead of the render workers."""

    def __init__(
        self,
        *,
        store: PageStore,
        planner: Planner,
        renderer: DocumentRenderer,
        hash_file: Callable[[Path], str],
        password_for: Callable[[Path], str | None],
        cancel: threading.Event,
    ) -> None:
        self.store = store
        self.planner = planner
        self.renderer = renderer
        self.hash_file = hash_file
        self.password_for = password_for
        self.cancel = cancel  # set when counting is no longer useful: kills a probe in flight

    def run(
        self,
        files: Sequence[Path],
        found: Callable[[int, int], None],
        *,
        skip: Callable[[int], bool] = lambda _index: False,
    ) -> None:
        """Call ``found(index, pages)`` for each file in order, until done or cancelled.

        ``skip(index)`` true: the engine knows that file's pages already (a
        render worker opened it): it is not probed again.
        """
        seen: set[str] = set()
        for index, path in enumerate(files):
            if self.cancel.is_set():
                return
            if not skip(index):
                found(index, self.pages(path, seen))

    def pages(self, path: Path, seen: set[str]) -> int:
        """Pages the run will render for ``path``; ``seen`` holds the ids met so far."""
        try:
            document_id = self.hash_file(path)
        except OSError:
            return 0
        if document_id in seen:
            return 0  # the same bytes again: rendered once, under the first path
        seen.add(document_id)
        try:
            existing = self.store.get_document(document_id)
            if existing is not None and self.planner.redo_note(existing) is None:
                return 0  # stored already: skipped
            plan = self.renderer.open(path, password=self.password_for(path), cancel=self.cancel)
        except PageRAGError:  # the planner or the render stage reports it
            return 0
        return plan.page_count
