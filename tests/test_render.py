"""The rendering stage (pipeline.ingest.render) against real files from ../shared/corpus.

Small PDFs that the corpus lacks (a non-ASCII password, a known mark on a
rotated page) are written here by a tiny PDF writer with RC4 encryption,
under tmp_path only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.config import RenderConfig
from pipeline.errors import (
    DamagedFileError,
    FileTooLargeError,
    InputError,
    PasswordRequiredError,
    RenderTimeoutError,
    TooManyPagesError,
    UnsupportedFileError,
    WrongPasswordError,
)
from pipeline.ingest import render as render_module
from pipeline.ingest.render import (
    PageFailure,
    PopplerNotInstalledError,
    Renderer,
    fit_dpi,
    jpeg_to_image,
    sniff_type,
)
from pipeline.ingest.saslprep import SASLprepError, saslprep
from pipeline.types import Page
from tests.procs import live_processes as _live_processes

REPO = Path(__file__).resolve().parents[1]
PAPER = "qa/docs/2310.07609v1.pdf"  # 10 A4 pages (595.276 x 841.89 pt)
LOOPING = "robust/qpdf/qpdf/qtest/qpdf/shared-unnamed-field.pdf"
BOMB = "robust/pdfjs/test/pdfs/bomb_giant.pdf"
HUGE = "robust/ocrmypdf/tests/resources/hugemono.pdf"
NOT_A_PDF = "robust/ocrmypdf/tests/resources/invalid.pdf"

pytestmark = pytest.mark.skipif(
    shutil.which("pdftoppm") is None or shutil.which("pdfinfo") is None,
    reason="poppler-utils is not installed (apt-get install poppler-utils)",
)


def _renderer(**overrides: Any) -> Renderer:
    return Renderer(RenderConfig(**overrides))


def _pages(renderer: Renderer, path: Path, password: str | None = None) -> list[Page]:
    return list(renderer.render(path, document_id="doc", source=str(path), password=password))


def _px(points: float, dpi: int) -> int:
    return -(-int(points * dpi * 1000) // 72000)  # ceil, as poppler sizes its bitmaps


@pytest.fixture(scope="session")
def manifest(corpus: Path) -> list[dict[str, str]]:
    with open(corpus / "robust" / "MANIFEST.tsv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _category(manifest: list[dict[str, str]], category: str) -> list[dict[str, str]]:
    rows = [row for row in manifest if row["category"] == category]
    assert rows, f"the manifest has no {category!r} files any more"
    return rows


def _known_password(row: dict[str, str]) -> str | None:
    """The manifest's password column, or qpdf's ``U=<user>`` in the file name."""
    if row["password"]:
        return row["password"].split()[0]
    match = re.search(r"U=([^,]+?)(?:,|\.pdf$)", row["path"])
    return match.group(1) if match else None


# --------------------------------------------------------------------------- a tiny PDF writer

_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) & 255
        s[i], s[j] = s[j], s[i]
    i = j = 0
    out = bytearray()
    for byte in data:
        i = (i + 1) & 255
        j = (j + s[i]) & 255
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) & 255])
    return bytes(out)


def _rc4_r3_keys(user: bytes, owner: bytes, file_id: bytes) -> tuple[bytes, bytes, bytes]:
    """(O, U, file key) of the standard security handler, revision 3, 128-bit RC4."""
    n, permissions = 16, -4
    digest = hashlib.md5((owner + _PAD)[:32]).digest()
    for _ in range(50):
        digest = hashlib.md5(digest).digest()
    o_value = _rc4(digest[:n], (user + _PAD)[:32])
    for i in range(1, 20):
        o_value = _rc4(bytes(b ^ i for b in digest[:n]), o_value)
    digest = hashlib.md5(
        (user + _PAD)[:32] + o_value + struct.pack("<i", permissions) + file_id
    ).digest()
    for _ in range(50):
        digest = hashlib.md5(digest[:n]).digest()
    key = digest[:n]
    u_value = _rc4(key, hashlib.md5(_PAD + file_id).digest())
    for i in range(1, 20):
        u_value = _rc4(bytes(b ^ i for b in key), u_value)
    return o_value, u_value + bytes(16), key


def write_pdf(
    path: Path,
    pages: Sequence[tuple[float, float, int, bytes]],
    *,
    user_password: bytes | None = None,
    owner_password: bytes = b"owner",
    font: bool = False,
) -> Path:
    """Pages are (width pt, height pt, /Rotate, content stream); RC4-128 when a user password
    (possibly empty, for owner-only encryption) is given. ``font``: the pages may show
    text in Helvetica as ``/F1`` (a text layer, for pdftotext)."""
    helvetica = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    resources = b" /Resources << /Font << /F1 %s >> >>" % helvetica if font else b""
    file_id = hashlib.md5(path.name.encode()).digest()
    key = None
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    if user_password is not None:
        o_value, u_value, key = _rc4_r3_keys(user_password, owner_password, file_id)
    kids = []
    for width, height, rotate, content in pages:
        page_number = len(objects) + 1
        kids.append(f"{page_number} 0 R".encode())
        if key is not None:
            object_key = hashlib.md5(key + struct.pack("<i", page_number + 1)[:3] + b"\0\0")
            content = _rc4(object_key.digest()[:16], content)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %g %g] /Rotate %d%s /Contents %d 0 R >>"
            % (width, height, rotate, resources, page_number + 1)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    trailer = b"/Root 1 0 R /ID [<%s><%s>]" % (file_id.hex().encode(), file_id.hex().encode())
    if key is not None:
        objects.append(
            b"<< /Filter /Standard /V 2 /R 3 /Length 128 /P -4 /O <%s> /U <%s> >>"
            % (o_value.hex().encode(), u_value.hex().encode())
        )
        trailer += b" /Encrypt %d 0 R" % len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d %s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        trailer,
        xref,
    )
    path.write_bytes(bytes(out))
    return path


GREY_BOX = b"0.5 g 10 10 80 80 re f"


# --------------------------------------------------------------------------- process checks


def _wait_gone(needle: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (alive := _live_processes(needle)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _poppler_children() -> list[int]:
    """Our own child processes that are poppler runs (or their timeout wrapper)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            comm = (entry / "comm").read_text().strip()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and comm in ("pdfinfo", "pdftoppm", "timeout"):
            children.append(int(entry.name))
    return children


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


