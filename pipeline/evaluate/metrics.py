"""Evaluation of retrieval and answers against a QA set with known evidence pages.

Everything here is pure: the caller runs the searches and the VLM and hands
in what came back, so the arithmetic can be tested on hand-made rankings and
reused by the CLI, the Python API and benchmarks alike.

Conventions, chosen once so numbers from different runs can be compared:

* A page is identified by ``(document key, 1-based page number)``. The
  document key of both the question's ``doc`` and a retrieved page's source
  goes through ``doc_key`` (default :func:`default_doc_key`: the file name),
  because questions name documents relative to the QA folder while the store
  records the path given at ingest time.
* Relevance is binary. A page that appears again lower in a ranking keeps
  its slot but earns nothing the second time, so a retriever that returns
  duplicates is charged for the wasted slots instead of having them hidden.
* ``recall@k`` is the share of a question's relevant pages found in the
  first k; ``hit@k`` is 1 when any of them is (what most papers call
  recall@k or top-k accuracy). They differ only for questions with several
  evidence pages.
* nDCG@k uses the log2(rank + 1) discount and an ideal DCG over
  ``min(k, |relevant|)`` relevant pages, so a single relevant page at rank 1
  scores 1.0 at every k.
* ``mrr`` is the reciprocal rank of the first relevant page within the whole
  ranking handed in (0 when none); the CLI retrieves ``max(ks)`` pages, so it
  equals MRR@max(ks).
* Unanswerable questions and questions without evidence pages have no
  relevant page: they are excluded from the retrieval metrics and counted in
  ``RetrievalReport.excluded`` (they still count for run agreement and for
  answer accuracy, where declining is the right answer).
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.errors import ConfigError, EvidencePageError
from pipeline.types import Usage

__all__ = [
    "DEFAULT_KS",
    "GOLD_WITHOUT_TEXT",
    "GOLD_WITH_TEXT",
    "HIT_ORIGINS",
    "AnswerReport",
    "AnswerResult",
    "LaneAttribution",
    "LaneRanks",
    "MetricDelta",
    "MetricSummary",
    "PageKey",
    "QAItem",
    "QuestionAgreement",
    "QuestionRetrieval",
    "RetrievalReport",
    "RunComparison",
    "UsageTotals",
    "answer_table",
    "compare_runs",
    "comparison_table",
    "default_doc_key",
    "evaluate_answers",
    "evaluate_retrieval",
    "hit_at_k",
    "is_declined",
    "jaccard",
    "lane_attribution",
    "lane_table",
    "load_questions",
    "metric_names",
    "ndcg_at_k",
    "normalize_answer",
    "page_shift_warning",
    "question_ranks_table",
    "recall_at_k",
    "reciprocal_rank",
    "render_text",
    "retrieval_metrics",
    "retrieval_table",
    "score_answer",
]

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)

PageKey = tuple[str, int]
T = TypeVar("T", bound=Hashable)
# A retrieved page's 1-based rank in each lane that found it (``PageHit.lanes``).
LaneRanks = Mapping[str, int]
# How a fused run's gold hit came about (:class:`LaneAttribution`).
HIT_ORIGINS: tuple[str, ...] = ("visual_only", "text_only", "both", "fusion_only")
# The groups of ``RetrievalReport.by_gold_text``.
GOLD_WITHOUT_TEXT = "without text"
GOLD_WITH_TEXT = "with text"


# ---------------------------------------------------------------- questions


@dataclass(frozen=True)
class QAItem:
    """One question of a QA set, as read from a JSONL line.

    ``line`` is the 1-based line it came from, so later messages can point
    back into the file; unknown keys are kept in ``extra`` (e.g. ``source``).
    """

    id: str
    question: str
    doc: str
    evidence_pages: tuple[int, ...]
    answer: str | None = None
    answerable: bool = True
    category: str | None = None
    evidence_sources: tuple[str, ...] = ()
    answer_format: str | None = None
    line: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_evidence(self) -> bool:
        """Whether retrieval metrics apply: answerable and at least one evidence page."""
        return self.answerable and bool(self.evidence_pages)

    def relevant(self, doc_key: Callable[[str], str] | None = None) -> frozenset[PageKey]:
        """The relevant ``(document key, page)`` set."""
        key = (doc_key or default_doc_key)(self.doc)
        return frozenset((key, page) for page in self.evidence_pages)


def default_doc_key(doc: str) -> str:
    """The file name of a document path (``docs/a.pdf`` and ``/x/docs/a.pdf`` match)."""
    return PurePosixPath(doc.replace("\\", "/")).name


_KNOWN_KEYS = frozenset(
    {
        "id",
        "question",
        "doc",
        "evidence_pages",
        "answer",
        "answerable",
        "category",
        "evidence_sources",
        "answer_format",
    }
)


def load_questions(path: str | Path) -> list[QAItem]:
    """Read a QA set: one JSON object per line (blank lines are skipped).

    Raises :class:`~pipeline.errors.ConfigError` naming the file, the line
    and the key for anything unusable, and for duplicate ids (runs are
    compared question by question, by id). A missing ``id`` becomes
    ``line-N``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read questions file {path}: {exc.strerror or exc}") from exc
    items: list[QAItem] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        item = _parse_line(path, lineno, raw)
        if item.id in seen:
            raise ConfigError(
                f"{path}:{lineno}: duplicate id {item.id!r} (first on line {seen[item.id]}); "
                "give every question a unique id"
            )
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise ConfigError(f"{path}: no questions found (expected one JSON object per line)")
    return items


