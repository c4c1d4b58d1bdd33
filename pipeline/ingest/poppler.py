"""Poppler process control: one driver for every poppler tool.

``pdfinfo`` (the probe), ``pdftoppm`` (page images) and any other poppler
tool (``pdftotext`` for page text) run through :meth:`Poppler.run`, so each
gets the same controls::

    poppler = Poppler(poppler_path=None, max_memory_mb=1024)
    run = poppler.run(["pdftotext", "-f", "3", "-l", "3", *password_args(pw), path, "-"],
                      budget_s, cancel=stop_event, capture_stdout=True)
    if run.timed_out: ...            # the budget ran out: poppler was killed
    text = run.stdout.decode()       # bounded; run.complaint() is stderr, for messages

Every run:

* gets its own process group, killed (SIGTERM, then SIGKILL) on timeout, on
  cancellation and on any exception (KeyboardInterrupt included), so no poppler
  process outlives its call;
* has a deadline on the whole run, and (when coreutils ``timeout`` exists) a
  ``timeout -s KILL`` wrapper that still kills poppler if this Python process
  is itself killed with SIGKILL mid-render;
* runs under an address-space cap (``prlimit --as``, util-linux; without it,
  no cap) when ``max_memory_mb`` is set, so a resource bomb fails its
  allocation instead of taking the machine's memory;
* polls ``cancel`` (the job's stop event) a few times a second: when it is
  set, poppler is killed and ``RenderCancelledError`` raised;
* reads stdout and stderr concurrently (no pipe deadlock), bounded (a
  looping file cannot fill memory with error messages).

Passwords go on the command line (``password_args``): poppler takes them no
other way, so they are visible in the process list while it runs.

Work folders (``work_folder``) are named after this process, so the next
renderer to start removes those a SIGKILLed job left (``sweep_stale_workdirs``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Literal

from pipeline.errors import PopplerNotInstalledError, RenderCancelledError

__all__ = [
    "WORKDIR_PREFIX",
    "Poppler",
    "PopplerRun",
    "password_args",
    "run_poppler",
    "sweep_stale_workdirs",
    "work_folder",
]

_BACKSTOP_GRACE_S = 2  # the coreutils timeout wrapper fires this much after our own deadline
_CANCEL_POLL_S = 0.2  # how often a poppler wait looks at the job's stop event
_STDERR_KEEP = 8192
_STDOUT_LIMIT = 64 << 20
_INCORRECT_PASSWORD = "Incorrect password"
_NOISE = re.compile(r"^(Syntax Warning|Internal Error|Command Line Error: Wrong page range)")

WORKDIR_PREFIX = "pagerag-render-"


@dataclass(frozen=True)
class PopplerRun:
    """What one poppler run did: exit status (negative: killed by that signal), output."""

    returncode: int
    stdout: bytes
    stderr: bytes
    elapsed: float
    timed_out: bool

    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    @property
    def password_refused(self) -> bool:
        """Poppler could not open the file with the password it was given (or none)."""
        return _INCORRECT_PASSWORD in self.stderr_text()

    def complaint(self, limit: int = 300) -> str:
        """The useful part of poppler's stderr, de-duplicated, for an error message."""
        lines: list[str] = []
        for line in self.stderr_text().splitlines():
            line = line.strip()
            if line and line not in lines:
                lines.append(line)
        important = [ln for ln in lines if not _NOISE.match(ln)] or lines
        text = "; ".join(important[:4])
        if self.returncode < 0:
            text = f"poppler crashed (signal {-self.returncode})" + (f": {text}" if text else "")
        if not text:
            text = f"poppler exited with status {self.returncode}"
        return text if len(text) <= limit else text[: limit - 1] + "…"


def password_args(password: bytes | None) -> list[str | bytes]:
    """``-opw``/``-upw`` for the bytes that open the file (every poppler tool takes both)."""
    return [] if password is None else ["-opw", password, "-upw", password]


# --------------------------------------------------------------------------- one process


