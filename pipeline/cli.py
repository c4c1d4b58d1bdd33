"""The ``pagerag`` command line.

Exit codes: 0 success; 1 some files failed (ingest) or a runtime error
(store down, VLM failed); 2 usage or configuration error. ``--json`` prints
machine-readable output on stdout; progress and errors go to stderr, and the
progress bar appears only on a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.cli_eval import register as register_eval_commands
from pipeline.cli_reindex import register as register_reindex_command
from pipeline.config import CONFIG_ENV, load_config
from pipeline.errors import (
    ConfigError,
    OptionalDependencyError,
    PageRAGError,
    QueryError,
)

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
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

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


def _fail(error: PageRAGError) -> NoReturn:
    code = 2 if isinstance(error, (ConfigError, QueryError, OptionalDependencyError)) else 1
    err.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
    raise typer.Exit(code)


def _rag(config: Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> Any:
    from pipeline.api import PageRAG

    try:
        return PageRAG(load_config(config, overrides=overrides))
    except PageRAGError as exc:
        _fail(exc)


def _parse_meta(items: list[str] | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--meta")
        meta[key.strip()] = value
    return meta


def _filter(
    source: str | None, document: list[str] | None, meta: list[str] | None
) -> dict[str, Any] | None:
    flt: dict[str, Any] = dict(_parse_meta(meta))
    if source:
        flt["source"] = source
    if document:
        flt["document_id"] = list(document)
    return flt or None


@app.command()
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
    rag = _rag(config, overrides)
    metadata = _parse_meta(meta)
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
        _fail(exc)
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


@app.command()
def status(
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    documents: Annotated[bool, typer.Option("--documents", help="List every document.")] = False,
) -> None:
    """Show the collection: engine, model, documents, pages and bytes on disk."""
    rag = _rag(config)
    try:
        with rag:
            info = rag.status()
    except PageRAGError as exc:
        _fail(exc)
    data = info.to_dict()
    if documents:
        data["document_list"] = [
            {
                "document_id": d.document_id,
                "source": d.source,
                "source_alias": d.source_alias,
                "pages": d.page_count,
                "total_pages": d.total_pages,
                "complete": d.is_complete,
                "incomplete": d.incomplete,
                "failed_pages": list(d.failed_pages),
                "ingested_at": d.ingested_at,
            }
            for d in info.documents
        ]
    if json_out:
        out.print_json(json.dumps(data))
        return
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        if key != "document_list":
            table.add_row(f"[bold]{key}", "-" if value is None else str(value))
    out.print(table)
    if info.spec is None:
        out.print("nothing ingested yet: run `pagerag ingest FILES…`")
    elif info.spec.identity is None:
        out.print(
            "the weights that made these vectors are not recorded (written by an older "
            "pagerag): the next ingest or search records the configured ones"
        )
    elif info.spec.identity.stand_in:
        out.print(
            "[yellow]these vectors come from the random-weight stand-in model: useless for "
            "retrieval quality[/]"
        )
    for d in data.get("document_list", []):
        state = (
            ""
            if d["complete"]
            else f"  incomplete: {d['incomplete']} {d['pages']}/{d['total_pages']}"
        )
        out.print(f"{d['document_id'][:12]}  {d['pages']:>5} p  {d['source']}{state}")


@app.command()
def delete(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="What to delete: a path a document was ingested from (as given or resolved), "
            "a folder (every document under it), a document id, or a unique prefix of one "
            "(the short id `status --documents` shows)."
        ),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete several documents without asking.")
    ] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete documents: all their pages, stored images and completion marks.

    Pages a killed job left without a completion mark go too. A target that matches
    more than one document (a folder) asks first on a terminal; elsewhere pass --yes.
    Exit code 0 when every target matched, 1 when one matched nothing.
    """
    rag = _rag(config)
    removed: dict[str, list[str]] = {}
    try:
        with rag:
            for target in targets:
                found = rag.find_documents(target)
                if len(found) > 1 and not yes:
                    _confirm_many(target, found)
                removed[target] = [r.document_id for r in rag.delete(target)]
    except PageRAGError as exc:
        _fail(exc)
    if json_out:
        out.print_json(json.dumps({"deleted": removed}))
    else:
        for target, ids in removed.items():
            msg = f"deleted {len(ids)} document(s)" if ids else "[yellow]nothing matched[/]"
            out.print(f"{escape(target)}: {msg}")
    raise typer.Exit(0 if all(removed.values()) else 1)


