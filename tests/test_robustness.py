"""The ingestion job over real-world bad input: ../shared/corpus/robust and its manifest.

One job (``PageRAG(config, embedder=FakeEmbedder())``, embedded store) ingests
a deterministic sample of ``robust/MANIFEST.tsv`` in a child process, so its
peak memory and poppler's can be measured apart from pytest's. The sample
(``sample_rows``) is:

* every hand-picked row (the ``category`` column: malformed, hang,
  resource-bomb, huge-page, encrypted-*, rotated, ...);
* every encrypted file (``ENCRYPTED_USER`` and ``OWNER_ONLY``, found with
  ``pdfinfo``: "Incorrect password" / "Encrypted: yes" yet it opens);
* every file above the sweep's ``render.max_file_mb`` (``too_large``);
* per ``pdftoppm_p1_rc`` value, the first ``PER_RC[rc]`` other rows ordered
  by the sha256 of their path: a fixed pseudo-random stratified sample.

``test_full_manifest_sweep`` (``-m slow``) runs the same checks on all 679.

What is asserted: the job finishes; every file has exactly one outcome; no
file takes longer than the render timeout plus a stated margin; the job
process and its poppler children stay under stated memory bounds; outcomes
agree with ``pdftoppm_p1_rc`` where it is decisive; encrypted files with a
known password ingest, owner-only ones ingest with none; the store holds each
page once and a mark only for documents whose pages are all there.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import clirun
from tests.test_render import GREY_BOX, write_pdf

pytestmark = pytest.mark.skipif(
    shutil.which("pdftoppm") is None or shutil.which("pdfinfo") is None,
    reason="poppler-utils is not installed (apt-get install poppler-utils)",
)

# The sweep's limits. Low DPI and two pages per file bound the time; the pixel
# cap is low enough that the huge-page files are rendered below SWEEP_DPI.
SWEEP_DPI = 50
SWEEP_MAX_PAGES = 2
SWEEP_TIMEOUT_S = 6.0
SWEEP_MAX_PIXELS = 2_000_000
SWEEP_MAX_FILE_MB = 2.0
SWEEP_RENDER: dict[str, Any] = {
    "dpi": SWEEP_DPI,
    "max_pages": SWEEP_MAX_PAGES,
    "on_too_many_pages": "truncate",
    "timeout_s": SWEEP_TIMEOUT_S,
    "max_page_pixels": SWEEP_MAX_PIXELS,
    "max_file_mb": SWEEP_MAX_FILE_MB,
    "workers": 2,
}
# FileOutcome.seconds is wall time from the file's first poppler run to its
# completion mark, so besides poppler it includes waiting for the embedder and
# the store behind other files' pages (queue_pages=16 pages). A file that hits
# the limit costs the timeout plus the probe and the kill (< 2 s).
TIME_MARGIN_S = 8.0
TIMEOUT_MARGIN_S = 3.0
# Peak resident memory. The job process (Python, numpy, the embedded engine)
# measured ~430 MB on the whole manifest. Poppler is not capped: pdf.js's
# bomb_giant.pdf makes pdftoppm grow to ~2.4 GB within 3 s, before the timeout
# (see docs/robustness.md); every other file stays under 250 MB.
JOB_RSS_BOUND_MB = 1024
POPPLER_RSS_BOUND_MB = 3072

PER_RC = {"0": 14, "1": 6, "99": 4, "124": 2, "": 2}

# Encrypted with a user password (pdfinfo: "Incorrect password" without one).
ENCRYPTED_USER = (
    "qpdf/qpdf/qtest/qpdf/enc-R2,V1,U=view,O=master.pdf",
    "qpdf/qpdf/qtest/qpdf/enc-R2,V1,U=view,O=view.pdf",
    "poppler-test/unittestcases/PasswordEncrypted.pdf",
    "pdfium/testing/resources/bug_644.pdf",
    "pdfium/testing/resources/encrypted_hello_world_r3.pdf",
    "pdfium/testing/resources/encrypted_hello_world_r6.pdf",
    "pdfium/testing/resources/encrypted_hello_world_r2_bad_okey.pdf",
    "pdfium/testing/resources/encrypted_hello_world_r3_bad_okey.pdf",
    "poppler-test/unittestcases/encrypted-256.pdf",
    "pdfjs/test/pdfs/print_protection.pdf",
    "qpdf/qpdf/qtest/qpdf/bad-encryption-length.pdf",
    "qpdf/qpdf/qtest/qpdf/job-json-encrypt-128.pdf",
    "qpdf/qpdf/qtest/qpdf/pages-copy-encryption.pdf",
)
# Encrypted with an owner password only (pdfinfo: "Encrypted: yes", opens without one).
OWNER_ONLY = (
    "pdfjs/test/pdfs/bug1815476.pdf",
    "pdfjs/test/pdfs/issue7665.pdf",
    "pdfjs/test/pdfs/issue9972-2.pdf",
    "pdfjs/test/pdfs/issue9972-3.pdf",
    "qpdf/qpdf/qtest/qpdf/copied-positive-P.pdf",
    "qpdf/qpdf/qtest/qpdf/enc-R2,V1,O=master.pdf",
    "qpdf/qpdf/qtest/qpdf/encrypted-positive-P.pdf",
    "qpdf/qpdf/qtest/qpdf/leading-junk.pdf",
    "poppler-test/unittestcases/orientation.pdf",
)
# Passwords the manifest does not list: pdfium's non-ASCII test password opens
# these as the user password (checked with pdfinfo -upw): RC4 takes it in
# PDFDocEncoding (Latin-1 bytes), AES-256 in UTF-8.
EXTRA_PASSWORDS = {
    "pdfium/testing/resources/encrypted_hello_world_r3.pdf": "hôtel",
    "pdfium/testing/resources/encrypted_hello_world_r6.pdf": "hôtel",
}
# Given a wrong password on purpose, to see wrong_password in a job.
WRONG_PASSWORDS = {"qpdf/qpdf/qtest/qpdf/pages-copy-encryption.pdf": "not-the-password"}
# Documented exceptions to "rc 0 -> ingested": (allowed (status, reason) pairs, why).
EXCEPTIONS: dict[str, tuple[set[tuple[str, str | None]], str]] = {
    "ocrmypdf/tests/resources/hugemono.pdf": (
        {("ingested", None), ("failed", "timeout")},
        "poppler needs ~8 s for its 8400x8400 pt page at any DPI: over the sweep's 6 s",
    ),
}
OPEN_FAILURES = {"damaged", "needs_password", "wrong_password", "unsupported"}


@dataclass(frozen=True)
class Row:
    path: str
    bytes: int
    rc: str
    category: str
    password_note: str

    @property
    def password(self) -> str | None:
        """The password the sweep configures for this file, if any."""
        if self.path in WRONG_PASSWORDS:
            return WRONG_PASSWORDS[self.path]
        if self.path in EXTRA_PASSWORDS:
            return EXTRA_PASSWORDS[self.path]
        if self.password_note and "owner only" not in self.password_note:
            return self.password_note.split()[0]
        match = re.search(r"U=([^,]+?)(?:,|\.pdf$)", self.path)  # qpdf's enc-* names
        return match.group(1) if match else None

    @property
    def opens_with_password(self) -> bool:
        return self.password is not None and self.path not in WRONG_PASSWORDS


def load_manifest(corpus: Path) -> list[Row]:
    with open(corpus / "robust" / "MANIFEST.tsv", encoding="utf-8", newline="") as handle:
        return [
            Row(r["path"], int(r["bytes"]), r["pdftoppm_p1_rc"], r["category"], r["password"])
            for r in csv.DictReader(handle, delimiter="\t")
        ]


def sample_rows(manifest: list[Row]) -> list[Row]:
    """The default sweep's files, in manifest order (see the module docstring)."""
    limit = SWEEP_MAX_FILE_MB * 2**20
    chosen = {
        row.path
        for row in manifest
        if row.category or row.path in ENCRYPTED_USER or row.path in OWNER_ONLY or row.bytes > limit
    }
    strata: dict[str, list[Row]] = defaultdict(list)
    for row in manifest:
        strata[row.rc].append(row)
    for rc, rows in strata.items():
        rows.sort(key=lambda r: hashlib.sha256(r.path.encode()).hexdigest())
        extra = [r.path for r in rows if r.path not in chosen][: PER_RC[rc]]
        chosen.update(extra)
    return [row for row in manifest if row.path in chosen]


