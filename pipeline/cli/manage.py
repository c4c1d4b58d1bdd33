"""``pagerag status`` and ``pagerag delete``: what is stored, and removing it."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from pipeline.cli.common import (
    ConfigOpt,
    JsonOpt,
    err,
    fail,
    make_rag,
    out,
)
from pipeline.errors import PageRAGError, QueryError
from pipeline.types import CollectionSpec

if TYPE_CHECKING:
    from pipeline.retrieve.inventory import Status

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
    out.print(_status_table(info, data))
    if info.spec is None:
        out.print("nothing ingested yet: run `pagerag ingest FILES…`")
    elif not info.spec.has_visual:
        out.print(
            "text lane only: no page has visual vectors yet (`pagerag reindex --visual` "
            "adds them with the configured model)"
        )
    elif info.spec.identity is None:
        out.print(
            "the weights that made these vectors are not recorded (written by an older "
            "pagerag): the next ingest or search records the configured ones"
        )
    elif info.spec.identity.stand_in:
        out.print(
            "these vectors come from the random-weight stand-in model: useless for "
            "retrieval quality",
            style="yellow",
        )
    for d in data.get("document_list", []):
        state = (
            ""
            if d["complete"]
            else f"  incomplete: {d['incomplete']} {d['pages']}/{d['total_pages']}"
        )
        out.print(f"{d['document_id'][:12]}  {d['pages']:>5} p  {d['source']}{state}")


def _status_table(info: Status, data: dict[str, Any]) -> Table:
    """The collection, model and weights, documents and pages, and their bytes, in words."""
    spec = info.spec
    rows = [("collection", data["collection"]), ("engine", f"{data['engine']}, {data['location']}")]
    if spec is not None:
        weights = (
            f"fingerprint {data['model_fingerprint']}, from {data['model_source']}"
            if data["model_fingerprint"]
            else "not recorded"
        )
        rows += [("model", data["model"]), ("weights", weights)]
    if spec is None or spec.model != info.configured_model:
        rows.append(("configured", info.configured_model))
    incomplete = data["incomplete_documents"]
    documents = str(data["documents"])
    if incomplete:
        documents += f" ({incomplete} incomplete: see status --documents)"
    rows += [("documents", documents), ("pages", str(data["pages"]))]
    if spec is not None:
        rows.append(("lanes", _lanes(spec)))
        pooled = f"pooled {', '.join(spec.pooled)}" if spec.pooled else "no pooled vectors"
        quantized = "no quantization" if spec.quantization == "none" else spec.quantization
        rows.append(("storage", f"{spec.datatype}, {quantized}, {pooled}"))
    if data["pages"]:
        rows += _size_rows(data)
    table = Table(show_header=False, box=None)
    for label, value in rows:
        table.add_row(Text(label, style="bold"), value)
    return table


def _lanes(spec: CollectionSpec) -> str:
    """The collection's lanes in words, with the command that adds a missing one."""
    parts = []
    if spec.has_visual:
        parts.append("visual (MaxSim on page images)")
    if spec.has_text:
        parts.append(f"text (BM25, {spec.text_language})")
    missing = [lane for lane in ("visual", "text") if lane not in spec.lanes]
    fix = "".join(f"; `pagerag reindex --{lane}` adds {lane}" for lane in missing)
    return " + ".join(parts) + fix


def _size_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Bytes in total and per page: on disk, the vectors, the rest (mostly page images)."""
    pages = data["pages"]

    def size(total: int) -> str:
        return f"{human_bytes(total)}, {human_bytes(total / pages)} per page"

    on_disk = data["bytes_on_disk"]
    rows = [("on disk", "not reported by a Qdrant server" if on_disk is None else size(on_disk))]
    per_page = data["vector_bytes_per_page"]
    if data["lanes"] is not None and "visual" not in data["lanes"]:
        rows.append(("vectors", "none: text lane only (sparse BM25 vectors are a few KB a page)"))
        return [*rows, ("images etc.", f"{size(on_disk)}")] if on_disk is not None else rows
    if per_page is None:
        return [*rows, ("vectors", "not computed: the model's tokens per page vary")]
    names = [name for name in ("full", "pooled", "quantized") if per_page[name]]
    parts = [f"{name} {human_bytes(per_page[name])}" for name in names]
    rows.append(("vectors", f"{size(data['vector_bytes'])} ({' + '.join(parts)})"))
    if data["other_bytes_on_disk"] is not None:
        rows.append(
            (
                "images etc.",
                f"{size(data['other_bytes_on_disk'])} (page images, payloads, indexes: "
                "on disk minus vectors)",
            )
        )
    return rows


def human_bytes(count: float) -> str:
    """``263.7 KB``: decimal units (1 KB = 1000 B), as the docs give sizes."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


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
            msg = (
                Text(f"deleted {len(ids)} document(s)")
                if ids
                else Text("nothing matched", "yellow")
            )
            out.print(Text.assemble(f"{target}: ", msg))
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
        err.print(f"  {record.document_id[:12]}  {record.source or '(unfinished)'}")
    if len(found) > 20:
        err.print(f"  … and {len(found) - 20} more")
    if not typer.confirm(f"delete these {len(found)} documents?", default=False, err=True):
        err.print("nothing deleted")
        raise typer.Exit(1)
