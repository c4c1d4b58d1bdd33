"""``pagerag reindex``: upgrade an existing collection in place — pooled vectors
(``--pooled``), token pooling (``--token-pooling``), or a retrieval lane it lacks
(``--text``, ``--visual``).

``register(app)`` adds it to an app (``pipeline.cli`` does it for
``pagerag``). Same conventions as the other commands: ``--config FILE``, ``--json`` on stdout,
progress on stderr only on a terminal, exit 0 on success (a rerun with
nothing left to do included), 1 on a runtime error or when a lane could not
be completed (documents skipped: their files moved, changed or unreadable;
the report names them and the fix), 2 on a usage or configuration error.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from pipeline.cli.common import ConfigOpt, err, error_line, fail, out, plural
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
    text: Annotated[
        bool,
        typer.Option(
            "--text",
            help="Add the text lane (BM25 over each page's text layer, in text.language) to a "
            "collection without it: every stored document's text is read again from its file "
            "with pdftotext (no rendering, no model, milliseconds a page; the visual vectors "
            "are untouched). Files must still be where they were ingested, unchanged: others "
            "are reported and skipped. When the lane exists in another language, its stored "
            "texts are re-embedded in text.language. Resumable: a rerun does the pages left.",
        ),
    ] = False,
    visual: Annotated[
        bool,
        typer.Option(
            "--visual",
            help="Add the visual lane to a text-only collection: every stored page is "
            "rendered again and embedded by embedding.model, as an ingest would (its cost: "
            "the model's time per page). Files must still be where they were ingested, "
            "unchanged: others are reported and skipped. Resumable: a rerun does the pages left.",
        ),
    ] = False,
    password: Annotated[
        str | None,
        typer.Option(
            help="With --text / --visual: the password of encrypted PDFs, as for ingest "
            "(per-file passwords: render.passwords in the config).",
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
    --token-pooling FACTOR (fewer vectors per page), from the stored vectors; or
    add a retrieval lane it lacks: --text (re-reads page text, cheap) or --visual
    (re-renders and embeds pages, an ingest's cost).

    Safe to interrupt and rerun: a rerun finishes the pages still missing, and
    the manifest changes only when every page has the new vectors or lane. On a
    finished collection it changes nothing.
    """
    chosen = [pooled, token_pooling is not None, text, visual]
    if sum(chosen) != 1:
        what = "nothing to do" if not any(chosen) else "one upgrade at a time"
        err.print(
            error_line(f"{what}: pass one of --pooled, --token-pooling FACTOR, --text, --visual"),
            highlight=False,
        )
        raise typer.Exit(2)
    from pipeline.api import PageRAG

    try:
        rag = PageRAG(load_config(config))
        with rag, _Progress(not quiet and not jsonout and err.is_terminal) as progress:
            if token_pooling is not None:
                report = rag.reindex_token_pooling(token_pooling, batch=batch, progress=progress)
            elif text:
                report = rag.reindex_text(password=password, batch=batch, progress=progress)
            elif visual:
                report = rag.reindex_visual(password=password, batch=batch, progress=progress)
            else:
                report = rag.reindex_pooled(batch=batch, progress=progress)
    except PageRAGError as exc:
        fail(exc)
    if jsonout:
        out.print_json(json.dumps(report.to_dict()))
    else:
        for skipped in report.skipped:
            lost = plural(skipped.pages, "page")
            err.print(error_line(f"{skipped.message} ({lost})", "skipped:"), highlight=False)
        out.print(_summary(report), highlight=False)
    if not report.complete:
        raise typer.Exit(1)


def _summary(report: ReindexReport) -> str:
    if report.lane is not None:
        return _lane_summary(report)
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


def _lane_summary(report: ReindexReport) -> str:
    lane, name = report.lane, repr(report.collection)
    language = f" (language: {report.text_language})" if lane == "text" else ""
    if not report.complete:
        return (
            f"collection {name}: the {lane} lane written for {report.pages_updated} of "
            f"{report.pages} pages in {report.seconds:.1f} s, but "
            f"{plural(report.pages_missing, 'page')} still lack it "
            f"({plural(len(report.skipped), 'document')} skipped, above), so it is not "
            "recorded and search does not use it yet: fix those files and rerun"
        )
    if report.no_op:
        return (
            f"collection {name} already has the {lane} lane{language} on all "
            f"{report.pages} pages: nothing to do"
        )
    return (
        f"collection {name}: the {lane} lane{language} written for {report.pages_updated} of "
        f"{report.pages} pages in {report.seconds:.1f} s; lanes: {'+'.join(report.lanes)}"
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