def expected(row: Row) -> tuple[set[str], set[str | None]] | None:
    """Allowed statuses and reasons for a row, or None when the manifest is not decisive."""
    if row.path in EXCEPTIONS:
        return None  # checked against EXCEPTIONS
    if row.bytes > SWEEP_MAX_FILE_MB * 2**20:
        return {"failed"}, {"too_large"}
    if row.path in WRONG_PASSWORDS:
        return {"failed"}, {"wrong_password"}
    ok_reasons: set[str | None] = {None, "truncated", "page_errors"}
    if row.rc in ("0", "") or (row.rc == "1" and row.opens_with_password):
        return {"ingested", "partial"}, ok_reasons
    if row.rc == "1" and row.path in ENCRYPTED_USER:
        return {"failed"}, {"needs_password"}
    if row.rc == "1":
        return {"failed"}, set(OPEN_FAILURES)
    if row.rc == "99":  # pdftoppm found no page 1: zero pages or an unreadable page tree
        return {"failed"}, {"damaged"}
    if row.rc == "124":  # still running after 30 s: our timeout, or faster at a low DPI
        return {"failed", "ingested", "partial"}, {"timeout", *ok_reasons}
    raise AssertionError(f"unknown pdftoppm_p1_rc {row.rc!r} for {row.path}")


