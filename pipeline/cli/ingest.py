"""``pagerag ingest``: the job, its progress bar and its report."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.progress import ProgressColumn
from rich.table import Table
from rich.text import Text

from pipeline.cli.common import (
    ConfigOpt,
    JsonOpt,
    err,
    error_line,
    fail,
    make_rag,
    out,
    parse_meta,
    plural,
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
    engine: Annotated[
        str | None,
        typer.Option(
            help="local (threads on this machine, the default) or ray (Ray Data on a Ray "
            "cluster, the ray extra; ingest.engine).",
        ),
    ] = None,
    lanes: Annotated[
        str | None,
        typer.Option(
            help="Retrieval lanes the pages get (ingest.lanes). visual: the page image "
            "through the embedding model (MaxSim search). text: the page's text layer "
            "(pdftotext) as a BM25 vector: no embedding model is loaded, pages are still "
            "rendered and their images stored for `ask`; scans and image files get no "
            "text. visual+text (or visual,text): both, for hybrid search. auto (default): "
            "the lanes of the existing collection, visual+text for a new one. A collection "
            "with pages keeps its lanes: add one with `pagerag reindex --text` / "
            "`--visual`.",
            callback=lambda value: _lanes(value),
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="--engine ray: the cluster (auto, ray://head:10001); unset: a local Ray "
            "on this machine, started for this job (~10 s on 2 cores; ray.address)."
        ),
    ] = None,
    embed_actors: Annotated[
        int | None,
        typer.Option(
            help="--engine ray: embed actors, each loading the model once (ray.embed_actors).",
            min=1,
        ),
    ] = None,
    gpus_per_actor: Annotated[
        float | None,
        typer.Option(
            help="--engine ray: GPUs per embed actor (ray.gpus_per_actor); a cluster with "
            "fewer GPUs than the actors need is refused at once (exit 2).",
            min=0,
        ),
    ] = None,
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
    if engine:
        overrides.setdefault("ingest", {})["engine"] = engine
    if lanes:
        overrides.setdefault("ingest", {})["lanes"] = lanes
    ray = {"address": ray_address, "embed_actors": embed_actors, "gpus_per_actor": gpus_per_actor}
    if any(value is not None for value in ray.values()):
        overrides["ray"] = {key: value for key, value in ray.items() if value is not None}
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
        if report.error:  # what stopped the job, said once (the files say it in short)
            err.print(error_line(report.error), highlight=False)
    raise typer.Exit(report.exit_code)


_LANES = ("auto", "visual", "text", "visual+text")


def _lanes(value: str | None) -> str | None:
    """``--lanes`` as ``ingest.lanes`` spells it: ``visual,text`` or ``text+visual`` is
    ``visual+text``."""
    if value is None:
        return None
    parts = {part.strip().lower() for part in value.replace(",", "+").split("+")}
    canonical = "+".join(lane for lane in ("visual", "text") if lane in parts)
    if parts == {"auto"}:
        return "auto"
    if not canonical or parts - {"visual", "text"}:
        raise typer.BadParameter(f"{value!r}: use one of {', '.join(_LANES)} (or visual,text)")
    return canonical


class _progress:
    """A rich progress bar on stderr when it is a terminal.

    Pages are counted up front (the job's count pass): until the count is
    done the total shows as still counting and no ETA is given. The ETA is
    the pages left at the rate since the first page was stored, recomputed at
    every refresh, so it grows while nothing moves. Log records and warnings
    (a Ctrl-C notice) are printed above the bar, each on its own line.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._handlers: list[logging.Handler] = []

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import BarColumn, Progress, TextColumn

        self._bar = Progress(
            TextColumn("ingest", style="bold", markup=False),
            BarColumn(bar_width=20),
            _StatusColumn(),
            console=err,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("ingest", total=None, event=None, first=None)
        self._route_logs()
        return self.update

    def update(self, event: Any) -> None:
        task = self._bar.tasks[0]
        first = task.fields["first"]
        if first is None and event.pages_done:
            first = (time.monotonic(), event.pages_done)
        self._bar.update(
            self._task,
            completed=event.pages_done,
            total=None if event.counting else event.pages_total,
            event=event,
            first=first,
        )

    def _route_logs(self) -> None:
        """Print log records (and warnings) through the bar's console while it runs."""
        root = logging.getLogger()
        self._handlers = list(root.handlers)
        console = self._bar.console

        class ToConsole(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                console.print(f"{record.levelname.lower()}: {record.getMessage()}", style="yellow")

        for handler in self._handlers:
            root.removeHandler(handler)
        root.addHandler(ToConsole(logging.WARNING))
        logging.captureWarnings(True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is None:
            return
        self._bar.__exit__(*exc)
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in self._handlers:
            root.addHandler(handler)
        logging.captureWarnings(False)


class _StatusColumn(ProgressColumn):
    """``58/104 pages · 2.1 pages/s · 0:00:27 · ETA 0:00:22 · files 5/11 (2 unchanged)``."""

    def render(self, task: Any) -> Text:
        event = task.fields.get("event")
        if event is None:
            return Text("starting…")
        elapsed = timedelta(seconds=int(task.elapsed or 0))
        if event.counting:
            pages = f"{event.pages_done}/{event.pages_total}+ pages (counting)"
        else:
            pages = f"{event.pages_done}/{event.pages_total} pages"
        parts = [pages]
        rate = self._rate(task)
        if rate is not None:
            parts.append(f"{rate:.2f} pages/s")
        parts.append(str(elapsed))
        if not event.counting and rate:
            left = max(0, event.pages_total - event.pages_done) / rate
            parts.append(f"ETA {timedelta(seconds=int(left))}")
        files = f"files {event.files_done}/{event.files_total}"
        if event.files_skipped:
            files += f" ({event.files_skipped} unchanged)"
        parts.append(files)
        return Text(" · ".join(parts))

    @staticmethod
    def _rate(task: Any) -> float | None:
        """Pages per second since the first page was stored (None: too early to say)."""
        first = task.fields.get("first")
        if first is None:
            return None
        since, at = first
        seconds = time.monotonic() - since
        pages = task.completed - at
        return pages / seconds if seconds >= 2 and pages > 0 else None


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
        table.add_row(Text(o.status, style=colour[o.status]), o.path, pages, detail)
    if len(report.outcomes) <= 200:
        out.print(table)
    counts = ", ".join(
        f"{report.count(s)} {s}" for s in ("ingested", "skipped", "partial", "failed")
    )
    rate = report.pages_ingested / report.seconds if report.seconds else 0.0
    summary = Text(
        f"{plural(len(report.outcomes), 'file')}: {counts}; "
        f"{plural(report.pages_ingested, 'page')} in {report.seconds:.1f} s ({rate:.2f} pages/s)"
    )
    if report.interrupted:
        summary.append("; ").append("interrupted: rerun to resume", style="yellow")
    out.print(summary)