class _Capture:
    """Keeps the head of a stream up to ``limit`` bytes, and the last ``tail`` bytes."""

    def __init__(self, limit: int, tail: int = 0) -> None:
        self.limit = limit
        self.tail_size = tail
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.dropped += len(data)
            if self.tail_size:
                self.tail = (self.tail + data)[-self.tail_size :]

    def value(self) -> bytes:
        if not self.dropped:
            return bytes(self.head)
        return bytes(self.head) + b"\n[...]\n" + bytes(self.tail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End the run's whole process group (wrapper + poppler) and reap it.

    SIGTERM first: poppler dies at once (it installs no handler) and the
    ``timeout`` wrapper reaps it before exiting, so no zombie is left for
    init. SIGKILL follows if anything is still alive after a second.
    """
    for sig, wait_s in ((signal.SIGTERM, 1.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _wrap(
    argv: Sequence[str | bytes],
    timeout: float,
    backstop: str | None,
    memory_cap: tuple[str, int] | None,
) -> list[str | bytes]:
    """``argv`` under the ``timeout -s KILL`` backstop and the ``prlimit --as`` cap."""
    command: list[str | bytes] = list(argv)
    if backstop is not None:
        limit = str(math.ceil(timeout) + _BACKSTOP_GRACE_S)
        command = [backstop, "-s", "KILL", limit, *command]
    if memory_cap is not None:  # (prlimit path, bytes): inherited by timeout and poppler
        command = [memory_cap[0], f"--as={memory_cap[1]}", "--", *command]
    return command


def _pump(
    proc: subprocess.Popen[bytes],
    deadline: float,
    cancel: threading.Event | None,
    out: _Capture,
    err: _Capture,
) -> Literal["done", "timed_out", "cancelled"]:
    """Read the process's output until it closes it, the deadline passes or ``cancel`` is set."""
    tick = _CANCEL_POLL_S if cancel is not None else None
    streams: list[tuple[IO[bytes] | None, _Capture]] = [(proc.stdout, out), (proc.stderr, err)]
    with selectors.DefaultSelector() as selector:
        for stream, capture in streams:
            if stream is not None:
                selector.register(stream, selectors.EVENT_READ, capture)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timed_out"
            if cancel is not None and cancel.is_set():
                return "cancelled"
            for key, _ in selector.select(min(remaining, tick or remaining)):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.add(chunk)
                else:
                    selector.unregister(key.fileobj)
    try:
        proc.wait(max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        return "timed_out"
    return "done"


def run_poppler(
    argv: Sequence[str | bytes],
    timeout: float,
    *,
    backstop: str | None,
    capture_stdout: bool = False,
    cancel: threading.Event | None = None,
    memory_cap: tuple[str, int] | None = None,
) -> PopplerRun:
    """Run one command with a hard deadline; never leaves it running.

    ``argv[0]`` is the tool's path. ``backstop`` is the coreutils ``timeout``
    path (or None), ``memory_cap`` ``(prlimit path, bytes)`` (or None). Raises
    ``RenderCancelledError`` when ``cancel`` is set before the run ends, and
    ``FileNotFoundError`` when the program is missing.
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        _wrap(argv, timeout, backstop, memory_cap),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    out = _Capture(_STDOUT_LIMIT)
    err = _Capture(_STDERR_KEEP, _STDERR_KEEP)
    try:
        ended = _pump(proc, start + timeout, cancel, out, err)
    finally:
        if proc.returncode is None:
            _kill_group(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if ended == "cancelled":
        raise RenderCancelledError("rendering stopped: the job is stopping")
    timed_out = ended == "timed_out"
    returncode = proc.returncode
    if backstop is not None and returncode >= 128 and not timed_out:
        returncode = -(returncode - 128)  # the wrapper reports "killed by N" as 128+N
    return PopplerRun(returncode, out.value(), err.value(), time.monotonic() - start, timed_out)


# --------------------------------------------------------------------------- the driver

Launch = Callable[..., PopplerRun]  # run_poppler's signature


class Poppler:
    """Finds poppler's tools and runs them under one set of controls.

    The constructor does no I/O: tools, ``timeout`` and ``prlimit`` are looked
    up on first use. ``poppler_path`` is a folder holding the tools when they
    are not on PATH. Shareable by threads; picklable (it holds paths and names).
    ``launch`` runs one wrapped command (``run_poppler``; tests may count runs).
    """

    def __init__(
        self,
        *,
        poppler_path: str | None = None,
        max_memory_mb: int | None = None,
        launch: Launch = run_poppler,
    ) -> None:
        self.poppler_path = poppler_path
        self.max_memory_mb = max_memory_mb
        self.launch = launch
        self._tools: dict[str, str] = {}
        self._backstop: str | Literal[False] | None = False  # False: not looked up yet
        self._prlimit: str | Literal[False] | None = False  # False: not looked up yet

    def tool(self, name: str) -> str:
        """The path of poppler tool ``name``; ``PopplerNotInstalledError`` when it is missing."""
        found = self._tools.get(name)
        if found is None:
            found = shutil.which(name, path=self.poppler_path)
            if found is None:
                raise PopplerNotInstalledError(name, self.poppler_path)
            self._tools[name] = found
        return found

    def run(
        self,
        argv: Sequence[str | bytes],
        budget: float,
        *,
        cancel: threading.Event | None = None,
        capture_stdout: bool = False,
    ) -> PopplerRun:
        """Run poppler tool ``argv[0]`` (a name: ``"pdfinfo"``) for at most ``budget`` seconds.

        A run that outlives its budget is killed and comes back ``timed_out``;
        ``RenderCancelledError`` when ``cancel`` is set first.
        """
        command = [self.tool(os.fsdecode(argv[0])), *argv[1:]]
        try:
            run = self.launch(
                command,
                budget,
                backstop=self._backstop_tool(),
                capture_stdout=capture_stdout,
                cancel=cancel,
                memory_cap=self._memory_cap(),
            )
        except FileNotFoundError:
            raise PopplerNotInstalledError(os.path.basename(os.fsdecode(command[0]))) from None
        if run.returncode in (126, 127) and self._backstop_tool() is not None:
            raise PopplerNotInstalledError(os.path.basename(os.fsdecode(command[0])))
        return run

    def _memory_cap(self) -> tuple[str, int] | None:
        if self.max_memory_mb is None:
            return None
        if self._prlimit is False:
            self._prlimit = shutil.which("prlimit")  # util-linux; without it, no cap
        return None if self._prlimit is None else (self._prlimit, self.max_memory_mb * 2**20)

    def _backstop_tool(self) -> str | None:
        if self._backstop is False:
            self._backstop = shutil.which("timeout")
        return self._backstop


# --------------------------------------------------------------------------- work folders


@contextlib.contextmanager
def work_folder() -> Iterator[str]:
    """A private temp folder for one document's output files, removed on exit."""
    workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def sweep_stale_workdirs(tmpdir: str | None = None) -> int:
    """Remove render work folders of processes that no longer exist.

    A job killed with SIGKILL cannot clean up after itself; its folders are
    named ``pagerag-render-<pid>-…``, so the next renderer to start removes
    those whose process is gone. Returns how many were removed.
    """
    base = tmpdir or tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(WORKDIR_PREFIX):
            continue
        pid_text = name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or _process_alive(int(pid_text)):
            continue
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