# --------------------------------------------------------------------------- the job


# Runs in a child process: reads the sweep spec on stdin, prints the report, the
# peak memory of itself and of its (poppler) children, and what the store holds.
DRIVER = r"""
import json, resource, sys, time
import qdrant_edge as qe
from pipeline import PageRAG
from pipeline.config import load_config
from pipeline.testing.fakes import FakeEmbedder

spec = json.load(sys.stdin)
config = load_config(environ={}, overrides=spec["overrides"])
started = time.monotonic()
with PageRAG(config, embedder=FakeEmbedder()) as rag:
    report = rag.ingest(spec["files"])
wall = time.monotonic() - started
shard = qe.EdgeShard.load(str(config.store.path / config.store.collection), None)
points, offset = [], None
try:
    while True:
        request = qe.ScrollRequest(
            offset=offset, limit=256, filter=None,
            with_payload=qe.PayloadSelector.Exclude(["image_jpeg_b64"]), with_vector=False,
        )
        records, offset = shard.scroll(request)
        points += [{"id": str(r.id), **{k: v for k, v in (r.payload or {}).items()
                    if k in ("kind", "document_id", "source", "page", "page_count",
                             "width", "height", "dpi")}} for r in records]
        if offset is None:
            break
finally:
    shard.close()
json.dump({
    "report": report.to_dict(),
    "wall_seconds": wall,
    "points": points,
    # VmHWM, not RUSAGE_SELF: Linux carries a forking parent's peak across exec into
    # ru_maxrss, so a job started from a big pytest process would report pytest's size.
    "job_maxrss_kb": int(next(line.split()[1] for line in open("/proc/self/status")
                              if line.startswith("VmHWM:"))),
    "poppler_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
}, sys.stdout)
"""


