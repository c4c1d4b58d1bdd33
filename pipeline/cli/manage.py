"""``pagerag status`` and ``pagerag delete``: what is stored, and removing it."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.cli.common import (
    ConfigOpt,
    JsonOpt,
    err,
    fail,
    make_rag,
    out,
)
from pipeline.errors import PageRAGError, QueryError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(delete)


def status(
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    documents: Annotated[bool, typer.Option("--documents", help="List every document.")] = False,
) -> None:
    """Show the collection: engine, model, documents, pages and bytes on disk."""
    rag = make_rag(config)
    try:
        with rag:
            info = rag.status()
    except PageRAGError as exc:
        fail(exc)
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
    rag = make_rag(config)
    removed: dict[str, list[str]] = {}
    try:
        with rag:
            for target in targets:
                found = rag.find_documents(target)
                if len(found) > 1 and not yes:
                    _confirm_many(target, found)
                removed[target] = [r.document_id for r in rag.delete(target)]
    except PageRAGError as exc:
        fail(exc)
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
        fail(
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
