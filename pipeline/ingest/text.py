"""Page text for the text lane: each PDF page's text layer, read by poppler's ``pdftotext``.

::

    extractor = TextExtractor(config.render, config.text, poppler=renderer.poppler)
    texts = extractor.extract(path, [1, 2, 3], password=plan.password, cancel=stop_event)
    texts[2].text, texts[2].cut          # stripped text ("" without a text layer), cut?

``pdftotext -layout -f FIRST -l LAST FILE -`` runs through the one poppler
driver (:meth:`pipeline.ingest.poppler.Poppler.run`), so it gets rendering's
controls: the ``render.timeout_s`` budget (its own, per document: text is
read beside the images, not after them), the ``render.max_poppler_mb`` memory
cap, cancellation by the job's stop event, and the password bytes that opened
the file (``RenderPlan.password``: the renderer resolved it, it is not
resolved twice). Pages are read ``render.pages_per_chunk`` at a time, as they
are rendered; poppler ends every page with a form feed, which splits a run's
output into pages.

Each page's text is stripped and cut at ``text.max_page_chars`` (``cut``
records it). Image files (PNG, JPEG, TIFF) and pages without a text layer
(scans) get ``""``. A run that fails or times out raises
:class:`~pipeline.errors.TextExtractionError`; :meth:`TextExtractor.iter_pages`
yields every page first (those it could not read empty), so the caller keeps
the text it got and the document's images, and records the failure: a text
problem never fails the visual lane.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import RenderConfig, TextConfig
from pipeline.errors import RenderCancelledError, TextExtractionError
from pipeline.ingest.outcome import page_ranges
from pipeline.ingest.poppler import Poppler, PopplerRun, password_args
from pipeline.ingest.render import RenderPlan, sniff_type
from pipeline.types import TEXT_FIELD

__all__ = [
    "DocumentTexts",
    "PageText",
    "TextExtractor",
    "extractor_for",
    "page_chunks",
    "text_payload",
]

_FORM_FEED = "\f"
_IMAGE_KINDS = ("png", "jpeg", "tiff")


@dataclass(frozen=True)
class PageText:
    """One page's text layer: stripped, ``""`` without one; ``cut`` at text.max_page_chars."""

    page_number: int
    text: str
    cut: bool = False


def text_payload(text: PageText | None) -> dict[str, Any]:
    """The page payload fields of the text lane: ``TEXT_FIELD`` (``""`` without text),
    ``has_text``, and ``text_cut`` when the text was cut (an ingest and
    ``pagerag reindex --text`` write the same)."""
    body = "" if text is None else text.text
    fields: dict[str, Any] = {TEXT_FIELD: body, "has_text": bool(body)}
    if text is not None and text.cut:
        fields["text_cut"] = True
    return fields


def page_chunks(pages: Sequence[int], size: int) -> list[list[int]]:
    """``pages`` (sorted, unique) as runs of consecutive numbers, at most ``size`` long."""
    chunks: list[list[int]] = []
    for number in sorted(set(pages)):
        if chunks and chunks[-1][-1] + 1 == number and len(chunks[-1]) < size:
            chunks[-1].append(number)
        else:
            chunks.append([number])
    return chunks