@dataclass
class Sweep:
    rows: list[Row]
    root: Path
    report: dict[str, Any]
    points: list[dict[str, Any]]
    wall_seconds: float
    job_rss_mb: float
    poppler_rss_mb: float

    def outcomes_by_row(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        prefix = str(self.root) + os.sep
        for outcome in self.report["outcomes"]:
            found[outcome["path"].removeprefix(prefix)].append(outcome)
        return found


def run_sweep(corpus: Path, rows: list[Row], data: Path, *, hard_timeout: float) -> Sweep:
    root = (corpus / "robust").resolve()
    passwords = {str(root / r.path): r.password for r in rows if r.password is not None}
    spec = {
        "files": [str(root / r.path) for r in rows],
        "overrides": {
            "store": {"path": str(data)},
            "render": {**SWEEP_RENDER, "passwords": passwords},
        },
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=clirun.REPO,
        env=clirun.process_env({}),
        timeout=hard_timeout,  # "the job finishes"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    return Sweep(
        rows=rows,
        root=root,
        report=out["report"],
        points=out["points"],
        wall_seconds=out["wall_seconds"],
        job_rss_mb=out["job_maxrss_kb"] / 1024,
        poppler_rss_mb=out["poppler_maxrss_kb"] / 1024,
    )


def sweep_problems(sweep: Sweep) -> list[str]:
    """Every way the sweep disagrees with the manifest or the stated bounds."""
    problems: list[str] = []
    outcomes = sweep.outcomes_by_row()
    timeout = SWEEP_TIMEOUT_S
    # Files with the same bytes (the corpus has four such pairs) share a document id.
    twins: dict[str, set[str]] = defaultdict(set)
    for path, found in outcomes.items():
        for o in found:
            if o["document_id"]:
                twins[o["document_id"]].add(path)
    for row in sweep.rows:
        found = outcomes.get(row.path, [])
        if len(found) != 1:
            problems.append(f"{row.path}: {len(found)} outcomes")
            continue
        (o,) = found
        got = f"{o['status']}/{o['reason']} ({(o['message'] or '')[:160]})"
        limit = timeout + (TIMEOUT_MARGIN_S if o["reason"] == "timeout" else TIME_MARGIN_S)
        if o["seconds"] > limit:
            problems.append(f"{row.path}: took {o['seconds']:.1f} s > {limit:g} s: {got}")
        if row.path in EXCEPTIONS:
            allowed, _why = EXCEPTIONS[row.path]
            if (o["status"], o["reason"]) not in allowed:
                problems.append(f"{row.path} (documented exception): {got}")
            continue
        rule = expected(row)
        assert rule is not None
        statuses, reasons = rule
        twin = twins.get(o["document_id"], set()) - {row.path}
        if twin and (o["status"], o["reason"]) == ("skipped", "duplicate"):
            continue  # the same bytes under another name in this job: ingested once
        if o["status"] not in statuses or o["reason"] not in reasons:
            problems.append(
                f"{row.path} rc={row.rc!r}: expected {sorted(statuses)} {reasons}, {got}"
            )
        if o["status"] in ("ingested", "partial") and o["pages"] < 1:
            problems.append(f"{row.path}: {o['status']} with no page")
    if len(sweep.report["outcomes"]) != len(sweep.rows):
        problems.append(f"{len(sweep.report['outcomes'])} outcomes for {len(sweep.rows)} files")
    problems += store_problems(sweep)
    return problems


def store_problems(sweep: Sweep) -> list[str]:
    """The store after the job: each page once, marks only over complete page sets."""
    problems: list[str] = []
    pages: dict[str, list[int]] = defaultdict(list)
    marks: dict[str, dict[str, Any]] = {}
    cap = SWEEP_MAX_PIXELS
    for point in sweep.points:
        if point["kind"] == "page":
            pages[point["document_id"]].append(point["page"])
            if point["dpi"] > SWEEP_DPI or point["width"] * point["height"] > cap:
                problems.append(f"page over the limits: {point}")
        elif point["kind"] == "document":
            marks[point["document_id"]] = point
    for doc, numbers in pages.items():
        if len(numbers) != len(set(numbers)):
            problems.append(f"document {doc[:12]} has duplicate pages {sorted(numbers)}")
        if doc not in marks:
            problems.append(f"document {doc[:12]} has pages but no completion mark")
    for doc, mark in marks.items():
        if len(pages.get(doc, [])) != mark["page_count"]:
            problems.append(
                f"{mark['source']}: marked complete with {mark['page_count']} pages but "
                f"{len(pages.get(doc, []))} stored"
            )
    done = {o["document_id"] for o in sweep.report["outcomes"] if o["status"] != "failed"}
    if set(marks) != done:
        problems.append(f"marks and ingested outcomes differ: {set(marks) ^ done}")
    return problems


def sweep_summary(sweep: Sweep) -> str:
    by_reason = Counter(
        f"{o['status']}/{o['reason'] or '-'}" for o in sweep.report["outcomes"]
    ).most_common()
    slowest = max(sweep.report["outcomes"], key=lambda o: o["seconds"])
    return (
        f"{len(sweep.rows)} files in {sweep.wall_seconds:.1f} s, "
        f"{sweep.report['pages_ingested']} pages; {by_reason}; slowest "
        f"{slowest['seconds']:.1f} s ({Path(slowest['path']).name}); peak RSS job "
        f"{sweep.job_rss_mb:.0f} MB, poppler {sweep.poppler_rss_mb:.0f} MB"
    )


@pytest.fixture(scope="module")
def manifest(corpus: Path) -> list[Row]:
    return load_manifest(corpus)


@pytest.fixture(scope="module")
def sweep(corpus: Path, manifest: list[Row], tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    rows = sample_rows(manifest)
    result = run_sweep(corpus, rows, tmp_path_factory.mktemp("sweep") / "data", hard_timeout=240)
    print(sweep_summary(result))  # shown with -s / -rA: the numbers docs/robustness.md quotes
    return result


# --------------------------------------------------------------------------- the sample


def test_sample_is_deterministic_and_covers_every_stratum(manifest: list[Row]) -> None:
    rows = sample_rows(manifest)
    paths = {r.path for r in rows}
    assert {r.path for r in sample_rows(list(reversed(manifest)))} == paths  # order-free
    assert {r.path for r in manifest if r.category} <= paths
    assert set(ENCRYPTED_USER) | set(OWNER_ONLY) <= paths
    assert set(EXTRA_PASSWORDS) | set(WRONG_PASSWORDS) | set(EXCEPTIONS) <= paths
    rcs = Counter(r.rc for r in rows)
    assert set(rcs) == {"0", "1", "99", "124", ""}
    assert 60 <= len(rows) <= 90, len(rows)


def test_every_file_has_exactly_one_outcome_and_the_job_finished(sweep: Sweep) -> None:
    assert not sweep.report["interrupted"]
    paths = [o["path"] for o in sweep.report["outcomes"]]
    assert len(paths) == len(set(paths)) == len(sweep.rows)
    assert set(sweep.outcomes_by_row()) == {r.path for r in sweep.rows}


def test_outcomes_agree_with_the_manifest(sweep: Sweep) -> None:
    assert sweep_problems(sweep) == [], sweep_summary(sweep)


def test_every_failure_reason_is_typed_and_says_what_to_do(sweep: Sweep) -> None:
    reasons = Counter(o["reason"] for o in sweep.report["outcomes"] if o["status"] == "failed")
    # The sample is chosen to meet each of these at least once. No corpus file is
    # `unsupported`: they are all meant as PDFs (qpdf's fuzzed inspect.pdf, with no
    # header, is `damaged`); tests/test_render.py covers other file types.
    assert {
        "damaged",
        "needs_password",
        "wrong_password",
        "timeout",
        "too_large",
    } <= set(reasons), reasons
    inspect = next(o for o in sweep.report["outcomes"] if o["path"].endswith("/inspect.pdf"))
    assert (inspect["status"], inspect["reason"]) == ("failed", "damaged"), inspect
    for o in sweep.report["outcomes"]:
        if o["status"] == "failed":
            assert o["message"] and o["path"] in o["message"], o
    hints = {
        "needs_password": "--password",
        "wrong_password": "render.passwords",
        "timeout": "render.timeout_s",
        "too_large": "render.max_file_mb",
    }
    for o in sweep.report["outcomes"]:
        hint = hints.get(o["reason"] or "")
        if o["status"] == "failed" and hint:
            assert hint in o["message"], o
        if o["reason"] == "damaged" and "poppler cannot read it" in o["message"]:
            assert "qpdf --replace-input" in o["message"], o


def test_no_file_takes_longer_than_the_timeout_plus_a_margin(sweep: Sweep) -> None:
    timeout = SWEEP_TIMEOUT_S
    slow = {
        Path(o["path"]).name: round(o["seconds"], 1)
        for o in sweep.report["outcomes"]
        if o["seconds"]
        > timeout + (TIMEOUT_MARGIN_S if o["reason"] == "timeout" else TIME_MARGIN_S)
    }
    assert slow == {}
    hang = next(
        o for o in sweep.report["outcomes"] if o["path"].endswith("shared-unnamed-field.pdf")
    )
    assert (hang["status"], hang["reason"]) == ("failed", "timeout")
    assert timeout - 0.5 <= hang["seconds"] <= timeout + TIMEOUT_MARGIN_S


def test_peak_memory_stays_under_the_stated_bounds(sweep: Sweep) -> None:
    assert sweep.job_rss_mb < JOB_RSS_BOUND_MB, sweep_summary(sweep)
    assert sweep.poppler_rss_mb < POPPLER_RSS_BOUND_MB, sweep_summary(sweep)


def test_encrypted_files_with_known_passwords_ingest(sweep: Sweep, manifest: list[Row]) -> None:
    outcomes = sweep.outcomes_by_row()
    known = [r for r in sweep.rows if r.path in ENCRYPTED_USER and r.opens_with_password]
    assert len(known) == 6  # both enc-*U=view*, PasswordEncrypted, bug_644, two non-ASCII
    for row in known:
        (o,) = outcomes[row.path]
        assert o["status"] == "ingested", o
    for path in OWNER_ONLY:
        row = next(r for r in sweep.rows if r.path == path)
        assert row.password is None  # nothing configured: they must open without one
        (o,) = outcomes[path]
        assert o["status"] == "ingested", o


def test_huge_pages_are_stored_at_the_dpi_that_fits_the_pixel_cap(sweep: Sweep) -> None:
    poster = [
        p for p in sweep.points if p["kind"] == "page" and p["source"].endswith("/poster.pdf")
    ]
    assert poster, "poster.pdf (1800x3600 pt) was not stored"
    for page in poster:
        assert page["dpi"] < SWEEP_DPI  # 50 DPI would be 1250x2500 px, over the 2 Mpx cap
        assert page["width"] * page["height"] <= SWEEP_MAX_PIXELS


def test_documents_over_max_pages_are_truncated_and_say_so(sweep: Sweep) -> None:
    truncated = [o for o in sweep.report["outcomes"] if o["reason"] == "truncated"]
    assert truncated
    for o in truncated:
        assert o["status"] == "ingested"
        assert o["pages"] == SWEEP_MAX_PAGES < o["total_pages"]
        assert "render.max_pages" in o["message"]


@pytest.mark.slow
def test_full_manifest_sweep(corpus: Path, manifest: list[Row], tmp_path: Path) -> None:
    """All 679 files in one job, with the same checks as the sample (~4-8 min on 2 cores)."""
    result = run_sweep(corpus, manifest, tmp_path / "data", hard_timeout=1500)
    print(sweep_summary(result))
    assert sweep_problems(result) == [], sweep_summary(result)
    assert result.job_rss_mb < JOB_RSS_BOUND_MB, sweep_summary(result)
    assert result.poppler_rss_mb < POPPLER_RSS_BOUND_MB, sweep_summary(result)


# --------------------------------------------------------------------------- --password


USER_PASSWORD_PDF = "robust/poppler-test/unittestcases/PasswordEncrypted.pdf"  # "password"
BUG_644 = "robust/pdfium/testing/resources/bug_644.pdf"  # "a" or "b"; "tiger" must fail
R3_LATIN1 = "robust/pdfium/testing/resources/encrypted_hello_world_r3.pdf"  # "hôtel", RC4
R6_UTF8 = "robust/pdfium/testing/resources/encrypted_hello_world_r6.pdf"  # "hôtel", AES-256
OWNER_ONLY_PDF = "robust/poppler-test/unittestcases/orientation.pdf"
THREE_PAGES = "robust/pdfjs/test/pdfs/three_pages_with_number.pdf"


@pytest.fixture
def cli_env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    return clirun.cli_env(tmp_path / "data", tiny_model_dir)


def ingest(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = clirun.invoke(env, "ingest", *args, "--json")
    return code, json.loads(out)


def utf8(env: dict[str, str]) -> dict[str, str]:
    """For a real process given non-ASCII argv: a UTF-8 locale and standard streams."""
    return {**env, "PYTHONIOENCODING": "utf-8", "LANG": os.environ.get("LANG", "C.UTF-8")}


def test_password_option_opens_a_user_password_pdf(
    cli_env: dict[str, str], corpus: Path, tmp_path: Path
) -> None:
    pdf = tmp_path / "secret.pdf"
    shutil.copy(corpus / USER_PASSWORD_PDF, pdf)

    code, report = ingest(cli_env, str(pdf))
    assert code == 1
    (o,) = report["outcomes"]
    assert (o["status"], o["reason"]) == ("failed", "needs_password")
    assert "--password" in o["message"]

    code, report = ingest(cli_env, str(pdf), "--password", "wrong-one")
    assert code == 1
    (o,) = report["outcomes"]
    assert (o["status"], o["reason"]) == ("failed", "wrong_password")
    assert "wrong-one" not in json.dumps(report)  # a password is never echoed

    code, report = ingest(cli_env, str(pdf), "--password", "password")
    assert code == 0, report
    (o,) = report["outcomes"]
    assert (o["status"], o["pages"]) == ("ingested", 1)


def test_wrong_password_for_bug_644_and_both_of_its_passwords(
    cli_env: dict[str, str], corpus: Path, tmp_path: Path
) -> None:
    pdf = tmp_path / "bug_644.pdf"
    shutil.copy(corpus / BUG_644, pdf)
    code, report = ingest(cli_env, str(pdf), "--password", "tiger")
    assert (code, report["outcomes"][0]["reason"]) == (1, "wrong_password")
    code, report = ingest(cli_env, str(pdf), "--password", "b")
    assert code == 0, report
    (o,) = report["outcomes"]
    assert o["status"] == "ingested"


def test_non_ascii_password_on_the_command_line_opens_rc4_and_aes256_files(
    cli_env: dict[str, str], corpus: Path, tmp_path: Path
) -> None:
    """Through a real process: the password arrives as argv bytes, as a shell passes it.

    A CLI-wide --password must not break unencrypted or owner-only files in the same run.
    """
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in (R3_LATIN1, R6_UTF8, OWNER_ONLY_PDF, THREE_PAGES):
        shutil.copy(corpus / name, folder / Path(name).name)
    code, out, err = clirun.run(
        utf8(cli_env), "ingest", str(folder), "--json", "--password", "hôtel"
    )
    report = json.loads(out)
    assert code == 0, (report, err[-2000:])
    statuses = {Path(o["path"]).name: o["status"] for o in report["outcomes"]}
    assert statuses["encrypted_hello_world_r3.pdf"] == "ingested"
    assert statuses["encrypted_hello_world_r6.pdf"] == "ingested"
    assert statuses["orientation.pdf"] == "ingested"
    assert statuses["three_pages_with_number.pdf"] == "ingested"
    assert "hôtel" not in out + err


def test_pdfs_with_a_late_or_missing_header_ingest_and_unreadable_ones_are_damaged(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """What poppler and pdf.js open is ingested; what poppler cannot read says how to repair."""
    pdf = write_pdf(tmp_path / "plain.pdf", [(100, 100, 0, GREY_BOX)] * 3).read_bytes()
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "late-header.pdf").write_bytes(b" " * 1500 + b"\n" + pdf)
    (folder / "no-header.pdf").write_bytes(pdf.split(b"\n", 1)[1])
    (folder / "unreadable.pdf").write_bytes(bytes((i * 37 + 11) % 251 + 1 for i in range(6000)))
    code, report = ingest(cli_env, str(folder))
    assert code == 1
    by_name = {Path(o["path"]).name: o for o in report["outcomes"]}
    for name in ("late-header.pdf", "no-header.pdf"):
        assert (by_name[name]["status"], by_name[name]["pages"]) == ("ingested", 3), by_name[name]
    bad = by_name["unreadable.pdf"]
    assert (bad["status"], bad["reason"]) == ("failed", "damaged"), bad
    assert "qpdf --replace-input" in bad["message"]
    assert "unrecognised binary" not in bad["message"]


@pytest.mark.skipif(
    shutil.which("qpdf") is None,
    reason="qpdf is not installed (scripts/setup.sh --dev installs it: apt-get install qpdf)",
)
def test_an_aes256_password_is_saslprepped_as_pdf_2_requires(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Through a real process: the password a spec-following reader accepts opens the file.

    The file stores the SASLprep'd password ("passaword", as Acrobat would write it);
    the user types it with a soft hyphen (U+00AD) and a feminine ordinal (U+00AA).
    """
    plain = write_pdf(tmp_path / "plain.pdf", [(100, 100, 0, GREY_BOX)])
    pdf = tmp_path / "r6.pdf"
    subprocess.run(
        ["qpdf", "--encrypt", "passaword", "owner", "256", "--", str(plain), str(pdf)],
        check=True,
        capture_output=True,
    )
    typed = "pass\u00aaw\u00adord"
    code, out, err = clirun.run(utf8(cli_env), "ingest", str(pdf), "--json", "--password", typed)
    report = json.loads(out)
    assert code == 0, (report, err[-2000:])
    (o,) = report["outcomes"]
    assert (o["status"], o["pages"]) == ("ingested", 1)
    assert typed not in out + err


def test_a_looping_file_costs_at_most_the_timeout_in_a_job(
    cli_env: dict[str, str], corpus: Path, tmp_path: Path
) -> None:
    looping = tmp_path / "loops.pdf"
    shutil.copy(corpus / "robust/qpdf/qpdf/qtest/qpdf/shared-unnamed-field.pdf", looping)
    three = tmp_path / "three.pdf"
    shutil.copy(corpus / THREE_PAGES, three)
    env = {**cli_env, "PAGERAG_RENDER__TIMEOUT_S": "2"}
    start = time.monotonic()
    code, report = ingest(env, str(looping), str(three))
    elapsed = time.monotonic() - start
    assert code == 1
    by_name = {Path(o["path"]).name: o for o in report["outcomes"]}
    assert (by_name["loops.pdf"]["status"], by_name["loops.pdf"]["reason"]) == ("failed", "timeout")
    assert by_name["loops.pdf"]["seconds"] < 2 + TIMEOUT_MARGIN_S
    assert "render.timeout_s=2" in by_name["loops.pdf"]["message"]
    assert by_name["three.pdf"]["status"] == "ingested"  # the other worker went on meanwhile
    assert elapsed < 20
