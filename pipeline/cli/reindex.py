"""``pagerag reindex --pooled``: add pooled vectors to an existing collection in place.

``register(app)`` adds it to an app (``pipeline.cli`` does it for
``pagerag``). Same conventions as the other commands: ``--config FILE``, ``--json`` on stdout,
progress on stderr only on a terminal, exit 0 on success (a rerun with
nothing left to do included), 1 on a runtime error, 2 on a usage or
configuration error.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from pipeline.cli.common import ConfigOpt, err, error_line, fail, out
from pipeline.config import load_config
from pipeline.errors import PageRAGError
from pipeline.retrieve.reindex import ReindexProgress, ReindexReport

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``reindex`` command to ``app``."""
    app.command("reindex")(reindex)


def reindex(
    pooled: Annotated[
        bool,
        typer.Option(
            "--pooled",
            help="Compute the pooled row/column vectors two_stage retrieval needs from the "
            "stored full vectors (no re-embedding).",
        ),
    ] = False,
    token_pooling: Annotated[
        int | None,
        typer.Option(
            "--token-pooling",
            metavar="FACTOR",
            help="Merge each stored page's vectors into ~1/FACTOR as many (hierarchical token "
            "pooling, pagerag[torch]); no re-embedding. Row/column vectors are added first "
            "when missing. Set embedding.token_pooling to the same FACTOR for later ingests.",
            min=2,
        ),
    ] = None,
    config: ConfigOpt = None,
    batch: Annotated[int, typer.Option(help="Pages read and written per batch.", min=1)] = 64,
    jsonout: Annotated[
        bool, typer.Option("--json", help="Print JSON on stdout instead of a summary.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Upgrade an existing collection in place: --pooled (two_stage search) or
    --token-pooling FACTOR (fewer vectors per page), from the stored vectors.

    Safe to interrupt and rerun: a rerun finishes the pages still missing, and
    the manifest changes only when every page has the new vectors. On a
    finished collection it changes nothing.
    """
    if not pooled and token_pooling is None:
        err.print(
            error_line("nothing to do: pass --pooled or --token-pooling FACTOR"), highlight=False
        )
        raise typer.Exit(2)
    from pipeline.api import PageRAG

    try:
        rag = PageRAG(load_config(config))
        with rag, _Progress(not quiet and not jsonout and err.is_terminal) as progress:
            if token_pooling is not None:
                report = rag.reindex_token_pooling(token_pooling, batch=batch, progress=progress)
            else:
                report = rag.reindex_pooled(batch=batch, progress=progress)
    except PageRAGError as exc:
        fail(exc)
    if jsonout:
        out.print_json(json.dumps(report.to_dict()))
    else:
        out.print(_summary(report), highlight=False)


def _summary(report: ReindexReport) -> str:
    if report.token_pooling:
        if report.no_op:
            return (
                f"collection {report.collection!r} is already token-pooled by "
                f"{report.token_pooling} on all {report.pages} pages: nothing to do"
            )
        return (
            f"collection {report.collection!r}: token-pooled {report.pages_updated} of "
            f"{report.pages} pages by {report.token_pooling} in {report.seconds:.1f} s; set "
            f"embedding.token_pooling: {report.token_pooling} for later ingests"
        )
    if report.no_op:
        return (
            f"collection {report.collection!r} already has pooled vectors "
            f"({', '.join(report.pooled)}) on all {report.pages} pages: nothing to do"
        )
    return (
        f"collection {report.collection!r}: pooled vectors written for {report.pages_updated} "
        f"of {report.pages} pages in {report.seconds:.1f} s; two_stage retrieval is available "
        f"(vectors: {', '.join(report.pooled)})"
    )


class _Progress:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._bar = Progress(
            TextColumn("[bold]reindex"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("pages"),
            console=err,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("reindex", total=None)
        return self.update

    def update(self, event: ReindexProgress) -> None:
        self._bar.update(self._task, completed=event.pages_done, total=event.pages_total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
