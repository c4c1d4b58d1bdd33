"""The poppler driver (pipeline.ingest.poppler): one process control for every poppler tool.

Fake tools (shell scripts in a ``poppler_path`` folder) stand in for poppler
where a test needs a program that sleeps or reports its limits; the real
tools are used where the corpus has a file for it.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import RenderConfig
from pipeline.errors import PopplerNotInstalledError, RenderCancelledError
from pipeline.ingest.poppler import Poppler, PopplerRun, password_args, run_poppler
from pipeline.ingest.render import Renderer
from tests.procs import live_processes
from tests.test_render import GREY_BOX, write_pdf

needs_poppler = pytest.mark.skipif(
    shutil.which("pdftoppm") is None or shutil.which("pdfinfo") is None,
    reason="poppler-utils is not installed (apt-get install poppler-utils)",
)
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def _fake_tool(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return script


def _gone(needle: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while live_processes(needle) and time.monotonic() < deadline:
        time.sleep(0.05)
    return live_processes(needle)


@needs_poppler
def test_any_poppler_tool_runs_through_the_driver_pdftotext_included(corpus: Path) -> None:
    """The seam page text will use: pdftotext under the same driver as pdfinfo/pdftoppm."""
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext is not installed (apt-get install poppler-utils)")
    paper = corpus / "qa/docs/2310.07609v1.pdf"
    run = Poppler().run(
        ["pdftotext", "-f", "1", "-l", "1", str(paper), "-"], 10.0, capture_stdout=True
    )
    assert (run.returncode, run.timed_out) == (0, False)
    assert "Question-Guided Multi-Hop Fact-Checking" in run.stdout.decode()


@needs_poppler
def test_passwords_go_to_any_tool_and_a_refusal_is_recognised(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "locked.pdf", [(100, 100, 0, GREY_BOX)], user_password=b"hunter2")
    poppler = Poppler()
    refused = poppler.run(["pdfinfo", str(pdf)], 10.0, capture_stdout=True)
    assert refused.password_refused
    opened = poppler.run(
        ["pdfinfo", *password_args(b"hunter2"), str(pdf)], 10.0, capture_stdout=True
    )
    assert (opened.returncode, opened.password_refused) == (0, False)
    assert re.search(rb"^Pages: +1$", opened.stdout, re.MULTILINE)


@needs_proc
def test_a_run_past_its_budget_is_killed_and_reported_timed_out(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    _fake_tool(folder, "pdfslow", f"exec sleep 30 # {tmp_path.name}")
    start = time.monotonic()
    run = Poppler(poppler_path=str(folder)).run(["pdfslow"], 0.5)
    assert run.timed_out
    assert time.monotonic() - start < 3.0
    assert _gone(tmp_path.name, 1.0) == []


@needs_proc
def test_cancel_kills_the_run_and_raises(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    _fake_tool(folder, "pdfslow", f"exec sleep 30 # {tmp_path.name}")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(RenderCancelledError):
        Poppler(poppler_path=str(folder)).run(["pdfslow"], 20.0, cancel=cancel)
    assert time.monotonic() - start < 2.0
    assert _gone(tmp_path.name, 1.0) == []


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="util-linux prlimit not installed")
def test_the_memory_cap_applies_to_the_tool(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    _fake_tool(folder, "pdflimits", "ulimit -v")
    capped = Poppler(poppler_path=str(folder), max_memory_mb=300)
    run = capped.run(["pdflimits"], 10.0, capture_stdout=True)
    assert run.stdout.decode().strip() == str(300 * 1024)  # KiB
    uncapped = Poppler(poppler_path=str(folder)).run(["pdflimits"], 10.0, capture_stdout=True)
    assert uncapped.stdout.decode().strip() == "unlimited"


def test_a_missing_tool_names_itself_and_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(PopplerNotInstalledError, match=r"pdftotext .*in " + str(tmp_path)):
        Poppler(poppler_path=str(tmp_path)).run(["pdftotext", "x.pdf", "-"], 5.0)


def test_complaint_keeps_what_matters_from_stderr() -> None:
    stderr = b"Syntax Warning: junk\nSyntax Error: broken xref\nSyntax Error: broken xref\n"
    assert PopplerRun(1, b"", stderr, 0.1, False).complaint() == "Syntax Error: broken xref"
    assert PopplerRun(-11, b"", b"", 0.1, False).complaint() == "poppler crashed (signal 11)"
    assert PopplerRun(3, b"", b"", 0.1, False).complaint() == "poppler exited with status 3"


@needs_poppler
def test_every_renderer_run_goes_through_its_launch(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "two.pdf", [(100, 100, 0, GREY_BOX)] * 2)
    tools: list[str] = []

    def counting(argv: Sequence[str | bytes], *args: Any, **kwargs: Any) -> PopplerRun:
        tools.append(os.path.basename(os.fsdecode(argv[0])))
        return run_poppler(argv, *args, **kwargs)

    renderer = Renderer(RenderConfig(dpi=36, pages_per_chunk=1))
    renderer.poppler.launch = counting
    pages = list(renderer.render(pdf, document_id="d", source="s"))
    assert [p.page_number for p in pages] == [1, 2]
    assert tools == ["pdfinfo", "pdftoppm", "pdftoppm"]


@needs_poppler
def test_a_renderer_pickles_and_the_copy_renders(tmp_path: Path) -> None:
    """Worker processes (a Ray task, a process pool) get the renderer by pickling it."""
    pdf = write_pdf(tmp_path / "one.pdf", [(100, 100, 0, GREY_BOX)])
    renderer = Renderer(RenderConfig(dpi=36))
    plan = renderer.open(pdf)  # tools looked up: the copy carries their paths
    copy = pickle.loads(pickle.dumps(renderer))
    assert copy.config == renderer.config
    pages = list(copy.iter_pages(plan, document_id="d", source="s"))
    assert [(p.page_number, p.dpi) for p in pages] == [(1, 36)]


@needs_poppler
def test_a_set_cancel_event_stops_the_renderer_before_poppler_runs_long(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "one.pdf", [(100, 100, 0, GREY_BOX)])
    cancel = threading.Event()
    cancel.set()
    renderer = Renderer(RenderConfig(dpi=36))
    with pytest.raises(RenderCancelledError):
        renderer.open(pdf, cancel=cancel)
    plan = renderer.open(pdf)
    with pytest.raises(RenderCancelledError):
        list(renderer.iter_pages(plan, document_id="d", source="s", cancel=cancel))
