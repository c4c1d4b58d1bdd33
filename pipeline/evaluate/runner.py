"""Running an evaluation against a :class:`~pipeline.api.PageRAG`.

:mod:`pipeline.evaluate.metrics` holds the pure arithmetic; this module does the I/O
around it: ingest the QA set's documents, run every question through
``search`` (and the VLM), and hand the rankings and answers to
``evaluate_retrieval`` / ``evaluate_answers`` / ``compare_runs``.

Decisions, made once so numbers stay comparable between runs:

* **Scope.** By default a question is searched *within its own document*
  (``scope="document"``, a document-id filter), because that is the setting
  of MMLongBench-Doc, where the QA set comes from: the question is asked of
  its document, and "the capex in FY2018" is ambiguous across a pile of
  annual reports. ``scope="collection"`` searches the whole collection
  instead (how ``pagerag search`` is used), which also measures whether the
  right document is found at all.
* **Which document is which.** A question's ``doc`` (relative to
  ``docs_dir``) is matched to a stored document by its resolved path (the
  ``source`` recorded at ingest), else by the sha256 of the local file (the
  document id: the same bytes ingested from another folder), else — only
  when the file is absent locally and the run did not try to ingest it
  (``ingest=False``) — by a unique file name. A file the run failed to
  ingest (absent: a wrong ``docs_dir``) is missing, whatever is stored. Retrieved pages of
  a matched document are credited to the question's ``doc``; pages of any
  other document keep their stored source and never count as relevant.
* **Missing documents** (failed ingest, not in the collection) stop the run
  with an :class:`~pipeline.errors.InputError` naming them, unless
  ``skip_missing``: then their questions are left out and listed in
  ``EvalResult.skipped``, never scored as zero — a document that is not
  there says nothing about retrieval.
* **Wrong gold pages.** An evidence page past the end of its document stops
  the run, before any question is searched, with an
  :class:`~pipeline.errors.EvidencePageError` naming the questions file and
  line and the document's page count (page 0 is refused when the file is
  read). A gold page the document has but the collection does not (it failed
  to ingest, or ``render.max_pages`` cut it) is scored as the miss it is, with
  a warning in ``EvalResult.warnings``; so is a file whose gold pages look
  numbered from 0 (:func:`~pipeline.evaluate.metrics.page_shift_warning`).
* **Answers** are produced from the first ``answer_k`` pages of the same
  ranking that was scored (``retrieval.k`` by default), with the configured
  answerer — what ``ask`` would send, without embedding the question twice.
* **Comparison** runs the same questions under several :class:`RunConfig` s —
  modes (``visual``, ``text``, ``hybrid`` …), ``retrieval`` overrides
  (``prefetch_k`` …), or a second ``PageRAG`` on another collection (another
  pooling or quantization) — after one ingest, and reports
  :func:`~pipeline.evaluate.metrics.compare_runs` of each run against the first.
* **Lanes.** Every run reports the questions whose gold pages have no text
  layer (the ``has_text`` payload of each gold page, read from the store;
  only the visual lane can find them) as ``by_gold_text``; a hybrid run also
  reports which lane brought each gold hit
  (:class:`~pipeline.evaluate.metrics.LaneAttribution`, from ``PageHit.lanes``).
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from pydantic import ValidationError

from pipeline.config import RetrievalConfig
from pipeline.errors import (
    ConfigError,
    EvidencePageError,
    InputError,
    QueryError,
    VLMNotConfiguredError,
)
from pipeline.evaluate.metrics import (
    DEFAULT_KS,
    AnswerReport,
    AnswerResult,
    LaneRanks,
    PageKey,
    QAItem,
    RetrievalReport,
    RunComparison,
    compare_runs,
    evaluate_answers,
    evaluate_retrieval,
    load_questions,
    score_answer,
)
from pipeline.retrieve.planning import MODES, Mode, SearchPlan
from pipeline.retrieve.store import PayloadReader
from pipeline.types import (
    TEXT_FIELD,
    Answer,
    CollectionSpec,
    DocumentRecord,
    PageHit,
    page_point_id,
)

if TYPE_CHECKING:
    from pipeline.api import PageRAG
    from pipeline.ingest.job import IngestProgress, IngestReport

__all__ = [
    "ComparisonResult",
    "EvalProgress",
    "EvalResult",
    "Mode",
    "RunConfig",
    "Scope",
    "run_comparison",
    "run_eval",
]

log = logging.getLogger("pagerag")

Scope = Literal["document", "collection"]
Stage = Literal["ingest", "retrieve", "answer"]
_SCOPES: tuple[str, ...] = get_args(Scope)
_MAX_K = 1000  # PageRAG.search's own limit
_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # runs of a comparison, in order
# Payload flag of a page with a text layer (beside its text, TEXT_FIELD).
_HAS_TEXT = "has_text"


# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class EvalProgress:
    """Passed to the ``progress`` callback: ``done`` of ``total`` in ``stage``.

    During ``ingest`` the counts are pages (``total`` grows as documents are
    opened); during ``retrieve`` and ``answer`` they are questions, and
    ``current`` is the question id.
    """

    stage: Stage
    done: int
    total: int
    current: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """One retrieval configuration: a mode and overrides of ``retrieval.*``.

    ``retrieval`` is applied to a copy of the config for the duration of the
    run (e.g. ``{"prefetch_k": 50}``), so two runs of one collection can
    differ in anything retrieval-time. Store-time settings (pooling,
    quantization, datatype) live in the collection: compare those with a
    second ``PageRAG`` (``run_comparison(..., rag_b=...)``).
    """

    mode: Mode | None = None
    retrieval: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    @classmethod
    def parse(cls, text: str) -> RunConfig:
        """``"two_stage"``, ``"two_stage,prefetch_k=50"`` or ``"prefetch_k=50"``.

        Values are parsed as integers, floats or words; the mode, when given,
        comes first. The text itself becomes the label.
        """
        text = text.strip()
        mode: Mode | None = None
        overrides: dict[str, Any] = {}
        for i, part in enumerate(p.strip() for p in text.split(",")):
            key, sep, value = part.partition("=")
            if not sep:
                if i != 0 or part not in MODES:
                    raise ConfigError(
                        f"bad run configuration {text!r}: {part!r} is neither a mode "
                        f"({', '.join(MODES)}, first) nor a retrieval KEY=VALUE"
                    )
                mode = cast(Mode, part)
            elif not key.strip():
                raise ConfigError(f"bad run configuration {text!r}: empty key in {part!r}")
            else:
                overrides[key.strip()] = _scalar(value.strip())
        return cls(mode=mode, retrieval=overrides, label=text or None)

    def describe(self) -> str:
        """The label, or ``mode,key=value…`` built from the fields."""
        if self.label:
            return self.label
        parts = [self.mode or "configured"] + [f"{k}={v}" for k, v in self.retrieval.items()]
        return ",".join(parts)


def _scalar(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


@dataclass(frozen=True)
class EvalResult:
    """One evaluation run: retrieval report, optional answer report, and context.

    ``documents`` maps each question ``doc`` to the stored document id it was
    evaluated against; ``skipped`` maps question ids left out (only with
    ``skip_missing``) to the reason. ``warnings`` are doubts about the QA
    set: gold pages that were never stored, gold pages that look 0-based.
    """

    retrieval: RetrievalReport
    answers: AnswerReport | None
    ingest: IngestReport | None
    scope: Scope
    label: str
    questions_file: str | None
    docs_dir: str
    documents: Mapping[str, str]
    skipped: Mapping[str, str]
    seconds: float
    search_seconds: float
    answer_seconds: float
    warnings: tuple[str, ...] = ()

    @property
    def config(self) -> Mapping[str, Any]:
        return self.retrieval.config

    def to_dict(self, *, per_question: bool = True) -> dict[str, Any]:
        """JSON-safe: everything ``pagerag eval --json`` prints for one run."""
        searched = len(self.retrieval.questions)
        return {
            "label": self.label,
            "questions_file": self.questions_file,
            "docs_dir": self.docs_dir,
            "scope": self.scope,
            "questions": searched + len(self.skipped),
            "searched": searched,
            "skipped": dict(self.skipped),
            "warnings": list(self.warnings),
            "documents": dict(self.documents),
            "timing": {
                "seconds": round(self.seconds, 3),
                "search_seconds": round(self.search_seconds, 3),
                "mean_search_ms": round(1000 * self.search_seconds / searched, 2)
                if searched
                else None,
                "answer_seconds": round(self.answer_seconds, 3),
            },
            "ingest": None if self.ingest is None else self.ingest.to_dict(),
            "retrieval": self.retrieval.to_dict(per_question=per_question),
            "answers": None
            if self.answers is None
            else self.answers.to_dict(per_question=per_question),
        }


@dataclass(frozen=True)
class ComparisonResult:
    """Runs A, B, … of the same questions, and ``comparisons[i]``: run ``i + 1`` against
    the first (``metrics.compare_runs``)."""

    runs: tuple[EvalResult, ...]
    comparisons: tuple[RunComparison, ...]

    def to_dict(self, *, per_question: bool = True) -> dict[str, Any]:
        return {
            "baseline": self.runs[0].label,
            "runs": [run.to_dict(per_question=per_question) for run in self.runs],
            "comparisons": [c.to_dict(per_question=per_question) for c in self.comparisons],
        }


# ---------------------------------------------------------------- running


def run_eval(
    rag: PageRAG,
    questions: str | os.PathLike[str] | Sequence[QAItem],
    *,
    docs_dir: str | os.PathLike[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    mode: Mode | None = None,
    retrieval: Mapping[str, Any] | None = None,
    scope: Scope = "document",
    filter: Mapping[str, Any] | None = None,
    answer: bool = False,
    answer_k: int | None = None,
    ingest: bool = True,
    skip_missing: bool = False,
    label: str | None = None,
    progress: Callable[[EvalProgress], None] | None = None,
) -> EvalResult:
    """Evaluate page retrieval (and, with ``answer``, the VLM's answers) on a QA set.

    ``questions`` is a JSONL file (see :func:`~pipeline.evaluate.metrics.load_questions`)
    or already loaded items. ``docs_dir`` is what the ``doc`` fields are
    relative to (default: the questions file's folder, or the current
    directory for loaded items). With ``ingest`` the documents are ingested
    first (unchanged files are skipped by the job); without it the existing
    collection is used as it is. Every question retrieves ``max(ks)`` pages
    with ``mode`` and the ``retrieval`` overrides, within its own document or
    the whole collection (``scope``; see the module docstring), narrowed by
    ``filter`` (user metadata) when given.

    Raises :class:`~pipeline.errors.QueryError` / ``ConfigError`` for bad
    arguments (before any work), :class:`~pipeline.errors.InputError` when a
    question's document is missing (unless ``skip_missing``), and
    :class:`~pipeline.errors.VLMNotConfiguredError` when ``answer`` is set
    without a VLM.
    """
    started = time.perf_counter()
    ks = _check_ks(ks)
    _check_choice("mode", mode, MODES, optional=True)
    _check_choice("scope", scope, _SCOPES)
    run = RunConfig(mode=mode, retrieval=dict(retrieval or {}), label=label)
    items, questions_file, base = _load(questions, docs_dir)
    if answer and answer_k is not None and not 1 <= answer_k <= _MAX_K:
        raise QueryError(f"answer_k must be from 1 to {_MAX_K}, got {answer_k}")
    if answer:
        _check_answerer(rag)

    with _retrieval_overrides(rag, run.retrieval):
        report = _ingest(rag, items, base, progress) if ingest else None
        return _evaluate(
            rag,
            items,
            run,
            ks=ks,
            scope=scope,
            base_filter=dict(filter or {}),
            answer=answer,
            answer_k=answer_k,
            ingest_report=report,
            skip_missing=skip_missing,
            questions_file=questions_file,
            base=base,
            progress=progress,
            started=started,
        )


def run_comparison(
    rag: PageRAG,
    questions: str | os.PathLike[str] | Sequence[QAItem],
    *configs: str | RunConfig,
    rag_b: PageRAG | None = None,
    docs_dir: str | os.PathLike[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    scope: Scope = "document",
    filter: Mapping[str, Any] | None = None,
    ingest: bool = True,
    skip_missing: bool = False,
    progress: Callable[[EvalProgress], None] | None = None,
) -> ComparisonResult:
    """The same questions under several retrieval configurations, and how they differ.

    ``configs`` (two or more; default ``"exact", "two_stage"``) are
    :class:`RunConfig` s or their text form (``"hybrid"``,
    ``"two_stage,prefetch_k=50"``), run in order as A, B, C …; the documents
    are ingested once, before run A (when ``ingest``). Every run searches
    ``rag`` unless ``rag_b`` is given, which then serves the runs after A (e.g.
    a collection built with other pooling or quantization; it is ingested too).
    The result's ``comparisons`` hold each later run's metric deltas against A
    and their top-k agreement. Answers are not produced: compare answer
    quality with :func:`run_eval` calls.
    """
    runs = [c if isinstance(c, RunConfig) else RunConfig.parse(c) for c in configs]
    runs = runs or [RunConfig.parse("exact"), RunConfig.parse("two_stage")]
    if not 2 <= len(runs) <= len(_LABELS):
        raise ConfigError(f"compare 2 to {len(_LABELS)} run configurations, got {len(runs)}")
    ks = _check_ks(ks)
    items, questions_file, base = _load(questions, docs_dir)
    # The file itself when there is one (read again, cheaply), so that errors and
    # every result name it and its lines.
    source: str | Sequence[QAItem] = questions_file if questions_file is not None else items
    results = [
        run_eval(
            rag if i == 0 or rag_b is None else rag_b,
            source,
            mode=run.mode,
            retrieval=run.retrieval,
            ingest=ingest and (i == 0 or (i == 1 and rag_b is not None)),
            label=f"{_LABELS[i]}: {run.describe()}",
            docs_dir=base,
            ks=ks,
            scope=scope,
            filter=filter,
            skip_missing=skip_missing,
            progress=progress,
        )
        for i, run in enumerate(runs)
    ]
    baseline = results[0].retrieval
    return ComparisonResult(
        tuple(results), tuple(compare_runs(baseline, r.retrieval) for r in results[1:])
    )


# ------------------------------------------------------------ validation


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(sorted(set(ks)))
    if not values:
        raise QueryError("give at least one k (e.g. 1, 3, 5, 10)")
    bad = [
        k for k in values if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= _MAX_K
    ]
    if bad:
        raise QueryError(f"every k must be an integer from 1 to {_MAX_K}, got {bad}")
    return values


def _check_choice(
    name: str, value: object, choices: Sequence[str], *, optional: bool = False
) -> None:
    if (value is None and optional) or value in choices:
        return
    raise QueryError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_answerer(rag: PageRAG) -> None:
    from pipeline.answer.answerer import NoVLMAnswerer

    if isinstance(rag.answerer, NoVLMAnswerer):
        raise VLMNotConfiguredError(
            "evaluating answers needs a vision-language model: set vlm.base_url (env "
            "PAGERAG_VLM__BASE_URL) to an OpenAI-compatible endpoint, or set OPENAI_API_KEY; "
            "or leave out --answers to evaluate retrieval only"
        )


def _load(
    questions: str | os.PathLike[str] | Sequence[QAItem],
    docs_dir: str | os.PathLike[str] | None,
) -> tuple[list[QAItem], str | None, Path]:
    if isinstance(questions, (str, os.PathLike)):
        path = Path(questions).expanduser()
        items = load_questions(path)
        base = Path(docs_dir).expanduser() if docs_dir is not None else path.parent
        questions_file: str | None = str(path)
    else:
        items = list(questions)
        if not items:
            raise ConfigError("no questions to evaluate")
        base = Path(docs_dir).expanduser() if docs_dir is not None else Path.cwd()
        questions_file = None
    if not base.is_dir():
        raise ConfigError(
            f"documents folder not found: {base} (the questions' doc paths are "
            "relative to it; pass --docs DIR)"
        )
    return items, questions_file, base.resolve()


@contextmanager
def _retrieval_overrides(rag: PageRAG, overrides: Mapping[str, Any]) -> Iterator[None]:
    """Run with ``retrieval.*`` overridden on a copy of the config; restore it after.

    The user's config object is never mutated. Not for concurrent use of the
    same ``PageRAG`` from other threads while an evaluation runs.
    """
    if not overrides:
        yield
        return
    original = rag.config
    merged = {**original.retrieval.model_dump(), **overrides}
    try:
        retrieval = RetrievalConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"unknown key retrieval.{'.'.join(map(str, e['loc']))}"
            if e["type"] == "extra_forbidden"
            else f"retrieval.{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid retrieval override: {problems}") from None
    rag.config = original.model_copy(update={"retrieval": retrieval})
    try:
        yield
    finally:
        rag.config = original


# -------------------------------------------------------------- ingest


def _doc_path(base: Path, doc: str) -> Path:
    return (base / doc.replace("\\", "/")).resolve()


def _ingest(
    rag: PageRAG,
    items: Sequence[QAItem],
    base: Path,
    progress: Callable[[EvalProgress], None] | None,
) -> IngestReport:
    paths = list(dict.fromkeys(_doc_path(base, item.doc) for item in items))
    on_pages: Callable[[IngestProgress], None] | None = None
    if progress is not None:
        report_progress = progress

        def on_pages(event: IngestProgress) -> None:
            report_progress(
                EvalProgress("ingest", event.pages_done, event.pages_total, event.current)
            )

    return rag.ingest(paths, progress=on_pages)


# ------------------------------------------------------------ evaluate


@dataclass(frozen=True)
class _Documents:
    """Question docs matched to stored documents (see the module docstring)."""

    record: Mapping[str, DocumentRecord]  # canonical doc -> record
    missing: Mapping[str, str]  # canonical doc -> why
    alias: Mapping[str, str]  # canonical doc -> the canonical doc its document is credited to
    doc_of: Mapping[str, str]  # document id -> canonical doc

    def key(self, doc: str) -> str:
        canonical = _canonical(doc)
        return self.alias.get(canonical, canonical)

    def hit_key(self, hit: PageHit) -> PageKey:
        return (self.doc_of.get(hit.document_id, hit.source), hit.page_number)


def _canonical(doc: str) -> str:
    return posixpath.normpath(doc.replace("\\", "/"))


def _resolve_documents(
    rag: PageRAG, items: Sequence[QAItem], base: Path, ingest: IngestReport | None
) -> _Documents:
    records = rag.store.documents()
    by_source: dict[str, DocumentRecord] = {}
    for rec in records:  # several versions of one path cannot coexist, but be safe: newest wins
        if rec.source not in by_source or rec.ingested_at > by_source[rec.source].ingested_at:
            by_source[rec.source] = rec
    by_id = {rec.document_id: rec for rec in records}
    by_name: dict[str, list[DocumentRecord]] = {}
    for rec in records:
        by_name.setdefault(rec.file_name, []).append(rec)
    failures = {
        o.path: o.message or o.reason or o.status
        for o in (ingest.outcomes if ingest is not None else [])
        if o.status == "failed"
    }

    found: dict[str, DocumentRecord] = {}
    missing: dict[str, str] = {}
    for doc in dict.fromkeys(_canonical(item.doc) for item in items):
        path = _doc_path(base, doc)
        record = by_source.get(str(path))
        if record is None and path.is_file():
            from pipeline.ingest.sources import hash_file

            record = by_id.get(hash_file(path))
        if record is None and not path.exists() and str(path) not in failures:
            # Only when no ingest of it was asked for (--no-ingest): a failed ingest means
            # --docs is wrong, and a stored namesake would hide that.
            same_name = by_name.get(path.name, [])
            if len(same_name) == 1:
                record = same_name[0]
                log.info("%s is not here; using the stored %s of the same name", doc, record.source)
        if record is not None:
            found[doc] = record
        elif str(path) in failures:
            missing[doc] = f"ingest failed: {failures[str(path)]}"
        elif not path.exists():
            missing[doc] = f"no such file {path}, and no stored document of that name"
        else:
            missing[doc] = f"{path} is not in collection {rag.config.store.collection!r}"

    doc_of: dict[str, str] = {}
    alias: dict[str, str] = {}
    for doc, record in found.items():
        first = doc_of.setdefault(record.document_id, doc)
        if first != doc:  # two spellings (or two copies) of one document
            alias[doc] = first
    return _Documents(found, missing, alias, doc_of)


def _evaluate(
    rag: PageRAG,
    items: Sequence[QAItem],
    run: RunConfig,
    *,
    ks: tuple[int, ...],
    scope: Scope,
    base_filter: Mapping[str, Any],
    answer: bool,
    answer_k: int | None,
    ingest_report: IngestReport | None,
    skip_missing: bool,
    questions_file: str | None,
    base: Path,
    progress: Callable[[EvalProgress], None] | None,
    started: float,
) -> EvalResult:
    plan = rag.plan(k=max(ks), mode=run.mode)  # the mode search really uses ("auto" …)
    # A visual lane search names the weights it searched; the text lane needs no model.
    spec = rag._open(create=False, weights=plan.visual is not None)
    documents = _resolve_documents(rag, items, base, ingest_report)
    skipped: dict[str, str] = {}
    if documents.missing:
        if not skip_missing:
            listed = "; ".join(f"{doc}: {why}" for doc, why in documents.missing.items())
            raise InputError(
                str(base),
                f"{len(documents.missing)} document(s) of the questions are not available: "
                f"{listed}. Ingest them (leave out --no-ingest), fix --docs, or pass "
                "--skip-missing to evaluate the other questions",
            )
        for item in items:
            why = documents.missing.get(_canonical(item.doc))
            if why is not None:
                skipped[item.id] = why
        items = [item for item in items if item.id not in skipped]
        if not items:
            raise InputError(str(base), "none of the questions' documents is available")

    notes = _check_gold_pages(items, documents, questions_file)
    # Every spelling of a document's path becomes one key, so its pages are credited once.
    items = [replace(item, doc=documents.key(item.doc)) for item in items]
    config = _run_config(rag, spec, run, plan, ks=ks, scope=scope)
    k = max(ks)
    answer_n = (answer_k or rag.config.retrieval.k) if answer else 0
    # One search serves both: metrics read the first k pages (MRR is MRR@k whatever
    # the VLM is shown), the VLM the first answer_n.
    search_k = max(k, answer_n)
    rankings: dict[str, list[PageKey]] = {}
    lane_ranks: dict[str, list[LaneRanks]] = {}
    hits_by_id: dict[str, list[PageHit]] = {}
    search_seconds = 0.0
    for done, item in enumerate(items):
        if progress is not None:
            progress(EvalProgress("retrieve", done, len(items), item.id))
        flt = _filter_for(item, documents, scope, base_filter)
        tick = time.perf_counter()
        hits = rag.search(item.question, search_k, filter=flt, mode=run.mode)
        search_seconds += time.perf_counter() - tick
        hits_by_id[item.id] = hits
        rankings[item.id] = [documents.hit_key(hit) for hit in hits[:k]]
        lane_ranks[item.id] = [hit.lanes for hit in hits[:k]]
    if progress is not None:
        progress(EvalProgress("retrieve", len(items), len(items)))
    report = evaluate_retrieval(
        items,
        rankings,
        ks=ks,
        config=config,
        doc_key=documents.key,
        gold_has_text=_gold_has_text(rag, items, documents),
        lane_ranks=lane_ranks if plan.mode == "hybrid" else None,
    )

    answers = None
    answer_seconds = 0.0
    if answer:
        tick = time.perf_counter()
        answers = _answer_all(rag, items, hits_by_id, config, answer_n, progress)
        answer_seconds = time.perf_counter() - tick

    return EvalResult(
        retrieval=report,
        answers=answers,
        ingest=ingest_report,
        scope=scope,
        label=run.describe(),
        questions_file=questions_file,
        docs_dir=str(base),
        documents={doc: rec.document_id for doc, rec in documents.record.items()},
        skipped=skipped,
        seconds=time.perf_counter() - started,
        search_seconds=search_seconds,
        answer_seconds=answer_seconds,
        warnings=(*notes, *report.warnings),
    )


_LISTED = 5  # problems spelled out in one message; the rest are counted


def _place(item: QAItem, questions_file: str | None) -> str:
    if questions_file is not None:
        return f"{questions_file}:{item.line}"
    return f"question {item.id!r}" + (f" (line {item.line})" if item.line else "")


def _check_gold_pages(
    items: Sequence[QAItem], documents: _Documents, questions_file: str | None
) -> list[str]:
    """Refuse gold pages past their document's end; warn about ones never stored.

    Every item's document must be in ``documents.record``. Returns the
    warnings; raises :class:`~pipeline.errors.EvidencePageError` for the
    first page out of range, listing the other lines that have one.
    """
    past_end: list[tuple[QAItem, int, DocumentRecord]] = []
    not_stored: list[str] = []
    for item in items:
        record = documents.record[_canonical(item.doc)]
        stored_through = record.page_count + len(record.failed_pages)
        for page in item.evidence_pages:
            if page > record.total_pages:
                past_end.append((item, page, record))
            elif page in record.failed_pages:
                not_stored.append(f"page {page} of {item.doc} (it failed to ingest)")
            elif page > stored_through:
                not_stored.append(
                    f"page {page} of {item.doc} (only its first {stored_through} of "
                    f"{record.total_pages} pages were ingested: render.max_pages)"
                )
    if past_end:
        item, page, record = past_end[0]
        count = record.total_pages
        message = (
            f"{_place(item, questions_file)}: evidence page {page} of {item.doc} is past the "
            f"end of the document, which has {count} page{'s' if count != 1 else ''} "
            f"(1 to {count})"
        )
        others = list(
            dict.fromkeys(
                _place(i, None) if questions_file is None else f"line {i.line}"
                for i, _, _ in past_end
                if i is not item
            )
        )
        if others:
            listed = ", ".join(others[:_LISTED])
            more = f" and {len(others) - _LISTED} more" if len(others) > _LISTED else ""
            message += f"; also past the end: {listed}{more}"
        raise EvidencePageError(
            message + ". Fix evidence_pages in the questions file: they are page numbers "
            "of the question's doc, counted from 1",
            questions_file=questions_file,
            line=item.line,
            doc=item.doc,
            page=page,
            page_count=count,
        )
    if not not_stored:
        return []
    listed = "; ".join(not_stored[:_LISTED])
    more = f"; and {len(not_stored) - _LISTED} more" if len(not_stored) > _LISTED else ""
    return [
        f"{len(not_stored)} gold page(s) are not in the collection and can only score a "
        f"miss: {listed}{more}"
    ]


def _filter_for(
    item: QAItem, documents: _Documents, scope: Scope, base_filter: Mapping[str, Any]
) -> dict[str, Any] | None:
    if scope == "collection":
        return dict(base_filter) or None
    record = documents.record[_canonical(item.doc)]
    return {**base_filter, "document_id": record.document_id}


def _gold_has_text(rag: PageRAG, items: Sequence[QAItem], documents: _Documents) -> dict[str, bool]:
    """Question id → whether any of its gold pages has a text layer, for the scored
    questions whose gold pages the store can tell (a text lane records ``has_text``)."""
    store = rag.store
    if not isinstance(store, PayloadReader):
        return {}
    gold = {
        item.id: [
            page_point_id(documents.record[_canonical(item.doc)].document_id, page)
            for page in item.evidence_pages
        ]
        for item in items
        if item.has_evidence
    }
    payloads = store.page_payloads(
        {p for ids in gold.values() for p in ids}, [_HAS_TEXT, TEXT_FIELD]
    )
    known: dict[str, bool] = {}
    for qid, ids in gold.items():
        flags = [_page_has_text(payloads.get(point_id)) for point_id in ids]
        if any(flags):
            known[qid] = True
        elif flags and all(flag is False for flag in flags):
            known[qid] = False
    return known


def _page_has_text(payload: Mapping[str, Any] | None) -> bool | None:
    """True / False from a page's payload; None when it does not say (no text lane)."""
    if payload is None:
        return None
    flag = payload.get(_HAS_TEXT)
    if isinstance(flag, bool):
        return flag
    text = payload.get(TEXT_FIELD)
    return bool(text.strip()) if isinstance(text, str) else None


def _run_config(
    rag: PageRAG,
    spec: CollectionSpec,
    run: RunConfig,
    plan: SearchPlan,
    *,
    ks: tuple[int, ...],
    scope: Scope,
) -> dict[str, Any]:
    """What the run is attributed to: model (and its exact weights), mode, pooling, storage, k.

    ``model`` says when the weights are the random stand-in; ``model_fingerprint``
    and ``model_source`` are the weights recorded in the collection. A text lane
    search (BM25 in ``text_language``) has no model, pooling or storage: None.
    """
    retrieval = rag.config.retrieval
    requested = run.mode or retrieval.mode
    effective = plan.mode
    visual = plan.visual is not None
    identity = spec.identity if visual else None
    config: dict[str, Any] = {
        "model": spec.model_label if visual else None,
        "model_fingerprint": None if identity is None else identity.fingerprint,
        "model_source": None if identity is None else identity.source,
        "collection": spec.name,
        "lanes": "+".join(plan.lanes),
        "mode": effective if requested == effective else f"{requested}->{effective}",
        "pooling": None if not visual else "+".join(spec.pooled) if spec.pooled else "none",
        "dtype": spec.datatype if visual else None,
        "quantization": spec.quantization if visual else None,
        "k": max(ks),
        "scope": scope,
    }
    if "text" in plan.lanes:
        config["text_language"] = spec.text_language
    if plan.prefetch:  # the visual lane's first stage: candidates per pooled vector
        config["prefetch_k"] = plan.prefetch[0][1]
    if plan.mode == "hybrid" and plan.fusion is not None:
        config |= {
            "visual": plan.visual,
            "fusion": plan.fusion.method,
            "weights": list(plan.fusion.weights),
            "lane_k": plan.lane_k,
        }
        if plan.fusion.method == "rrf":
            config["rrf_k"] = plan.fusion.k
    return config


# -------------------------------------------------------------- answers


def _answer_all(
    rag: PageRAG,
    items: Sequence[QAItem],
    hits_by_id: Mapping[str, Sequence[PageHit]],
    config: Mapping[str, Any],
    n: int,
    progress: Callable[[EvalProgress], None] | None,
) -> AnswerReport:
    answerer = rag.answerer
    results: list[AnswerResult] = []
    models: set[str] = set()
    for done, item in enumerate(items):
        if progress is not None:
            progress(EvalProgress("answer", done, len(items), item.id))
        hits = list(hits_by_id[item.id][:n])
        if hits:
            reply = answerer.answer(item.question, hits)
        else:  # nothing retrieved: what ``ask`` says, no VLM call
            reply = Answer(text="No answer: no page was retrieved.", sources=(), answered=False)
        if reply.model:
            models.add(reply.model)
        results.append(score_answer(item, reply.text, usage=reply.usage, cost=_cost(reply)))
    if progress is not None:
        progress(EvalProgress("answer", len(items), len(items)))
    vlm = ", ".join(sorted(models)) or getattr(answerer, "model", None) or rag.config.vlm.model
    return evaluate_answers(results, config={**config, "vlm": vlm, "answer_k": n})


def _cost(answer: Answer) -> float | None:
    """The price the endpoint reported for one answer, else ``None`` (unknown, not free).

    OpenAI reports no cost; gateways such as OpenRouter and LiteLLM add a
    ``cost`` to the usage. It is read wherever the answer carries one, so a
    connector that keeps it needs no change here.
    """
    for holder in (answer, answer.usage):
        value = getattr(holder, "cost", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None
