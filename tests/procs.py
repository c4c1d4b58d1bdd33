"""Process inspection for tests that check poppler never outlives its job."""

from __future__ import annotations

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