@pytest.fixture
def unique_copy(corpus: Path, tmp_path: Path) -> Any:
    """Copy a corpus file to a unique name under tmp_path, so process checks cannot
    confuse our poppler runs with another test run's on the same corpus file."""

    def copy(relative: str) -> Path:
        target = tmp_path / f"{os.getpid()}-{time.monotonic_ns()}-{Path(relative).name}"
        shutil.copyfile(corpus / relative, target)
        return target

    return copy


# --------------------------------------------------------------------------- sniffing and sizes


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"%PDF-1.7\n", "pdf"),
        (b"\xef\xbb\xbfjunk before the header %PDF-1.4", "pdf"),
        (b"\x89PNG\r\n\x1a\n....", "png"),
        (b"\xff\xd8\xff\xe0....", "jpeg"),
        (b"II*\x00....", "tiff"),
        (b"MM\x00*....", "tiff"),
        (b"PK\x03\x04....", "a ZIP archive"),
        (b"GIF89a..", "a GIF image"),
        (b"<!DOCTYPE html><html>", "an HTML page"),
        (b"hello world\n", "a text file"),
        (b"\x00\x01\x02\xfe\xff", "an unrecognised binary file"),
        (b"", "an empty file"),
    ],
)
def test_sniff_type(head: bytes, expected: str) -> None:
    assert sniff_type(head).startswith(expected)


def test_fit_dpi() -> None:
    a4 = (595.276, 841.89)
    assert fit_dpi(*a4, 150, 25_000_000) == 150
    huge = fit_dpi(8400, 8400, 150, 25_000_000)
    assert huge < 150
    assert _px(8400, huge) ** 2 <= 25_000_000 < _px(8400, huge + 1) ** 2  # the largest that fits
    strip = fit_dpi(14_400, 10, 600, 25_000_000)  # a long strip hits the JPEG side limit
    assert _px(14_400, strip) <= 65_000
    assert fit_dpi(0, 0, 150, 100_000) == 150  # unknown size: leave it to poppler
    assert fit_dpi(1, 1, 150, 100_000) == 150


# --------------------------------------------------------------------------- PDFs


def test_multipage_pdf_streams_every_page_upright_at_the_dpi(corpus: Path) -> None:
    renderer = _renderer(dpi=50, pages_per_chunk=3)
    plan = renderer.open(corpus / PAPER)
    assert (plan.kind, plan.total_pages, plan.page_count, plan.truncated) == ("pdf", 10, 10, False)
    pages = list(renderer.iter_pages(plan, document_id="d1", source="paper.pdf"))
    assert [p.page_number for p in pages if isinstance(p, Page)] == list(range(1, 11))
    for page in pages:
        assert isinstance(page, Page)
        assert (page.document_id, page.source, page.page_count, page.dpi) == (
            "d1",
            "paper.pdf",
            10,
            50,
        )
        assert (page.width, page.height) == (_px(595.276, 50), _px(841.89, 50))
        image = jpeg_to_image(page.jpeg)
        assert (image.mode, image.size) == ("RGB", (page.width, page.height))


