"""Running ``pagerag`` commands in tests: the settings, in-process or as a real process.

* :func:`cli_env` — ``PAGERAG_*`` settings for the CLI on a data directory and the
  stand-in model, no VLM key;
* :func:`invoke` / :func:`invoke_json` — the command in this process (typer's
  ``CliRunner``): fast, and a bug's traceback surfaces as itself;
* :func:`start` / :func:`run` — the command as a user's shell runs it
  (``python -m pipeline.cli`` in its own process, over the checkout), for
  signals, crashes, locks and argv bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from pipeline.cli import app

__all__ = ["REPO", "cli_env", "invoke", "invoke_json", "process_env", "run", "start"]

REPO = Path(__file__).resolve().parents[1]


def cli_env(
    store: Path | None = None, model: Path | None = None, *, dpi: int = 40, **settings: str
) -> dict[str, str]:
    """Settings for the CLI: ``store`` as ``store.path``, ``model`` (the stand-in's
    directory) on the CPU, ``render.dpi``, and ``section__key=value`` for any other key."""
    env = {"PAGERAG_RENDER__DPI": str(dpi), "OPENAI_API_KEY": ""}
    if store is not None:
        env["PAGERAG_STORE__PATH"] = str(store)
    if model is not None:
        env["PAGERAG_EMBEDDING__MODEL_PATH"] = str(model)
        env["PAGERAG_EMBEDDING__DEVICE"] = "cpu"
    env.update({f"PAGERAG_{key.upper()}": value for key, value in settings.items()})
    return env


def invoke(env: Mapping[str, str], *args: str | Path) -> tuple[int, str, str]:
    """``pagerag ARGS`` in this process: exit code, stdout, stderr."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=dict(env))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def invoke_json(env: Mapping[str, str], *args: str | Path) -> tuple[int, Any]:
    """:func:`invoke` with the JSON on stdout parsed (stdout + stderr as text when not JSON)."""
    code, out, err = invoke(env, *args)
    try:
        return code, json.loads(out)
    except ValueError:
        return code, out + err


def process_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` over this environment without its own ``PAGERAG_*`` settings, and the
    checkout on ``PYTHONPATH``: what a child ``pagerag`` process runs with."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PAGERAG_")}
    return {**inherited, "PYTHONPATH": str(REPO), **env}


def start(
    env: Mapping[str, str],
    *args: str | Path,
    stdin: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.PIPE,
    **popen: Any,
) -> subprocess.Popen[str]:
    """``python -m pipeline.cli ARGS`` in its own process, stdout piped, text mode."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *map(str, args)],
        cwd=REPO,
        env=process_env(env),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        **popen,
    )


def run(env: Mapping[str, str], *args: str | Path, timeout: float = 120) -> tuple[int, str, str]:
    """:func:`start` and wait: exit code, stdout, stderr."""
    proc = start(env, *args)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err
