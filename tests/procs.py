"""Process inspection for tests that check poppler never outlives its job."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def live_processes(needle: str) -> list[str]:
    """Command lines of running (not zombie) processes that mention ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle.encode() in cmdline and state != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def wait_for_process(
    program: str, needle: str, proc: subprocess.Popen[str], seconds: float = 30
) -> None:
    """Until ``program`` runs with ``needle`` in its command line (a job's poppler on a
    given file); fails when ``proc``, the job, ends first or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not any(program in c for c in live_processes(needle)):
        assert time.monotonic() < deadline, f"{program} never started"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
