"""``pagerag eval`` and ``pagerag explain``: how well the index retrieves, and why a page matched.

:func:`register` adds these two to an app. Exit codes follow the rest of
the CLI: 0 success, 1 a runtime failure (a document missing or failing to
ingest, the store or the VLM failing), 2 a usage or configuration error (bad
option, unknown mode, a file never ingested, a page out of range).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, cast

import typer
from rich.console import Console
from rich.table import Table

from pipeline.cli.common import (
    ConfigOpt,
    JsonOpt,
    ModeOpt,
    err,
    error_line,
    fail,
    make_rag,
    out,
)
from pipeline.errors import PageRAGError

if TYPE_CHECKING:
    from pipeline.evaluate.explain import MapKind
    from pipeline.evaluate.runner import ComparisonResult, EvalProgress, EvalResult, Mode

__all__ = ["register"]


_MAP_KINDS = ("contributions", "combined")


def register(app: typer.Typer) -> None:
    """Add ``eval`` and ``explain`` to the ``pagerag`` app."""
    app.command("eval")(eval_command)
    app.command("explain")(explain_command)


# --------------------------------------------------------------------- eval


_Questions = Annotated[
    Path,
    typer.Argument(
        help="QA set, one JSON object per line: question, doc, evidence_pages (1-based), "
        "optional id, answer, answerable, category, evidence_sources, answer_format "
        "(see docs/evaluation.md).",
        show_default=False,
    ),
]
_Docs = Annotated[
    Path | None,
    typer.Option(
        "--docs",
        help="Folder the questions' doc paths are relative to (default: the questions "
        "file's folder).",
        show_default=False,
    ),
]
_Ks = Annotated[
    list[str] | None,
    typer.Option(
        "-k",
        "--k",
        metavar="K[,K…]",
        help="Cut-offs for recall@k, hit@k and nDCG@k: repeat or comma-separate "
        "(default 1,3,5,10).",
        show_default=False,
    ),
]
_Scope = Annotated[
    str,
    typer.Option(
        help="document: search each question's own document (MMLongBench-Doc's setting); "
        "collection: search everything ingested."
    ),
]
_Compare = Annotated[
    str | None,
    typer.Option(
        metavar="A:B[:C…]",
        help="Compare configurations, each MODE[,KEY=VALUE…] of retrieval.*, in one run "
        "(ingested once): e.g. visual:text:hybrid or "
        "two_stage,prefetch_k=50:two_stage,prefetch_k=400.",
        show_default=False,
    ),
]
_Ingest = Annotated[
    bool,
    typer.Option(
        "--ingest/--no-ingest",
        help="Ingest the documents first (unchanged files are skipped), or use the "
        "collection as it is.",
    ),
]
_Answers = Annotated[
    bool,
    typer.Option("--answers", help="Also have the VLM answer and score the answers (needs a VLM)."),
]
_AnswerK = Annotated[
    int | None, typer.Option(help="Pages shown to the VLM (default retrieval.k).", min=1)
]
_PerQuestion = Annotated[
    bool, typer.Option("--per-question", help="Show (or include in JSON) every question's result.")
]
_SkipMissing = Annotated[
    bool,
    typer.Option(
        "--skip-missing", help="Leave out questions whose document is missing instead of stopping."
    ),
]
_Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def eval_command(
    questions: _Questions,
    docs: _Docs = None,
    k: _Ks = None,
    mode: ModeOpt = None,
    scope: _Scope = "document",
    compare: _Compare = None,
    ingest: _Ingest = True,
    answers: _Answers = False,
    answer_k: _AnswerK = None,
    per_question: _PerQuestion = False,
    skip_missing: _SkipMissing = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    quiet: _Quiet = False,
) -> None:
    """Measure page retrieval on a QA set: recall@k, hit@k, nDCG@k, MRR, overall and per category.

    Ingests the questions' documents (or uses the existing collection with --no-ingest), runs
    every question, and prints the metrics with the configuration evaluated, and hit@k on the
    questions whose gold pages have no text layer. A gold page past the end of its document
    is an error naming the line. --answers scores the VLM's answers too (exact / normalised
    match; declining unanswerable questions) with its token usage. --compare runs the
    questions under several configurations (e.g. visual:text:hybrid) and reports each
    metric per configuration, its difference from the first, and where hybrid's hits came
    from (visual lane, text lane, both, or the fusion alone).
    """
    from pipeline.evaluate.runner import ComparisonResult, run_comparison, run_eval

    ks = _parse_ks(k)
    configs = _parse_compare(compare, mode=mode, answers=answers)
    rag = make_rag(config)
    show = not quiet and not json_out and err.is_terminal
    common: dict[str, Any] = {"docs_dir": docs, "ks": ks, "scope": scope, "ingest": ingest}
    result: EvalResult | ComparisonResult
    try:
        with rag, _Bar(err, enabled=show) as bar:
            common |= {"skip_missing": skip_missing, "progress": bar.update if show else None}
            if configs:
                result = run_comparison(rag, questions, *configs, **common)
            else:
                result = run_eval(
                    rag,
                    questions,
                    mode=cast("Mode | None", mode),
                    answer=answers,
                    answer_k=answer_k,
                    **common,
                )
    except PageRAGError as exc:
        fail(exc)
    runs = result.runs if isinstance(result, ComparisonResult) else (result,)
    for warning in dict.fromkeys(w for run in runs for w in run.warnings):
        err.print(error_line(warning, "warning:", "bold yellow"), highlight=False)
    if json_out:
        out.print_json(json.dumps(result.to_dict(per_question=per_question)))
    elif isinstance(result, ComparisonResult):
        _print_comparison(out, result, per_question=per_question)
    else:
        _print_eval(out, result, per_question=per_question)


def _parse_ks(values: list[str] | None) -> tuple[int, ...]:
    from pipeline.evaluate.metrics import DEFAULT_KS

    if not values:
        return DEFAULT_KS
    ks: list[int] = []
    for value in values:
        for part in value.split(","):
            try:
                k = int(part.strip())
            except ValueError:
                raise typer.BadParameter(
                    f"expected whole numbers like 1,3,5,10, got {value!r}", param_hint="-k"
                ) from None
            if k < 1:
                raise typer.BadParameter(f"k must be at least 1, got {k}", param_hint="-k")
            ks.append(k)
    return tuple(sorted(set(ks)))


def _parse_compare(value: str | None, *, mode: str | None, answers: bool) -> list[str]:
    """The configurations of ``--compare A:B[:C…]`` (none without it)."""
    if value is None:
        return []
    if mode is not None or answers:
        raise typer.BadParameter(
            "--compare sets the mode of each configuration and scores retrieval only: "
            "leave out --mode and --answers",
            param_hint="--compare",
        )
    configs = [part.strip() for part in value.split(":")]
    if len(configs) < 2 or not all(configs):
        raise typer.BadParameter(
            f"expected A:B[:C…], e.g. visual:text:hybrid, got {value!r}", param_hint="--compare"
        )
    return configs


class _Bar:
    """A rich progress bar on stderr, one task per stage (ingest pages, questions)."""

    _LABELS: ClassVar[dict[str, str]] = {
        "ingest": "ingest pages",
        "retrieve": "questions",
        "answer": "answers",
    }

    def __init__(self, console: Any, *, enabled: bool) -> None:
        self.enabled = enabled
        self._console = console
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._bar.__enter__()
        return self

    def update(self, event: EvalProgress) -> None:
        if self._bar is None:
            return
        task = self._tasks.get(event.stage)
        if task is None:
            task = self._bar.add_task(self._LABELS[event.stage], total=None)
            self._tasks[event.stage] = task
        self._bar.update(task, completed=event.done, total=event.total or None)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _summary(result: EvalResult) -> str:
    report = result.retrieval
    excluded = ", ".join(f"{n} {why}" for why, n in report.excluded.items() if n)
    parts = [
        f"{len(report.questions)} questions searched ({result.scope} scope)",
        f"{report.overall.count} scored" + (f", excluded: {excluded}" if excluded else ""),
    ]
    if result.skipped:
        parts.append(f"{len(result.skipped)} skipped (document missing)")
    if report.questions:
        parts.append(f"{1000 * result.search_seconds / len(report.questions):.0f} ms per search")
    if result.ingest is not None:
        files = result.ingest.to_dict()["files"]
        counts = ", ".join(f"{n} {status}" for status, n in files.items() if n)
        parts.append(f"ingest: {counts or 'no files'}")
    return "; ".join(parts)


# Tables printed to a file or a pipe get this width instead of the 80 columns Rich
# assumes there: the metric tables are wide, and squashed cells lose their digits.
# (Tables do not expand, so a narrow table stays narrow.)
_FILE_WIDTH = 200


def _table(out: Any, table: Table) -> None:
    if out.is_terminal:
        out.print(table)
    else:
        Console(file=out.file, width=_FILE_WIDTH, soft_wrap=True, markup=False).print(table)


def _print_eval(out: Any, result: EvalResult, *, per_question: bool) -> None:
    from pipeline.evaluate.metrics import answer_table, lane_table, retrieval_table

    _table(out, retrieval_table(result.retrieval))
    if result.retrieval.lanes is not None:
        _table(out, lane_table(result.retrieval))
    if per_question:
        _table(out, _question_table(result))
    if result.answers is not None:
        _table(out, answer_table(result.answers))
    out.print(_summary(result), highlight=False)


def _print_comparison(out: Any, result: ComparisonResult, *, per_question: bool) -> None:
    from pipeline.evaluate.metrics import comparison_table, question_ranks_table

    reports = [run.retrieval for run in result.runs]
    labels = [run.label for run in result.runs]
    _table(out, comparison_table(reports, result.comparisons, labels=labels))
    if per_question:
        _table(out, question_ranks_table(reports, labels=labels))
    for run in result.runs:
        out.print(f"{run.label}: {_summary(run)}", highlight=False)


def _question_table(result: EvalResult) -> Table:
    report = result.retrieval
    ks = report.ks
    table = Table(title="per question")
    for column in ("id", "category", "evidence", "first hit", *(f"R@{k}" for k in ks), "top 3"):
        table.add_column(column, justify="right" if column.startswith(("R@", "first")) else "left")
    for q in report.questions:
        evidence = ",".join(str(p) for _, p in q.relevant) or "-"
        top = ", ".join(
            f"p.{p}" if result.scope == "document" else f"{PurePosixPath(d).name} p.{p}"
            for d, p in q.retrieved[:3]
        )
        if q.metrics is None:
            table.add_row(q.id, q.category or "", f"({q.excluded})", "", *("" for _ in ks), top)
            continue
        table.add_row(
            q.id,
            q.category or "",
            evidence,
            str(q.first_relevant_rank or "-"),
            *(f"{q.metrics[f'recall@{k}']:.2f}" for k in ks),
            top,
        )
    for qid, why in result.skipped.items():
        table.add_row(qid, "", "(skipped)", "", *("" for _ in ks), why)
    return table


# ------------------------------------------------------------------ explain


def explain_command(
    query: Annotated[str, typer.Argument(help="The question or words to explain.")],
    file: Annotated[
        Path, typer.Argument(help="A file that was ingested (found by path or by content).")
    ],
    page: Annotated[int, typer.Option("--page", "-p", help="Page number, from 1.")],
    out_path: Annotated[
        Path,
        typer.Option("--out", "-o", help="Image to write (.png, .jpg, .webp).", show_default=False),
    ],
    per_token: Annotated[
        bool,
        typer.Option(
            "--per-token",
            help="One map per query token (where each token looks) in a grid, each labelled "
            "with its token; the model's query-template tokens (prompt, padding) are grey.",
        ),
    ] = False,
    kind: Annotated[
        str,
        typer.Option(
            help="contributions: the patches each query token matched best, weighted by the "
            "score they added (sums to the MaxSim score); combined: every positive similarity."
        ),
    ] = "contributions",
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Draw which patches of page N made it match QUERY: a heatmap over the page image,
    with its colour scale below it.

    Uses the page's stored vectors and image and the collection's model, so it shows the
    comparison search made. Needs a model with a fixed patch grid (ColPali).
    """
    from PIL import Image

    if kind not in _MAP_KINDS:
        raise typer.BadParameter(
            f"choose contributions or combined, got {kind!r}", param_hint="--kind"
        )
    if out_path.suffix.lower() not in Image.registered_extensions():
        raise typer.BadParameter(
            f"cannot tell the image format from {out_path.name!r}: use .png, .jpg or .webp",
            param_hint="--out",
        )
    rag = make_rag(config)
    try:
        with rag:
            explanation = rag.explain_page(query, file, page, kind=cast("MapKind", kind))
    except PageRAGError as exc:
        fail(exc)
    image = explanation.token_sheet() if per_token else explanation.figure()
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        image.save(out_path)
    except OSError as exc:
        err.print(error_line(f"cannot write {out_path}: {exc.strerror or exc}"))
        raise typer.Exit(1) from None
    data = explanation.to_dict()
    data |= {"out": str(out_path), "out_size": list(image.size), "per_token": per_token}
    if json_out:
        out.print_json(json.dumps(data))
        return
    maps = explanation.maps
    out.print(
        f"wrote {out_path} ({image.width}×{image.height}): page {page} of {file}, "
        f"MaxSim score {maps.score:.3f} over {len(maps.token_scores)} query tokens, "
        f"{100 * maps.patch_share:.0f}% of it from image patches ({kind} map"
        + (", one per token" if per_token else "")
        + ")",
        highlight=False,
    )
