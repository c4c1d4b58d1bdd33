"""The test corpus can live anywhere: ``PAGERAG_TEST_CORPUS``, else ``../shared/corpus``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.corpus import CORPUS_ENV, corpus_location

ROOT = Path(__file__).resolve().parents[1]


def test_the_variable_names_the_folder(tmp_path: Path) -> None:
    assert corpus_location({CORPUS_ENV: str(tmp_path)}) == tmp_path.resolve()
    assert corpus_location({CORPUS_ENV: "~/corpus"}) == Path.home().resolve() / "corpus"
    assert corpus_location({}) == ROOT.parent / "shared" / "corpus"
    assert corpus_location({CORPUS_ENV: "  "}) == ROOT.parent / "shared" / "corpus"


def test_without_the_corpus_its_tests_skip_saying_where_it_was_looked_for(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-corpus"
    env = {**os.environ, CORPUS_ENV: str(missing)}
    one_test = "tests/test_cli.py::test_table_output_on_ingest"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", one_test],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert f"test corpus not found at {missing}: set {CORPUS_ENV}=DIR" in result.stdout
