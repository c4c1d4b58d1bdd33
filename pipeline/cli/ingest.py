"""``pagerag ingest``: the job, its progress bar and its report."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from pipeline.cli.common import (
    ConfigOpt,
    JsonOpt,
    err,
    fail,
    make_rag,
    out,
    parse_meta,
)
from pipeline.errors import PageRAGError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command()(ingest)


def ingest(
    inputs: Annotated[
        list[str],
        typer.Argument(help="PDF/image files, folders (searched recursively) and globs."),
    ],
    config: ConfigOpt = None,
    workers: Annotated[
        int | None, typer.Option(help="Concurrent page renderers (render.workers).", min=1)
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Pages per embedding batch (embedding.batch_size).", min=1),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            help="Password for encrypted PDFs (per-file passwords: render.passwords in the "
            "config). Prefer the config or a prompt over shell history.",
        ),
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(help="Metadata KEY=VALUE attached to every page (filterable). Repeatable."),
    ] = None,
    retry_incomplete: Annotated[
        bool,
        typer.Option(
            "--retry-incomplete",
            help="Redo documents stored incomplete (truncated by render.max_pages, timed out, "
            "pages failed) even when no limit changed. Without it they are redone only when a "
            "render limit changed since they were stored.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Render, embed and store documents. Unchanged files are skipped; changed ones replaced.

    Safe to rerun or kill: a rerun resumes where the last run stopped, without duplicates,
    and leaves one version per path. --meta on an unchanged file updates its metadata
    without re-embedding. Exit code 0 when every file was ingested or unchanged and whole,
    1 when some failed or are stored with failed pages, 2 on usage or configuration errors.
    """
    overrides: dict[str, dict[str, Any]] = {}
    if workers:
        overrides["render"] = {"workers": workers}
    if batch_size:
        overrides["embedding"] = {"batch_size": batch_size}
    rag = make_rag(config, overrides)
    metadata = parse_meta(meta)
    show = not quiet and not json_out and err.is_terminal
    try:
        with rag, _progress(show) as progress:
            report = rag.ingest(
                inputs,
                password=password,
                metadata=metadata,
                progress=progress,
                handle_signals=True,
                retry_incomplete=retry_incomplete,
            )
    except PageRAGError as exc:
        fail(exc)
    except KeyboardInterrupt:  # a second Ctrl-C: typer would exit 130 silently
        err.print("aborted: pages stored so far are kept; rerun the same command to resume")
        raise typer.Exit(130) from None
    if json_out:
        out.print_json(json.dumps(report.to_dict()))
    else:
        _print_report(report)
    raise typer.Exit(report.exit_code)


class _progress:
    """A rich progress bar on stderr (pages/s, ETA) when it is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("pages"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[files]}"),
            console=err,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("ingest", total=None, rate="", files="")
        return self.update

    def update(self, event: Any) -> None:
        task = self._bar.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = f"{event.pages_done / elapsed:.2f} pages/s" if elapsed > 0 else ""
        self._bar.update(
            self._task,
            completed=event.pages_done,
            total=event.pages_total or None,
            rate=rate,
            files=f"files {event.files_done}/{event.files_total}",
        )

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _print_report(report: Any) -> None:
    colour = {"ingested": "green", "skipped": "dim", "partial": "yellow", "failed": "red"}
    table = Table(title="ingest report", show_lines=False)
    table.add_column("status")
    table.add_column("file", overflow="fold")  # a path is useless cut short
    table.add_column("pages", justify="right")
    table.add_column("detail", overflow="fold")
    for o in report.outcomes:
        pages = str(o.pages) if o.status != "skipped" else f"({o.total_pages})"
        detail = o.message or ""
        if o.replaced:
            detail = (detail + " " if detail else "") + f"replaced {len(o.replaced)} old version(s)"
        table.add_row(f"[{colour[o.status]}]{o.status}[/]", o.path, pages, detail)
    if len(report.outcomes) <= 200:
        out.print(table)
    counts = ", ".join(
        f"{report.count(s)} {s}" for s in ("ingested", "skipped", "partial", "failed")
    )
    rate = report.pages_ingested / report.seconds if report.seconds else 0.0
    out.print(
        f"{len(report.outcomes)} files: {counts}; {report.pages_ingested} pages in "
        f"{report.seconds:.1f} s ({rate:.2f} pages/s)"
        + ("; [yellow]interrupted: rerun to resume[/]" if report.interrupted else "")
    )
