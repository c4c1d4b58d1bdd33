"""The ``pagerag`` commands as a user runs them: stand-in model, embedded store, real PDFs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests.clirun import cli_env, invoke

THREE_PAGES = "robust/pdfjs/test/pdfs/three_pages_with_number.pdf"
EIGHT_PAGES = "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf"


@pytest.fixture
def env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    return cli_env(tmp_path / "data", tiny_model_dir, dpi=50)


@pytest.fixture
def docs(corpus: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(corpus / THREE_PAGES, folder / "three.pdf")
    shutil.copy(corpus / EIGHT_PAGES, folder / "eight.pdf")
    return folder


run = invoke  # `pagerag ARGS` in this process -> (exit code, stdout, stderr)


def test_help_lists_the_commands(env) -> None:
    code, out, _ = run(env, "--help")
    assert code == 0
    for command in ("ingest", "status", "search", "ask", "delete"):
        assert command in out
    code, out, _ = run(env, "ingest", "--help")
    assert code == 0
    assert "--workers" in out
    assert "--batch-size" in out
    assert "--json" in out


def test_ingest_status_search_ask_delete(env, docs: Path) -> None:
    code, out, _ = run(env, "ingest", str(docs), "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["files"]["ingested"] == 2
    assert report["pages_ingested"] == 11

    code, out, _ = run(env, "ingest", str(docs), "--json")
    assert code == 0
    assert json.loads(out)["files"]["skipped"] == 2

    code, out, _ = run(env, "status", "--json")
    assert code == 0
    status = json.loads(out)
    assert (status["documents"], status["pages"]) == (2, 11)
    # the stand-in's vectors never pass for the real model's
    assert status["model"] == "Qdrant/colpali-v1.3-fp16 (stand-in, random weights)"
    assert status["model_stand_in"] is True
    assert status["model_source"] == str(Path(env["PAGERAG_EMBEDDING__MODEL_PATH"]).resolve())
    assert len(status["model_fingerprint"]) == 16
    assert status["configured_model"] == "Qdrant/colpali-v1.3-fp16"
    assert status["bytes_on_disk"] > 0
    per_option = status["vector_bytes_per_page"]["options"]
    assert per_option["float32"] > per_option["scalar"] > per_option["binary"]
    assert per_option["binary"] > per_option["float16"]
    assert status["vector_bytes_per_page"]["total"] == per_option["float16"]

    code, out, _ = run(env, "search", "page number", "-k", "4", "--json")
    assert code == 0
    hits = json.loads(out)["hits"]
    assert len(hits) == 4
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    code, out, _ = run(
        env, "search", "page", "-k", "20", "--source", str(docs / "three.pdf"), "--json"
    )
    assert {h["page"] for h in json.loads(out)["hits"]} == {1, 2, 3}

    code, out, _ = run(env, "ask", "What is on page two?", "-k", "2", "--json")
    assert code == 2  # no VLM configured: a configuration error
    answer = json.loads(out)
    assert answer["answered"] is False
    assert "vlm.base_url" in answer["error"]
    assert len(answer["retrieved"]) == 2

    code, out, _ = run(env, "delete", str(docs / "three.pdf"))
    assert code == 0
    assert "deleted 1" in out
    code, out, _ = run(env, "status", "--json")
    assert json.loads(out)["pages"] == 8


def test_a_bad_file_makes_exit_code_1_and_the_rest_is_ingested(env, docs: Path) -> None:
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\n garbage garbage")
    code, out, _ = run(env, "ingest", str(docs), "--json")
    assert code == 1
    report = json.loads(out)
    assert report["files"] == {"ingested": 2, "skipped": 0, "partial": 0, "failed": 1}
    (failed,) = [o for o in report["outcomes"] if o["status"] == "failed"]
    assert failed["path"].endswith("broken.pdf")
    assert failed["reason"] == "damaged"


def test_table_output_on_ingest(env, docs: Path) -> None:
    code, out, _ = run(env, "ingest", str(docs / "three.pdf"))
    assert code == 0
    assert "ingested" in out
    assert "three.pdf" in out
    assert "pages/s" in out


@pytest.mark.parametrize(
    ("args", "extra_env", "words"),
    [
        (("search", "   "), {}, "query is empty"),
        (("search", "x", "-k", "0"), {}, "k must be"),
        (("status",), {"PAGERAG_STORE__COLLECTIONN": "x"}, "store.collectionn"),
        (("status",), {"PAGERAG_RENDER__DPI": "lots"}, "render.dpi"),
    ],
)
def test_usage_and_config_errors_exit_2_with_a_message(env, args, extra_env, words) -> None:
    code, _, err = run({**env, **extra_env}, *args)
    assert code == 2
    assert words in err


def test_search_before_any_ingest_says_so(env) -> None:
    code, _, err = run(env, "search", "anything")
    assert code == 1
    assert "pagerag ingest" in err
    code, out, _ = run(env, "status")
    assert code == 0
    assert "nothing ingested yet" in out


def test_missing_model_names_the_config_key(env, tmp_path: Path, docs: Path) -> None:
    env = {**env, "PAGERAG_EMBEDDING__MODEL_PATH": str(tmp_path / "nowhere")}
    code, out, err = run(env, "ingest", str(docs / "three.pdf"), "--json")
    assert code == 1
    text = out + err
    assert "embedding.model_path" in text


def test_ask_stream_without_a_vlm_prints_the_pages_and_how_to_configure(env, docs: Path) -> None:
    assert run(env, "ingest", str(docs / "three.pdf"), "-q")[0] == 0
    code, out, err = run(env, "ask", "what is on page 2?", "--stream", "-k", "2")
    assert code == 2
    assert "vlm.base_url" in err
    assert "retrieved (not sent to any model)" in out
    assert "three.pdf" in out


def test_ctrl_c_stops_then_a_second_one_aborts_saying_how_to_resume(
    env, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handlers `ingest` installs: SIGINT/SIGTERM request a stop; a second SIGINT aborts."""
    import signal

    from pipeline.api import PageRAG, _stop_on_signals

    stops: list[int] = []
    with _stop_on_signals(lambda: stops.append(1), enabled=True):
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # a second SIGTERM only asks again
    assert stops == [1, 1]
    stops.clear()
    with _stop_on_signals(lambda: stops.append(1), enabled=True):
        signal.raise_signal(signal.SIGINT)
        assert stops == [1]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert stops == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    def second_ctrl_c(self: PageRAG, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # what the handler raises inside the job

    monkeypatch.setattr(PageRAG, "ingest", second_ctrl_c)
    result = CliRunner().invoke(app, ["ingest", str(docs)], env=env)
    assert result.exit_code == 130
    assert "aborted: pages stored so far are kept; rerun the same command to resume" in (
        result.stderr
    )


def test_status_is_a_table_for_people_and_json_for_programs(env, docs: Path) -> None:
    """Sizes read as KB/MB per page and in total, vectors apart from the rest; the model's
    identity in words; incomplete documents counted. --json keeps its keys and adds some."""
    truncated = {**env, "PAGERAG_RENDER__MAX_PAGES": "5"}
    assert run(truncated, "ingest", str(docs / "eight.pdf"), "-q")[0] == 0
    assert run(env, "ingest", str(docs / "three.pdf"), "-q")[0] == 0

    code, out, _ = run(env, "status", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["documents"], data["incomplete_documents"], data["pages"]) == (2, 1, 8)
    vectors = data["vector_bytes_per_page"]
    assert (vectors["full"], vectors["pooled"]) == (1030 * 128 * 2, 2 * 38 * 128 * 2)
    assert data["vector_bytes"] == vectors["total"] * 8
    assert data["other_bytes_on_disk"] == data["bytes_on_disk"] - data["vector_bytes"] > 0

    code, out, _ = run({**env, "COLUMNS": "250"}, "status")  # no wrapping of long paths
    assert code == 0
    assert "{" not in out and "None" not in out  # no Python reprs
    rows = {}
    for line in out.splitlines():
        label = next((x for x in STATUS_LABELS if line.strip().startswith(x + " ")), None)
        if label:
            rows[label] = " ".join(line.strip()[len(label) :].split())
    assert rows["model"] == "Qdrant/colpali-v1.3-fp16 (stand-in, random weights)"
    assert rows["weights"] == (
        f"fingerprint {data['model_fingerprint']}, from {data['model_source']}"
    )
    assert rows["documents"] == "2 (1 incomplete: see status --documents)"
    assert rows["pages"] == "8"
    # 283 136 vector bytes per page: full 263 680 + pooled 19 456 (float16)
    assert rows["vectors"] == "2.3 MB, 283.1 KB per page (full 263.7 KB + pooled 19.5 KB)"
    on_disk, per_page = data["bytes_on_disk"], data["bytes_per_page"]
    assert rows["on disk"] == f"{on_disk / 1e6:.1f} MB, {per_page / 1e3:.1f} KB per page"
    other = data["other_bytes_on_disk"]
    assert rows["images etc."].startswith(f"{other / 1e6:.1f} MB, {other / 8e3:.1f} KB per page")
    assert rows["storage"] == "float16, no quantization, pooled rows, cols"
    assert "configured" not in rows  # the same model as stored
    assert "stand-in model" in out


STATUS_LABELS = (
    "model",
    "weights",
    "configured",
    "documents",
    "pages",
    "storage",
    "on disk",
    "vectors",
    "images etc.",
)
