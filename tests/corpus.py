"""Where the shared test corpus is: ``$PAGERAG_TEST_CORPUS``, else ``../shared/corpus``.

The corpus (real-world PDFs for the ingest, crash, robustness and LangChain
tests; see the README's Tests section) is never copied into this repository:
several of its licences are non-commercial or share-alike. Tests that need it
take the ``corpus`` fixture and are skipped, saying where it was looked for,
when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CORPUS_ENV", "corpus_location", "missing_reason"]

CORPUS_ENV = "PAGERAG_TEST_CORPUS"
_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def corpus_location(environ: Mapping[str, str] | None = None) -> Path:
    """``$PAGERAG_TEST_CORPUS`` (``~`` expanded) when set, else ``../shared/corpus``."""
    env = os.environ if environ is None else environ
    value = env.get(CORPUS_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else _DEFAULT


def missing_reason(location: Path) -> str:
    return (
        f"test corpus not found at {location}: set {CORPUS_ENV}=DIR to the folder holding "
        "qa/ and robust/ (or clone with ../shared beside the repository)"
    )
