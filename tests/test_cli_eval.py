"""``pagerag eval`` / ``pagerag explain`` through Typer, and ``explain_hit`` on a real store.

The CLI runs on an app where :func:`pipeline.cli.eval.register` was called,
with a YAML config pointing at the stand-in ColPali and a temporary embedded
store. Errors must end with exit code 1 or 2 and one clear line, never a
traceback.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from pipeline import PageRAG
from pipeline.config import load_config
from pipeline.errors import QueryError
from pipeline.testing.fakes import FAKE_SPEC, FakeEmbedder
from pipeline.types import page_point_id

DOC = "docs/2310.07609v1.pdf"  # 10 pages, 6 questions (1 unanswerable)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    from pipeline.cli.eval import register

    made = typer.Typer()
    register(made)
    return made


@pytest.fixture(scope="module")
def setup(
    corpus: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A config file, a one-document QA set, and that document ingested."""
    root = tmp_path_factory.mktemp("cli-eval")
    config = root / "pagerag.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"path": str(root / "data")},
                "render": {"dpi": 40},
                "embedding": {"model_path": str(tiny_model_dir), "device": "cpu"},
                "vlm": {"base_url": None, "api_key": None},
            }
        )
    )
    qa = corpus / "qa"
    rows = [
        line
        for line in (qa / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        if json.loads(line)["doc"] == DOC
    ]
    questions = root / "questions.jsonl"
    questions.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with PageRAG(load_config(config, environ={})) as rag:
        assert rag.ingest([qa / DOC]).ok
    return {"config": config, "questions": questions, "docs": qa, "root": root}


@pytest.fixture(autouse=True)
def _no_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def run(app: typer.Typer, *args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(result: Any, code: int, *words: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for word in words:
        assert word in result.output, (word, result.output)


# ---------------------------------------------------------------------- eval


def test_eval_json_parses_and_counts_the_questions(app: typer.Typer, setup: dict[str, Path]):
    result = run(
        app, "eval", setup["questions"], "--docs", setup["docs"], "-k", "1,3", "-k", "5",
        "--per-question", "--json", "--config", setup["config"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    retrieval = data["retrieval"]
    assert retrieval["ks"] == [1, 3, 5]
    assert retrieval["questions"] == 6
    assert retrieval["excluded"] == {"unanswerable": 1, "no_evidence": 0}
    assert retrieval["evaluated"] == 5
    assert set(retrieval["by_category"]) == {"Academic paper"}
    assert 0.0 <= retrieval["overall"]["recall@5"] <= 1.0
    assert retrieval["overall"]["recall@5"] <= retrieval["overall"]["hit@5"] <= 1.0
    assert len(retrieval["per_question"]) == 6
    assert data["ingest"]["files"]["skipped"] == 1  # ingested by the fixture, unchanged
    assert data["answers"] is None
    assert data["documents"] == {DOC: data["documents"][DOC]}


def test_eval_tables_for_people(app: typer.Typer, setup: dict[str, Path]):
    result = run(
        app, "eval", setup["questions"], "--docs", setup["docs"], "--no-ingest", "--mode",
        "exact", "--per-question", "--config", setup["config"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in ("Page retrieval", "overall", "category: Academic paper", "R@10", "Hit@10",
                     "MRR",
                     "mode=exact", "per question", "mmlb-0284", "(unanswerable)",
                     "6 questions searched"):  # fmt: skip
        assert expected in text, expected
    assert "ingest:" not in text  # --no-ingest


def test_eval_compare_runs_every_configuration_once_ingested(
    app: typer.Typer, setup: dict[str, Path]
):
    result = run(
        app, "eval", setup["questions"], "--docs", setup["docs"],
        "--compare", "exact:two_stage,prefetch_k=11:auto", "-k", "1,5", "--json",
        "--config", setup["config"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["baseline"] == "A: exact"
    a, b, c = data["runs"]
    assert a["ingest"]["files"]["skipped"] == 1  # ingested (skipped: unchanged) once, by A
    assert b["ingest"] is None and c["ingest"] is None
    assert b["retrieval"]["config"]["mode"] == "two_stage"
    assert b["retrieval"]["config"]["prefetch_k"] == 11
    assert c["label"] == "C: auto"
    assert len(data["comparisons"]) == 2
    comparison = data["comparisons"][0]
    assert comparison["compared"] == 6
    assert comparison["a_config"]["mode"] == "exact"
    assert set(comparison["overall"]["mrr"]) == {"a", "b", "delta"}
    assert set(comparison["agreement"]) == {"jaccard@1", "jaccard@5", "top1_agree"}
    for run_data in data["runs"]:  # a paper: every gold page has a text layer
        by_text = run_data["retrieval"]["by_gold_text"]
        assert (by_text["without text"]["count"], by_text["with text"]["count"]) == (0, 5)
        assert run_data["retrieval"]["lanes"] is None  # no run fused the lanes

    table = run(
        app, "eval", setup["questions"], "--docs", setup["docs"], "--no-ingest",
        "--compare", "exact:two_stage", "--per-question", "--config", setup["config"],
    )  # fmt: skip
    assert table.exit_code == 0, table.output
    for expected in ("A: exact", "B: two_stage", "top-1 agree with A", "first gold page",
                     "mmlb-0284", "B: two_stage: 6 questions searched"):  # fmt: skip
        assert expected in table.stdout, expected


def test_eval_compare_visual_text_hybrid_reports_lanes(app: typer.Typer, setup: dict[str, Path]):
    result = run(
        app, "eval", setup["questions"], "--docs", setup["docs"], "--no-ingest",
        "--compare", "visual:text:hybrid", "-k", "1,5", "--json", "--config", setup["config"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    visual, text, hybrid = (r["retrieval"] for r in json.loads(result.stdout)["runs"])
    assert visual["config"]["mode"] == "visual->exact"
    assert (text["config"]["mode"], text["config"]["model"]) == ("text", None)  # no model
    assert hybrid["config"]["mode"] == "hybrid"
    assert hybrid["config"]["lanes"] == "visual+text"
    assert visual["lanes"] is None and text["lanes"] is None
    lanes = hybrid["lanes"]
    assert lanes["count"] == 5
    for k in (1, 5):  # every fused hit came from somewhere
        shares = lanes[f"hit@{k}"]
        assert set(shares) == {"visual_only", "text_only", "both", "fusion_only"}
        assert sum(shares.values()) == pytest.approx(hybrid["overall"][f"hit@{k}"], abs=1e-5)

    table = run(
        app, "eval", setup["questions"], "--docs", setup["docs"], "--no-ingest",
        "--compare", "visual:text:hybrid", "--config", setup["config"],
    )  # fmt: skip
    assert table.exit_code == 0, table.output
    for expected in ("A: visual", "B: text", "C: hybrid", "by lane: visual/text/both/fusion",
                     "gold pages without text (n=0)"):  # fmt: skip
        assert expected in table.stdout, expected
    single = run(
        app, "eval", setup["questions"], "--docs", setup["docs"], "--no-ingest", "--mode",
        "hybrid", "--config", setup["config"],
    )  # fmt: skip
    assert single.exit_code == 0, single.output
    assert "Where the hits came from" in single.stdout
    assert "gold pages: with text" in single.stdout


def test_eval_refuses_a_gold_page_beyond_the_document(app: typer.Typer, setup: dict[str, Path]):
    rows = setup["questions"].read_text(encoding="utf-8").splitlines()
    bad = json.loads(rows[1]) | {"evidence_pages": [11]}  # the document has 10 pages
    questions = setup["root"] / "past-end.jsonl"
    questions.write_text("\n".join([rows[0], json.dumps(bad), *rows[2:]]) + "\n")
    result = run(app, "eval", questions, "--docs", setup["docs"], "--no-ingest",
                 "--config", setup["config"])  # fmt: skip
    assert_clean_error(result, 2, f"{questions}:2:", "page 11", "has 10 pages")
    compared = run(app, "eval", questions, "--docs", setup["docs"], "--no-ingest",
                   "--compare", "exact:two_stage", "--config", setup["config"])  # fmt: skip
    assert_clean_error(compared, 2, f"{questions}:2:", "page 11", "has 10 pages")


def test_eval_warns_when_the_gold_pages_look_0_based(app: typer.Typer, setup: dict[str, Path]):
    base = ["--docs", setup["docs"], "--no-ingest", "--mode", "exact", "--config", setup["config"]]
    first = run(app, "eval", setup["questions"], *base, "--per-question", "--json")
    assert first.exit_code == 0, first.output
    per_question = json.loads(first.stdout)["retrieval"]["per_question"]
    top = {q["id"]: q["retrieved"][0][1] for q in per_question}
    # The same questions, each with "the page ranked first" written down 0-based.
    shifted = []
    for line in setup["questions"].read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["answerable"] and top[row["id"]] > 1:
            shifted.append(json.dumps(row | {"evidence_pages": [top[row["id"]] - 1]}))
    assert len(shifted) >= 3
    questions = setup["root"] / "zero-based.jsonl"
    questions.write_text("\n".join(shifted) + "\n")

    text = run(app, "eval", questions, *base)
    assert text.exit_code == 0, text.output
    assert "warning:" in text.stderr
    assert "numbers pages from 0" in text.stderr
    data = json.loads(run(app, "eval", questions, *base, "--json").stdout)
    assert any("numbers pages from 0" in w for w in data["warnings"])


def test_eval_usage_errors_exit_2(app: typer.Typer, setup: dict[str, Path]):
    base = ["eval", setup["questions"], "--docs", setup["docs"], "--config", setup["config"]]
    assert_clean_error(run(app, *base, "-k", "x"), 2, "whole numbers")
    assert_clean_error(run(app, *base, "--compare", "exact"), 2, "A:B[:C…]")
    assert_clean_error(run(app, *base, "--compare", "exact::text"), 2, "A:B[:C…]")
    assert_clean_error(run(app, *base, "--compare", "exact:fast"), 2, "bad run configuration")
    assert_clean_error(run(app, *base, "--compare", "exact:two_stage", "--mode", "exact"), 2)
    assert_clean_error(run(app, *base, "--mode", "fast"), 2, "mode must be one of")
    # no VLM configured is a configuration error, as for `ask`
    assert_clean_error(run(app, *base, "--answers"), 2, "vlm.base_url")
    missing = setup["root"] / "nope.jsonl"
    assert_clean_error(run(app, "eval", missing, "--config", setup["config"]), 2, "nope.jsonl")


def test_eval_runtime_errors_exit_1(app: typer.Typer, setup: dict[str, Path], tmp_path: Path):
    empty = tmp_path / "empty.yaml"
    config = yaml.safe_load(setup["config"].read_text())
    config["store"]["path"] = str(tmp_path / "empty-store")
    empty.write_text(yaml.safe_dump(config))
    result = run(app, "eval", setup["questions"], "--docs", setup["docs"], "--no-ingest",
                 "--config", empty)  # fmt: skip
    assert_clean_error(result, 1, "error:")


# ------------------------------------------------------------------- explain


def stored_page_size(config: Path, page: int) -> tuple[int, int]:
    with PageRAG(load_config(config, environ={})) as rag:
        (record,) = rag.documents()
        data = rag.store.page_image(page_point_id(record.document_id, page))
    assert data is not None
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_explain_writes_a_heatmap_of_the_page_size(
    app: typer.Typer, setup: dict[str, Path], tmp_path: Path
):
    out = tmp_path / "maps" / "map.png"
    file = setup["docs"] / DOC
    result = run(app, "explain", "baseline accuracy", file, "--page", "3", "--out", out,
                 "--config", setup["config"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = stored_page_size(setup["config"], 3)
        # the page, then its colour scale below it (the legend)
        assert image.width == width
        assert height < image.height <= height + 80

    sheet = tmp_path / "tokens.png"
    result = run(
        app, "explain", "baseline accuracy", file, "-p", "3", "-o", sheet, "--per-token",
        "--kind", "combined", "--json", "--config", setup["config"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["page"] == 3
    assert data["per_token"] is True
    assert data["kind"] == "combined"
    assert data["grid"] == [32, 32]
    assert data["source"] == str(file.resolve())
    assert len(data["token_scores"]) == data["query_tokens"] == len(data["best_cells"])
    assert data["score"] == pytest.approx(sum(data["token_scores"]), abs=1e-3)
    # each map is labelled by its token: the query's words, and the template's tokens marked
    tokens = data["tokens"]
    assert len(tokens) == data["query_tokens"]
    words = "".join(t["text"] for t in tokens if t["kind"] == "query")
    assert words == "baseline accuracy"
    assert [t["text"] for t in tokens if t["kind"] == "padding"] == ["<pad>"] * 10
    assert tokens[0] == {"text": "<s>", "kind": "prompt"}
    with Image.open(sheet) as image:
        assert list(image.size) == data["out_size"]
        assert image.width == 4 * 320  # one 320-px tile per token, four per row


def test_explain_errors_are_clear(app: typer.Typer, setup: dict[str, Path], tmp_path: Path):
    file = setup["docs"] / DOC
    out = tmp_path / "map.png"
    config = ["--config", setup["config"]]
    never = setup["docs"] / "docs" / "2305.13186v3.pdf"
    assert_clean_error(
        run(app, "explain", "q", never, "--page", "1", "--out", out, *config),
        2, "never ingested", "pagerag ingest",
    )  # fmt: skip
    assert_clean_error(
        run(app, "explain", "q", file, "--page", "11", "--out", out, *config),
        2, "page 11 is out of range", "10 page(s)",
    )  # fmt: skip
    assert_clean_error(
        run(app, "explain", "q", tmp_path / "none.pdf", "--page", "1", "--out", out, *config),
        2, "no such file",
    )  # fmt: skip
    assert_clean_error(
        run(app, "explain", "q", file, "--page", "1", "--out", tmp_path / "map.xyz", *config),
        2, "image format",
    )  # fmt: skip
    assert_clean_error(
        run(app, "explain", "q", file, "--page", "1", "--out", out, "--kind", "hot", *config),
        2, "contributions or combined",
    )  # fmt: skip
    assert not out.exists()


def test_explain_finds_a_moved_copy_by_content(
    app: typer.Typer, setup: dict[str, Path], tmp_path: Path
):
    moved = tmp_path / "renamed.pdf"
    shutil.copy(setup["docs"] / DOC, moved)
    out = tmp_path / "map.jpg"
    result = run(app, "explain", "q", moved, "--page", "1", "--out", out, "--json",
                 "--config", setup["config"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source"] == str((setup["docs"] / DOC).resolve())
    with Image.open(out) as image:
        assert image.format == "JPEG"


# --------------------------------------------------- explain_hit on a real store


WIDTH, HEIGHT, ROW, COL = 640, 960, 9, 22


def dark_square_page(path: Path) -> Path:
    rows, cols = FAKE_SPEC.patch_grid or (0, 0)
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    box = (COL * WIDTH // cols, ROW * HEIGHT // rows,
           (COL + 1) * WIDTH // cols - 1, (ROW + 1) * HEIGHT // rows - 1)  # fmt: skip
    ImageDraw.Draw(image).rectangle(box, fill="black")
    image.save(path)
    return path


@pytest.fixture
def fake_rag(tmp_path: Path) -> Iterator[PageRAG]:
    config = load_config(environ={}, overrides={"store": {"path": str(tmp_path / "data")}})
    with PageRAG(config, embedder=FakeEmbedder()) as rag:
        yield rag


def test_explain_hit_lights_the_stored_dark_square(
    fake_rag: PageRAG, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    page = dark_square_page(tmp_path / "square.png")
    fake_rag.ingest([page])
    (record,) = fake_rag.documents()
    point = page_point_id(record.document_id, 1)
    stored = fake_rag.store.page_vectors([point])[point]
    cols = (FAKE_SPEC.patch_grid or (0, 0))[1]
    patch = stored[ROW * cols + COL : ROW * cols + COL + 1]
    monkeypatch.setattr(fake_rag.embedder, "embed_query", lambda query: patch)

    (hit,) = fake_rag.search("the dark square", k=1)
    explanation = fake_rag.explain("the dark square", hit)
    assert tuple(explanation.maps.best_cell[0]) == (ROW, COL)
    assert np.unravel_index(explanation.map.argmax(), explanation.map.shape) == (ROW, COL)
    assert explanation.hit_score == pytest.approx(explanation.maps.score, abs=1e-2)
    assert explanation.page_number == 1
    assert explanation.source == hit.source
    assert explanation.image.size == explanation.page.size == hit.load_image().size

    by_id = fake_rag.explain_page("the dark square", page, 1, kind="combined")
    assert by_id.point_id == point
    assert by_id.kind == "combined"
    assert by_id.document_id == record.document_id
    assert np.array_equal(by_id.maps.contributions, explanation.maps.contributions)
    json.dumps(by_id.to_dict())


def test_explain_hit_without_a_patch_grid_or_page_says_why(fake_rag: PageRAG, tmp_path: Path):
    page = dark_square_page(tmp_path / "square.png")
    fake_rag.ingest([page])
    with pytest.raises(QueryError, match="not in collection"):
        fake_rag.explain("q", page_point_id("0" * 64, 1))
    with pytest.raises(QueryError, match="kind must be"):
        fake_rag.explain("q", "x", kind="hot")  # type: ignore[arg-type]

    no_grid = dataclasses.replace(FAKE_SPEC, name="pagerag/fake-tiled", patch_grid=None)
    config = load_config(environ={}, overrides={"store": {"path": str(tmp_path / "tiled")}})
    with PageRAG(config, embedder=FakeEmbedder(no_grid)) as tiled:
        tiled.ingest([page])
        (hit,) = tiled.search("q", k=1)
        with pytest.raises(QueryError, match="no patch grid"):
            tiled.explain("q", hit)