def _parse_line(path: Path, lineno: int, raw: str) -> QAItem:
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}")

    def required_text(key: str) -> str:
        value = obj.get(key)
        if value is None:
            raise ConfigError(f"{where}: missing required key {key!r}")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
        return value

    def optional_text(key: str) -> str | None:
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}: {key!r} must be a string, got {value!r}")
        return value

    question = required_text("question")
    doc = required_text("doc")

    if "evidence_pages" not in obj:
        raise ConfigError(f"{where}: missing required key 'evidence_pages' (a list, may be [])")
    pages = obj["evidence_pages"]
    if not isinstance(pages, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pages
    ):
        raise ConfigError(
            f"{where}: 'evidence_pages' must be a list of 1-based page numbers, got {pages!r}"
        )
    if 0 in pages:
        raise EvidencePageError(
            f"{where}: 'evidence_pages' has page 0, but pages are 1-based (the first page "
            "of a document is page 1). If this file numbers pages from 0, add 1 to every "
            "evidence page",
            questions_file=str(path),
            line=lineno,
            doc=str(obj.get("doc")),
            page=0,
        )

    answerable = obj.get("answerable", True)
    if not isinstance(answerable, bool):
        raise ConfigError(f"{where}: 'answerable' must be true or false, got {answerable!r}")

    raw_id = obj.get("id", f"line-{lineno}")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id) == "":
        raise ConfigError(f"{where}: 'id' must be a non-empty string or an integer")

    sources = obj.get("evidence_sources", [])
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ConfigError(f"{where}: 'evidence_sources' must be a list of strings")

    answer = obj.get("answer")
    if isinstance(answer, list):
        answer = str([str(a) for a in answer])  # the corpus's own spelling of lists
    elif isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    elif answer is not None and not isinstance(answer, str):
        raise ConfigError(f"{where}: 'answer' must be a string, a number or a list")

    return QAItem(
        id=str(raw_id),
        question=question,
        doc=doc,
        evidence_pages=tuple(dict.fromkeys(pages)),
        answer=answer,
        answerable=answerable,
        category=optional_text("category"),
        evidence_sources=tuple(dict.fromkeys(sources)),
        answer_format=optional_text("answer_format"),
        line=lineno,
        extra={k: v for k, v in obj.items() if k not in _KNOWN_KEYS},
    )


# ---------------------------------------------------------- ranking metrics


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _first_hits(ranked: Sequence[T], relevant: Collection[T]) -> list[bool]:
    """Per rank: is this a relevant item seen for the first time."""
    seen: set[T] = set()
    gains = []
    for item in ranked:
        gain = item in relevant and item not in seen
        seen.add(item)
        gains.append(gain)
    return gains


def recall_at_k(ranked: Sequence[T], relevant: Collection[T], k: int) -> float:
    """Share of the relevant items found in the first ``k`` ranks."""
    _check_k(k)
    if not relevant:
        raise ValueError("recall is undefined without relevant items")
    return sum(_first_hits(ranked[:k], relevant)) / len(set(relevant))


def hit_at_k(ranked: Sequence[T], relevant: Collection[T], k: int) -> float:
    """1.0 when any relevant item is in the first ``k`` ranks, else 0.0."""
    _check_k(k)
    if not relevant:
        raise ValueError("hit@k is undefined without relevant items")
    return 1.0 if any(item in relevant for item in ranked[:k]) else 0.0


def ndcg_at_k(ranked: Sequence[T], relevant: Collection[T], k: int) -> float:
    """Binary-relevance nDCG: DCG of the first ``k`` ranks over the ideal DCG."""
    _check_k(k)
    if not relevant:
        raise ValueError("nDCG is undefined without relevant items")
    dcg = sum(
        1.0 / math.log2(rank + 1)
        for rank, hit in enumerate(_first_hits(ranked[:k], relevant), start=1)
        if hit
    )
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(set(relevant))) + 1))
    return dcg / ideal


