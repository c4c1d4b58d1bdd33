"""``pagerag search`` and ``pagerag ask``."""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table
from rich.text import Text

from pipeline.cli.common import (
    ConfigOpt,
    DocOpt,
    JsonOpt,
    K,
    MetaOpt,
    ModeOpt,
    SourceOpt,
    err,
    error_line,
    fail,
    make_rag,
    out,
    page_filter,
)
from pipeline.errors import PageRAGError
from pipeline.retrieve.display import describe_lanes, text_snippet

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command()(search)
    app.command()(ask)


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
    """Rank pages by similarity to QUERY (no VLM needed).

    By the page images (late interaction, the visual lane), by the pages' text (BM25,
    the text lane: --mode text) or both fused (--mode hybrid); each hit says which
    lane found it, at which rank, and shows the start of its text when it has some.
    """
    rag = make_rag(config)
    try:
        with rag:
            hits = rag.search(query, k, filter=page_filter(source, document, meta), mode=mode)
    except PageRAGError as exc:
        fail(exc)
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
        "lanes": dict(hit.lanes),
        "snippet": text_snippet(hit.text),
    }


def _print_hits(hits: list[Any]) -> None:
    """The hits as a table; a "found by" column (lanes and ranks) when the text lane took
    part, and under each file the start of the page's text when it has some."""
    found_by = any(dict(hit.lanes) != {"visual": rank} for rank, hit in enumerate(hits, 1))
    table = Table()
    for column in ("#", "score", "page", "file", *(["found by"] if found_by else [])):
        table.add_column(
            column,
            justify="right" if column in ("#", "score", "page") else "left",
            overflow="fold",
        )
    for rank, hit in enumerate(hits, 1):
        where = Text(hit.source)
        snippet = text_snippet(hit.text)
        if snippet:
            where.append("\n" + snippet, style="dim")
        row: list[str | Text] = [str(rank), f"{hit.score:.3f}", str(hit.page_number), where]
        table.add_row(*row, *([describe_lanes(hit.lanes) or "-"] if found_by else []))
    out.print(table)


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
    OPENAI_API_KEY. Without one, prints the pages it retrieved and how to configure a VLM,
    and exits 2 (a configuration error); with no page to answer from, it exits 1.
    """
    from pipeline.answer.answerer import NO_VLM_MESSAGE, NoVLMAnswerer

    rag = make_rag(config)
    flt = page_filter(source, document, meta)
    try:
        with rag:
            if isinstance(rag.answerer, NoVLMAnswerer):
                hits = rag.search(question, k, filter=flt, mode=mode)
                _unanswered(question, hits, f"no answer: {NO_VLM_MESSAGE}", json_out, code=2)
            if stream and not json_out:
                streaming = rag.ask_stream(question, k, filter=flt, mode=mode)
                for delta in streaming:
                    out.print(delta, end="", highlight=False)
                out.print()
                answer = streaming.answer
            else:
                answer = rag.ask(question, k, filter=flt, mode=mode)
                if not json_out and answer.answered:
                    out.print(answer.text, highlight=False)
    except PageRAGError as exc:
        fail(exc)
    if not answer.answered:  # no page to answer from (an empty collection or filter)
        _unanswered(question, list(answer.sources), answer.text, json_out, code=1)
    if json_out:
        out.print_json(json.dumps(_answer_dict(question, answer)))
        return
    if answer.sources:
        out.print()
        out.print("pages sent:", style="bold")
        _print_hits(list(answer.sources))


def _answer_dict(question: str, answer: Any) -> dict[str, Any]:
    return {
        "question": question,
        "answered": answer.answered,
        "answer": answer.text if answer.answered else None,
        "error": None,
        "model": answer.model,
        "sources": [_hit_dict(h) for h in answer.sources],
        "cited": [_hit_dict(h) for h in answer.cited],
        "retrieved": [_hit_dict(h) for h in answer.sources],
        "usage": None if answer.usage is None else vars(answer.usage),
    }


def _unanswered(question: str, hits: list[Any], why: str, json_out: bool, *, code: int) -> NoReturn:
    """No answer: say why on stderr, show what was retrieved (sent to no model), exit ``code``."""
    if json_out:
        data = {
            "question": question,
            "answered": False,
            "answer": None,
            "error": why,
            "model": None,
            "sources": [],  # pages shown to a model: none
            "cited": [],
            "retrieved": [_hit_dict(h) for h in hits],
            "usage": None,
        }
        out.print_json(json.dumps(data))
    else:
        err.print(error_line(why))
        if hits:
            out.print("retrieved (not sent to any model):", style="bold")
            _print_hits(hits)
    raise typer.Exit(code)