def test_pages_are_rendered_lazily_chunk_by_chunk(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[list[str]] = []
    real = render_module._run_poppler

    def counting(argv: Sequence[str | bytes], *args: Any, **kwargs: Any) -> Any:
        runs.append([os.path.basename(os.fsdecode(argv[0]))])
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(render_module, "_run_poppler", counting)
    renderer = _renderer(dpi=36, pages_per_chunk=4)
    stream = renderer.render(corpus / PAPER, document_id="d", source="s")
    assert runs == [["pdfinfo"]]  # render() probes at once...
    first = next(stream)  # ...and renders one page range per pull
    assert first.page_number == 1
    assert runs == [["pdfinfo"], ["pdftoppm"]]
    if Path("/proc/self/stat").exists():
        assert _poppler_children() == []  # nothing runs while a page is handed out
    for _ in range(3):
        next(stream)
    assert len(runs) == 2
    assert next(stream).page_number == 5
    assert len(runs) == 3
    stream.close()  # abandoning the stream cleans the temp folder


def test_time_spent_by_the_consumer_does_not_count(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "three.pdf", [(100, 100, 0, GREY_BOX)] * 3)
    renderer = _renderer(timeout_s=1.0, pages_per_chunk=1)
    numbers = []
    for page in renderer.render(pdf, document_id="d", source="s"):
        numbers.append(page.page_number)
        time.sleep(0.6)  # a slow embedder: 1.8 s in total, more than the budget
    assert numbers == [1, 2, 3]


@pytest.mark.parametrize("name", ["rotation.pdf", "orientation.pdf", "inherited-rotate.pdf"])
def test_rotated_corpus_pages_come_out_as_a_reader_shows_them(
    corpus: Path, manifest: list[dict[str, str]], name: str
) -> None:
    """Poppler applies /Rotate (and an inherited one): 90/270 pages come out landscape."""
    row = next(r for r in manifest if r["path"].endswith("/" + name))
    assert row["category"] in ("rotated", "encrypted-owner-only")
    renderer = _renderer(dpi=36)
    plan = renderer.open(corpus / "robust" / row["path"])
    pages = _pages(renderer, corpus / "robust" / row["path"])
    assert any(p.rotation for p in plan.pages)
    for planned, page in zip(plan.pages, pages, strict=True):
        width, height = _px(planned.width_pt, 36), _px(planned.height_pt, 36)
        expected = (height, width) if planned.rotation in (90, 270) else (width, height)
        assert (page.width, page.height) == expected


def test_rotate_90_turns_the_page_clockwise(tmp_path: Path) -> None:
    # A black mark at the top-left of a landscape page with /Rotate 90: a reader turns the
    # page clockwise, so the page becomes portrait and the mark ends up top-right.
    mark = b"0 g 0 80 20 20 re f"  # x 0-20, y 80-100 (PDF y grows upwards)
    pdf = write_pdf(tmp_path / "rot.pdf", [(200, 100, 0, mark), (200, 100, 90, mark)])
    plain, turned = _pages(_renderer(dpi=72), pdf)
    assert (plain.width, plain.height) == (200, 100)
    assert (turned.width, turned.height) == (100, 200)
    img = jpeg_to_image(turned.jpeg).convert("L")
    assert _gray(img, 95, 5) < 64  # top-right: the mark
    for corner in [(5, 5), (5, 195), (95, 195)]:
        assert _gray(img, *corner) > 192


def test_crop_box_is_rendered_like_a_reader(corpus: Path) -> None:
    # MediaBox 612 x 792, CropBox 146.985 x 106.898: readers show the crop box.
    pages = _pages(_renderer(dpi=72), corpus / "robust/pdfjs/test/pdfs/annotation_hidden_print.pdf")
    assert [(p.width, p.height) for p in pages] == [(147, 107)]


def test_huge_page_is_rendered_at_a_lower_dpi_within_the_pixel_cap(corpus: Path) -> None:
    renderer = _renderer(max_page_pixels=1_000_000)
    start = time.monotonic()
    plan = renderer.open(corpus / HUGE)
    (page,) = list(renderer.iter_pages(plan, document_id="d", source="s"))
    elapsed = time.monotonic() - start
    assert isinstance(page, Page)
    assert plan.reduced_dpi_pages == (1,)
    assert page.dpi == plan.pages[0].dpi < 150
    assert page.width * page.height <= 1_000_000
    assert page.width == _px(8400, page.dpi)
    # Splash decodes the page's 35000x35000 CCITT image at any DPI (~5 s here), but the
    # bitmap, and so memory, stays small: 2.1 GB and 8 s at the full 150 DPI.
    assert elapsed < 30


def test_max_pages_truncate_and_refuse(corpus: Path) -> None:
    truncating = _renderer(dpi=36, max_pages=3)
    plan = truncating.open(corpus / PAPER)
    assert (plan.total_pages, plan.page_count, plan.truncated) == (10, 3, True)
    pages = list(truncating.iter_pages(plan, document_id="d", source="s"))
    assert [(p.page_number, p.page_count) for p in pages if isinstance(p, Page)] == [
        (1, 3),
        (2, 3),
        (3, 3),
    ]
    refusing = _renderer(dpi=36, max_pages=3, on_too_many_pages="refuse")
    with pytest.raises(TooManyPagesError, match=r"10 pages.*render\.max_pages=3") as info:
        refusing.open(corpus / PAPER)
    assert info.value.reason == "too_many_pages"


def test_file_size_limit(corpus: Path) -> None:
    with pytest.raises(FileTooLargeError, match=r"render\.max_file_mb"):
        _renderer(max_file_mb=0.5).open(corpus / PAPER)  # 1.6 MB


# --------------------------------------------------------------------------- bad inputs


def test_invalid_pdf_is_damaged(corpus: Path) -> None:
    # 44 bytes starting with "%PDF-1.3" and then prose: sniffed as PDF, poppler rejects it.
    with pytest.raises(DamagedFileError, match="xref") as info:
        _renderer().open(corpus / NOT_A_PDF)
    assert info.value.reason == "damaged"


def test_malformed_corpus_files_are_damaged(corpus: Path, manifest: list[dict[str, str]]) -> None:
    rows = [r for r in _category(manifest, "malformed") if r["pdftoppm_p1_rc"] == "1"]
    assert len(rows) >= 3
    renderer = _renderer(dpi=36)
    for row in rows:
        with pytest.raises(DamagedFileError):
            renderer.open(corpus / "robust" / row["path"])


THREE_BOXES = [(100, 100, 0, GREY_BOX)] * 3


def test_a_header_past_the_first_kilobyte_or_missing_is_read_like_poppler_does(
    tmp_path: Path,
) -> None:
    """poppler and pdf.js read a PDF whose %PDF- header is late or absent: so do we."""
    pdf = write_pdf(tmp_path / "plain.pdf", THREE_BOXES).read_bytes()
    header, body = pdf.split(b"\n", 1)
    assert header.startswith(b"%PDF-")
    files = {
        "whitespace.pdf": b" \r\n\t" * 400 + pdf,  # 1.6 KB of whitespace first
        "junk.pdf": bytes(range(1, 256)) * 5 + pdf,  # 1.3 KB of binary junk first
        "mail.pdf": b"Content-Type: application/pdf\n\n" + b"x" * 1100 + b"\n" + pdf,
        "no-header.pdf": body,
        "no-header.dat": body,  # the extension does not matter either
    }
    renderer = _renderer(dpi=36)
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert sniff_type(data[:1024]) != "pdf", name
        plan = renderer.open(path)
        assert (plan.kind, plan.page_count) == ("pdf", 3), name
        pages = _pages(renderer, path)
        assert [p.page_number for p in pages] == [1, 2, 3], name
        assert (pages[0].width, pages[0].height) == (50, 50), name


def test_a_pdf_poppler_cannot_read_is_damaged_with_repair_advice(
    tmp_path: Path, corpus: Path
) -> None:
    renderer = _renderer(dpi=36)
    cases = {
        "random.pdf": bytes((i * 37 + 11) % 251 + 1 for i in range(6000)),  # binary, no header
        "notes.pdf": b"just some text\n",  # the extension says PDF
        "late-header.dat": b"\x01" * 2000 + b"%PDF-1.7\n garbage, no objects",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    paths = [tmp_path / name for name in cases]
    # qpdf's fuzzed inspect.pdf: no header and nothing poppler can read.
    paths.append(corpus / "robust/qpdf/qpdf/qtest/qpdf/inspect.pdf")
    paths.append(corpus / NOT_A_PDF)  # a header, then prose
    for path in paths:
        with pytest.raises(DamagedFileError) as info:
            renderer.open(path)
        message = str(info.value)
        assert info.value.reason == "damaged"
        assert "unrecognised" not in message and "not a PDF" not in message, message
        assert "qpdf --replace-input" in message and str(path) in message, message
        assert "poppler cannot read it" in message, message


def test_other_file_types_are_unsupported_with_a_helpful_message(tmp_path: Path) -> None:
    renderer = _renderer()
    text = tmp_path / "notes.dat"  # named explicitly: the type is sniffed, poppler tried
    text.write_text("just some text\n", encoding="utf-8")
    with pytest.raises(UnsupportedFileError, match=r"a text file\. Supported: PDF, PNG, JPEG"):
        renderer.open(text)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(1, 256)) * 8)
    with pytest.raises(UnsupportedFileError, match=r"an unrecognised binary file\. Supported"):
        renderer.open(binary)
    docx = tmp_path / "report.docx"
    with zipfile.ZipFile(docx, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
    with pytest.raises(UnsupportedFileError, match=r"ZIP archive.*convert it to PDF"):
        renderer.open(docx)
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    with pytest.raises(UnsupportedFileError, match="empty"):
        renderer.open(empty)
    with pytest.raises(UnsupportedFileError, match="not a regular file"):
        renderer.open(tmp_path)
    with pytest.raises(InputError, match="not found"):
        renderer.open(tmp_path / "gone.pdf")


def test_missing_poppler_says_how_to_install_it(corpus: Path, tmp_path: Path) -> None:
    renderer = Renderer(RenderConfig(), poppler_path=tmp_path)
    with pytest.raises(PopplerNotInstalledError, match=r"apt-get install poppler-utils"):
        renderer.open(corpus / PAPER)


# --------------------------------------------------------------------------- passwords


def test_user_password_files_from_the_manifest(
    corpus: Path, manifest: list[dict[str, str]]
) -> None:
    renderer = _renderer(dpi=36, max_pages=1)
    rows = _category(manifest, "encrypted-user-pw")
    for row in rows:
        path = corpus / "robust" / row["path"]
        password = _known_password(row)
        assert password, f"no known password for {row['path']}"
        with pytest.raises(PasswordRequiredError, match=r"--password.*render\.passwords"):
            renderer.open(path)
        with pytest.raises(WrongPasswordError) as info:
            renderer.open(path, password="not-the-Password-42")
        assert "not-the-Password-42" not in str(info.value)
        (page,) = _pages(renderer, path, password=password)
        assert page.width > 0
        assert renderer.open(path, password=password).password is not None


def test_owner_password_also_opens_and_pdfium_bug_644(corpus: Path) -> None:
    renderer = _renderer(dpi=36, max_pages=1)
    qpdf = corpus / "robust/qpdf/qpdf/qtest/qpdf/enc-R2,V1,U=view,O=master.pdf"
    assert len(_pages(renderer, qpdf, password="master")) == 1
    bug_644 = corpus / "robust/pdfium/testing/resources/bug_644.pdf"  # owner 'a', user 'b'
    assert len(_pages(renderer, bug_644, password="a")) == 1
    assert len(_pages(renderer, bug_644, password="b")) == 1
    with pytest.raises(WrongPasswordError):
        renderer.open(bug_644, password="tiger")


def test_owner_only_files_render_without_and_despite_a_password(
    corpus: Path, manifest: list[dict[str, str]]
) -> None:
    renderer = _renderer(dpi=36)
    paths = [corpus / "robust" / r["path"] for r in _category(manifest, "encrypted-owner-only")]
    paths.append(corpus / "robust/qpdf/qpdf/qtest/qpdf/enc-R2,V1,O=master.pdf")
    for path in paths:
        plan = renderer.open(path)
        assert plan.password is None
        assert len(_pages(renderer, path)) == plan.page_count > 0
        # poppler refuses an owner-only file when handed a wrong user password;
        # a CLI-wide --password must not break these files.
        assert len(_pages(renderer, path, password="some-default")) == plan.page_count


def test_non_ascii_passwords(tmp_path: Path) -> None:
    password = "Grüße€"
    utf8 = write_pdf(
        tmp_path / "aes-style.pdf",
        [(100, 100, 0, GREY_BOX)],
        user_password=password.encode("utf-8"),
    )
    # RC4/AES-128 handlers take PDFDocEncoding bytes: ü=FC, ß=DF, €=A0.
    pdfdoc = write_pdf(
        tmp_path / "acrobat-style.pdf",
        [(100, 100, 0, GREY_BOX)],
        user_password=b"Gr\xfc\xdfe\xa0",
    )
    renderer = _renderer(dpi=36)
    for pdf in (utf8, pdfdoc):
        with pytest.raises(PasswordRequiredError):
            renderer.open(pdf)
        with pytest.raises(WrongPasswordError):
            renderer.open(pdf, password="Grusse€")
        (page,) = _pages(renderer, pdf, password=password)
        assert (page.width, page.height) == (50, 50)
    decomposed = "Gru\u0308ße€"  # the same password typed with a combining umlaut
    assert len(_pages(renderer, utf8, password=decomposed)) == 1


@pytest.mark.parametrize(
    ("typed", "prepared"),
    [
        # RFC 4013 section 3's examples
        ("I\u00adX", "IX"),  # soft hyphen mapped to nothing
        ("user", "user"),
        ("USER", "USER"),  # case is kept
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),  # ROMAN NUMERAL NINE, NFKC
        # non-ASCII spaces become U+0020; zero-width and variation selectors vanish
        ("a\u00a0b\u3000c", "a b c"),
        ("pa\u200dss\ufe0fword\u2060", "password"),
        ("Gru\u0308\u00dfe", "Gr\u00fc\u00dfe"),  # composed
        ("\u05d0\u05d1", "\u05d0\u05d1"),  # right-to-left only: allowed
    ],
)
def test_saslprep(typed: str, prepared: str) -> None:
    assert saslprep(typed) == prepared


