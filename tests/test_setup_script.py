"""scripts/setup.sh reinstalls only when something that decides the install changed.

Runs the real script against a stand-in venv whose ``python`` and ``pip``
only record how they were called, so no package is installed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RECORDER = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "Python 3.11.7"; exit 0; fi
echo "$(basename "$0") $*" >> "$(dirname "$0")/../calls"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    if shutil.which("pdftoppm") is None:
        pytest.skip("poppler-utils is not installed: setup.sh would run apt-get")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    venv = repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    for name in ("python", "pip", "pagerag"):
        (venv / name).write_text(RECORDER)
        (venv / name).chmod(stat.S_IRWXU)
    return repo


def setup(repo: Path, *args: str, **env: str) -> list[str]:
    """Run setup.sh; return the pip/python calls it made."""
    calls = repo / ".venv" / "calls"
    calls.unlink(missing_ok=True)
    environ = {k: v for k, v in os.environ.items() if k not in ("VENV", "PAGERAG_EXTRA")}
    subprocess.run(
        ["bash", str(repo / "scripts" / "setup.sh"), *args],
        env={**environ, **env},
        check=True,
        capture_output=True,
        timeout=60,
    )
    return calls.read_text().splitlines() if calls.exists() else []


def test_a_second_run_installs_nothing(checkout: Path) -> None:
    first = setup(checkout)
    assert "pip install -q -e .[cpu,langchain,serve]" in first
    assert setup(checkout) == []


def test_a_changed_pyproject_extra_or_force_reinstalls(checkout: Path) -> None:
    setup(checkout)
    with (checkout / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    assert setup(checkout) != []
    assert setup(checkout) == []
    assert "pip install -q -e .[gpu,langchain,serve]" in setup(checkout, PAGERAG_EXTRA="gpu")
    assert setup(checkout, "--force") != []


def test_unknown_options_are_refused(checkout: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        setup(checkout, "--devv")
    assert info.value.returncode == 2
    assert b"unknown option --devv" in info.value.stderr


def test_dev_installs_the_torch_extra_from_pypis_own_builds(checkout: Path) -> None:
    """--dev adds pagerag[torch] with torch/torchvision pinned by === (no local '+cpu'
    build can match), in a pip call of its own; PAGERAG_TORCH=0 leaves it out."""
    missing = [t for t in ("docker-compose", "qpdf", "chromium") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: setup.sh --dev would run apt-get")
    calls = setup(checkout, "--dev", PAGERAG_TORCH="1")
    assert "pip install -q -e .[cpu,langchain,serve,testing,dev,ray]" in calls
    assert "pip install -q -e .[torch] torch===2.13.0 torchvision===0.28.0" in calls
    assert setup(checkout, "--dev", PAGERAG_TORCH="1") == []
    assert setup(checkout, PAGERAG_TORCH="1") == []  # a dev install serves a runtime setup
    without = setup(checkout, "--dev", PAGERAG_TORCH="0")
    assert without and not any("torch" in call for call in without)
