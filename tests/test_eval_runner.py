"""``pipeline.evaluate.runner``: the evaluation harness around a real ``PageRAG``.

Three layers: hand-chosen rankings through a patched ``search`` check that
the metrics, filters and document matching arrive intact; the QA corpus on
the stand-in ColPali (real fastembed, embedded Qdrant) checks the harness end
to end — its scores are meaningless, only structure and counts are asserted;
and an OpenAI-compatible endpoint faked at the HTTP boundary checks answer
scoring and usage totals.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from connectors.openai_vlm import OpenAIAnswerer
from pipeline import PageRAG
from pipeline.config import PageRAGConfig, VLMConfig, load_config
from pipeline.errors import (
    ConfigError,
    EvidencePageError,
    InputError,
    QueryError,
    VLMNotConfiguredError,
)
from pipeline.evaluate.metrics import load_questions
from pipeline.evaluate.runner import (
    EvalProgress,
    RunConfig,
    run_comparison,
    run_eval,
)
from pipeline.testing.fakes import FakeEmbedder
from pipeline.types import PageHit

THREE_PAGES = "robust/pdfjs/test/pdfs/three_pages_with_number.pdf"
FIVE_PAGES = "robust/pdfjs/test/pdfs/file_pdfjs_test.pdf"
EIGHT_PAGES = "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf"
QA_SUBSET = (  # 10 + 15 + 17 pages, 18 questions of which 2 unanswerable
    "docs/2310.07609v1.pdf",
    "docs/0e94b4197b10096b1f4c699701570fbf.pdf",
    "docs/GPL-Graduate-Studies-Professional-Learning-Brochure-Jul-2021.pdf",
)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_config(folder: Path, model_dir: Path) -> PageRAGConfig:
    return load_config(
        environ={},
        overrides={
            "store": {"path": str(folder / "data")},
            "render": {"dpi": 40},
            "embedding": {"model_path": str(model_dir), "device": "cpu", "batch_size": 4},
        },
    )


def fake_rag(folder: Path, **kwargs: Any) -> PageRAG:
    config = load_config(
        environ={}, overrides={"store": {"path": str(folder / "data")}, "render": {"dpi": 40}}
    )
    return PageRAG(config, embedder=FakeEmbedder(), **kwargs)


def assert_in_unit_range(values: dict[str, Any]) -> None:
    for name, value in values.items():
        if name != "count":
            assert 0.0 <= value <= 1.0, (name, value)


# ------------------------------------------------- known rankings, hand-computed


@pytest.fixture
def docs(corpus: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(corpus / THREE_PAGES, folder / "a.pdf")
    shutil.copy(corpus / FIVE_PAGES, folder / "b.pdf")
    return folder


@pytest.fixture
def rag(tmp_path: Path) -> Iterator[PageRAG]:
    with fake_rag(tmp_path) as made:
        yield made


KNOWN = [
    {"id": "q1", "question": "first", "doc": "a.pdf", "evidence_pages": [2], "category": "x",
     "evidence_sources": ["Table"]},
    {"id": "q2", "question": "second", "doc": "b.pdf", "evidence_pages": [1, 4], "category": "y",
     "evidence_sources": ["Chart", "Table"]},
    {"id": "q3", "question": "third", "doc": "a.pdf", "evidence_pages": [], "answerable": False,
     "category": "x"},
    # The same bytes as a.pdf under another name: found by content, credited as a.pdf.
    {"id": "q4", "question": "fourth", "doc": "copy-of-a.pdf", "evidence_pages": [3],
     "category": "x"},
]  # fmt: skip
# What the patched search returns per question: (file name, page), best first.
RANKED = {
    "first": [("a.pdf", 1), ("c.pdf", 2), ("a.pdf", 2), ("b.pdf", 2)],
    "second": [("b.pdf", 4), ("b.pdf", 2), ("b.pdf", 1)],
    "third": [("a.pdf", 3)],
    "fourth": [],
}


def patch_search(monkeypatch: pytest.MonkeyPatch, rag: PageRAG) -> list[dict[str, Any]]:
    records = {r.file_name: r for r in rag.documents()}
    calls: list[dict[str, Any]] = []

    def search(query: str, k: int | None = None, *, filter: Any = None, mode: Any = None):
        calls.append({"query": query, "k": k, "filter": filter, "mode": mode})
        hits = []
        ranked = [(name, page) for name, page in RANKED[query] if name in records]
        for rank, (name, page) in enumerate(ranked):  # files a test did not ingest: left out
            record = records[name]
            hits.append(
                PageHit(
                    point_id=f"{name}#{page}",
                    document_id=record.document_id,
                    source=record.source,
                    page_number=page,
                    score=1.0 - rank / 10,
                    payload={"file_name": name},
                )
            )
        return hits

    monkeypatch.setattr(rag, "search", search)
    return calls


def test_known_rankings_give_hand_computed_metrics(
    rag: PageRAG, docs: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(corpus / EIGHT_PAGES, docs / "c.pdf")  # in the collection, in no question
    rag.ingest([docs])
    shutil.copy(docs / "a.pdf", docs / "copy-of-a.pdf")  # after ingest: only its hash is known
    ids = {r.file_name: r.document_id for r in rag.documents()}
    calls = patch_search(monkeypatch, rag)
    questions = write_jsonl(docs / "known.jsonl", KNOWN)

    result = run_eval(rag, questions, ks=(1, 3), mode="exact", ingest=False)

    assert [c["query"] for c in calls] == ["first", "second", "third", "fourth"]
    assert {c["k"] for c in calls} == {3}
    assert {c["mode"] for c in calls} == {"exact"}
    assert [c["filter"] for c in calls] == [
        {"document_id": ids["a.pdf"]},
        {"document_id": ids["b.pdf"]},
        {"document_id": ids["a.pdf"]},
        {"document_id": ids["a.pdf"]},
    ]

    report = result.retrieval
    per = {q.id: q for q in report.questions}
    assert per["q1"].metrics == pytest.approx(
        {"recall@1": 0.0, "recall@3": 1.0, "hit@1": 0.0, "hit@3": 1.0,
         "ndcg@1": 0.0, "ndcg@3": 0.5, "mrr": 1 / 3}
    )  # fmt: skip
    ndcg3_q2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert per["q2"].metrics == pytest.approx(
        {"recall@1": 0.5, "recall@3": 1.0, "hit@1": 1.0, "hit@3": 1.0,
         "ndcg@1": 1.0, "ndcg@3": ndcg3_q2, "mrr": 1.0}
    )  # fmt: skip
    assert per["q3"].metrics is None
    assert per["q3"].excluded == "unanswerable"
    assert per["q4"].metrics == pytest.approx(dict.fromkeys(per["q1"].metrics, 0.0))
    # Pages of a document outside the questions keep their stored path: never credited.
    assert per["q1"].retrieved[1] == (str((docs / "c.pdf").resolve()), 2)
    assert per["q4"].doc == "a.pdf"
    assert per["q4"].relevant == (("a.pdf", 3),)
    assert result.documents == {"a.pdf": ids["a.pdf"], "b.pdf": ids["b.pdf"],
                                "copy-of-a.pdf": ids["a.pdf"]}  # fmt: skip

    assert report.overall.count == 3
    assert report.excluded == {"unanswerable": 1, "no_evidence": 0}
    assert report.overall.means == pytest.approx(
        {
            "recall@1": 0.5 / 3,
            "recall@3": 2 / 3,
            "hit@1": 1 / 3,  # q2's first page is one of its two gold pages
            "hit@3": 2 / 3,
            "ndcg@1": 1 / 3,
            "ndcg@3": (0.5 + ndcg3_q2) / 3,
            "mrr": (1 / 3 + 1) / 3,
        }
    )
    assert report.by_category["x"].count == 2
    assert report.by_category["x"].means["recall@3"] == pytest.approx(0.5)
    assert report.by_category["y"].means["mrr"] == pytest.approx(1.0)
    assert set(report.by_source) == {"Table", "Chart", "(none)"}
    assert report.by_source["Table"].count == 2

    config = report.config
    assert config["mode"] == "exact"
    assert config["k"] == 3
    assert config["model"] == rag.embedder.spec.name
    assert config["pooling"] == "rows+cols"
    assert config["dtype"] == "float16"
    assert config["quantization"] == "none"
    assert config["scope"] == "document"
    assert result.warnings == ()
    assert json.loads(json.dumps(result.to_dict()))["warnings"] == []


def test_a_gold_page_beyond_the_document_stops_the_run_naming_the_line(
    rag: PageRAG, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rag.ingest([docs])  # a.pdf has 3 pages, b.pdf 5
    calls = patch_search(monkeypatch, rag)
    rows = [
        {"id": "ok", "question": "first", "doc": "a.pdf", "evidence_pages": [3]},
        {"id": "past-end", "question": "second", "doc": "b.pdf", "evidence_pages": [2, 6]},
        {"id": "also", "question": "third", "doc": "a.pdf", "evidence_pages": [4]},
    ]
    questions = write_jsonl(docs / "gold.jsonl", rows)
    with pytest.raises(EvidencePageError) as info:
        run_eval(rag, questions, ks=(1, 3), ingest=False)
    error = info.value
    assert isinstance(error, ConfigError)  # a usage error: exit code 2
    message = str(error)
    assert message.startswith(f"{questions}:2:")
    assert "page 6" in message
    assert "b.pdf" in message
    assert "has 5 pages" in message
    assert "line 3" in message  # the other bad line is named too
    where = (error.questions_file, error.line, error.doc, error.page, error.page_count)
    assert where == (str(questions), 2, "b.pdf", 6, 5)
    assert calls == []  # refused before any question was searched

    # Questions handed in as objects have no file: the question id names the place.
    items = [replace(item, line=0) for item in load_questions(questions)][1:2]
    with pytest.raises(EvidencePageError, match=r"question 'past-end'.*has 5 pages"):
        run_eval(rag, items, docs_dir=docs, ks=(1,), ingest=False)


def test_gold_pages_that_were_not_stored_are_a_warning(
    docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(
        environ={},
        overrides={
            "store": {"path": str(tmp_path / "data")},
            "render": {"dpi": 40, "max_pages": 2},  # a.pdf is cut to its first 2 of 3 pages
        },
    )
    with PageRAG(config, embedder=FakeEmbedder()) as rag:
        rag.ingest([docs])
        patch_search(monkeypatch, rag)
        rows = [{"id": "cut", "question": "first", "doc": "a.pdf", "evidence_pages": [3]}]
        result = run_eval(rag, write_jsonl(docs / "cut.jsonl", rows), ks=(1,), ingest=False)
    (warning,) = result.warnings
    assert "page 3 of a.pdf" in warning
    assert "render.max_pages" in warning
    assert result.retrieval.overall.means["recall@1"] == 0.0  # still scored, as a miss
    assert result.to_dict()["warnings"] == [warning]


def test_top_pages_one_after_the_gold_page_warn_of_a_0_based_file(
    rag: PageRAG, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rag.ingest([docs])
    for i, page in enumerate((2, 3, 4, 5)):  # b.pdf: the true page, ranked first
        monkeypatch.setitem(RANKED, f"s{i}", [("b.pdf", page), ("b.pdf", 1)])
    patch_search(monkeypatch, rag)
    rows = [  # ... written down 0-based: one less
        {"id": f"s{i}", "question": f"s{i}", "doc": "b.pdf", "evidence_pages": [page - 1]}
        for i, page in enumerate((2, 3, 4, 5))
    ]
    result = run_eval(rag, write_jsonl(docs / "zero.jsonl", rows), ks=(1, 3), ingest=False)
    (warning,) = result.warnings
    assert "4 of 4" in warning
    assert "numbers pages from 0" in warning
    assert result.retrieval.warnings == (warning,)


def test_collection_scope_searches_everything_with_the_user_filter(
    rag: PageRAG, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rag.ingest([docs])
    calls = patch_search(monkeypatch, rag)
    questions = write_jsonl(docs / "q.jsonl", KNOWN[:3])
    result = run_eval(
        rag, questions, ks=(1, 3), scope="collection", filter={"team": "x"}, ingest=False
    )
    assert [c["filter"] for c in calls] == [{"team": "x"}] * 3
    assert result.retrieval.config["scope"] == "collection"
    assert result.retrieval.overall.count == 2


def test_missing_documents_stop_the_run_or_are_skipped(rag: PageRAG, docs: Path) -> None:
    rows = [
        {"id": "ok", "question": "page one", "doc": "a.pdf", "evidence_pages": [1]},
        {"id": "gone", "question": "page two", "doc": "missing.pdf", "evidence_pages": [2]},
    ]
    questions = write_jsonl(docs / "q.jsonl", rows)
    with pytest.raises(InputError, match=r"missing\.pdf.*--skip-missing"):
        run_eval(rag, questions)

    events: list[EvalProgress] = []
    result = run_eval(rag, questions, skip_missing=True, progress=events.append)
    assert list(result.skipped) == ["gone"]
    assert "missing.pdf" in result.skipped["gone"]
    assert [q.id for q in result.retrieval.questions] == ["ok"]
    assert result.ingest is not None
    assert result.ingest.count("failed") == 1
    stages = [e.stage for e in events]
    assert stages[-1] == "retrieve"
    assert "ingest" in stages
    assert events[-1].done == events[-1].total == 1
    assert result.to_dict()["questions"] == 2

    on_disk_only = write_jsonl(docs / "q2.jsonl", [{**rows[0], "doc": "b.pdf"}])
    with pytest.raises(InputError, match=r"b\.pdf is not in collection"):
        run_eval(rag, on_disk_only, ingest=False)


def test_a_wrong_docs_folder_stops_the_run_saying_why(rag: PageRAG, tmp_path: Path) -> None:
    """The files are not where --docs says: even with stored documents of the same names,
    the ingest that was asked for failed, so the run stops (unless --skip-missing)."""
    from PIL import Image

    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.mkdir()
    wrong.mkdir()
    for name, colour in (("a.png", "white"), ("b.png", "black")):
        Image.new("RGB", (60, 80), colour).save(right / name)
    rows = [
        {"id": "qa", "question": "one", "doc": "a.png", "evidence_pages": [1]},
        {"id": "qb", "question": "two", "doc": "b.png", "evidence_pages": [1]},
    ]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    assert run_eval(rag, questions, docs_dir=right).retrieval.overall.count == 2

    with pytest.raises(InputError) as info:
        run_eval(rag, questions, docs_dir=wrong)
    message = str(info.value)
    assert "2 document(s) of the questions are not available" in message
    assert f"ingest failed: {wrong / 'a.png'}: no such file or folder" in message
    assert "--docs" in message
    assert "--skip-missing" in message
    with pytest.raises(InputError, match="none of the questions' documents is available"):
        run_eval(rag, questions, docs_dir=wrong, skip_missing=True)
    # Without an ingest, stored documents of the same names stand in (as documented).
    assert run_eval(rag, questions, docs_dir=wrong, ingest=False).retrieval.overall.count == 2


def test_bad_arguments_fail_before_any_work(rag: PageRAG, docs: Path) -> None:
    questions = write_jsonl(docs / "q.jsonl", KNOWN[:1])
    with pytest.raises(QueryError, match="k must be"):
        run_eval(rag, questions, ks=(0, 3))
    with pytest.raises(QueryError, match="mode must be one of"):
        run_eval(rag, questions, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="scope must be one of"):
        run_eval(rag, questions, scope="everything")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown key retrieval\.prefetch"):
        run_eval(rag, questions, retrieval={"prefetch": 5})
    with pytest.raises(ConfigError, match="documents folder not found"):
        run_eval(rag, questions, docs_dir=docs / "nowhere")
    with pytest.raises(VLMNotConfiguredError, match=r"vlm\.base_url"):
        run_eval(rag, questions, answer=True)
    assert rag.store.spec() is None  # nothing was ingested by any of these


def test_run_config_parsing() -> None:
    assert RunConfig.parse("exact") == RunConfig(mode="exact", label="exact")
    parsed = RunConfig.parse("two_stage, prefetch_k=50")
    assert parsed.mode == "two_stage"
    assert parsed.retrieval == {"prefetch_k": 50}
    assert RunConfig.parse("prefetch_k=8").mode is None
    assert RunConfig(mode="two_stage", retrieval={"prefetch_k": 9}).describe() == (
        "two_stage,prefetch_k=9"
    )
    for bad in ("fast", "prefetch_k=5,exact", "=3"):
        with pytest.raises(ConfigError, match="bad run configuration"):
            RunConfig.parse(bad)


def test_retrieval_overrides_apply_to_the_run_only(
    rag: PageRAG, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rag.ingest([docs])
    patch_search(monkeypatch, rag)
    questions = write_jsonl(docs / "q.jsonl", KNOWN[:2])
    before = rag.config
    default_prefetch = before.retrieval.prefetch_k
    result = run_eval(
        rag, questions, mode="two_stage", retrieval={"prefetch_k": 77}, ks=(1,), ingest=False
    )
    assert result.retrieval.config["prefetch_k"] == 77
    assert result.retrieval.config["mode"] == "two_stage"
    assert rag.config is before
    assert before.retrieval.prefetch_k == default_prefetch != 77


# ------------------------------------------------ answers through a faked endpoint


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-eval",
        "object": "chat.completion",
        "created": 0,
        "model": "test-vlm",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105},
    }


def test_answers_are_scored_with_usage_totals(docs: Path, tmp_path: Path) -> None:
    requests: list[dict[str, Any]] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append(body)
        text = json.dumps(body["messages"][-1]["content"])
        if "decline me" in text:
            return httpx.Response(200, json=completion("The pages do not contain this."))
        return httpx.Response(200, json=completion("Berlin"))

    rows = [
        {"id": "right", "question": "where?", "doc": "a.pdf", "evidence_pages": [1],
         "answer": "Berlin", "category": "x"},
        {"id": "wrong", "question": "how many?", "doc": "b.pdf", "evidence_pages": [2],
         "answer": "42", "category": "x"},
        {"id": "declined", "question": "decline me", "doc": "a.pdf", "evidence_pages": [],
         "answer": "Not answerable", "answerable": False, "category": "y"},
        {"id": "not-declined", "question": "who?", "doc": "b.pdf", "evidence_pages": [],
         "answer": "Not answerable", "answerable": False, "category": "y"},
    ]  # fmt: skip
    questions = write_jsonl(docs / "qa.jsonl", rows)
    vlm = VLMConfig(base_url="http://vlm.test/v1", model="test-vlm", api_key=SecretStr("k"))
    with httpx.Client(transport=httpx.MockTransport(endpoint)) as client:
        answerer = OpenAIAnswerer(vlm, http_client=client, backoff_s=0.0)
        with fake_rag(tmp_path, answerer=answerer) as rag:
            result = run_eval(rag, questions, answer=True, answer_k=2, ks=(1,))

    assert len(requests) == 4
    for body in requests:  # the VLM sees answer_k pages even where the metrics stop at k=1
        images = [p for p in body["messages"][-1]["content"] if p["type"] == "image_url"]
        assert len(images) == 2
    assert all(len(q.retrieved) == 1 for q in result.retrieval.questions)
    answers = result.answers
    assert answers is not None
    by_id = {a.id: a for a in answers.answers}
    assert by_id["right"].correct
    assert by_id["right"].exact
    assert not by_id["wrong"].correct
    assert by_id["declined"].declined
    assert by_id["declined"].correct
    assert not by_id["not-declined"].declined
    assert not by_id["not-declined"].correct
    assert answers.accuracy == pytest.approx(0.5)
    assert answers.exact == pytest.approx(0.5)
    assert answers.declined_unanswerable == pytest.approx(0.5)
    assert answers.declined_answerable == 0.0
    assert answers.by_category == {
        "x": {"count": 2, "accuracy": 0.5},
        "y": {"count": 2, "accuracy": 0.5},
    }
    usage = answers.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (400, 20, 420)
    assert usage.answers_with_usage == 4
    assert usage.cost is None  # the endpoint reported none: unknown, not free
    assert answers.config["vlm"] == "test-vlm"
    assert answers.config["answer_k"] == 2
    data = json.loads(json.dumps(result.to_dict()))
    assert data["answers"]["usage"]["total_tokens"] == 420
    assert data["timing"]["answer_seconds"] >= 0


# ------------------------------------------- the QA corpus on the stand-in ColPali


@pytest.fixture(scope="module")
def qa_rows(corpus: Path) -> list[dict[str, Any]]:
    lines = (corpus / "qa" / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def subset(
    qa_rows: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[dict[str, Any]]]:
    rows = [row for row in qa_rows if row["doc"] in QA_SUBSET]
    path = write_jsonl(tmp_path_factory.mktemp("qa") / "subset.jsonl", rows)
    return path, rows


@pytest.fixture(scope="module")
def tiny_rag(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageRAG]:
    with PageRAG(tiny_config(tmp_path_factory.mktemp("tiny-store"), tiny_model_dir)) as made:
        yield made


def check_corpus_run(result: Any, rows: list[dict[str, Any]], ks: tuple[int, ...]) -> None:
    report = result.retrieval
    unanswerable = sum(not row["answerable"] for row in rows)
    no_evidence = sum(row["answerable"] and not row["evidence_pages"] for row in rows)
    assert len(report.questions) == len(rows)
    assert report.excluded == {"unanswerable": unanswerable, "no_evidence": no_evidence}
    assert report.overall.count == len(rows) - unanswerable - no_evidence
    assert set(report.overall.means) == {
        *(f"recall@{k}" for k in ks),
        *(f"hit@{k}" for k in ks),
        *(f"ndcg@{k}" for k in ks),
        "mrr",
    }
    assert_in_unit_range(dict(report.overall.means))
    scored = [row for row in rows if row["answerable"] and row["evidence_pages"]]
    assert set(report.by_category) == {row["category"] for row in scored}
    assert set(report.by_source) == {s for row in scored for s in row["evidence_sources"]} | (
        {"(none)"} if any(not row["evidence_sources"] for row in scored) else set()
    )
    for summary in (*report.by_category.values(), *report.by_source.values()):
        assert_in_unit_range(dict(summary.means))
    assert sum(s.count for s in report.by_category.values()) == report.overall.count
    recalls = [report.overall.means[f"recall@{k}"] for k in ks]
    assert recalls == sorted(recalls)  # recall never drops as k grows
    for k in ks:  # a question with any gold page found counts fully for hit@k
        assert report.overall.means[f"hit@{k}"] >= report.overall.means[f"recall@{k}"]
    for q in report.questions:
        # Per-document scope: every page comes from the question's own document.
        assert {doc for doc, _ in q.retrieved} <= {q.doc}
        assert len(q.retrieved) == len(set(q.retrieved)) == max(ks)  # every doc has >= 10 pages
    assert result.skipped == {}
    assert result.warnings == ()  # a correct 1-based file raises no 0-based alarm
    # the stand-in says it is one, and the run names the exact weights it searched
    assert report.config["model"] == "Qdrant/colpali-v1.3-fp16 (stand-in, random weights)"
    assert len(report.config["model_fingerprint"]) == 16
    assert report.config["pooling"] == "rows+cols"
    data = json.loads(json.dumps(result.to_dict()))
    assert data["retrieval"]["evaluated"] == report.overall.count
    assert len(data["retrieval"]["per_question"]) == len(rows)


def test_qa_subset_runs_end_to_end_on_the_stand_in_model(
    tiny_rag: PageRAG, subset: tuple[Path, list[dict[str, Any]]], corpus: Path
) -> None:
    path, rows = subset
    result = run_eval(tiny_rag, path, docs_dir=corpus / "qa")
    assert result.ingest is not None
    assert result.ingest.count("ingested") == len(QA_SUBSET)
    check_corpus_run(result, rows, (1, 3, 5, 10))
    assert set(result.documents) == set(QA_SUBSET)
    assert result.to_dict(per_question=False)["retrieval"].get("per_question") is None

    again = run_eval(tiny_rag, path, docs_dir=corpus / "qa", ks=(1, 5))  # unchanged: skipped
    assert again.ingest is not None
    assert again.ingest.count("skipped") == len(QA_SUBSET)
    first = {q.id: q.retrieved[:5] for q in result.retrieval.questions}
    assert {q.id: q.retrieved for q in again.retrieval.questions} == first  # deterministic


def test_comparison_of_three_runs_ingests_once_and_compares_with_the_first(
    tiny_rag: PageRAG, subset: tuple[Path, list[dict[str, Any]]], corpus: Path
) -> None:
    path, rows = subset
    compared = run_comparison(
        tiny_rag, path, "exact", "two_stage,prefetch_k=12", "exact",
        docs_dir=corpus / "qa", ks=(1, 5),
    )  # fmt: skip
    a, b, c = compared.runs
    assert a.ingest is not None and b.ingest is None and c.ingest is None  # one ingest
    assert a.retrieval.config["mode"] == "exact"
    assert b.retrieval.config["mode"] == "two_stage"
    assert b.retrieval.config["prefetch_k"] == 12
    assert [r.label for r in compared.runs] == [
        "A: exact",
        "B: two_stage,prefetch_k=12",
        "C: exact",
    ]
    comparison, same = compared.comparisons
    assert len(comparison.questions) == len(rows)  # unanswerable ones agree or not, too
    names = ["recall@1", "recall@5", "hit@1", "hit@5", "ndcg@1", "ndcg@5", "mrr"]
    assert list(comparison.overall) == names
    for name, delta in comparison.overall.items():
        assert delta.a == pytest.approx(a.retrieval.overall.means[name])
        assert delta.delta == pytest.approx(delta.b - delta.a)
        scored = a.retrieval.overall.count
        assert comparison.better[name] + comparison.worse[name] <= scored
    assert set(comparison.agreement) == {"jaccard@1", "jaccard@5", "top1_agree"}
    assert_in_unit_range(dict(comparison.agreement))
    # C is A again: no difference, full agreement
    assert all(d.delta == 0 for d in same.overall.values())
    assert same.agreement == {"jaccard@1": 1.0, "jaccard@5": 1.0, "top1_agree": 1.0}
    data = json.loads(json.dumps(compared.to_dict()))
    assert data["baseline"] == "A: exact"
    assert [c["compared"] for c in data["comparisons"]] == [len(rows), len(rows)]
    assert data["runs"][0]["questions_file"] == str(path)
    with pytest.raises(ConfigError, match="2 to 26"):
        run_comparison(tiny_rag, path, "exact", docs_dir=corpus / "qa")


@pytest.mark.slow
def test_full_qa_set_runs_end_to_end(
    tiny_model_dir: Path,
    qa_rows: list[dict[str, Any]],
    corpus: Path,
    tmp_path: Path,
) -> None:
    progress: list[EvalProgress] = []
    with PageRAG(tiny_config(tmp_path, tiny_model_dir)) as full:
        result = run_eval(full, corpus / "qa" / "questions.jsonl", progress=progress.append)
    check_corpus_run(result, qa_rows, (1, 3, 5, 10))
    assert result.ingest is not None
    assert result.ingest.ok
    assert len(result.documents) == len({row["doc"] for row in qa_rows})
    assert progress[-1] == EvalProgress("retrieve", len(qa_rows), len(qa_rows))
