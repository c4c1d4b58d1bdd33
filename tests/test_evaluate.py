"""Evaluation arithmetic against hand-computed values, and the QA file loader."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError, EvidencePageError
from pipeline.evaluate.metrics import (
    GOLD_WITH_TEXT,
    GOLD_WITHOUT_TEXT,
    QAItem,
    answer_table,
    compare_runs,
    comparison_table,
    default_doc_key,
    evaluate_answers,
    evaluate_retrieval,
    hit_at_k,
    is_declined,
    jaccard,
    lane_table,
    load_questions,
    ndcg_at_k,
    normalize_answer,
    page_shift_warning,
    question_ranks_table,
    recall_at_k,
    reciprocal_rank,
    render_text,
    retrieval_metrics,
    retrieval_table,
    score_answer,
)
from pipeline.types import Usage

LOG2_3 = math.log2(3)  # discount at rank 2
LOG2_4 = 2.0  # discount at rank 3


# ------------------------------------------------------------ single ranking


def test_one_relevant_page_at_rank_two():
    # relevant {3}; ranked [5, 3, 8, 9]
    ranked, relevant = [5, 3, 8, 9], {3}
    assert recall_at_k(ranked, relevant, 1) == 0.0  # 5 is not relevant
    assert recall_at_k(ranked, relevant, 3) == 1.0  # 3 is within the first 3
    # DCG@3 = 0/log2(2) + 1/log2(3) + 0 ; IDCG@3 over min(3, 1) = 1 page = 1/log2(2) = 1
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(1 / LOG2_3)
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(0.6309, abs=1e-4)
    assert ndcg_at_k(ranked, relevant, 1) == 0.0
    assert reciprocal_rank(ranked, relevant) == 0.5  # first hit at rank 2
    assert reciprocal_rank(ranked, relevant, k=1) == 0.0  # MRR@1: not in the first rank


def test_two_relevant_pages():
    # relevant {3, 7}; ranked [3, 5, 7, 1]
    ranked, relevant = [3, 5, 7, 1], {3, 7}
    assert recall_at_k(ranked, relevant, 1) == 0.5  # 1 of 2
    assert recall_at_k(ranked, relevant, 3) == 1.0
    # DCG@3 = 1/log2(2) + 0 + 1/log2(4) = 1 + 0.5 = 1.5
    # IDCG@3 over min(3, 2) = 2 pages = 1 + 1/log2(3) = 1.6309
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(1.5 / (1 + 1 / LOG2_3))
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(0.9197, abs=1e-4)
    # nDCG@1: DCG = 1, IDCG over min(1, 2) = 1 page = 1
    assert ndcg_at_k(ranked, relevant, 1) == 1.0
    assert reciprocal_rank(ranked, relevant) == 1.0


def test_duplicates_in_the_ranking_earn_nothing_twice():
    # relevant {3, 7}; ranked [3, 3, 7]: the second 3 keeps its slot but gains 0
    ranked, relevant = [3, 3, 7], {3, 7}
    assert recall_at_k(ranked, relevant, 2) == 0.5  # not 1.0: 3 counted once
    assert recall_at_k(ranked, relevant, 3) == 1.0
    # DCG@3 = 1 + 0 + 1/log2(4) = 1.5 ; IDCG@3 = 1 + 1/log2(3)
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(1.5 / (1 + 1 / LOG2_3))
    # relevant {3}; ranked [3, 3]: never above 1
    assert recall_at_k([3, 3], {3}, 2) == 1.0
    assert ndcg_at_k([3, 3], {3}, 2) == 1.0


def test_no_relevant_page_retrieved():
    ranked, relevant = [1, 2, 4, 5, 6], {9}
    assert recall_at_k(ranked, relevant, 5) == 0.0
    assert ndcg_at_k(ranked, relevant, 5) == 0.0
    assert reciprocal_rank(ranked, relevant) == 0.0


def test_short_ranking_and_bad_arguments():
    # Only 2 pages retrieved, k = 10: recall counts what is there.
    assert recall_at_k([4, 9], {9}, 10) == 1.0
    # DCG = 1/log2(3); IDCG@10 over 1 page = 1
    assert ndcg_at_k([4, 9], {9}, 10) == pytest.approx(1 / LOG2_3)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k([1], {1}, 0)
    with pytest.raises(ValueError, match="undefined"):
        ndcg_at_k([1], set(), 3)


def test_hit_at_k_is_any_relevant_page_found():
    # relevant {3, 7}; ranked [5, 3, 8]: one of two found by rank 2
    ranked, relevant = [5, 3, 8], {3, 7}
    assert hit_at_k(ranked, relevant, 1) == 0.0
    assert hit_at_k(ranked, relevant, 2) == 1.0  # recall@2 is only 0.5
    assert recall_at_k(ranked, relevant, 2) == 0.5
    assert hit_at_k([], relevant, 5) == 0.0
    # With one relevant page, hit@k and recall@k are the same number.
    assert hit_at_k([4, 9], {9}, 2) == recall_at_k([4, 9], {9}, 2) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        hit_at_k([1], {1}, 0)
    with pytest.raises(ValueError, match="undefined"):
        hit_at_k([1], set(), 3)


def test_retrieval_metrics_keys():
    metrics = retrieval_metrics([5, 3], {3}, ks=(1, 3))
    assert list(metrics) == [
        "recall@1", "recall@3", "hit@1", "hit@3", "ndcg@1", "ndcg@3", "mrr",
    ]  # fmt: skip


# ------------------------------------------------------------- aggregation


def _item(qid: str, doc: str, pages: list[int], **kw: Any) -> QAItem:
    return QAItem(id=qid, question=f"q {qid}", doc=doc, evidence_pages=tuple(pages), **kw)


@pytest.fixture
def fixture_items() -> list[QAItem]:
    return [
        # q1: relevant a.pdf p3, ranked a3 first -> all metrics 1
        _item("q1", "docs/a.pdf", [3], category="paper", evidence_sources=("Table",)),
        # q2: relevant a.pdf p3, ranked [b3, a3] -> R@1 0, R@3 1, nDCG@3 1/log2 3, MRR .5
        _item("q2", "docs/a.pdf", [3], category="paper", evidence_sources=("Table", "Chart")),
        # q3: relevant b.pdf p2, not retrieved -> all 0
        _item("q3", "docs/b.pdf", [2], category="report", evidence_sources=("Chart",)),
        # q4: unanswerable -> excluded
        _item("q4", "docs/b.pdf", [], answerable=False, category="report"),
        # q5: answerable but no evidence pages -> excluded
        _item("q5", "docs/b.pdf", [], category="report"),
    ]


RUN_A = {
    "q1": [("/data/docs/a.pdf", 3), ("/data/docs/a.pdf", 4)],
    "q2": [("/data/docs/b.pdf", 3), ("/data/docs/a.pdf", 3)],
    "q3": [("/data/docs/a.pdf", 1)],
    "q4": [("/data/docs/b.pdf", 1)],
    "q5": [],
}


def test_evaluate_retrieval_aggregates(fixture_items):
    report = evaluate_retrieval(fixture_items, RUN_A, ks=(1, 3), config={"mode": "exact"})
    assert report.excluded == {"unanswerable": 1, "no_evidence": 1}
    assert report.overall.count == 3
    means = report.overall.means
    # recall@1: (1 + 0 + 0) / 3
    assert means["recall@1"] == pytest.approx(1 / 3)
    # recall@3: (1 + 1 + 0) / 3
    assert means["recall@3"] == pytest.approx(2 / 3)
    # nDCG@3: (1 + 1/log2 3 + 0) / 3
    assert means["ndcg@3"] == pytest.approx((1 + 1 / LOG2_3) / 3)
    # MRR: (1 + 0.5 + 0) / 3
    assert means["mrr"] == pytest.approx(0.5)
    # hit@k: one relevant page per question, so the same as recall@k
    assert means["hit@1"] == pytest.approx(1 / 3)
    assert means["hit@3"] == pytest.approx(2 / 3)

    # per category: paper = q1, q2 ; report = q3 only (q4, q5 excluded)
    assert report.by_category["paper"].count == 2
    assert report.by_category["paper"].means["mrr"] == pytest.approx(0.75)
    assert report.by_category["report"].count == 1
    assert report.by_category["report"].means["recall@3"] == 0.0
    # per source: q2 counts under both Table and Chart
    assert report.by_source["Table"].count == 2  # q1, q2
    assert report.by_source["Table"].means["mrr"] == pytest.approx(0.75)
    assert report.by_source["Chart"].count == 2  # q2, q3
    assert report.by_source["Chart"].means["mrr"] == pytest.approx(0.25)

    q2 = next(q for q in report.questions if q.id == "q2")
    assert q2.first_relevant_rank == 2
    q4 = next(q for q in report.questions if q.id == "q4")
    assert q4.metrics is None
    assert q4.excluded == "unanswerable"

    data = json.loads(json.dumps(report.to_dict()))
    assert data["overall"]["count"] == 3
    assert data["config"] == {"mode": "exact"}
    assert data["by_evidence_source"]["Chart"]["count"] == 2
    assert len(data["per_question"]) == 5

    text = render_text(retrieval_table(report))
    assert "overall" in text
    assert "category: paper" in text
    assert "source: Chart" in text
    assert "0.500" in text  # overall MRR
    assert "Hit@3" in text
    assert data["overall"]["hit@3"] == pytest.approx(2 / 3, abs=1e-6)
    assert data["warnings"] == []


def test_hit_at_k_differs_from_recall_with_several_gold_pages():
    items = [_item("q", "a.pdf", [2, 5])]
    report = evaluate_retrieval(items, {"q": [("a.pdf", 5), ("a.pdf", 1)]}, ks=(1, 2))
    assert report.overall.means["recall@2"] == 0.5  # one of the two gold pages
    assert report.overall.means["hit@2"] == 1.0  # but a gold page was found


# ------------------------------------------------- gold pages that look 0-based


def _shifted(n: int, *, hits: int = 0) -> tuple[list[QAItem], dict[str, list[tuple[str, int]]]]:
    """n questions whose first page is the one after the gold page, then `hits` exact ones."""
    items, ranks = [], {}
    for i in range(n + hits):
        gold = 2 + i % 5
        items.append(_item(f"q{i}", "a.pdf", [gold]))
        top = gold + 1 if i < n else gold
        ranks[f"q{i}"] = [("a.pdf", top), ("a.pdf", 1)]
    return items, ranks


def test_most_top_pages_one_after_the_gold_page_warn_of_0_based_pages():
    items, ranks = _shifted(4, hits=1)
    report = evaluate_retrieval(items, ranks, ks=(1,))
    assert len(report.warnings) == 1
    warning = report.warnings[0]
    assert "4 of 5" in warning
    assert "numbers pages from 0" in warning
    assert "add 1" in warning
    assert page_shift_warning(report.questions) == warning
    assert json.loads(json.dumps(report.to_dict()))["warnings"] == [warning]


@pytest.mark.parametrize(
    ("shifted", "hits"),
    [
        (2, 0),  # too few to say anything
        (4, 3),  # the gold page itself comes first almost as often
        (3, 12),  # a few neighbours among many hits: ordinary retrieval
    ],
)
def test_no_0_based_warning_without_a_clear_shift(shifted: int, hits: int):
    items, ranks = _shifted(shifted, hits=hits)
    assert evaluate_retrieval(items, ranks, ks=(1,)).warnings == ()


def test_a_gold_page_run_is_not_a_shift():
    # gold {3, 4}, top page 4: a hit, not "one after the gold page"
    items = [_item(f"q{i}", "a.pdf", [3, 4]) for i in range(5)]
    ranks = {f"q{i}": [("a.pdf", 4)] for i in range(5)}
    assert evaluate_retrieval(items, ranks, ks=(1,)).warnings == ()


def test_evaluate_retrieval_refuses_missing_rankings_and_key_clashes(fixture_items):
    with pytest.raises(ValueError, match="no ranking"):
        evaluate_retrieval(fixture_items, {"q1": []})
    clash = [_item("x", "one/a.pdf", [1]), _item("y", "two/a.pdf", [1])]
    with pytest.raises(ValueError, match="share the key"):
        evaluate_retrieval(clash, {"x": [], "y": []})
    # ... which a finer doc_key resolves
    report = evaluate_retrieval(clash, {"x": [("one/a.pdf", 1)], "y": []}, doc_key=str)
    assert report.overall.means["mrr"] == 0.5


def test_default_doc_key():
    assert default_doc_key("docs/a.pdf") == default_doc_key("/abs/x/docs/a.pdf") == "a.pdf"
    assert default_doc_key(r"C:\x\a.pdf") == "a.pdf"


# --------------------------------------------------------------- comparison


def test_compare_runs_deltas_and_agreement(fixture_items):
    a = evaluate_retrieval(fixture_items, RUN_A, ks=(1, 3), config={"mode": "exact"})
    run_b = {
        "q1": [("docs/a.pdf", 4), ("docs/a.pdf", 3)],  # top-1 changed; MRR 1 -> .5
        "q2": [("docs/a.pdf", 3), ("docs/b.pdf", 3)],  # swapped: MRR .5 -> 1
        "q3": [("docs/a.pdf", 1)],  # identical
        "q4": [("docs/b.pdf", 9)],  # unanswerable, different page
        "q5": [],  # both empty: full agreement
    }
    b = evaluate_retrieval(fixture_items, run_b, ks=(1, 3), config={"mode": "two_stage"})
    cmp = compare_runs(a, b)

    # MRR: A = (1 + .5 + 0)/3 = .5 ; B = (.5 + 1 + 0)/3 = .5 ; delta 0
    assert cmp.overall["mrr"].delta == pytest.approx(0.0)
    # recall@1: A = 1/3 (q1) ; B = 1/3 (q2) ; delta 0 — but one better, one worse
    assert cmp.better["recall@1"] == 1
    assert cmp.worse["recall@1"] == 1
    # per category paper: recall@1 A = (1+0)/2, B = (0+1)/2
    assert cmp.by_category["paper"]["recall@1"].delta == pytest.approx(0.0)

    # Jaccard@1 per question: q1 {a3} vs {a4} = 0 ; q2 {b3} vs {a3} = 0 ; q3 1 ; q4 0 ; q5 1
    assert cmp.agreement["jaccard@1"] == pytest.approx(2 / 5)
    # Jaccard@3: q1 {a3,a4} vs same = 1 ; q2 1 ; q3 1 ; q4 {b1} vs {b9} = 0 ; q5 1
    assert cmp.agreement["jaccard@3"] == pytest.approx(4 / 5)
    # top-1 agrees on q3 and q5 (both empty)
    assert cmp.agreement["top1_agree"] == pytest.approx(2 / 5)

    data = json.loads(json.dumps(cmp.to_dict()))
    assert data["overall"]["mrr"]["delta"] == 0.0
    assert data["compared"] == 5
    text = render_text(comparison_table([a, b], [cmp]))
    assert "MRR" in text
    assert "top-1 agree with A" in text
    assert "two_stage" in text
    assert "1/1" in text  # MRR: better on q2, worse on q1


def test_compare_runs_deltas_nonzero(fixture_items):
    a = evaluate_retrieval(fixture_items, RUN_A, ks=(1, 3, 5))
    b = evaluate_retrieval(
        fixture_items, {**RUN_A, "q3": [("x/b.pdf", 2)]}, ks=(3, 10)
    )  # q3 now found at rank 1
    cmp = compare_runs(a, b)
    assert cmp.ks == (3,)  # only the common k (and mrr)
    # recall@3: A 2/3 -> B 3/3
    assert cmp.overall["recall@3"].delta == pytest.approx(1 / 3)
    # MRR: A .5 -> B (1 + .5 + 1)/3
    assert cmp.overall["mrr"].b == pytest.approx(2.5 / 3)
    assert cmp.better["mrr"] == 1
    assert cmp.worse["mrr"] == 0


# ------------------------------------------------------ lanes and text layers

# Five scored questions (gold: a.pdf p1) and an unanswerable one, as a hybrid run saw
# them: each retrieved page with its rank in each lane that found it.
LANED: dict[str, list[tuple[tuple[str, int], dict[str, int]]]] = {
    "q1": [(("a.pdf", 1), {"visual": 1, "text": 1})],  # both lanes had it first
    "q2": [(("a.pdf", 1), {"visual": 1})],  # the visual lane alone
    "q3": [(("a.pdf", 2), {"visual": 1}), (("a.pdf", 1), {"text": 1, "visual": 9})],  # text, @3
    "q4": [(("a.pdf", 1), {"visual": 4, "text": 5})],  # neither lane's top 3: fusion lifted it
    "q5": [(("a.pdf", 2), {"visual": 1})],  # missed
    "q6": [(("a.pdf", 3), {"text": 1})],  # unanswerable: not scored
}


def _laned_items() -> list[QAItem]:
    items = [_item(f"q{i}", "a.pdf", [1]) for i in range(1, 6)]
    return [*items, _item("q6", "a.pdf", [], answerable=False)]


def _hybrid_report(**kw: Any) -> Any:
    return evaluate_retrieval(
        _laned_items(),
        {q: [key for key, _ in hits] for q, hits in LANED.items()},
        ks=(1, 3),
        lane_ranks={q: [lanes for _, lanes in hits] for q, hits in LANED.items()},
        **kw,
    )


def test_lane_attribution_says_which_lane_brought_each_hit():
    report = _hybrid_report(config={"mode": "hybrid"})
    assert report.lanes is not None
    assert report.lanes.count == 5
    at1, at3 = report.lanes.shares[1], report.lanes.shares[3]
    assert at1 == {"visual_only": 0.2, "text_only": 0.0, "both": 0.2, "fusion_only": 0.2}
    assert at3 == {"visual_only": 0.2, "text_only": 0.2, "both": 0.2, "fusion_only": 0.2}
    for k, shares in report.lanes.shares.items():  # the origins add up to hit@k
        assert sum(shares.values()) == pytest.approx(report.overall.means[f"hit@{k}"])
    data = json.loads(json.dumps(report.to_dict()))
    assert data["lanes"]["hit@3"]["text_only"] == 0.2
    assert data["lanes"]["count"] == 5
    text = render_text(lane_table(report))
    assert "fusion only" in text and "0.800" in text  # hit@3
    # A run without lane ranks (not fused) has no attribution.
    assert evaluate_retrieval(_laned_items(), {q: [] for q in LANED}, ks=(1,)).lanes is None


def test_questions_whose_gold_pages_have_no_text_are_a_group():
    # q1's gold page has text; q2's and q3's do not; q4, q5 unknown (no text lane there);
    # q6 is not scored, whatever its pages.
    known = {"q1": True, "q2": False, "q3": False, "q6": False}
    report = _hybrid_report(gold_has_text=known)
    without, with_text = report.by_gold_text[GOLD_WITHOUT_TEXT], report.by_gold_text[GOLD_WITH_TEXT]
    assert (without.count, with_text.count) == (2, 1)
    assert without.means["hit@1"] == 0.5  # q2 found, q3 not at 1
    assert without.means["hit@3"] == 1.0
    assert with_text.means["mrr"] == 1.0
    data = json.loads(json.dumps(report.to_dict()))
    assert data["by_gold_text"][GOLD_WITHOUT_TEXT]["count"] == 2
    assert "gold pages: without text" in render_text(retrieval_table(report))
    # Unknown for every question: no groups at all, rather than two empty ones.
    assert _hybrid_report().by_gold_text == {}
    assert _hybrid_report().to_dict()["by_gold_text"] == {}


def test_comparison_table_has_a_column_per_run_and_the_lane_and_text_sections():
    items, known = _laned_items(), {"q1": True, "q2": False, "q3": False}
    visual = evaluate_retrieval(
        items, {q: [("a.pdf", 1)] for q in LANED}, ks=(1, 3), gold_has_text=known,
        config={"mode": "exact"},
    )  # fmt: skip
    text_lane = evaluate_retrieval(
        items, {q: [("a.pdf", 2)] for q in LANED}, ks=(1, 3), gold_has_text=known,
        config={"mode": "text"},
    )  # fmt: skip
    hybrid = _hybrid_report(gold_has_text=known, config={"mode": "hybrid"})
    reports = [visual, text_lane, hybrid]
    comparisons = [compare_runs(visual, r) for r in reports[1:]]
    labels = ["A: visual", "B: text", "C: hybrid"]
    text = render_text(comparison_table(reports, comparisons, labels=labels), width=200)
    for expected in (
        "A: visual", "B: text", "C: hybrid",  # one column per run
        "0.000 -1.000",  # B's Hit@1, its difference from A
        "Hit@1, gold pages without text (n=2)",
        "Hit@3 by lane: visual/text/both/fusion only", "0.20/0.20/0.20/0.20",
        "top-1 agree with A", "top-k Jaccard@3 with A",
        "questions better/worse than A on MRR", "0/5", "0/2",
        "A: mode=exact", "C: mode=hybrid",  # the captions
    ):  # fmt: skip
        assert expected in text, (expected, text)
    ranks = render_text(question_ranks_table(reports, labels=labels), width=200)
    q3 = next(line for line in ranks.splitlines() if " q3 " in line)
    assert [c.strip() for c in q3.split("│")[-4:-1]] == ["1", "-", "2"]  # first gold per run
    assert "(unanswerable)" in ranks


def test_jaccard():
    assert jaccard([1, 2], [2, 3]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 1.0


# ------------------------------------------------------------------ answers


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1,234.0", "1234"),
        ("The Berlin School", "berlin school"),
        ("21%", "21"),
        ("21 percent", "21%"),
        ("0.450", "0.45"),
        ("  Eating   out. ", "eating out"),
        ("An apple", "apple"),
    ],
)
def test_normalize_answer_equal(a, b):
    assert normalize_answer(a) == normalize_answer(b)


@pytest.mark.parametrize(("a", "b"), [("12", "1.2"), ("-5", "5"), ("198", "19.8")])
def test_normalize_answer_different(a, b):
    assert normalize_answer(a) != normalize_answer(b)


@pytest.mark.parametrize(
    "text",
    [
        "Not answerable",
        "The document does not contain this information.",
        "This cannot be determined from the provided pages.",
        "The year is not mentioned.",
        "There is no information about the 2015 budget.",
        "The pages don’t mention it.",
        "I don't know.",
    ],
)
def test_declined(text):
    assert is_declined(text)


@pytest.mark.parametrize("text", ["Berlin", "The answer is 42.", "Eating out"])
def test_not_declined(text):
    assert not is_declined(text)


def test_score_answers_and_report():
    num = _item("n", "d.pdf", [1], answer="1,234", answer_format="Int", category="fin")
    txt = _item("s", "d.pdf", [1], answer="Eating out", answer_format="Str", category="fin")
    lst = _item("l", "d.pdf", [1], answer="['3', '1']", answer_format="List", category="doc")
    una = _item("u", "d.pdf", [], answer="Not answerable", answerable=False, answer_format="None")

    r_num = score_answer(num, "1234", usage=Usage(10, 2, 12), cost=0.001)
    assert (r_num.exact, r_num.normalized, r_num.correct) == (False, True, True)
    r_txt = score_answer(txt, "People spent more on eating out.", usage=Usage(20, 8, 28))
    assert (r_txt.normalized, r_txt.contains, r_txt.correct) == (False, True, False)
    r_lst = score_answer(lst, "1 and 3")
    assert (r_lst.normalized, r_lst.contains) == (True, True)
    assert not score_answer(lst, "3").normalized
    r_una = score_answer(una, "The document does not say.", cost=0.002)
    assert r_una.declined
    assert r_una.correct
    wrong_decline = score_answer(txt, "Not answerable")
    assert wrong_decline.declined
    assert not wrong_decline.correct

    report = evaluate_answers([r_num, r_txt, r_lst, r_una], config={"vlm": "m"})
    assert (report.answerable, report.unanswerable) == (3, 1)
    assert report.exact == 0.0
    assert report.normalized == pytest.approx(2 / 3)  # num, list
    assert report.contains == 1.0
    assert report.declined_unanswerable == 1.0
    assert report.accuracy == pytest.approx(3 / 4)  # num, list, unanswerable
    assert report.by_category["fin"] == {"count": 2, "accuracy": 0.5}
    # usage: only 2 answers reported tokens; cost summed over those that had one
    assert report.usage.answers_with_usage == 2
    assert (report.usage.prompt_tokens, report.usage.total_tokens) == (30, 40)
    assert report.usage.cost == pytest.approx(0.003)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["usage"]["completion_tokens"] == 10
    text = render_text(answer_table(report))
    assert "normalised match" in text
    assert "total tokens" in text

    no_usage = evaluate_answers([r_lst])
    assert no_usage.usage.prompt_tokens is None
    assert no_usage.usage.cost is None


# --------------------------------------------------------------- the loader


def test_load_questions_corpus(corpus: Path):
    items = load_questions(corpus / "qa" / "questions.jsonl")
    assert len(items) == 92
    assert sum(not it.answerable for it in items) == 30
    assert all(it.has_evidence == it.answerable for it in items)
    first = items[0]
    assert first.id == "mmlb-0013"
    assert first.evidence_pages == (2,)
    assert first.extra == {"source": "mmlongbench-doc"}
    assert {it.answer for it in items if not it.answerable} == {"Not answerable"}
    # every unanswerable expected answer counts as declined
    assert all(is_declined(it.answer or "") for it in items if not it.answerable)
    # and no answerable expected answer looks like a refusal
    assert not any(is_declined(it.answer or "") for it in items if it.answerable)


def test_load_questions_defaults(tmp_path: Path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Q?", "doc": "a.pdf", "evidence_pages": [2, 2]}\n\n')
    [item] = load_questions(path)
    assert item.id == "line-1"
    assert item.answerable
    assert item.evidence_pages == (2,)
    assert item.category is None
    assert item.evidence_sources == ()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"doc": "a.pdf", "evidence_pages": []}', "'question'"),
        ('{"question": "Q", "evidence_pages": []}', "'doc'"),
        ('{"question": "Q", "doc": "a.pdf"}', "'evidence_pages'"),
        ('{"question": "Q", "doc": "a.pdf", "evidence_pages": [0]}', "1-based"),
        ('{"question": "Q", "doc": "a.pdf", "evidence_pages": [-1]}', "1-based"),
        ('{"question": "Q", "doc": "a.pdf", "evidence_pages": ["2"]}', "1-based"),
        ('{"question": "Q", "doc": "a.pdf", "evidence_pages": [], "answerable": "no"}', "true"),
        ('{"id": "a", "question": "Q", "doc": "a.pdf", "evidence_pages": []}', "duplicate id"),
    ],
)
def test_load_questions_bad_line_names_the_line(tmp_path: Path, line: str, message: str):
    path = tmp_path / "q.jsonl"
    good = '{"id": "a", "question": "Q", "doc": "a.pdf", "evidence_pages": [1]}'
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_questions(path)
    assert f"{path}:3:" in str(info.value)


def test_page_0_is_an_evidence_page_error_saying_pages_are_1_based(tmp_path: Path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"id": "a", "question": "Q", "doc": "a.pdf", "evidence_pages": [1]}\n'
        '{"id": "b", "question": "Q", "doc": "b.pdf", "evidence_pages": [0, 3]}\n'
    )
    with pytest.raises(EvidencePageError) as info:
        load_questions(path)
    error = info.value
    assert isinstance(error, ConfigError)  # a usage error: exit code 2
    message = str(error)
    assert message.startswith(f"{path}:2:")
    assert "page 0" in message
    assert "1-based" in message
    assert "add 1" in message
    assert (error.questions_file, error.line, error.doc, error.page) == (str(path), 2, "b.pdf", 0)
    assert error.page_count is None


def test_load_questions_empty_or_missing(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="no questions"):
        load_questions(empty)
    with pytest.raises(ConfigError, match="cannot read"):
        load_questions(tmp_path / "missing.jsonl")