class TextExtractor:
    """Reads page text layers with ``pdftotext``; cheap to construct, picklable, shareable.

    ``poppler`` is the driver to run it with (the renderer's, so both share one
    set of controls); None builds one from ``config`` as the renderer does.
    """

    def __init__(
        self, config: RenderConfig, text: TextConfig, poppler: Poppler | None = None
    ) -> None:
        self.config = config
        self.text = text
        self.poppler = poppler or Poppler(max_memory_mb=config.max_poppler_mb)

    def extract(
        self,
        path: Path,
        pages: Sequence[int],
        *,
        password: bytes | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[int, PageText]:
        """The text of each of ``pages`` (1-based) of ``path``.

        Raises ``TextExtractionError`` when pdftotext fails or the document's
        time budget runs out (:meth:`iter_pages` yields every page first, those
        it could not read empty), and ``RenderCancelledError`` when ``cancel``
        is set.
        """
        return {
            t.page_number: t for t in self.iter_pages(path, pages, password=password, cancel=cancel)
        }

    def iter_pages(
        self,
        path: Path,
        pages: Sequence[int],
        *,
        password: bytes | None = None,
        cancel: threading.Event | None = None,
    ) -> Generator[PageText, None, None]:
        """:meth:`extract` a page range at a time, as each run ends; on a failure the
        pages it could not read come last, empty, then ``TextExtractionError``."""
        wanted = sorted(set(pages))
        if not wanted:
            return
        if _is_image(path):
            yield from (PageText(number, "") for number in wanted)
            return
        budget = self.config.timeout_s
        spent = 0.0
        problems: list[str] = []
        failed: list[int] = []
        for chunk in page_chunks(wanted, self.config.pages_per_chunk):
            first, last = chunk[0], chunk[-1]
            if budget - spent <= 0:
                failed.extend(n for n in wanted if n >= first)
                problems.append(_timeout(spent, budget))
                break
            run = self._pdftotext(path, first, last, password, budget - spent, cancel)
            spent += run.elapsed
            if run.timed_out:
                failed.extend(n for n in wanted if n >= first)
                problems.append(_timeout(spent, budget))
                break
            if run.returncode != 0:
                failed.extend(chunk)
                problems.append(f"pdftotext failed on pages {first}-{last}: {run.complaint()}")
                continue
            texts = run.stdout.decode("utf-8", "replace").split(_FORM_FEED)
            for offset, number in enumerate(chunk):
                yield self._page(number, texts[offset] if offset < len(texts) else "")
        if failed:
            for number in failed:
                yield PageText(number, "")
            detail = (
                f"no text for page(s) {page_ranges(failed)}: {'; '.join(problems)}; "
                "their images are stored (visual lane)"
            )
            raise TextExtractionError(path, detail, page=failed[0])

    def _page(self, number: int, raw: str) -> PageText:
        text = raw.strip()
        limit = self.text.max_page_chars
        if len(text) > limit:
            return PageText(number, text[:limit], cut=True)
        return PageText(number, text)

    def _pdftotext(
        self,
        path: Path,
        first: int,
        last: int,
        password: bytes | None,
        budget: float,
        cancel: threading.Event | None,
    ) -> PopplerRun:
        argv: list[str | bytes] = [
            "pdftotext",
            "-layout",
            "-f", str(first),
            "-l", str(last),
            *password_args(password),
            str(path), "-",
        ]  # fmt: skip
        return self.poppler.run(argv, budget, cancel=cancel, capture_stdout=True)


class DocumentTexts:
    """One document's page texts, handed over page by page as its pages are rendered.

    :meth:`TextExtractor.iter_pages` runs over the planned pages. ``beside``: in a
    thread, at most ``_AHEAD_CHUNKS`` page ranges ahead of the pages claimed, so
    it overlaps rendering and memory does not grow with document length;
    otherwise each range is read when its first page is claimed (no thread).
    :meth:`get` gives a page's text (pages are claimed in order); :meth:`close`
    stops reading (killing a pdftotext in flight) and returns the
    ``TextExtractionError`` met, if any: never raised, the images go on.
    """

    def __init__(
        self,
        extractor: TextExtractor,
        plan: RenderPlan,
        cancel: threading.Event | None,
        *,
        beside: bool,
    ) -> None:
        self._texts: dict[int, PageText] = {}
        self._done = False
        self._cond = threading.Condition()
        self._outer = cancel
        # poppler's cancel: a private event the thread's reader can be stopped by
        self._stop = threading.Event() if beside else (cancel or threading.Event())
        self._ahead = _AHEAD_CHUNKS * max(1, extractor.config.pages_per_chunk)
        self._error: TextExtractionError | None = None
        self._path = plan.path
        numbers = [p.number for p in plan.pages]
        self._pages = extractor.iter_pages(
            plan.path, numbers, password=plan.password, cancel=self._stop
        )
        self._thread: threading.Thread | None = None
        if beside:
            self._thread = threading.Thread(target=self._run, daemon=True, name="pagerag-text")
            self._thread.start()

    def _next(self) -> bool:
        """Read the next page's text into the hand-over; False when there is none."""
        try:
            text = next(self._pages)
        except StopIteration:
            return False
        except TextExtractionError as exc:
            self._error = exc
            return False
        except RenderCancelledError:
            return False  # closed, or the job is stopping
        except Exception as exc:  # poppler missing, an extractor bug: the images go on
            self._error = TextExtractionError(self._path, f"text extraction failed: {exc}")
            return False
        with self._cond:
            self._texts[text.page_number] = text
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while len(self._texts) >= self._ahead and not self._stop.is_set():
                        self._cond.wait(0.2)
                if self._stop.is_set() or not self._next():
                    return
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def get(self, number: int) -> PageText:
        """Page ``number``'s text (empty if it could not be read); earlier ones are dropped."""
        if self._thread is None:
            while number not in self._texts and not self._done:
                self._done = not self._next()
        with self._cond:
            while number not in self._texts and not self._done:
                if self._outer is not None and self._outer.is_set():
                    self._stop.set()
                self._cond.wait(0.2)
            for older in [n for n in self._texts if n < number]:
                del self._texts[older]  # a page that failed to render: never claimed
            text = self._texts.pop(number, None)
            self._cond.notify_all()
        return text or PageText(number, "")

    def close(self) -> TextExtractionError | None:
        """Stop reading; the error met, if any."""
        if self._thread is not None:
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            self._thread.join()
        self._pages.close()
        return self._error


_AHEAD_CHUNKS = 4  # page ranges of text read ahead of the pages claimed, at most


def extractor_for(renderer: object) -> TextExtractor:
    """A :class:`TextExtractor` sharing a renderer's settings and poppler driver (the
    default text settings): for an engine built without one."""
    config = getattr(renderer, "config", None)
    poppler = getattr(renderer, "poppler", None)
    return TextExtractor(
        config if isinstance(config, RenderConfig) else RenderConfig(),
        TextConfig(),
        poppler=poppler if isinstance(poppler, Poppler) else None,
    )


def _is_image(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return sniff_type(handle.read(1024)) in _IMAGE_KINDS
    except OSError:
        return False  # pdftotext reports it


def _timeout(spent: float, budget: float) -> str:
    return (
        f"pdftotext stopped after {spent:.1f} s, the render.timeout_s={budget:g} limit "
        "(raise it to try longer)"
    )
