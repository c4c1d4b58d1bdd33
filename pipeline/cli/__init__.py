"""The ``pagerag`` command line: one module per command group.

``common`` holds what they share; each group module has ``register(app)``,
called here, so no command module imports this one back.
"""

from __future__ import annotations

import logging
import sys

import typer

from pipeline.cli import eval as eval_commands
from pipeline.cli import ingest, manage, models, query, reindex, serve
from pipeline.cli.common import err

__all__ = ["app", "main"]

app = typer.Typer(
    name="pagerag",
    help=(
        "Ask questions about PDFs and scans by their page images (ColPali + Qdrant + a VLM).\n\n"
        "Configuration: --config FILE or $PAGERAG_CONFIG (YAML, see configs/default.yaml); "
        "any key can be overridden as PAGERAG_<SECTION>__<KEY>, e.g. "
        "PAGERAG_STORE__URL=http://localhost:6333 or PAGERAG_EMBEDDING__MODEL_PATH=/models/colpali."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for group in (ingest, manage, query, eval_commands, reindex, serve, models):
    group.register(app)


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        err.print("aborted")
        sys.exit(130)
