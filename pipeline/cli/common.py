"""What every ``pagerag`` command shares: consoles, common options, errors.

Exit codes: 0 success; 1 some files failed (ingest) or a runtime error
(store down, VLM failed); 2 usage or configuration error, including ``ask``
(or ``eval --answers``) without a VLM configured. ``--json`` prints
machine-readable output on stdout; progress and errors go to stderr, and the
progress bar appears only on a terminal.

Both consoles print text as it is (``markup=False``): file names, queries and
error messages may hold square brackets (``[draft] scan.png``,
``'pagerag[gpu]'``), which Rich markup would swallow. Style goes through
``style=`` or :class:`rich.text.Text`, never through markup in a string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from pipeline.config import CONFIG_ENV, load_config
from pipeline.errors import (
    ConfigError,
    OptionalDependencyError,
    PageRAGError,
    QueryError,
    VLMNotConfiguredError,
)

__all__ = [
    "ConfigOpt",
    "DocOpt",
    "JsonOpt",
    "K",
    "MetaOpt",
    "ModeOpt",
    "SourceOpt",
    "err",
    "error_line",
    "exit_code",
    "fail",
    "make_rag",
    "out",
    "page_filter",
    "parse_meta",
    "plural",
]

out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"YAML config file (default: ${CONFIG_ENV}, else built-in defaults).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]


_USAGE_ERRORS = (ConfigError, QueryError, OptionalDependencyError, VLMNotConfiguredError)


def exit_code(error: PageRAGError) -> int:
    """2 for usage and configuration errors, 1 for runtime ones."""
    return 2 if isinstance(error, _USAGE_ERRORS) else 1


def error_line(message: str, label: str = "error:", style: str = "bold red") -> Text:
    """``error: <message>`` with only the label styled; the message stays as it is."""
    return Text.assemble((label, style), " ", message)


def fail(error: PageRAGError) -> NoReturn:
    err.print(error_line(str(error)), highlight=False)
    raise typer.Exit(exit_code(error))


def make_rag(config: Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> Any:
    from pipeline.api import PageRAG

    try:
        return PageRAG(load_config(config, overrides=overrides))
    except PageRAGError as exc:
        fail(exc)


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def parse_meta(items: list[str] | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--meta")
        meta[key.strip()] = value
    return meta


def page_filter(
    source: str | None, document: list[str] | None, meta: list[str] | None
) -> dict[str, Any] | None:
    flt: dict[str, Any] = dict(parse_meta(meta))
    if source:
        flt["source"] = source
    if document:
        flt["document_id"] = list(document)
    return flt or None


K = Annotated[int | None, typer.Option("-k", "--k", help="How many pages (retrieval.k).")]
ModeOpt = Annotated[
    str | None,
    typer.Option(
        help="How pages are found. visual: the page images (exact MaxSim, or two_stage "
        "on big collections); exact / two_stage: the visual lane so; text: the pages' "
        "text (BM25; no model loaded); hybrid: both lanes fused in one query (retrieval."
        "fusion rrf|dbsf, rrf_k, visual_weight, text_weight, lane_k); auto (default "
        "retrieval.mode): visual, or text on a text-only collection."
    ),
]
SourceOpt = Annotated[
    str | None, typer.Option(help="Only pages from this file or from files under this folder.")
]
DocOpt = Annotated[list[str] | None, typer.Option("--document", help="Only this document id.")]
MetaOpt = Annotated[
    list[str] | None, typer.Option("--meta", help="Only pages ingested with --meta KEY=VALUE.")
]
