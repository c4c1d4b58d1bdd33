"""The rendering stage: one input file → a stream of JPEG page images.

Two steps, so a job can record exactly what happened to every file::

    renderer = Renderer(config.render)
    plan = renderer.open(path, password=book.password_for(path))  # raises InputError
    for item in renderer.iter_pages(plan, document_id=doc_id, source=str(path)):
        if isinstance(item, PageFailure):   # one page failed, the others go on
            failed.append(item.page_number)
        else:
            queue.put(item)                 # a Page
    # plan.truncated / plan.total_pages: pages skipped by render.max_pages

``Page.page_count`` is ``plan.page_count``, the pages this run renders (as
``DocumentRecord.page_count``); ``plan.total_pages`` is what the file has.

``open()`` is the cheap probe (file size, type sniffed from magic bytes, one
``pdfinfo`` run for page count, page sizes and the password). It raises the
document-level ``InputError`` leaves: ``UnsupportedFileError``,
``DamagedFileError``, ``PasswordRequiredError``, ``WrongPasswordError``,
``FileTooLargeError``, ``TooManyPagesError`` (refuse mode) and
``RenderTimeoutError``. ``iter_pages()`` yields a ``Page`` or a
``PageFailure`` for every planned page, in page order, and raises
``RenderTimeoutError`` (after yielding the pages finished in time) when the
per-document budget runs out. ``render()`` is the strict one-call form: it
raises the first page failure instead of yielding it. When every page of a
document fails, the job should record the document as failed with the first
page's error, not as "partially ingested".

Why poppler is driven directly and not through ``pdf2image.convert_from_path``
(pdf2image 1.17, read in its source):

* ``convert_from_path`` runs ``pdfinfo`` before every call *without* a
  timeout: on ``qpdf/.../shared-unnamed-field.pdf`` it hangs forever even with
  ``timeout=3``, so it cannot implement a per-document timeout;
* that extra ``pdfinfo`` plus a ``pdftoppm -v`` version probe on every page
  range re-open the document: 5–17% slower at 1–4 pages per range on the
  QA papers, and +0.3 s per range on a 700-page file whose xref poppler
  has to reconstruct;
* on a timeout it kills the process but raises without saying which pages
  were finished, and any other exception while it waits (a signal handler
  raising, say) leaves the poppler process running.

So every poppler run goes through the driver in ``pipeline.ingest.poppler``
(``Poppler.run``): its own process group, a deadline on the whole run, the
group killed on timeout, cancellation or any exception, a ``timeout -s KILL``
backstop that still kills poppler if this Python process is itself killed
with SIGKILL mid-render, and a ``prlimit --as`` memory cap. This module
plans (probe, page sizes, DPI, page ranges, passwords) and turns poppler's
output into pages and errors that say what to do. ``pdftoppm`` (Splash) is used rather than
``pdftocairo``: pdftocairo was 1.3–6× faster on some documents but on this
corpus it looped on one file pdftoppm renders in 0.1 s and failed three others.

Rendering rules:

* the time budget ``render.timeout_s`` counts time spent in poppler for the
  document (probe and all page ranges), not time the consumer spends between
  pages, so a slow embedder downstream never times out a healthy document;
* pages are rendered ``render.pages_per_chunk`` at a time into a private temp
  folder; each JPEG is read, deleted and yielded, so memory does not grow with
  document length;
* the crop box is rendered (``-cropbox``), as PDF readers display it, and
  ``/Rotate`` is applied by poppler, so pages come out upright;
* a page whose pixels at ``render.dpi`` would exceed ``render.max_page_pixels``
  (or 65,000 px on a side, the JPEG limit) is rendered at the largest integer
  DPI that fits; ``Page.dpi`` is the DPI actually used;
* a file with no known magic number (no ``%PDF-`` in its first 1 KB, and
  not an image, archive, Office file, ...) is still handed to poppler, which,
  like pdf.js, reads PDFs with junk before the header or none at all; if
  poppler cannot read it, it is ``damaged`` when it is meant as a PDF (``.pdf``
  name, or PDF syntax further in) and ``unsupported`` otherwise;
* passwords: a file is first opened with no password, so unencrypted and
  owner-password-only files never need (or are broken by) one; then the given
  password is tried as owner *and* user password, as UTF-8 (AES-256 files)
  and, if it is not ASCII, in PDFDocEncoding (RC4/AES-128 files, whose
  passwords are Latin-1-like bytes), then in its SASLprep form (PDF 2.0's
  rule for AES-256 passwords, which poppler does not apply: see
  ``pipeline.ingest.saslprep``). Poppler only takes passwords on its command line,
  so they are visible in the process list while it runs, and it keeps only
  their first 32 bytes.

Image files (PNG, JPEG, TIFF; each TIFF frame is a page) are converted to RGB
(transparency over white, 16-bit scaled to 8-bit), turned upright by their
EXIF orientation, downscaled to fit ``max_page_pixels`` and encoded as JPEG.
Their ``Page.dpi`` is the image's own resolution (72 when it has none),
scaled down with the image.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shlex
import stat
import threading
import time
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from pipeline.config import RenderConfig
from pipeline.errors import (
    DamagedFileError,
    FileTooLargeError,
    InputError,
    PasswordRequiredError,
    PopplerNotInstalledError,
    RenderTimeoutError,
    TooManyPagesError,
    UnsupportedFileError,
    WrongPasswordError,
)
from pipeline.ingest.poppler import (
    Poppler,
    PopplerRun,
    password_args,
    sweep_stale_workdirs,
    work_folder,
)

# The process runner each Renderer hands its Poppler driver (tests wrap it to count runs).
from pipeline.ingest.poppler import run_poppler as _run_poppler
from pipeline.ingest.saslprep import SASLprepError, saslprep
from pipeline.types import Page

__all__ = [
    "SUPPORTED_TYPES",
    "PageFailure",
    "PagePlan",
    "PopplerNotInstalledError",
    "RenderPlan",
    "Renderer",
    "encode_image_page",
    "fit_dpi",
    "jpeg_to_image",
    "sniff_type",
    "sweep_stale_workdirs",
]

SUPPORTED_TYPES = "PDF, PNG, JPEG, TIFF"

_SNIFF_BYTES = 1024
_PDF_MARKER_BYTES = 1 << 20  # how far a file without a header is searched for PDF syntax
_MAX_JPEG_SIDE = 65_000  # libjpeg refuses more than 65,500 px on a side
_MAX_PDFINFO_PAGES = 2**31 - 1
_IMAGE_DEFAULT_DPI = 72


@dataclass(frozen=True)
class PagePlan:
    """How one page will be rendered.

    ``width_pt``/``height_pt``: the crop box in points before ``/Rotate``
    (for images: pixels × 72 / the image's DPI). ``dpi`` is below
    ``render.dpi`` when the pixel cap applies; 0 for image pages, whose DPI is
    decided when they are decoded.
    """

    number: int
    width_pt: float
    height_pt: float
    rotation: int
    dpi: int


@dataclass(frozen=True)
class RenderPlan:
    """What ``Renderer.open`` found out about a file; input to ``iter_pages``.

    ``total_pages`` is what the file has; ``page_count`` what will be rendered
    (fewer when ``render.max_pages`` truncated it: see ``truncated``).
    Picklable, so a job can probe in one process and render in another.
    """

    path: Path
    kind: Literal["pdf", "image"]
    file_size: int
    total_pages: int
    page_count: int
    pages: tuple[PagePlan, ...] = field(repr=False)
    probe_seconds: float
    requested_dpi: int = 0  # render.dpi for PDFs; 0 for images (their DPI is their own)
    image_format: str | None = None
    # Bytes that opened the file (passed as -opw and -upw), or None. Never printed.
    password: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def truncated(self) -> bool:
        return self.page_count < self.total_pages

    @property
    def reduced_dpi_pages(self) -> tuple[int, ...]:
        """PDF pages planned below ``render.dpi`` because of the pixel cap."""
        return tuple(p.number for p in self.pages if p.dpi < self.requested_dpi)


@dataclass(frozen=True)
class PageFailure:
    """One page that could not be rendered while the others were.

    ``error.page`` equals ``page_number``; ``error.reason`` is the stable code
    for job reports.
    """

    page_number: int
    error: InputError


# --------------------------------------------------------------------------- sniffing

_OTHER_TYPES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"PK\x03\x04", "a ZIP archive (.docx, .xlsx, .pptx, .odt and .epub are ZIP files)"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE2 file (old .doc, .xls or .ppt)"),
    (0, b"%!PS", "a PostScript file"),
    (0, b"{\\rtf", "an RTF document"),
    (0, b"AT&TFORM", "a DjVu document"),
    (0, b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (0, b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"7z\xbc\xaf", "a 7-Zip archive"),
    (0, b"Rar!", "a RAR archive"),
    (0, b"BM", "a BMP image"),
    (8, b"WEBP", "a WebP image"),
    (4, b"ftypheic", "a HEIC image"),
    (4, b"ftypheix", "a HEIC image"),
    (4, b"ftypmif1", "a HEIF image"),
    (4, b"ftypavif", "an AVIF image"),
)


_TEXT = "a text file"
_UNKNOWN_BINARY = "an unrecognised binary file"
# No magic number of any known type: the renderer lets poppler try these as PDFs.
_MAYBE_PDF = (_TEXT, _UNKNOWN_BINARY)


def sniff_type(head: bytes) -> str:
    """Classify a file from its first bytes (up to 1024).

    Returns ``"pdf"``, ``"png"``, ``"jpeg"``, ``"tiff"``, or for anything else
    a human description ("a ZIP archive (...)") used in the error message.
    ``%PDF`` may appear anywhere in the first 1024 bytes, as Acrobat accepts.
    A header further in, or none at all, gives "a text file" or "an
    unrecognised binary file": ``Renderer.open`` still has poppler try those,
    as poppler and pdf.js open such files.
    """
    if not head:
        return "an empty file (0 bytes)"
    if b"%PDF" in head[:_SNIFF_BYTES]:
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    for offset, magic, what in _OTHER_TYPES:
        if head[offset : offset + len(magic)] == magic:
            return what
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed download?)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return _UNKNOWN_BINARY
    return _TEXT


# --------------------------------------------------------------------------- passwords

# PDFDocEncoding differs from Latin-1 in 0x18-0x1F, 0x80-0x9E and 0xA0 (PDF 32000 annex D).
_PDFDOC_EXTRA = {
    "˘": 0x18, "ˇ": 0x19, "ˆ": 0x1A, "˙": 0x1B, "˝": 0x1C, "˛": 0x1D, "˚": 0x1E, "˜": 0x1F,
    "•": 0x80, "†": 0x81, "‡": 0x82, "…": 0x83, "—": 0x84, "–": 0x85, "ƒ": 0x86, "⁄": 0x87,
    "‹": 0x88, "›": 0x89, "−": 0x8A, "‰": 0x8B, "„": 0x8C, "“": 0x8D, "”": 0x8E, "‘": 0x8F,
    "’": 0x90, "‚": 0x91, "™": 0x92, "ﬁ": 0x93, "ﬂ": 0x94, "Ł": 0x95, "Œ": 0x96, "Š": 0x97,
    "Ÿ": 0x98, "Ž": 0x99, "ı": 0x9A, "ł": 0x9B, "œ": 0x9C, "š": 0x9D, "ž": 0x9E, "€": 0xA0,
}  # fmt: skip


def _pdfdoc_encode(text: str) -> bytes | None:
    """PDFDocEncoding of ``text``, or None when a character has no code."""
    out = bytearray()
    for char in text:
        code = _PDFDOC_EXTRA.get(char)
        if code is None:
            code = ord(char)
            if code > 0xFF or 0x18 <= code <= 0x1F or 0x7F <= code <= 0xA0:
                return None
        out.append(code)
    return bytes(out)


def _password_candidates(password: str) -> list[bytes]:
    """Byte strings to try, most likely first, without duplicates or empty ones.

    The password as given comes first, in UTF-8 and in PDFDocEncoding: older
    handlers (R2-R4) take PDFDocEncoding bytes, and tools that do not prepare
    passwords (qpdf) store AES-256 ones as typed. Then its SASLprep form, which
    PDF 2.0 requires for AES-256 (R6) and which poppler 22.12 does not compute
    (see ``pipeline.ingest.saslprep``); in PDFDocEncoding too, which also covers a
    password typed with combining accents on an RC4 file. A password SASLprep
    refuses (control characters, ...) cannot have been prepared by a reader, so
    only the given form is tried. Poppler passes the command-line bytes through
    unchanged.
    """
    forms = [password]
    with contextlib.suppress(SASLprepError):
        forms.append(saslprep(password))
    candidates: list[bytes] = []
    for form in forms:
        for encoded in (form.encode("utf-8"), _pdfdoc_encode(form)):
            if encoded and encoded not in candidates:
                candidates.append(encoded)
    return candidates


_POPPLER_PASSWORD_BYTES = 32  # pdfinfo/pdftoppm copy -upw/-opw into a 33-byte buffer


def _long_password_note(password: str, path: Path) -> str:
    """Why a right but long password fails: poppler's tools keep its first 32 bytes.

    RC4 and AES-128 files only use 32 bytes anyway; AES-256 uses up to 127, so
    poppler cannot open an AES-256 file whose password is longer than 32 bytes.
    """
    if len(password.encode("utf-8")) <= _POPPLER_PASSWORD_BYTES:
        return ""
    return (
        f". poppler reads only the first {_POPPLER_PASSWORD_BYTES} bytes of a password and "
        "this one is longer: if the file uses AES-256, decrypt a copy first, e.g. "
        f"`qpdf --decrypt --password-file=PWFILE {shlex.quote(str(path))} copy.pdf` "
        "(PWFILE holding the password), and ingest the copy"
    )


# ------------------------------------------------------------------- reading poppler's output


def _repair_hint(path: Path) -> str:
    return (
        f"to repair it, try `qpdf --replace-input {shlex.quote(str(path))}` (it rebuilds "
        "broken cross-reference tables) or print it to a new PDF from a PDF reader"
    )


def _has_pdf_syntax(path: Path) -> bool:
    """A ``%PDF-`` header or an ``endobj`` anywhere in the file's first MiB."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_PDF_MARKER_BYTES)
    except OSError:
        return False
    return b"%PDF-" in data or b"endobj" in data


def _unreadable(path: Path, sniffed: str, complaint: str) -> InputError:
    """The error for a file poppler cannot open as a PDF.

    ``damaged`` (with how to repair it) when the file is meant as a PDF: a
    header in the first 1 KB, the ``.pdf`` extension, or PDF syntax further in.
    Otherwise it is another kind of file: ``unsupported``, saying what it looks like.
    """
    if sniffed == "pdf":
        return DamagedFileError(path, f"poppler cannot read it: {complaint}; {_repair_hint(path)}")
    if path.suffix.lower() == ".pdf" or _has_pdf_syntax(path):
        return DamagedFileError(
            path,
            f"poppler cannot read it (no %PDF- header in its first 1 KB): {complaint}; "
            f"{_repair_hint(path)}",
        )
    return UnsupportedFileError(
        path, f"not a PDF or a supported image: it is {sniffed}. Supported: {SUPPORTED_TYPES}"
    )


_PAGES_RE = re.compile(r"^Pages:\s+(\d+)\s*$", re.MULTILINE)
_SIZE_RE = re.compile(
    r"^Page(?:\s+(\d+))?\s+size:\s+([0-9.eE+-]+) x ([0-9.eE+-]+) pts", re.MULTILINE
)
_ROT_RE = re.compile(r"^Page(?:\s+(\d+))?\s+rot:\s+(-?\d+)", re.MULTILINE)


def _parse_pdfinfo(text: str) -> tuple[int | None, dict[int, tuple[float, float]], dict[int, int]]:
    """Pages, per-page (width, height) in points and /Rotate from ``pdfinfo -f -l``.

    The last match wins, so a document title that imitates a ``Pages:`` line
    (pdfinfo prints metadata first) cannot override the real values.
    """
    pages = [int(m) for m in _PAGES_RE.findall(text)]
    sizes: dict[int, tuple[float, float]] = {}
    for number, width, height in _SIZE_RE.findall(text):
        try:
            sizes[int(number or 1)] = (float(width), float(height))
        except ValueError:
            continue
    rotations = {int(n or 1): int(r) % 360 for n, r in _ROT_RE.findall(text)}
    return (pages[-1] if pages else None), sizes, rotations


def fit_dpi(width_pt: float, height_pt: float, dpi: int, max_pixels: int) -> int:
    """The largest DPI ≤ ``dpi`` at which the page has at most ``max_pixels`` pixels.

    Pixel sizes are computed as poppler does (``ceil(points × dpi / 72)``);
    sides are also kept under the JPEG limit. Never below 1.
    """
    if width_pt <= 0 or height_pt <= 0 or not math.isfinite(width_pt * height_pt):
        return dpi

    def pixels(d: int) -> tuple[int, int]:
        return math.ceil(width_pt * d / 72), math.ceil(height_pt * d / 72)

    def fits(d: int) -> bool:
        w, h = pixels(d)
        return w * h <= max_pixels and max(w, h) <= _MAX_JPEG_SIDE

    if fits(dpi):
        return dpi
    best = min(
        dpi,
        int(72 * math.sqrt(max_pixels / (width_pt * height_pt))),
        int(_MAX_JPEG_SIDE * 72 / max(width_pt, height_pt)),
    )
    best = max(best, 1)
    while best > 1 and not fits(best):
        best -= 1
    return best


def _chunks(pages: Sequence[PagePlan], size: int) -> list[tuple[int, int, int]]:
    """Consecutive runs of pages with the same DPI, at most ``size`` long: (first, last, dpi)."""
    runs: list[tuple[int, int, int]] = []
    for page in pages:
        if runs:
            first, last, dpi = runs[-1]
            if dpi == page.dpi and last + 1 == page.number and last - first + 1 < size:
                runs[-1] = (first, page.number, dpi)
                continue
        runs.append((page.number, page.number, page.dpi))
    return runs


_OUTPUT_RE = re.compile(r"-(\d+)\.jpg$")


def _is_complete_jpeg(data: bytes) -> bool:
    return len(data) > 4 and data[:2] == b"\xff\xd8" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def _outputs(workdir: str, stem: str) -> dict[int, str]:
    """The JPEGs a pdftoppm run wrote with prefix ``stem``, keyed by page.

    pdftoppm names files ``<stem>-<page>.jpg`` with the page zero-padded to
    the digits of the document's page count, so the page is parsed from the
    name rather than inferred from sort order.
    """
    found: dict[int, str] = {}
    for name in os.listdir(workdir):
        match = _OUTPUT_RE.search(name)
        if name.startswith(stem + "-") and match:
            found[int(match.group(1))] = os.path.join(workdir, name)
    return found


def _take(path: str | None) -> bytes | None:
    """Read and delete one output; None when missing or cut short by a kill."""
    if path is None:
        return None
    with open(path, "rb") as handle:
        data = handle.read()
    os.remove(path)
    return data if _is_complete_jpeg(data) else None


# --------------------------------------------------------------------------- the renderer


class Renderer:
    """Renders PDFs (poppler) and image files (Pillow) to JPEG pages.

    The constructor does no I/O beyond sweeping stale work folders; poppler is
    looked up on the first PDF. ``poppler_path`` is a folder holding
    ``pdfinfo``/``pdftoppm`` when they are not on PATH. One instance may be
    shared by threads; for worker processes, pickle it (it holds its config
    and the poppler driver's tool paths).
    """

    def __init__(
        self,
        config: RenderConfig | None = None,
        *,
        poppler_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config if config is not None else RenderConfig()
        self.poppler_path = None if poppler_path is None else os.fspath(poppler_path)
        self.poppler = Poppler(
            poppler_path=self.poppler_path,
            max_memory_mb=self.config.max_poppler_mb,
            launch=_run_poppler,
        )
        sweep_stale_workdirs()

    # ----------------------------------------------------------------- public API

    def open(
        self,
        path: str | os.PathLike[str],
        *,
        password: str | None = None,
        cancel: threading.Event | None = None,
    ) -> RenderPlan:
        """Probe a file: size, type, pages, password. Raises an ``InputError`` leaf.

        ``password`` is only used if the file does not open without one. When
        ``cancel`` is set, poppler is killed and ``RenderCancelledError`` raised.
        """
        file, size, head = _read_head(path)
        limit = self.config.max_file_mb * 1024 * 1024
        if size > limit:
            raise FileTooLargeError(
                file,
                f"{size / 2**20:,.1f} MB is more than render.max_file_mb="
                f"{self.config.max_file_mb:g}; raise it to ingest this file",
            )
        kind = sniff_type(head)
        if kind == "pdf":
            return self._open_pdf(file, size, password, cancel)
        if kind in ("png", "jpeg", "tiff"):
            return _open_image(file, size, self.config)
        if kind in _MAYBE_PDF:
            # No %PDF- in the first 1 KB and no other known type. Poppler and pdf.js
            # do not insist on the header (junk before it, or none): let poppler judge.
            return self._open_pdf(file, size, password, cancel, sniffed=kind)
        convertible = kind.startswith(("a ZIP", "an OLE2", "an RTF"))
        hint = "; convert it to PDF first" if convertible else ""
        raise UnsupportedFileError(
            file,
            f"not a PDF or a supported image: it is {kind}. Supported: {SUPPORTED_TYPES}{hint}",
        )

    def iter_pages(
        self,
        plan: RenderPlan,
        *,
        document_id: str,
        source: str,
        cancel: threading.Event | None = None,
    ) -> Generator[Page | PageFailure, None, None]:
        """Yield a ``Page`` or ``PageFailure`` per planned page, in order.

        Raises ``RenderTimeoutError`` (page = first page not delivered) when
        the document's time budget is spent, ``RenderCancelledError`` soon
        after ``cancel`` is set. Holds at most one page range in memory, and
        no poppler process is alive while a page is yielded.
        """
        if plan.kind == "image":
            return _image_pages(plan, document_id, source, self.config)
        return self._pdf_pages(plan, document_id, source, cancel)

    def render(
        self,
        path: str | os.PathLike[str],
        *,
        document_id: str,
        source: str,
        password: str | None = None,
    ) -> Generator[Page, None, None]:
        """Probe now (raising document errors at once), then stream pages lazily.

        Strict: a page failure is raised as its ``InputError`` (with ``page``
        set). Use ``open()`` + ``iter_pages()`` to keep the other pages.
        """
        plan = self.open(path, password=password)
        return self._strict(self.iter_pages(plan, document_id=document_id, source=source))

    @staticmethod
    def _strict(items: Generator[Page | PageFailure, None, None]) -> Generator[Page, None, None]:
        for item in items:
            if isinstance(item, PageFailure):
                raise item.error
            yield item

    # ----------------------------------------------------------------- PDFs

    def _pdfinfo(
        self, path: Path, password: bytes | None, budget: float, cancel: threading.Event | None
    ) -> PopplerRun:
        limit = self.config.max_pages or _MAX_PDFINFO_PAGES
        argv = ["pdfinfo", "-f", "1", "-l", str(limit), *password_args(password), str(path)]
        return self.poppler.run(argv, budget, cancel=cancel, capture_stdout=True)

    def _unlock(
        self, path: Path, password: str | None, cancel: threading.Event | None
    ) -> tuple[PopplerRun, bytes | None, float]:
        """Probe with no password, then each form of ``password`` (``_password_candidates``).

        Returns the ``pdfinfo`` run that opened the file, the password bytes
        that did (None: none was needed) and the seconds spent.
        """
        budget = self.config.timeout_s
        run = self._pdfinfo(path, None, budget, cancel)
        spent = run.elapsed
        if run.timed_out:
            raise _timeout_error(path, spent, None, None, budget)
        if not run.password_refused:
            return run, None, spent
        if not password:
            raise PasswordRequiredError(
                path,
                "is encrypted with a user password: pass --password or add it to "
                "render.passwords (or render.password_file)",
            )
        for candidate in _password_candidates(password):
            run = self._pdfinfo(path, candidate, budget - spent, cancel)
            spent += run.elapsed
            if run.timed_out:
                raise _timeout_error(path, spent, None, None, budget)
            if not run.password_refused:
                return run, candidate, spent
        raise WrongPasswordError(
            path,
            "the password given does not open it (tried as user and owner password); "
            "check --password / render.passwords for this file"
            + _long_password_note(password, path),
        )

    def _open_pdf(
        self,
        path: Path,
        size: int,
        password: str | None,
        cancel: threading.Event | None,
        *,
        sniffed: str = "pdf",
    ) -> RenderPlan:
        run, used, spent = self._unlock(path, password, cancel)
        total, sizes, rotations = _parse_pdfinfo(run.stdout.decode("utf-8", "replace"))
        if total is None:
            raise _unreadable(path, sniffed, run.complaint())
        if total == 0:
            raise DamagedFileError(
                path, f"the PDF has no pages (damaged page tree?); {_repair_hint(path)}"
            )
        count = _allowed_pages(path, total, self.config)
        dpi, cap = self.config.dpi, self.config.max_page_pixels
        pages = []
        for number in range(1, count + 1):
            width, height = sizes.get(number, (0.0, 0.0))
            rotation = rotations.get(number, 0)
            pages.append(
                PagePlan(number, width, height, rotation, fit_dpi(width, height, dpi, cap))
            )
        return RenderPlan(
            path=path,
            kind="pdf",
            file_size=size,
            total_pages=total,
            page_count=count,
            pages=tuple(pages),
            probe_seconds=spent,
            requested_dpi=dpi,
            password=used,
        )

    def _pdftoppm(
        self,
        plan: RenderPlan,
        pages: tuple[int, int, int],
        prefix: str,
        budget: float,
        cancel: threading.Event | None,
    ) -> PopplerRun:
        """Render pages ``(first, last, dpi)`` of ``plan`` to ``<prefix>-<page>.jpg`` files."""
        first, last, dpi = pages
        quality = self.config.jpeg_quality
        argv: list[str | bytes] = [
            "pdftoppm",
            "-r", str(dpi),
            "-cropbox",
            "-f", str(first),
            "-l", str(last),
            "-jpeg",
            "-jpegopt", f"quality={quality},optimize=n,progressive=n",
            *password_args(plan.password),
            str(plan.path), prefix,
        ]  # fmt: skip
        return self.poppler.run(argv, budget, cancel=cancel)

    def _pdf_pages(
        self, plan: RenderPlan, document_id: str, source: str, cancel: threading.Event | None
    ) -> Generator[Page | PageFailure, None, None]:
        budget = self.config.timeout_s
        spent = plan.probe_seconds
        with work_folder() as workdir:
            for first, last, dpi in _chunks(plan.pages, self.config.pages_per_chunk):
                if budget - spent <= 0:
                    raise _timeout_error(plan.path, spent, first, plan.page_count, budget)
                chunk = os.path.join(workdir, "c")
                run = self._pdftoppm(plan, (first, last, dpi), chunk, budget - spent, cancel)
                spent += run.elapsed
                outputs = _outputs(workdir, "c")
                for number in range(first, last + 1):
                    data = _take(outputs.pop(number, None))
                    if data is None and run.timed_out:
                        raise _timeout_error(plan.path, spent, number, plan.page_count, budget)
                    if data is None and first != last:
                        # Isolate the failing page: the range may have stopped at it.
                        single = os.path.join(workdir, "p")
                        run = self._pdftoppm(
                            plan, (number, number, dpi), single, budget - spent, cancel
                        )
                        spent += run.elapsed
                        if run.timed_out:
                            raise _timeout_error(plan.path, spent, number, plan.page_count, budget)
                        data = _take(_outputs(workdir, "p").get(number))
                    if data is None:
                        detail = f"poppler produced no image for this page: {run.complaint()}"
                        yield PageFailure(number, DamagedFileError(plan.path, detail, page=number))
                        continue
                    yield _jpeg_page(plan, document_id, source, number, dpi, data)
                for stray in outputs.values():  # pages poppler wrote outside the range
                    os.remove(stray)


def _read_head(path: str | os.PathLike[str]) -> tuple[Path, int, bytes]:
    """The absolute path, size and first bytes of a regular file, or an ``InputError``."""
    file = Path(os.path.abspath(os.fspath(path)))
    try:
        status = file.stat()
        if not stat.S_ISREG(status.st_mode):
            raise UnsupportedFileError(
                file, "not a regular file (a folder, device, socket or pipe)"
            )
        with open(file, "rb") as handle:
            return file, status.st_size, handle.read(_SNIFF_BYTES)
    except FileNotFoundError:
        raise InputError(file, "file not found (moved or deleted?)") from None
    except OSError as exc:
        raise InputError(file, f"cannot read the file: {exc.strerror or exc}") from None


def _allowed_pages(path: Path, total: int, config: RenderConfig) -> int:
    """How many of ``total`` pages to render under ``render.max_pages`` (or refuse)."""
    limit = config.max_pages
    if limit is None or total <= limit:
        return total
    if config.on_too_many_pages == "refuse":
        raise TooManyPagesError(
            path,
            f"has {total:,} pages, more than render.max_pages={limit:,}; raise the limit "
            "or set render.on_too_many_pages: truncate to ingest the first pages",
        )
    return limit


def _timeout_error(
    path: Path, spent: float, page: int | None, count: int | None, limit: float
) -> RenderTimeoutError:
    where = f"at page {page} of {count}" if page is not None else "while opening it"
    return RenderTimeoutError(
        path,
        f"rendering stopped {where} after {spent:.1f} s, the render.timeout_s={limit:g} "
        "limit (poppler loops or is very slow on this file); raise render.timeout_s "
        "to try longer",
        page=page,
    )


def _jpeg_page(
    plan: RenderPlan, document_id: str, source: str, number: int, dpi: int, data: bytes
) -> Page:
    with Image.open(io.BytesIO(data)) as image:  # header only: cheap
        width, height = image.size
    return Page(
        document_id=document_id,
        source=source,
        page_number=number,
        page_count=plan.page_count,
        jpeg=data,
        width=width,
        height=height,
        dpi=dpi,
    )


# --------------------------------------------------------------------------- image files


def _load_image(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 Mpx; we downscale anyway and refuse past its 2x limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as exc:
        detail = f"the image is too large to decode safely: {exc}"
        raise FileTooLargeError(path, detail) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DamagedFileError(path, f"cannot decode the image: {exc}") from None


def _open_image(path: Path, size: int, config: RenderConfig) -> RenderPlan:
    start = time.monotonic()
    image = _load_image(path)
    with image:
        fmt = image.format or "image"
        try:
            total = int(getattr(image, "n_frames", 1)) if fmt == "TIFF" else 1
            count = _allowed_pages(path, total, config)
            pages = []
            for number in range(1, count + 1):
                if total > 1:
                    image.seek(number - 1)
                own_dpi = _image_dpi(image)
                width_pt = image.width * 72 / own_dpi
                height_pt = image.height * 72 / own_dpi
                pages.append(PagePlan(number, width_pt, height_pt, 0, 0))
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise DamagedFileError(path, f"cannot read the {fmt} image: {exc}") from None
    return RenderPlan(
        path=path,
        kind="image",
        file_size=size,
        total_pages=total,
        page_count=count,
        pages=tuple(pages),
        probe_seconds=time.monotonic() - start,
        image_format=fmt,
    )


def _image_pages(
    plan: RenderPlan, document_id: str, source: str, config: RenderConfig
) -> Generator[Page | PageFailure, None, None]:
    spent = plan.probe_seconds
    image = _load_image(plan.path)
    try:
        for page in plan.pages:
            if spent >= config.timeout_s:
                raise _timeout_error(
                    plan.path, spent, page.number, plan.page_count, config.timeout_s
                )
            start = time.monotonic()
            try:
                if plan.total_pages > 1:
                    image.seek(page.number - 1)
                jpeg, width, height, dpi = encode_image_page(
                    image, config.jpeg_quality, config.max_page_pixels
                )
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                detail = f"cannot decode the image: {exc}"
                yield PageFailure(
                    page.number, DamagedFileError(plan.path, detail, page=page.number)
                )
                continue
            finally:
                spent += time.monotonic() - start
            yield Page(
                document_id=document_id,
                source=source,
                page_number=page.number,
                page_count=plan.page_count,
                jpeg=jpeg,
                width=width,
                height=height,
                dpi=dpi,
            )
    finally:
        image.close()


def _image_dpi(image: Image.Image) -> float:
    raw = image.info.get("dpi")
    try:
        value = float(raw[0]) if raw else 0.0
    except (TypeError, ValueError, IndexError):
        value = 0.0
    return value if 1.0 <= value <= 10_000 else float(_IMAGE_DEFAULT_DPI)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any Pillow mode: alpha composited over white, 16/32-bit scaled to 8-bit."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        if mode.startswith("I;16") or values.max(initial=0.0) > 255:
            values = values / (256.0 if values.max(initial=0.0) <= 65535 else values.max() / 255)
        elif mode == "F" and values.max(initial=0.0) <= 1.0:
            values = values * 255.0
        gray = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
        return gray.convert("RGB")
    return image.convert("RGB")


def encode_image_page(
    image: Image.Image, quality: int, max_pixels: int
) -> tuple[bytes, int, int, int]:
    """One image frame → (JPEG bytes, width, height, dpi): upright, RGB, within the pixel cap."""
    own_dpi = _image_dpi(image)
    pixels = image.width * image.height
    if image.format == "JPEG" and pixels > max_pixels:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: never the full bitmap.
        scale = math.sqrt(max_pixels / pixels)
        image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
    upright = ImageOps.exif_transpose(image) or image
    rgb = _to_rgb(upright)
    if rgb.width * rgb.height > max_pixels:
        scale = math.sqrt(max_pixels / (rgb.width * rgb.height))
        size = (max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    # Pixel counts do not change with the EXIF turn: the linear scale is their root.
    dpi = max(1, round(own_dpi * math.sqrt(rgb.width * rgb.height / pixels)))
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue(), rgb.width, rgb.height, dpi


def jpeg_to_image(jpeg: bytes) -> Image.Image:
    """Decode a rendered page for the embedder: a loaded RGB PIL image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(jpeg))
        image.load()
    return image if image.mode == "RGB" else image.convert("RGB")
