"""``pagerag models``: every model pagerag can embed with, to choose one.

For each registered model: the backend that runs it and whether that backend
is installed here, vector dimension, vectors per page (fixed, or what they
vary with), download size, licence, the published ViDoRe v1 score, and where
it runs well (CPU, GPU). Nothing is loaded or imported from the backends
(``importlib.util.find_spec`` only), so it is instant.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import typer
from rich.table import Table

from pipeline.cli.common import JsonOpt, out
from pipeline.errors import install_command
from pipeline.models import MODELS, VIDORE_SOURCE, ModelSpec

__all__ = ["register"]

# The module each backend needs, and the extra that installs it.
_BACKEND_NEEDS = {"fastembed": ("fastembed", "cpu or gpu"), "torch": ("colpali_engine", "torch")}


def register(app: typer.Typer) -> None:
    """Add the ``models`` command to ``app``."""
    app.command("models")(models)


def models(jsonout: JsonOpt = False) -> None:
    """List every supported embedding model: backend, size, licence, vectors per page,
    ViDoRe score and where it runs well.

    Pick one with embedding.model (PAGERAG_EMBEDDING__MODEL=NAME); the backend
    follows the model (embedding.backend: auto).
    """
    rows = [describe(spec) for spec in MODELS.values()]
    if jsonout:
        out.print_json(json.dumps({"models": rows, "vidore_source": VIDORE_SOURCE}))
        return
    table = Table(title="pagerag models", title_justify="left")
    table.add_column("model", no_wrap=True)
    for column in ("backend", "dim", "vectors/page", "download", "licence", "ViDoRe v1"):
        table.add_column(column, overflow="fold")
    table.add_column("runs well on", overflow="fold")
    for row in rows:
        backend = row["backend"] + ("" if row["installed"] else " (not installed)")
        table.add_row(
            row["name"],
            backend,
            str(row["dim"]),
            row["vectors_per_page"],
            f"~{row['size_gb']:g} GB",
            row["license"],
            "-" if row["vidore_v1"] is None else f"{row['vidore_v1']:g}",
            row["fits"],
        )
    out.print(table)
    out.print(
        f"ViDoRe v1: {VIDORE_SOURCE}. Torch models need the torch extra "
        f"({install_command('torch')}); "
        "torch download sizes are estimates (parameters x 2 bytes).",
        highlight=False,
    )


def describe(spec: ModelSpec) -> dict[str, Any]:
    """One model as ``pagerag models --json`` lists it."""
    module, extra = _BACKEND_NEEDS[spec.backend]
    return {
        "name": spec.name,
        "backend": spec.backend,
        "installed": importlib.util.find_spec(module) is not None,
        "extra": extra,
        "dim": spec.dim,
        "tokens_per_page": spec.tokens_per_page,
        "vectors_per_page": spec.vectors_per_page,
        "patch_grid": "fixed" if spec.patch_grid else "per page" if spec.per_page_grid else None,
        "size_gb": spec.size_gb,
        "license": spec.license,
        "vidore_v1": spec.vidore_v1,
        "fits": spec.fits,
        "query_processing": spec.query_processing,
        "notes": spec.notes,
    }