@pytest.mark.parametrize(
    "bad",
    [
        "\u0007",  # RFC 4013 section 3: control character
        "a\tb",  # ASCII control
        "\ue000",  # private use
        "\u0627\u0031",  # RFC 4013 section 3: RandALCat not at both ends
        "\u05d0a\u05d1",  # right-to-left and left-to-right mixed
        "\ud800",  # surrogate
    ],
)
def test_saslprep_refuses_prohibited_strings(bad: str) -> None:
    with pytest.raises(SASLprepError):
        saslprep(bad)


needs_qpdf = pytest.mark.skipif(
    shutil.which("qpdf") is None,
    reason="qpdf is not installed (scripts/setup.sh --dev installs it: apt-get install qpdf)",
)


def _qpdf_encrypt_r6(plain: Path, out: Path, user: str, owner: str) -> Path:
    """AES-256 (R6) with passwords stored exactly as given: qpdf 11 does no SASLprep."""
    subprocess.run(
        ["qpdf", "--encrypt", user, owner, "256", "--", str(plain), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def _poppler_opens(path: Path, password: str) -> bool:
    run = subprocess.run(
        ["pdfinfo", "-upw", password, "-opw", password, str(path)], capture_output=True
    )
    return run.returncode == 0


@needs_qpdf
def test_aes256_passwords_are_prepared_with_saslprep(tmp_path: Path) -> None:
    """PDF 2.0 (ISO 32000-2 7.6.4.3.3): R6 passwords are SASLprep'd, then UTF-8.

    A reader that follows the spec (Acrobat) stores the *prepared* password, so the
    user types the password as they chose it and it must still open. poppler 22.12
    hashes the bytes it is given, without SASLprep: checked here first.
    """
    plain = write_pdf(tmp_path / "plain.pdf", [(100, 100, 0, GREY_BOX)])
    typed_user = "pa\u00adss\u00aaw\u00f6rd\u2003!"  # soft hyphen, ª, ö, EM SPACE
    typed_owner = "O\u00adwn\u00aa"
    user, owner = "passaw\u00f6rd !", "Owna"  # what SASLprep makes of them
    prepared = _qpdf_encrypt_r6(plain, tmp_path / "r6-prepared.pdf", user, owner)
    assert _poppler_opens(prepared, user)
    assert not _poppler_opens(prepared, typed_user)  # poppler does no SASLprep itself
    renderer = _renderer(dpi=36)
    for typed in (typed_user, typed_owner, user):
        plan = renderer.open(prepared, password=typed)
        assert plan.password is not None
        (page,) = _pages(renderer, prepared, password=typed)
        assert (page.width, page.height) == (50, 50)
    with pytest.raises(WrongPasswordError):
        renderer.open(prepared, password="pa\u00adss")

    # A tool without SASLprep (qpdf) stores the typed bytes: the password as given opens it.
    raw = _qpdf_encrypt_r6(plain, tmp_path / "r6-raw.pdf", typed_user, "owner")
    assert len(_pages(renderer, raw, password=typed_user)) == 1


@needs_qpdf
def test_a_password_longer_than_poppler_reads_is_explained(tmp_path: Path) -> None:
    """poppler's tools keep the first 32 bytes of -upw/-opw; AES-256 uses up to 127."""
    plain = write_pdf(tmp_path / "plain.pdf", [(100, 100, 0, GREY_BOX)])
    long_password = "correct horse battery staple, 2024!"  # 35 bytes
    pdf = _qpdf_encrypt_r6(plain, tmp_path / "long.pdf", long_password, "o")
    with pytest.raises(WrongPasswordError, match="32 bytes") as info:
        _renderer().open(pdf, password=long_password)
    assert long_password not in str(info.value)
    assert "qpdf --decrypt" in str(info.value)


def test_unencrypted_file_ignores_a_password_without_extra_work(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []
    real = render_module._run_poppler

    def counting(argv: Sequence[str | bytes], *args: Any, **kwargs: Any) -> Any:
        runs.append(os.path.basename(os.fsdecode(argv[0])))
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(render_module, "_run_poppler", counting)
    plan = _renderer(dpi=36).open(corpus / PAPER, password="unused")
    assert (runs, plan.password) == (["pdfinfo"], None)


def test_plan_is_picklable_and_hides_the_password(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "p.pdf", [(100, 100, 0, GREY_BOX)], user_password=b"hunter2")
    plan = _renderer().open(pdf, password="hunter2")
    assert "hunter2" not in repr(plan)
    assert pickle.loads(pickle.dumps(plan)) == plan


# --------------------------------------------------------------------------- per-page failures


@pytest.fixture
def flaky_poppler(tmp_path: Path) -> Path:
    """A poppler folder whose pdftoppm drops page 2 and fails, like a crash on that page."""
    folder = tmp_path / "poppler"
    folder.mkdir()
    (folder / "pdfinfo").symlink_to(shutil.which("pdfinfo") or "pdfinfo")
    script = folder / "pdftoppm"
    script.write_text(
        "#!/bin/sh\n"
        f'"{shutil.which("pdftoppm")}" "$@"\n'
        "for last; do :; done\n"
        'if [ -e "$last-02.jpg" ]; then\n'
        '  rm -f "$last-02.jpg"\n'
        '  echo "Syntax Error: simulated broken page 2" >&2\n'
        "  exit 1\n"
        "fi\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return folder


def test_a_failing_page_is_reported_and_the_others_render(
    corpus: Path, flaky_poppler: Path
) -> None:
    renderer = Renderer(RenderConfig(dpi=36, max_pages=4), poppler_path=flaky_poppler)
    plan = renderer.open(corpus / PAPER)
    items = list(renderer.iter_pages(plan, document_id="d", source="s"))
    assert [type(i).__name__ for i in items] == ["Page", "PageFailure", "Page", "Page"]
    failure = items[1]
    assert isinstance(failure, PageFailure)
    assert failure.page_number == failure.error.page == 2
    assert isinstance(failure.error, DamagedFileError)
    assert "simulated broken page 2" in str(failure.error)
    # The strict form raises it, after the pages before it.
    stream = renderer.render(corpus / PAPER, document_id="d", source="s")
    assert next(stream).page_number == 1
    with pytest.raises(DamagedFileError) as info:
        next(stream)
    assert info.value.page == 2


# --------------------------------------------------------------------------- timeouts


@needs_proc
def test_looping_file_times_out_while_opening_and_leaves_no_process(unique_copy: Any) -> None:
    looping = unique_copy(LOOPING)
    start = time.monotonic()
    with pytest.raises(RenderTimeoutError, match=r"render\.timeout_s=3") as info:
        _renderer(timeout_s=3).open(looping)
    elapsed = time.monotonic() - start
    assert 2.9 < elapsed < 5.0
    assert info.value.page is None
    assert info.value.reason == "timeout"
    assert _wait_gone(looping.name, 1.0) == []


@needs_proc
def test_slow_page_times_out_at_the_page_reached_and_leaves_no_process(
    unique_copy: Any,
) -> None:
    bomb = unique_copy(BOMB)  # pdfinfo is quick; page 1 takes > 30 s to render uncapped
    renderer = _renderer(timeout_s=2, dpi=72, max_poppler_mb=None)
    plan = renderer.open(bomb)
    start = time.monotonic()
    with pytest.raises(RenderTimeoutError) as info:
        list(renderer.iter_pages(plan, document_id="d", source="s"))
    assert time.monotonic() - start < 4.0
    assert info.value.page == 1
    assert "page 1 of 1" in str(info.value)
    assert _wait_gone(bomb.name, 1.0) == []


@needs_proc
@pytest.mark.skipif(shutil.which("timeout") is None, reason="coreutils timeout not installed")
def test_poppler_dies_even_when_the_job_is_killed(unique_copy: Any) -> None:
    """SIGKILL leaves no chance to clean up: the timeout wrapper still ends poppler."""
    looping = unique_copy(LOOPING)
    code = (  # the path goes by environment: a match on the job's own command line would lie
        "import os\n"
        "from pipeline.config import RenderConfig\n"
        "from pipeline.ingest.render import Renderer\n"
        "Renderer(RenderConfig(timeout_s=2)).open(os.environ['RENDER_TEST_PDF'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "RENDER_TEST_PDF": str(looping)}
    job = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 10
        while not _live_processes(looping.name) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _live_processes(looping.name), "pdfinfo never started"
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert _live_processes(looping.name)  # orphaned, still looping...
    assert _wait_gone(looping.name, 7.0) == []  # ...until the wrapper's deadline (2 s + 2 s)


# --------------------------------------------------------------------------- image files


def _gray(image: Image.Image, x: int, y: int) -> int:
    value = image.getpixel((x, y))
    assert isinstance(value, int)
    return value


def _image_bytes(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_png_is_one_page_with_transparency_over_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (0, 0, 50, 50))
    path = tmp_path / "logo.png"
    path.write_bytes(_image_bytes(image, "PNG", dpi=(144, 144)))
    renderer = _renderer()
    plan = renderer.open(path)
    assert (plan.kind, plan.image_format, plan.total_pages) == ("image", "PNG", 1)
    (page,) = _pages(renderer, path)
    assert (page.page_number, page.page_count, page.width, page.height) == (1, 1, 300, 200)
    assert page.dpi == 144
    decoded = jpeg_to_image(page.jpeg)
    red, green, blue = decoded.getpixel((250, 150))  # type: ignore[misc]
    assert min(red, green, blue) > 240  # transparent -> white, not black
    assert decoded.getpixel((10, 10))[0] > 150  # type: ignore[index]


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (300, 200), "white")
    image.paste((0, 0, 0), (0, 0, 40, 40))  # mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "phone.jpg"
    path.write_bytes(_image_bytes(image, "JPEG", exif=exif, quality=95))
    (page,) = _pages(_renderer(), path)
    assert (page.width, page.height) == (200, 300)
    upright = jpeg_to_image(page.jpeg).convert("L")
    assert _gray(upright, 190, 10) < 64  # the mark is now top-right
    assert _gray(upright, 10, 10) > 192


def test_big_image_is_downscaled_to_the_pixel_cap(tmp_path: Path) -> None:
    image = Image.new("RGB", (4000, 3000), (30, 90, 150))
    path = tmp_path / "scan.jpg"
    path.write_bytes(_image_bytes(image, "JPEG", dpi=(300, 300)))
    (page,) = _pages(_renderer(max_page_pixels=1_000_000), path)
    assert page.width * page.height <= 1_000_000
    assert abs(page.width / page.height - 4 / 3) < 0.01
    assert page.dpi == round(300 * (page.width * page.height / 12_000_000) ** 0.5)


def test_multiframe_tiff_pages_and_16_bit_gray(tmp_path: Path) -> None:
    frames = [
        Image.new("I;16", (120, 80), 32768),  # 16-bit mid-gray
        Image.new("L", (60, 90), 10),
        Image.new("1", (40, 40), 1),
    ]
    path = tmp_path / "fax.tiff"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    renderer = _renderer()
    plan = renderer.open(path)
    assert (plan.image_format, plan.total_pages) == ("TIFF", 3)
    pages = _pages(renderer, path)
    assert [(p.page_number, p.width, p.height) for p in pages] == [
        (1, 120, 80),
        (2, 60, 90),
        (3, 40, 40),
    ]
    gray = jpeg_to_image(pages[0].jpeg).getpixel((60, 40))
    assert 120 < gray[0] < 136  # type: ignore[index]
    truncated = _renderer(max_pages=2).open(path)
    assert (truncated.page_count, truncated.total_pages, truncated.truncated) == (2, 3, True)


def test_damaged_image_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    path.write_bytes(_image_bytes(Image.new("RGB", (50, 50)), "PNG")[:30])
    renderer = _renderer()
    with pytest.raises(DamagedFileError):
        _pages(renderer, path)


# --------------------------------------------------------------------------- the whole manifest


@pytest.mark.slow
def test_manifest_sweep_page_one(corpus: Path, manifest: list[dict[str, str]]) -> None:
    """Every robust/ file, page 1 at 36 DPI: our outcome agrees with pdftoppm's exit code.

    rc 0 (and the five ``.Pdf`` files the manifest left blank) → a page; rc 1 → a typed
    open error, or a page when the password is known; rc 124 → timeout; rc 99 → damaged.
    No file may take longer than the timeout plus a margin.
    """
    timeout = 10.0
    renderer = _renderer(dpi=36, max_pages=1, timeout_s=timeout)
    expected_errors = {
        "1": (DamagedFileError, PasswordRequiredError, UnsupportedFileError),
        "124": (RenderTimeoutError,),
        "99": (DamagedFileError,),
    }
    mismatches = []
    for row in manifest:
        path = corpus / "robust" / row["path"]
        password = _known_password(row)
        start = time.monotonic()
        outcome: object
        try:
            plan = renderer.open(path, password=password)
            outcome = next(iter(renderer.iter_pages(plan, document_id="d", source="s")))
        except InputError as exc:
            outcome = exc
        elapsed = time.monotonic() - start
        rc = row["pdftoppm_p1_rc"] or "0"
        if rc == "0" or (rc == "1" and password):
            ok = isinstance(outcome, Page)
        else:
            wanted = expected_errors[rc]
            ok = isinstance(outcome, wanted) or (
                isinstance(outcome, PageFailure) and isinstance(outcome.error, wanted)
            )
        if not ok or elapsed > timeout + 3:
            mismatches.append(f"{row['path']} rc={rc} -> {outcome!r} in {elapsed:.1f}s")
    assert mismatches == []


@needs_proc
def test_a_resource_bomb_hits_the_poppler_memory_cap_instead_of_the_machine(
    unique_copy: Any, corpus: Path
) -> None:
    """bomb_giant.pdf grows pdftoppm to 2.4 GB uncapped; capped, it fails fast and typed."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed: poppler memory is not capped")
    bomb = unique_copy(BOMB)
    renderer = _renderer(timeout_s=20, dpi=72, max_poppler_mb=512)
    plan = renderer.open(bomb)
    start = time.monotonic()
    items = list(renderer.iter_pages(plan, document_id="d", source="s"))
    assert time.monotonic() - start < 10
    assert all(isinstance(item, (Page, PageFailure)) for item in items)
    assert _wait_gone(bomb.name, 1.0) == []