def reciprocal_rank(ranked: Sequence[T], relevant: Collection[T], k: int | None = None) -> float:
    """1 / rank of the first relevant item (within the first ``k`` when given), else 0."""
    if k is not None:
        _check_k(k)
        ranked = ranked[:k]
    for rank, item in enumerate(ranked, start=1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def retrieval_metrics(
    ranked: Sequence[T], relevant: Collection[T], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """``recall@k``, ``hit@k`` and ``ndcg@k`` for each k, and ``mrr``, for one question."""
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"recall@{k}"] = recall_at_k(ranked, relevant, k)
    for k in ks:
        metrics[f"hit@{k}"] = hit_at_k(ranked, relevant, k)
    for k in ks:
        metrics[f"ndcg@{k}"] = ndcg_at_k(ranked, relevant, k)
    metrics["mrr"] = reciprocal_rank(ranked, relevant)
    return metrics


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """The metric keys :func:`retrieval_metrics` produces, in display order."""
    return (
        [f"recall@{k}" for k in ks] + [f"hit@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
    )


def jaccard(a: Iterable[T], b: Iterable[T]) -> float:
    """|A ∩ B| / |A ∪ B|; two empty sets agree completely (1.0)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


# ------------------------------------------------------- retrieval reports


@dataclass(frozen=True)
class MetricSummary:
    """Mean of each metric over ``count`` questions."""

    count: int
    means: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, **{k: round(v, 6) for k, v in self.means.items()}}


@dataclass(frozen=True)
class QuestionRetrieval:
    """What one question retrieved and how it scored.

    ``metrics`` is ``None`` for an excluded question, and ``excluded`` then
    says why (``unanswerable`` or ``no_evidence``).
    """

    id: str
    doc: str
    category: str | None
    evidence_sources: tuple[str, ...]
    relevant: tuple[PageKey, ...]
    retrieved: tuple[PageKey, ...]
    metrics: Mapping[str, float] | None
    first_relevant_rank: int | None = None
    excluded: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "doc": self.doc,
            "category": self.category,
            "evidence_sources": list(self.evidence_sources),
            "relevant": [[d, p] for d, p in self.relevant],
            "retrieved": [[d, p] for d, p in self.retrieved],
            "metrics": None if self.metrics is None else dict(self.metrics),
            "first_relevant_rank": self.first_relevant_rank,
            "excluded": self.excluded,
        }


@dataclass(frozen=True)
class LaneAttribution:
    """Where a fused (hybrid) run's gold hits came from, for each k.

    A scored question with a gold page in the fused top k counts under one
    origin: ``both`` when the gold pages there include one the visual lane
    ranked within its own top k and one the text lane did (the same page or
    two), ``visual_only`` / ``text_only`` when only that lane did, and
    ``fusion_only`` when neither lane had it in its own top k and fusing the
    two lifted it there. ``shares[k]`` holds each origin's share of the
    ``count`` scored questions; the four add up to the run's ``hit@k``.
    """

    count: int
    shares: Mapping[int, Mapping[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            **{
                f"hit@{k}": {o: round(v, 6) for o, v in by_origin.items()}
                for k, by_origin in self.shares.items()
            },
        }


def _hit_origin(
    ranked: Sequence[PageKey], lanes: Sequence[LaneRanks], relevant: Collection[PageKey], k: int
) -> str | None:
    found = visual = text = False
    for key, ranks in zip(ranked[:k], lanes[:k], strict=False):
        if key in relevant:
            found = True
            visual |= ranks.get("visual", k + 1) <= k
            text |= ranks.get("text", k + 1) <= k
    if not found:
        return None
    if visual and text:
        return "both"
    return "visual_only" if visual else "text_only" if text else "fusion_only"


def lane_attribution(
    questions: Sequence[QuestionRetrieval],
    lane_ranks: Mapping[str, Sequence[LaneRanks]],
    ks: Sequence[int],
) -> LaneAttribution:
    """:class:`LaneAttribution` of the scored ``questions``; ``lane_ranks`` maps a question
    id to the lane ranks of its retrieved pages, in ranking order (``PageHit.lanes``)."""
    scored = [q for q in questions if q.metrics is not None]
    shares: dict[int, dict[str, float]] = {}
    for k in ks:
        counts = dict.fromkeys(HIT_ORIGINS, 0)
        for q in scored:
            origin = _hit_origin(q.retrieved, lane_ranks.get(q.id, ()), frozenset(q.relevant), k)
            if origin is not None:
                counts[origin] += 1
        shares[k] = {o: n / len(scored) if scored else 0.0 for o, n in counts.items()}
    return LaneAttribution(len(scored), shares)


def _gold_text_groups(
    questions: Sequence[QuestionRetrieval], gold_has_text: Mapping[str, bool], names: Sequence[str]
) -> dict[str, MetricSummary]:
    groups: dict[str, list[Mapping[str, float]]] = {GOLD_WITHOUT_TEXT: [], GOLD_WITH_TEXT: []}
    for q in questions:
        if q.metrics is not None and q.id in gold_has_text:
            groups[GOLD_WITH_TEXT if gold_has_text[q.id] else GOLD_WITHOUT_TEXT].append(q.metrics)
    return {g: _summarise(rows, names) for g, rows in groups.items()}


@dataclass(frozen=True)
class RetrievalReport:
    """Retrieval quality of one run: overall, per category and per evidence source.

    ``config`` is whatever describes the run (model, retrieval mode, pooling,
    storage dtype …); it is reported verbatim so results stay attributable.
    ``warnings`` are doubts about the QA set the rankings raise (see
    :func:`page_shift_warning`). ``by_gold_text`` splits the scored questions
    by whether any gold page has a text layer (``GOLD_WITHOUT_TEXT``: only the
    visual lane can find them), when that is known; ``lanes`` says where a
    fused run's hits came from.
    """

    config: Mapping[str, Any]
    ks: tuple[int, ...]
    overall: MetricSummary
    by_category: Mapping[str, MetricSummary]
    by_source: Mapping[str, MetricSummary]
    excluded: Mapping[str, int]
    questions: tuple[QuestionRetrieval, ...]
    warnings: tuple[str, ...] = ()
    by_gold_text: Mapping[str, MetricSummary] = field(default_factory=dict)
    lanes: LaneAttribution | None = None

    @property
    def metric_names(self) -> list[str]:
        return metric_names(self.ks)

    def to_dict(self, *, per_question: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": dict(self.config),
            "ks": list(self.ks),
            "questions": len(self.questions),
            "evaluated": self.overall.count,
            "excluded": dict(self.excluded),
            "overall": self.overall.to_dict(),
            "by_category": {k: v.to_dict() for k, v in self.by_category.items()},
            "by_evidence_source": {k: v.to_dict() for k, v in self.by_source.items()},
            "by_gold_text": {k: v.to_dict() for k, v in self.by_gold_text.items()},
            "lanes": None if self.lanes is None else self.lanes.to_dict(),
            "warnings": list(self.warnings),
        }
        if per_question:
            out["per_question"] = [q.to_dict() for q in self.questions]
        return out


def _summarise(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> MetricSummary:
    if not rows:
        return MetricSummary(0, {n: 0.0 for n in names})
    return MetricSummary(len(rows), {n: sum(r[n] for r in rows) / len(rows) for n in names})


def evaluate_retrieval(
    items: Sequence[QAItem],
    rankings: Mapping[str, Sequence[PageKey]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    config: Mapping[str, Any] | None = None,
    doc_key: Callable[[str], str] = default_doc_key,
    gold_has_text: Mapping[str, bool] | None = None,
    lane_ranks: Mapping[str, Sequence[LaneRanks]] | None = None,
) -> RetrievalReport:
    """Score each question's ranking and aggregate.

    ``rankings`` maps a question id to its retrieved ``(document, page)``
    list, best first; documents go through ``doc_key`` like the questions'
    ``doc``. Every question must have a ranking (run a subset by passing a
    subset of ``items``). Raises ``ValueError`` when two different documents
    of the set share a key, since pages could then be credited to the wrong
    document: pass a ``doc_key`` that tells them apart.

    ``gold_has_text`` (question id → whether any of its gold pages has a text
    layer; unknown ids left out) fills ``by_gold_text``; ``lane_ranks`` (a
    fused run's ``PageHit.lanes`` per retrieved page) fills ``lanes``.
    """
    ks = tuple(sorted(set(ks)))
    if not ks:
        raise ValueError("need at least one k")
    for k in ks:
        _check_k(k)
    missing = [it.id for it in items if it.id not in rankings]
    if missing:
        raise ValueError(f"no ranking for {len(missing)} question(s), e.g. {missing[:3]}")
    _check_doc_keys(items, doc_key)

    names = metric_names(ks)
    results: list[QuestionRetrieval] = []
    overall: list[Mapping[str, float]] = []
    by_category: dict[str, list[Mapping[str, float]]] = defaultdict(list)
    by_source: dict[str, list[Mapping[str, float]]] = defaultdict(list)
    excluded = {"unanswerable": 0, "no_evidence": 0}
    for item in items:
        ranked = tuple((doc_key(d), int(p)) for d, p in rankings[item.id])
        relevant = item.relevant(doc_key)
        reason = None
        metrics: dict[str, float] | None = None
        first = None
        if not item.answerable:
            reason = "unanswerable"
        elif not relevant:
            reason = "no_evidence"
        else:
            metrics = retrieval_metrics(ranked, relevant, ks)
            first = next((i for i, key in enumerate(ranked, 1) if key in relevant), None)
            overall.append(metrics)
            by_category[item.category or "(none)"].append(metrics)
            for source in item.evidence_sources or ("(none)",):
                by_source[source].append(metrics)
        if reason:
            excluded[reason] += 1
        results.append(
            QuestionRetrieval(
                id=item.id,
                doc=item.doc,
                category=item.category,
                evidence_sources=item.evidence_sources,
                relevant=tuple(sorted(relevant)),
                retrieved=ranked,
                metrics=metrics,
                first_relevant_rank=first,
                excluded=reason,
            )
        )
    shift = page_shift_warning(results)
    return RetrievalReport(
        config=dict(config or {}),
        ks=ks,
        overall=_summarise(overall, names),
        by_category={k: _summarise(v, names) for k, v in sorted(by_category.items())},
        by_source={k: _summarise(v, names) for k, v in sorted(by_source.items())},
        excluded=excluded,
        questions=tuple(results),
        warnings=(shift,) if shift else (),
        by_gold_text=_gold_text_groups(results, gold_has_text, names) if gold_has_text else {},
        lanes=None if lane_ranks is None else lane_attribution(results, lane_ranks, ks),
    )


# Thresholds of page_shift_warning: few enough to explain in one sentence.
_SHIFT_MIN_QUESTIONS = 3
_SHIFT_MIN_SHARE = 0.2


def page_shift_warning(questions: Sequence[QuestionRetrieval]) -> str | None:
    """A warning when the gold pages look numbered from 0, else ``None``.

    Among the scored questions, count those whose first-ranked page is a
    gold page (*hits*) and those whose first-ranked page is not a gold page
    but the page right after one (*shifted*: gold page p, page p + 1 ranked
    first). A QA set written down 0-based turns a retriever's hits into
    shifted pages, so warn when shifted questions are at least 3, at least a
    fifth of the scored questions, and more than twice the hits. A correct
    set with a fair retriever has far more hits than neighbours, and a
    retriever that ranks at random has few of either.
    """
    scored = [q for q in questions if q.metrics is not None]
    hits = shifted = 0
    for q in scored:
        if not q.retrieved:
            continue
        doc, page = q.retrieved[0]
        relevant = set(q.relevant)
        if (doc, page) in relevant:
            hits += 1
        elif (doc, page - 1) in relevant:
            shifted += 1
    if (
        shifted < _SHIFT_MIN_QUESTIONS
        or shifted < _SHIFT_MIN_SHARE * len(scored)
        or shifted <= 2 * hits
    ):
        return None
    return (
        f"{shifted} of {len(scored)} scored questions ranked first the page right after a "
        f"gold page, against {hits} that ranked a gold page first: the questions file "
        "probably numbers pages from 0. pagerag numbers pages from 1; if the file numbers "
        "pages from 0, add 1 to every evidence page"
    )


def _check_doc_keys(items: Sequence[QAItem], doc_key: Callable[[str], str]) -> None:
    owners: dict[str, str] = {}
    for item in items:
        key = doc_key(item.doc)
        other = owners.setdefault(key, item.doc)
        if other != item.doc:
            raise ValueError(
                f"documents {other!r} and {item.doc!r} share the key {key!r}; "
                "pass a doc_key that tells them apart"
            )


# ------------------------------------------------------------ run comparison


@dataclass(frozen=True)
class MetricDelta:
    """A metric in run A and run B; ``delta`` is B − A."""

    a: float
    b: float

    @property
    def delta(self) -> float:
        return self.b - self.a

    def to_dict(self) -> dict[str, float]:
        return {"a": round(self.a, 6), "b": round(self.b, 6), "delta": round(self.delta, 6)}


@dataclass(frozen=True)
class QuestionAgreement:
    """How alike two runs' rankings are for one question."""

    id: str
    jaccard: Mapping[int, float]  # k -> Jaccard of the two top-k page sets
    top1_agree: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "jaccard": {str(k): round(v, 6) for k, v in self.jaccard.items()},
            "top1_agree": self.top1_agree,
        }


@dataclass(frozen=True)
class RunComparison:
    """Run B against run A on the same questions.

    ``agreement`` averages over every question both runs answered
    (unanswerable ones included: agreement needs no ground truth);
    ``better``/``worse`` count the evaluated questions where B scored
    higher/lower than A on each metric.
    """

    a_config: Mapping[str, Any]
    b_config: Mapping[str, Any]
    ks: tuple[int, ...]
    overall: Mapping[str, MetricDelta]
    by_category: Mapping[str, Mapping[str, MetricDelta]]
    by_source: Mapping[str, Mapping[str, MetricDelta]]
    agreement: Mapping[str, float]
    better: Mapping[str, int]
    worse: Mapping[str, int]
    questions: tuple[QuestionAgreement, ...]
    only_in_a: tuple[str, ...] = ()
    only_in_b: tuple[str, ...] = ()

    def to_dict(self, *, per_question: bool = True) -> dict[str, Any]:
        def deltas(group: Mapping[str, Mapping[str, MetricDelta]]) -> dict[str, Any]:
            return {g: {m: d.to_dict() for m, d in ms.items()} for g, ms in group.items()}

        out: dict[str, Any] = {
            "a_config": dict(self.a_config),
            "b_config": dict(self.b_config),
            "ks": list(self.ks),
            "compared": len(self.questions),
            "only_in_a": list(self.only_in_a),
            "only_in_b": list(self.only_in_b),
            "overall": {m: d.to_dict() for m, d in self.overall.items()},
            "by_category": deltas(self.by_category),
            "by_evidence_source": deltas(self.by_source),
            "agreement": {k: round(v, 6) for k, v in self.agreement.items()},
            "better": dict(self.better),
            "worse": dict(self.worse),
        }
        if per_question:
            out["per_question"] = [q.to_dict() for q in self.questions]
        return out


def _group_deltas(
    a: Mapping[str, MetricSummary], b: Mapping[str, MetricSummary], names: Sequence[str]
) -> dict[str, dict[str, MetricDelta]]:
    # Only groups present in both runs: a group missing on one side has no delta.
    return {
        g: {n: MetricDelta(a[g].means[n], b[g].means[n]) for n in names}
        for g in sorted(set(a) & set(b))
    }


def compare_runs(a: RetrievalReport, b: RetrievalReport) -> RunComparison:
    """Metric deltas (B − A) and top-k agreement of two runs over the same questions.

    The metrics compared are those both reports computed (the common ks).
    Questions are matched by id; ones in a single run are listed, not scored.
    """
    ks = tuple(k for k in a.ks if k in b.ks)
    if not ks:
        raise ValueError(f"the runs share no k (A: {a.ks}, B: {b.ks})")
    names = metric_names(ks)
    a_by_id = {q.id: q for q in a.questions}
    b_by_id = {q.id: q for q in b.questions}
    common = [qid for qid in a_by_id if qid in b_by_id]

    per_question: list[QuestionAgreement] = []
    better = dict.fromkeys(names, 0)
    worse = dict.fromkeys(names, 0)
    for qid in common:
        qa, qb = a_by_id[qid], b_by_id[qid]
        per_question.append(
            QuestionAgreement(
                id=qid,
                jaccard={k: jaccard(qa.retrieved[:k], qb.retrieved[:k]) for k in ks},
                top1_agree=qa.retrieved[:1] == qb.retrieved[:1],
            )
        )
        if qa.metrics is not None and qb.metrics is not None:
            for n in names:
                if qb.metrics[n] > qa.metrics[n] + 1e-12:
                    better[n] += 1
                elif qb.metrics[n] < qa.metrics[n] - 1e-12:
                    worse[n] += 1

    agreement: dict[str, float] = {}
    count = len(per_question)
    for k in ks:
        agreement[f"jaccard@{k}"] = (
            sum(q.jaccard[k] for q in per_question) / count if count else 0.0
        )
    agreement["top1_agree"] = sum(q.top1_agree for q in per_question) / count if count else 0.0

    return RunComparison(
        a_config=a.config,
        b_config=b.config,
        ks=ks,
        overall={n: MetricDelta(a.overall.means[n], b.overall.means[n]) for n in names},
        by_category=_group_deltas(a.by_category, b.by_category, names),
        by_source=_group_deltas(a.by_source, b.by_source, names),
        agreement=agreement,
        better=better,
        worse=worse,
        questions=tuple(per_question),
        only_in_a=tuple(q for q in a_by_id if q not in b_by_id),
        only_in_b=tuple(q for q in b_by_id if q not in a_by_id),
    )


# ----------------------------------------------------------- answer scoring

_ARTICLES = frozenset({"a", "an", "the"})
_DROPPED_WORDS = _ARTICLES | {"percent"}  # "21%" and "21 percent" mean the same
# A number (optionally signed when not glued to a word, with thousands
# separators and a decimal part) or a run of letters/digits.
_TOKEN = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?![\w])|[^\W_]+")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def _canonical_number(token: str) -> str:
    try:
        value = Decimal(token.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex only admits numbers
        return token
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def normalize_answer(text: str) -> str:
    """A canonical form for comparing short answers.

    Lowercases (with Unicode NFKC folding), drops punctuation and the
    articles a/an/the, collapses whitespace, and writes numbers canonically:
    ``"1,234.0"`` and ``"1234"`` both become ``1234``, ``"0.450"`` becomes
    ``0.45``. A percent sign is punctuation, and the word "percent" is
    dropped, so ``21%`` and ``21 percent`` both read ``21``.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    out = []
    for token in _TOKEN.findall(text):
        if _NUMBER.fullmatch(token):
            out.append(_canonical_number(token))
        elif token not in _DROPPED_WORDS:
            out.append(token)
    return " ".join(out)


_DECLINE = re.compile(
    r"""
    not\s+answerable | unanswerable | cannot\s+be\s+answered | can'?t\s+be\s+answered
    | can\s?not\s+(?:be\s+)?(?:answer|determine|determined|find|found|infer|inferred)
    | can'?t\s+(?:answer|determine|find|tell)
    | unable\s+to\s+(?:answer|determine|find|locate|identify)
    | (?:does|do|did)\s*(?:not|n'?t)\s+
      (?:contain|mention|provide|include|specify|state|show|say|give|indicate|have)
    | not\s+(?:mentioned|provided|specified|stated|shown|available|given|included
              |present|found|visible|indicated|known)
    | no\s+(?:relevant\s+)?(?:information|data|mention|evidence|details?)
    | (?:not\s+enough|insufficient)\s+(?:information|data|evidence|context)
    | i\s+(?:do\s+not|don'?t)\s+know
    | none\s+of\s+the\s+(?:provided\s+|given\s+)?(?:pages|images|documents)
    """,
    re.IGNORECASE | re.VERBOSE,
)


def is_declined(text: str) -> bool:
    """Whether a model answer declines (says the pages do not answer the question).

    A phrase heuristic ("not answerable", "does not contain", "cannot be
    determined", "not mentioned", "no information" …) matched anywhere in
    the text: it can also fire on an answer that hedges before answering,
    which errs in favour of the model on unanswerable questions.
    """
    text = unicodedata.normalize("NFKC", text).replace("’", "'")
    return _DECLINE.search(text) is not None


def _list_elements(answer: str) -> list[str] | None:
    """The elements of a list answer spelled like ``"['a', 'b']"``, else None."""
    stripped = answer.strip()
    if not stripped.startswith("["):
        return None
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, (list, tuple)):
        return None
    return [str(v) for v in value]


def _contains_tokens(haystack: str, needle: str) -> bool:
    """Whether ``needle``'s tokens occur contiguously in ``haystack`` (both normalised)."""
    if not needle:
        return False
    return f" {needle} " in f" {haystack} "


@dataclass(frozen=True)
class AnswerResult:
    """How one model answer scored.

    ``exact``: identical after trimming whitespace. ``normalized``: equal
    after :func:`normalize_answer` (for list answers: the same set of
    normalised elements, split on commas, semicolons, newlines and "and").
    ``contains``: the normalised expected answer (every element, for lists)
    occurs in the normalised model answer — lenient, for sentence answers.
    The three comparisons are made against any expected answer (for an
    unanswerable question that is usually "Not answerable"), but ``correct``
    is ``normalized`` for answerable questions and ``declined`` for
    unanswerable ones: any way of declining is right there. List answers
    whose elements themselves contain commas only reach ``contains``.
    """

    id: str
    category: str | None
    answer_format: str | None
    answerable: bool
    expected: str | None
    predicted: str
    exact: bool
    normalized: bool
    contains: bool
    declined: bool
    correct: bool
    usage: Usage | None = None
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        usage = None
        if self.usage is not None:
            usage = {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens,
            }
        return {
            "id": self.id,
            "category": self.category,
            "answer_format": self.answer_format,
            "answerable": self.answerable,
            "expected": self.expected,
            "predicted": self.predicted,
            "exact": self.exact,
            "normalized": self.normalized,
            "contains": self.contains,
            "declined": self.declined,
            "correct": self.correct,
            "usage": usage,
            "cost": self.cost,
        }


_LIST_SPLIT = re.compile(r"[;,\n]|\band\b", re.IGNORECASE)


def score_answer(
    item: QAItem, predicted: str, *, usage: Usage | None = None, cost: float | None = None
) -> AnswerResult:
    """Score one model answer against the question's expected answer.

    ``usage`` and ``cost`` are passed through from the VLM call (cost only
    when the endpoint reports one) and summed by :func:`evaluate_answers`.
    """
    declined = is_declined(predicted)
    expected = item.answer
    exact = normalized = contains = False
    if expected is not None:
        exact = predicted.strip() == expected.strip()
        pred_norm = normalize_answer(predicted)
        elements = _list_elements(expected) if item.answer_format in (None, "List") else None
        if elements is not None:
            want = {normalize_answer(e) for e in elements} - {""}
            pred_list = _list_elements(predicted)
            pieces = pred_list if pred_list is not None else _LIST_SPLIT.split(predicted)
            got = {normalize_answer(p) for p in pieces} - {""}
            normalized = bool(want) and want == got
            contains = bool(want) and all(_contains_tokens(pred_norm, w) for w in want)
        else:
            exp_norm = normalize_answer(expected)
            normalized = pred_norm == exp_norm
            contains = _contains_tokens(pred_norm, exp_norm)
    correct = normalized if item.answerable else declined
    return AnswerResult(
        id=item.id,
        category=item.category,
        answer_format=item.answer_format,
        answerable=item.answerable,
        expected=expected,
        predicted=predicted,
        exact=exact,
        normalized=normalized,
        contains=contains,
        declined=declined,
        correct=correct,
        usage=usage,
        cost=cost,
    )


@dataclass(frozen=True)
class UsageTotals:
    """VLM usage summed over the answers that reported it.

    A field stays ``None`` when no answer reported it (an endpoint that
    returns no cost must not read as free).
    """

    answers: int
    answers_with_usage: int
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cost: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "answers_with_usage": self.answers_with_usage,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost": self.cost,
        }


def _sum_optional(values: Iterable[float | int | None]) -> Any:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


@dataclass(frozen=True)
class AnswerReport:
    """Answer accuracy of one run.

    Rates for answerable questions are over ``answerable`` questions that
    have an expected answer; ``declined_unanswerable`` is the share of
    unanswerable questions the model declined (higher is better) and
    ``declined_answerable`` the share of answerable ones it wrongly declined.
    ``accuracy`` is the share of all questions with ``correct`` true.
    ``by_category`` / ``by_format`` hold ``{"count": n, "accuracy": x}``.
    """

    config: Mapping[str, Any]
    count: int
    answerable: int
    unanswerable: int
    exact: float
    normalized: float
    contains: float
    declined_unanswerable: float
    declined_answerable: float
    accuracy: float
    by_category: Mapping[str, Mapping[str, float]]
    by_format: Mapping[str, Mapping[str, float]]
    usage: UsageTotals
    answers: tuple[AnswerResult, ...]

    def to_dict(self, *, per_question: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": dict(self.config),
            "count": self.count,
            "answerable": self.answerable,
            "unanswerable": self.unanswerable,
            "exact": round(self.exact, 6),
            "normalized": round(self.normalized, 6),
            "contains": round(self.contains, 6),
            "declined_unanswerable": round(self.declined_unanswerable, 6),
            "declined_answerable": round(self.declined_answerable, 6),
            "accuracy": round(self.accuracy, 6),
            "by_category": {k: dict(v) for k, v in self.by_category.items()},
            "by_format": {k: dict(v) for k, v in self.by_format.items()},
            "usage": self.usage.to_dict(),
        }
        if per_question:
            out["per_question"] = [a.to_dict() for a in self.answers]
        return out


def _rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def _accuracy_groups(
    results: Sequence[AnswerResult], key: Callable[[AnswerResult], str]
) -> dict[str, dict[str, float]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        groups[key(r)].append(r.correct)
    return {g: {"count": len(v), "accuracy": _rate(v)} for g, v in sorted(groups.items())}


def evaluate_answers(
    results: Sequence[AnswerResult], *, config: Mapping[str, Any] | None = None
) -> AnswerReport:
    """Aggregate per-question :class:`AnswerResult` values into a report."""
    scored = [r for r in results if r.answerable and r.expected is not None]
    unanswerable = [r for r in results if not r.answerable]
    answerable = [r for r in results if r.answerable]
    with_usage = [r.usage for r in results if r.usage is not None]
    usage = UsageTotals(
        answers=len(results),
        answers_with_usage=len(with_usage),
        prompt_tokens=_sum_optional(u.prompt_tokens for u in with_usage),
        completion_tokens=_sum_optional(u.completion_tokens for u in with_usage),
        total_tokens=_sum_optional(u.total_tokens for u in with_usage),
        cost=_sum_optional(r.cost for r in results),
    )
    return AnswerReport(
        config=dict(config or {}),
        count=len(results),
        answerable=len(answerable),
        unanswerable=len(unanswerable),
        exact=_rate([r.exact for r in scored]),
        normalized=_rate([r.normalized for r in scored]),
        contains=_rate([r.contains for r in scored]),
        declined_unanswerable=_rate([r.declined for r in unanswerable]),
        declined_answerable=_rate([r.declined for r in answerable]),
        accuracy=_rate([r.correct for r in results]),
        by_category=_accuracy_groups(results, lambda r: r.category or "(none)"),
        by_format=_accuracy_groups(results, lambda r: r.answer_format or "(none)"),
        usage=usage,
        answers=tuple(results),
    )


# ----------------------------------------------------------------- rendering


def _short(name: str) -> str:
    return (
        name.replace("recall@", "R@")
        .replace("hit@", "Hit@")
        .replace("ndcg@", "nDCG@")
        .replace("mrr", "MRR")
    )


def _config_caption(config: Mapping[str, Any]) -> str | None:
    return ", ".join(f"{k}={v}" for k, v in config.items()) or None


def retrieval_table(report: RetrievalReport, *, title: str = "Page retrieval") -> Table:
    """Overall, per-category and per-evidence-source means, one row per group."""
    names = report.metric_names
    excluded = ", ".join(f"{v} {k}" for k, v in report.excluded.items() if v)
    caption = _config_caption(report.config)
    if excluded:
        caption = f"{caption}; excluded: {excluded}" if caption else f"excluded: {excluded}"
    table = Table(title=title, caption=caption)
    table.add_column("group")
    table.add_column("n", justify="right")
    for n in names:
        table.add_column(_short(n), justify="right")

    def row(label: str, summary: MetricSummary, *, style: str | None = None) -> None:
        cells = [f"{summary.means[n]:.3f}" for n in names]
        table.add_row(label, str(summary.count), *cells, style=style)

    row("overall", report.overall, style="bold")
    sections = (
        ("category", report.by_category),
        ("source", report.by_source),
        ("gold pages", report.by_gold_text),
    )
    for heading, groups in sections:
        if groups:
            table.add_section()
            for label, summary in groups.items():
                row(f"{heading}: {label}", summary)
    return table


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else str(i + 1)


def _delta_text(value: float, delta: float | None) -> Text:
    text = Text(f"{value:.3f}")
    if delta is not None:
        colour = "green" if delta > 1e-9 else "red" if delta < -1e-9 else ""
        text.append(" ")
        text.append(f"{delta:+.3f}", style=colour)
    return text


def comparison_table(
    reports: Sequence[RetrievalReport],
    comparisons: Sequence[RunComparison] = (),
    *,
    labels: Sequence[str] | None = None,
    title: str = "Compared runs",
) -> Table:
    """One column per run (labelled A, B, … unless ``labels``), one row per overall metric.

    ``comparisons[i]`` is run ``i + 1`` against the first (:func:`compare_runs`):
    later columns show each metric's difference from the first, and a last
    section how much the runs agree with it. Between them: the metrics on the
    questions whose gold pages have no text layer (``by_gold_text``), and
    where a fused run's gold hits came from (``lanes``: shares of the scored
    questions, ``visual only / text only / both / fusion only``).
    """
    labels = list(labels or (_letter(i) for i in range(len(reports))))
    first = reports[0]
    captions = [f"{_letter(i)}: {_config_caption(r.config) or '-'}" for i, r in enumerate(reports)]
    table = Table(title=title, caption="\n".join(captions))
    table.add_column("metric")
    for label in labels:
        table.add_column(label, justify="right")
    deltas: list[Mapping[str, MetricDelta]] = [{}, *(c.overall for c in comparisons)]

    def row(label: str, cells: Iterable[Text | str], *, style: str | None = None) -> None:
        table.add_row(label, *cells, style=style)

    def means(summary: Callable[[RetrievalReport], MetricSummary | None], name: str) -> list[str]:
        found = [summary(r) for r in reports]
        return ["" if m is None or name not in m.means else f"{m.means[name]:.3f}" for m in found]

    for name in first.metric_names:
        row(
            _short(name),
            (
                _delta_text(r.overall.means[name], d[name].delta if name in d else None)
                if name in r.overall.means
                else ""
                for r, d in zip(reports, deltas, strict=False)
            ),
        )
    no_text = first.by_gold_text.get(GOLD_WITHOUT_TEXT)
    if no_text is not None:
        table.add_section()
        for name in (n for n in first.metric_names if n.startswith("hit@")):
            row(
                f"{_short(name)}, gold pages without text (n={no_text.count})",
                means(lambda r: r.by_gold_text.get(GOLD_WITHOUT_TEXT), name),
            )
    if any(r.lanes is not None for r in reports):
        table.add_section()
        for k in first.ks:
            row(
                f"Hit@{k} by lane: visual/text/both/fusion only",
                (
                    ""
                    if r.lanes is None or k not in r.lanes.shares
                    else "/".join(f"{r.lanes.shares[k][o]:.2f}" for o in HIT_ORIGINS)
                    for r in reports
                ),
            )
    if comparisons:
        table.add_section()
        for name in comparisons[0].agreement:
            what = (
                "top-1 agree"
                if name == "top1_agree"
                else name.replace("jaccard@", "top-k Jaccard@")
            )
            row(f"{what} with A", ["", *(f"{c.agreement[name]:.3f}" for c in comparisons)])
        row(
            "questions better/worse than A on MRR",
            ["", *(f"{c.better.get('mrr', 0)}/{c.worse.get('mrr', 0)}" for c in comparisons)],
        )
    return table


def lane_table(report: RetrievalReport, *, title: str = "Where the hits came from") -> Table:
    """A fused run's :class:`LaneAttribution`: per k, the hit rate and each origin's share."""
    table = Table(title=title)
    for column in ("k", "Hit@k", "visual only", "text only", "both lanes", "fusion only"):
        table.add_column(column, justify="right")
    lanes = report.lanes
    for k, shares in (lanes.shares if lanes is not None else {}).items():
        table.add_row(
            str(k),
            f"{report.overall.means.get(f'hit@{k}', 0.0):.3f}",
            *(f"{shares[o]:.3f}" for o in HIT_ORIGINS),
        )
    return table


def question_ranks_table(
    reports: Sequence[RetrievalReport],
    *,
    labels: Sequence[str] | None = None,
    title: str = "first gold page per question",
) -> Table:
    """Per question, the rank of its first gold page in each run (``-``: not retrieved)."""
    labels = list(labels or (_letter(i) for i in range(len(reports))))
    table = Table(title=title)
    for column in ("id", "category", "evidence", *labels):
        table.add_column(column, justify="right" if column in labels else "left")
    by_id = [{q.id: q for q in r.questions} for r in reports]
    for q in reports[0].questions:
        evidence = ",".join(str(p) for _, p in q.relevant) or f"({q.excluded})"
        ranks = [runs.get(q.id) for runs in by_id]
        table.add_row(
            q.id,
            q.category or "",
            evidence,
            *(
                "" if r is None or r.metrics is None else str(r.first_relevant_rank or "-")
                for r in ranks
            ),
        )
    return table


def answer_table(report: AnswerReport, *, title: str = "Answers") -> Table:
    """Headline answer rates, per-category accuracy, and VLM usage."""
    table = Table(title=title, caption=_config_caption(report.config))
    table.add_column("measure")
    table.add_column("n", justify="right")
    table.add_column("value", justify="right")
    scored = sum(1 for a in report.answers if a.answerable and a.expected is not None)
    table.add_row("accuracy", str(report.count), f"{report.accuracy:.3f}", style="bold")
    table.add_row("exact match", str(scored), f"{report.exact:.3f}")
    table.add_row("normalised match", str(scored), f"{report.normalized:.3f}")
    table.add_row("contains answer", str(scored), f"{report.contains:.3f}")
    table.add_row(
        "declined (unanswerable)", str(report.unanswerable), f"{report.declined_unanswerable:.3f}"
    )
    table.add_row(
        "declined (answerable)", str(report.answerable), f"{report.declined_answerable:.3f}"
    )
    if report.by_category:
        table.add_section()
        for label, group in report.by_category.items():
            table.add_row(
                f"category: {label}", str(int(group["count"])), f"{group['accuracy']:.3f}"
            )
    u = report.usage
    if u.answers_with_usage or u.cost is not None:
        table.add_section()
        for label, value in (
            ("prompt tokens", u.prompt_tokens),
            ("completion tokens", u.completion_tokens),
            ("total tokens", u.total_tokens),
        ):
            if value is not None:
                table.add_row(label, str(u.answers_with_usage), str(value))
        if u.cost is not None:
            table.add_row("cost", str(u.answers), f"{u.cost:.6g}")
    return table


def render_text(table: Table, *, width: int = 160) -> str:
    """A table as plain text (no colour codes), for logs, files and tests.

    160 columns fit the retrieval table at the default ks (recall, hit and
    nDCG at four cut-offs, and MRR) without squashing a cell.
    """
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    console.print(table)
    return buffer.getvalue()