def _confirm_many(target: str, found: list[Any]) -> None:
    """Ask before a delete of several documents; refuse without a terminal."""
    if not sys.stdin.isatty():
        _fail(
            QueryError(
                f"{target} matches {len(found)} documents; pass --yes to delete them all "
                "(nothing was deleted)"
            )
        )
    for record in found[:20]:
        err.print(f"  {record.document_id[:12]}  {escape(record.source or '(unfinished)')}")
    if len(found) > 20:
        err.print(f"  … and {len(found) - 20} more")
    if not typer.confirm(f"delete these {len(found)} documents?", default=False, err=True):
        err.print("nothing deleted")
        raise typer.Exit(1)


K = Annotated[int | None, typer.Option("-k", "--k", help="How many pages (retrieval.k).")]
ModeOpt = Annotated[
    str | None,
    typer.Option(help="exact (full MaxSim scan), two_stage (pooled prefetch + rerank) or auto."),
]
SourceOpt = Annotated[
    str | None, typer.Option(help="Only pages from this file or from files under this folder.")
]
DocOpt = Annotated[list[str] | None, typer.Option("--document", help="Only this document id.")]
MetaOpt = Annotated[
    list[str] | None, typer.Option("--meta", help="Only pages ingested with --meta KEY=VALUE.")
]


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    k: K = None,
    mode: ModeOpt = None,
    source: SourceOpt = None,
    document: DocOpt = None,
    meta: MetaOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Rank pages by late-interaction similarity to QUERY (no VLM needed)."""
    rag = _rag(config)
    try:
        with rag:
            hits = rag.search(query, k, filter=_filter(source, document, meta), mode=mode)
    except PageRAGError as exc:
        _fail(exc)
    if json_out:
        out.print_json(json.dumps({"query": query, "hits": [_hit_dict(h) for h in hits]}))
        return
    if not hits:
        out.print("no pages matched (is anything ingested? `pagerag status`)")
        return
    _print_hits(hits)


def _hit_dict(hit: Any) -> dict[str, Any]:
    return {
        "score": round(hit.score, 4),
        "source": hit.source,
        "page": hit.page_number,
        "document_id": hit.document_id,
        "point_id": hit.point_id,
        "meta": hit.payload.get("meta", {}),
    }


def _print_hits(hits: list[Any]) -> None:
    table = Table()
    for column in ("#", "score", "page", "file"):
        table.add_column(
            column,
            justify="right" if column in ("#", "score", "page") else "left",
            overflow="fold",
        )
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit.score:.3f}", str(hit.page_number), hit.source)
    out.print(table)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    k: K = None,
    stream: Annotated[bool, typer.Option(help="Print the answer as it is written.")] = False,
    mode: ModeOpt = None,
    source: SourceOpt = None,
    document: DocOpt = None,
    meta: MetaOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Answer QUESTION from the best-matching page images, citing pages.

    Needs a VLM: vlm.base_url (any OpenAI-compatible endpoint: OpenAI, vLLM, Ollama) and/or
    OPENAI_API_KEY. Without one, prints the retrieved pages and how to configure it.
    """
    rag = _rag(config)
    flt = _filter(source, document, meta)
    try:
        with rag:
            if stream and not json_out:
                streaming = rag.ask_stream(question, k, filter=flt, mode=mode)
                for delta in streaming:
                    out.print(delta, end="", markup=False, highlight=False)
                out.print()
                answer = streaming.answer
            else:
                answer = rag.ask(question, k, filter=flt, mode=mode)
                if not json_out:
                    out.print(answer.text, markup=False, highlight=False)
    except PageRAGError as exc:
        _fail(exc)
    if json_out:
        out.print_json(
            json.dumps(
                {
                    "question": question,
                    "answered": answer.answered,
                    "answer": answer.text,
                    "model": answer.model,
                    "sources": [_hit_dict(h) for h in answer.sources],
                    "cited": [_hit_dict(h) for h in answer.cited],
                    "usage": None if answer.usage is None else vars(answer.usage),
                }
            )
        )
        return
    if answer.sources:
        out.print()
        out.print("[bold]pages sent:[/]")
        _print_hits(list(answer.sources))


register_eval_commands(app)
register_reindex_command(app)


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        err.print("aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
