"""Crash safety of ``pagerag ingest`` as a user runs it (issue 7, point 4).

Every job here is the real CLI in its own process (``python -m pipeline.cli
ingest``) on the stand-in ColPali model and the embedded store, over six real
PDFs (40 pages) copied from ../shared/corpus. After each run the test reads
the shard directly with qdrant-edge — every point, payload and vector — so
what is compared is what is on disk, not what the job says it did.

* SIGKILL at seeded random moments, several times, then a rerun: the store
  must equal a clean uninterrupted run's (same point ids, payloads, vectors),
  with no duplicate page, no missing page, and after every kill no document
  marked complete without all its pages.
* SIGTERM / SIGINT: the job stops after the batch in flight, exits non-zero,
  prints the report so far (``interrupted: true``), and a rerun completes.
* SIGKILL while poppler runs: the ``timeout -s KILL`` wrapper ends poppler by
  the render deadline, though the job could not.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe

from pipeline.ingest.poppler import WORKDIR_PREFIX
from tests.clirun import cli_env, start
from tests.procs import live_processes, wait_for_process

# Six small real PDFs, 4-10 pages each (40 pages).
DOCS = {
    "robust/qpdf/qpdf/qtest/qpdf/shared-images.pdf": 10,
    "robust/py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf": 4,
    "robust/pdfjs/test/pdfs/file_pdfjs_test.pdf": 5,
    "robust/camelot/tests/files/tabula/icdar2013-dataset/competition-dataset-us/us-020.pdf": 6,
    "robust/pdfium/testing/resources/page_labels.pdf": 7,
    "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf": 8,
}
TOTAL_PAGES = sum(DOCS.values())
LOOPING = "robust/qpdf/qpdf/qtest/qpdf/shared-unnamed-field.pdf"  # pdfinfo loops forever
SLOW_PAGE = "robust/ocrmypdf/tests/resources/hugemono.pdf"  # ~8 s of pdftoppm, little memory
SEED = 20240607
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
KILLS = 4

pytestmark = [
    pytest.mark.skipif(
        shutil.which("pdftoppm") is None or shutil.which("pdfinfo") is None,
        reason="poppler-utils is not installed (apt-get install poppler-utils)",
    ),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
]


# --------------------------------------------------------------------------- reading the store


@dataclass(frozen=True)
class StoredPage:
    document_id: str
    source: str
    page: int
    page_count: int
    width: int
    height: int
    dpi: int
    image_sha: str
    vector_sha: tuple[tuple[str, str], ...]  # (vector name, sha256 of its float16 bytes)


@dataclass
class Snapshot:
    """Everything in the shard, by point id."""

    pages: dict[str, StoredPage] = field(default_factory=dict)
    marks: dict[str, dict[str, Any]] = field(default_factory=dict)  # document id -> payload
    others: int = 0

    def problems(self) -> list[str]:
        """Invariants that must hold at any moment, even right after a SIGKILL."""
        found: list[str] = []
        by_doc: dict[str, list[int]] = {}
        for page in self.pages.values():
            by_doc.setdefault(page.document_id, []).append(page.page)
        for doc, numbers in by_doc.items():
            if len(numbers) != len(set(numbers)):
                found.append(f"{doc[:12]}: duplicate pages {sorted(numbers)}")
        for doc, mark in self.marks.items():
            have = sorted(by_doc.get(doc, []))
            if have != list(range(1, mark["page_count"] + 1)):
                found.append(
                    f"{Path(mark['source']).name} marked complete with page_count "
                    f"{mark['page_count']} but pages {have} are stored"
                )
        return found

    def complete(self) -> set[str]:
        return {mark["source"] for mark in self.marks.values()}

    def orphans(self) -> int:
        """Pages of documents not (yet) marked complete: leftovers of an interrupted run."""
        return sum(1 for p in self.pages.values() if p.document_id not in self.marks)

    def comparable(self) -> tuple[dict[str, StoredPage], dict[str, dict[str, Any]]]:
        volatile = ("ingested_at",)
        marks = {
            d: {k: v for k, v in m.items() if k not in volatile} for d, m in self.marks.items()
        }
        return self.pages, marks


def _sha(array: Any) -> str:
    if hasattr(array, "indices"):  # the text lane's sparse vector
        ids = np.asarray(array.indices, dtype=np.uint32).tobytes()
        return hashlib.sha256(
            ids + np.asarray(array.values, dtype=np.float32).tobytes()
        ).hexdigest()
    return hashlib.sha256(np.asarray(array, dtype=np.float16).tobytes()).hexdigest()


def snapshot(data: Path, collection: str = "pagerag") -> Snapshot:
    """Read every point of the shard (no pagerag process may hold it); empty if none yet."""
    if not (data / collection / "edge_config.json").exists():
        return Snapshot()
    shard = qe.EdgeShard.load(str(data / collection), None)
    snap = Snapshot()
    offset: Any = None
    try:
        while True:
            request = qe.ScrollRequest(
                offset=offset, limit=16, filter=None, with_payload=True, with_vector=True
            )
            records, offset = shard.scroll(request)
            for rec in records:
                payload = dict(rec.payload or {})
                kind = payload.get("kind")
                if kind == "page":
                    vectors = rec.vector if isinstance(rec.vector, dict) else {}
                    image = base64.b64decode(payload.get("image_jpeg_b64", ""))
                    snap.pages[str(rec.id)] = StoredPage(
                        document_id=payload["document_id"],
                        source=payload["source"],
                        page=payload["page"],
                        page_count=payload["page_count"],
                        width=payload["width"],
                        height=payload["height"],
                        dpi=payload["dpi"],
                        image_sha=hashlib.sha256(image).hexdigest(),
                        vector_sha=tuple(sorted((n, _sha(v)) for n, v in vectors.items())),
                    )
                elif kind == "document":
                    snap.marks[payload["document_id"]] = payload
                else:
                    snap.others += 1
            if offset is None:
                break
    finally:
        shard.close()
    return snap


# --------------------------------------------------------------------------- running the CLI


def kill_poppler(needle: str) -> None:
    """SIGKILL the poppler runs (and their timeout wrappers) this test caused."""
    for entry in Path("/proc").iterdir():
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, NotADirectoryError):
            continue
        if comm in ("pdfinfo", "pdftoppm", "timeout") and needle.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def wait_gone(needle: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (alive := live_processes(needle)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@dataclass(frozen=True)
class Job:
    """How to run ``pagerag ingest`` in a child process on one data directory."""

    data: Path
    model: Path
    tmp: Path  # TMPDIR of the job: where the renderer's work folders go
    extra_env: tuple[tuple[str, str], ...] = ()

    def env(self) -> dict[str, str]:
        env = cli_env(
            self.data,
            self.model,
            dpi=50,
            # Small upserts: more write boundaries to crash in, finer progress to aim by.
            store__upsert_batch="2",
        )
        env.update(TMPDIR=str(self.tmp), **dict(self.extra_env))
        return env

    def start(self, *inputs: Path, json_out: bool = True, **popen: Any) -> subprocess.Popen[str]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return start(self.env(), "ingest", *inputs, *(["--json"] if json_out else []), **popen)

    def run(self, *inputs: Path) -> tuple[int, dict[str, Any], str]:
        proc = self.start(*inputs)
        out, err = proc.communicate(timeout=180)
        try:
            report = json.loads(out)
        except json.JSONDecodeError:
            pytest.fail(f"no JSON report (exit {proc.returncode}): {out[-500:]} {err[-2000:]}")
        return proc.returncode, report, err


@dataclass
class CleanRun:
    snapshot: Snapshot
    wall_seconds: float  # the whole process: start-up, model load, the job
    job_seconds: float  # the job as its report measures it


@pytest.fixture(scope="module")
def docs(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("crash-docs")
    for name in DOCS:
        shutil.copy(corpus / name, folder / Path(name).name)
    return folder


@pytest.fixture(scope="module")
def clean(docs: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CleanRun:
    base = tmp_path_factory.mktemp("clean")
    job = Job(base / "data", tiny_model_dir, base / "tmp")
    start = time.monotonic()
    code, report, err = job.run(docs)
    wall = time.monotonic() - start
    assert code == 0, (report, err[-2000:])
    assert report["files"] == {"ingested": len(DOCS), "skipped": 0, "partial": 0, "failed": 0}
    snap = snapshot(job.data)
    assert len(snap.pages) == report["pages_ingested"] == TOTAL_PAGES
    assert snap.problems() == []
    return CleanRun(snap, wall, report["seconds"])


def assert_same_as_clean(snap: Snapshot, clean: CleanRun) -> None:
    pages, marks = snap.comparable()
    clean_pages, clean_marks = clean.snapshot.comparable()
    assert sorted(pages) == sorted(clean_pages), "point ids differ from the clean run"
    assert Counter((p.document_id, p.page) for p in pages.values()) == Counter(
        (p.document_id, p.page) for p in clean_pages.values()
    )
    differ = [pid for pid in pages if pages[pid] != clean_pages[pid]]
    assert differ == [], f"{len(differ)} pages differ from the clean run (payload or vectors)"
    assert marks == clean_marks
    assert snap.others == clean.snapshot.others  # the collection manifest point


class Terminal:
    """A pseudo-terminal for the job's stdin and stderr, drained by a thread.

    The progress bar appears only on a terminal; it is how the test (like a
    person) sees that documents are done before pressing Ctrl-C.
    """

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def start(self) -> None:
        os.close(self.slave)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.1)
                chunk = os.read(self.master, 65536) if ready else b"."
            except OSError:  # EIO: every writer closed its end
                return
            if not chunk:
                return
            if ready:
                with self._lock:
                    self.text += chunk.decode("utf-8", "replace")

    def wait_for(self, pattern: str, proc: subprocess.Popen[str], seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.poll() is None:
            with self._lock:
                match = re.search(pattern, ANSI.sub("", self.text))
            if match:
                return match.group(0)
            time.sleep(0.02)
        pytest.fail(f"never saw {pattern!r} on the terminal: {self.text[-1500:]!r}")

    def wait_for_pages(self, pages: int, proc: subprocess.Popen[str], seconds: float) -> bool:
        """Until the progress bar shows ``pages`` pages stored by this run; False if the
        job ended first (its last pages are stored in one go with the end)."""
        deadline = time.monotonic() + seconds
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"stuck before page {pages}: {self.text[-500:]!r}"
            with self._lock:
                plain = ANSI.sub("", self.text)
            if max(map(int, re.findall(r"(\d+)/\d+ pages", plain)), default=0) >= pages:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._thread.join(timeout=5)
        os.close(self.master)


# --------------------------------------------------------------------------- SIGKILL


def kill_repeatedly(
    job: Job, docs: Path, clean: CleanRun, rng: random.Random, kills: int, *, aim: str
) -> tuple[list[str], int]:
    """SIGKILL ``kills`` runs of the job; after each, check what any moment must satisfy.

    ``aim="page"``: each kill aims at a random page of the work left (read off the
    progress bar on a pseudo-terminal), plus a random fraction of a second, so it
    can land anywhere in rendering, embedding, an upsert, a completion mark or
    between documents. ``aim="clock"``: a random moment of a whole clean run's
    wall time, start-up and store creation included.
    Returns the history and how many kills found the job still running.
    """
    history: list[str] = []
    hits = 0
    for kill in range(kills):
        done = snapshot(job.data).complete()
        left = sum(n for name, n in DOCS.items() if str(docs / Path(name).name) not in done)
        if not left:  # an earlier run finished before its kill
            break
        # Within the first three quarters of the work left, so that most kills find some.
        target, extra = rng.randrange(max(1, left * 3 // 4)), rng.uniform(0.0, 0.1)
        delay = rng.uniform(0.0, clean.wall_seconds)
        terminal = Terminal()
        proc = job.start(docs, json_out=False, stderr=terminal.slave)
        terminal.start()
        try:
            if aim == "clock":
                time.sleep(delay)
            elif target:
                terminal.wait_for_pages(target, proc, 120)
                time.sleep(extra)
            else:
                wait_for_rendering(job, proc)
                time.sleep(extra)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.communicate(timeout=30)
            terminal.close()
        snap = snapshot(job.data)
        where = f"{delay:.2f} s after start" if aim == "clock" else f"page {target}/{left}"
        state = (
            f"kill {kill + 1} at {where} -> exit {proc.returncode}: {len(snap.marks)} complete, "
            f"{len(snap.pages)} pages stored, {snap.orphans()} of them unmarked"
        )
        history.append(state)
        assert snap.problems() == [], state
        hits += proc.returncode == -signal.SIGKILL
        # Poppler is never left behind (these files render in well under a second).
        assert wait_gone(str(docs), 3.0) == [], state
    print("\n".join(history))  # with -s or -rA: where the kills landed
    return history, hits


def rerun_to_completion(job: Job, docs: Path, clean: CleanRun, history: list[str]) -> None:
    before = snapshot(job.data).complete()
    code, report, err = job.run(docs)
    assert code == 0, (history, report, err[-2000:])
    statuses = {o["path"]: o["status"] for o in report["outcomes"]}
    assert len(report["outcomes"]) == len(statuses) == len(DOCS)
    assert {p for p, s in statuses.items() if s == "skipped"} == before, history
    assert {p for p, s in statuses.items() if s == "ingested"} == set(statuses) - before
    final = snapshot(job.data)
    assert final.problems() == []
    assert len(final.marks) == len(DOCS)
    assert_same_as_clean(final, clean)


def test_sigkill_at_random_moments_then_rerun_equals_a_clean_run(
    docs: Path, tiny_model_dir: Path, tmp_path: Path, clean: CleanRun
) -> None:
    job = Job(tmp_path / "data", tiny_model_dir, tmp_path / "tmp")
    history, hits = kill_repeatedly(job, docs, clean, random.Random(SEED), KILLS, aim="page")
    rerun_to_completion(job, docs, clean, history)
    assert hits >= KILLS - 1, f"the kills missed the job: {history}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("aim", ["page", "clock"])
def test_sigkill_many_times(
    aim: str, seed: int, docs: Path, tiny_model_dir: Path, tmp_path: Path, clean: CleanRun
) -> None:
    """Heavier: ten kills per sequence, aimed by progress or by the clock."""
    job = Job(tmp_path / "data", tiny_model_dir, tmp_path / "tmp")
    history, _ = kill_repeatedly(job, docs, clean, random.Random(SEED + seed), 10, aim=aim)
    rerun_to_completion(job, docs, clean, history)


def test_sigkill_while_poppler_loops_leaves_no_poppler_behind(
    corpus: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The job dies at once; the looping pdfinfo it started dies by the render deadline."""
    looping = tmp_path / "docs" / "loops.pdf"
    looping.parent.mkdir()
    shutil.copy(corpus / LOOPING, looping)
    timeout_s = 2
    job = Job(
        tmp_path / "data",
        tiny_model_dir,
        tmp_path / "tmp",
        (("PAGERAG_RENDER__TIMEOUT_S", str(timeout_s)),),
    )
    proc = job.start(looping)
    try:
        wait_for_process("pdfinfo", str(looping), proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    # Nobody is left to kill poppler but its `timeout -s KILL` wrapper (deadline + 2 s).
    assert wait_gone(str(looping), timeout_s + 2 + 3) == []
    code, report, _ = job.run(looping)  # and the store is usable: the file fails as it should
    assert code == 1
    assert report["outcomes"][0]["reason"] == "timeout"


def test_sigkill_mid_render_leaves_no_work_folder_behind(
    corpus: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    slow = tmp_path / "docs" / "slow.pdf"
    slow.parent.mkdir()
    shutil.copy(corpus / SLOW_PAGE, slow)
    job = Job(
        tmp_path / "data",
        tiny_model_dir,
        tmp_path / "tmp",
        (("PAGERAG_RENDER__TIMEOUT_S", "3"), ("PAGERAG_RENDER__DPI", "36")),
    )
    proc = job.start(slow)
    try:
        wait_for_process("pdftoppm", str(slow), proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert wait_gone(str(slow), 3 + 2 + 3) == []
    # A later run may clean up after the dead one.
    later = dataclasses.replace(job, extra_env=(("PAGERAG_RENDER__TIMEOUT_S", "1"),))
    code, _report, _ = later.run(tmp_path / "docs")
    assert code == 1
    # No render work folder is left. (The model loads before the first page renders, and
    # fastembed keeps its own files in TMPDIR when embedding.cache_dir is unset.)
    assert sorted(p.name for p in job.tmp.iterdir() if p.name.startswith(WORKDIR_PREFIX)) == []


# --------------------------------------------------------------------------- SIGTERM, SIGINT


def wait_for_rendering(job: Job, proc: subprocess.Popen[str], seconds: float = 60) -> bool:
    """Until the job's renderer has a work folder: the store is open and pages are flowing.

    False when the job ended first (it may have had nothing left to render).
    Folders left by killed runs before it do not count.
    """
    deadline = time.monotonic() + seconds
    old = set(job.tmp.iterdir())
    while not any(p.name.startswith("pagerag-render-") for p in set(job.tmp.iterdir()) - old):
        assert time.monotonic() < deadline, "the job never started rendering"
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return True


def test_sigterm_stops_after_the_batch_prints_the_json_report_and_a_rerun_completes(
    docs: Path, tiny_model_dir: Path, tmp_path: Path, clean: CleanRun
) -> None:
    """As a supervisor (systemd, Kubernetes) stops a job: SIGTERM, output piped as JSON."""
    job = Job(tmp_path / "data", tiny_model_dir, tmp_path / "tmp")
    proc = job.start(docs)
    try:
        assert wait_for_rendering(job, proc), "the job ended before it rendered anything"
        # Some way into the work, well before its end: the model loads before the first
        # render, so the time left after rendering starts is well under job_seconds.
        time.sleep(0.15 * clean.job_seconds)
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
    finally:
        out, err = proc.communicate(timeout=60)
    assert time.monotonic() - stopped < 10  # it stopped; it did not finish the work

    assert proc.returncode == 1, (proc.returncode, out[-500:], err[-1500:])
    assert "stopping after the current batch" in err
    report = json.loads(out)
    assert report["interrupted"] is True
    assert report["ok"] is False
    assert report["pages_ingested"] < TOTAL_PAGES
    outcomes = report["outcomes"]
    assert sorted(o["path"] for o in outcomes) == sorted(str(docs / Path(n).name) for n in DOCS)
    for o in outcomes:
        assert o["status"] in ("ingested", "failed"), o  # never a half-done "partial"
        if o["status"] == "failed":
            assert o["reason"] == "interrupted", o
            assert "rerun" in o["message"]
    done = {o["path"] for o in outcomes if o["status"] == "ingested"}
    snap = snapshot(job.data)
    assert snap.problems() == []
    assert snap.complete() == done  # the report so far is what the store holds

    code, again, err = job.run(docs)
    assert code == 0, (again, err[-2000:])
    assert again["interrupted"] is False
    assert {o["path"] for o in again["outcomes"] if o["status"] == "skipped"} == done
    assert_same_as_clean(snapshot(job.data), clean)


def test_ctrl_c_at_a_terminal_stops_after_the_batch_and_shows_the_report_so_far(
    docs: Path, tiny_model_dir: Path, tmp_path: Path, clean: CleanRun
) -> None:
    """Ctrl-C as a person presses it: SIGINT to the job's process group, progress on a tty."""
    job = Job(tmp_path / "data", tiny_model_dir, tmp_path / "tmp", (("COLUMNS", "400"),))
    terminal = Terminal()
    proc = job.start(
        docs,
        json_out=False,
        stdin=terminal.slave,
        stderr=terminal.slave,
        start_new_session=True,  # its own process group, as a shell's foreground job
    )
    terminal.start()
    try:
        seen = terminal.wait_for(rf"files [1-4]/{len(DOCS)}", proc, 120)
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        out, _ = proc.communicate(timeout=60)
        terminal.close()

    assert proc.returncode == 1, (proc.returncode, out[-1000:], terminal.text[-1500:])
    assert "stopping after the current batch" in terminal.text
    assert "interrupted: rerun to resume" in out
    rows = {  # file name -> its table row: status, path, pages, detail
        name: line
        for line in out.splitlines()
        for name in (Path(n).name for n in DOCS)
        if f"/{name} " in line
    }
    assert len(rows) == len(DOCS), out
    status = {name: line.split()[1] for name, line in rows.items()}  # after the border
    done = {str(docs / name) for name, s in status.items() if s == "ingested"}
    assert len(done) >= int(seen.split()[1].split("/")[0]), (seen, out)
    for name, line in rows.items():
        assert status[name] == "ingested" or (
            status[name] == "failed" and "interrupted" in line and "rerun" in line
        ), out

    assert snapshot(job.data).complete() == done
    code, again, err = job.run(docs)
    assert code == 0, (again, err[-2000:])
    assert {o["path"] for o in again["outcomes"] if o["status"] == "skipped"} == done
    assert_same_as_clean(snapshot(job.data), clean)


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)],
    ids=["SIGTERM", "Ctrl-C twice"],
)
def test_stop_does_not_wait_for_a_slow_poppler_run(
    signals: tuple[signal.Signals, ...], corpus: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    looping = tmp_path / "docs" / "loops.pdf"
    looping.parent.mkdir()
    shutil.copy(corpus / LOOPING, looping)
    job = Job(
        tmp_path / "data",
        tiny_model_dir,
        tmp_path / "tmp",
        (("PAGERAG_RENDER__TIMEOUT_S", "20"),),
    )
    proc = job.start(looping)
    try:
        wait_for_process("pdfinfo", str(looping), proc)
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.3)
        try:
            proc.communicate(timeout=4)
            stopped = True
        except subprocess.TimeoutExpired:
            stopped = False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        kill_poppler(str(looping))  # not to leave it looping until its 22 s backstop
    assert stopped, "the job went on until poppler's render.timeout_s"
    assert wait_gone(str(looping), 3.0) == []
