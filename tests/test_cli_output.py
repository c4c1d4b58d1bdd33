"""What a new user sees: names and errors printed as they are, exit codes that say what happened.

Runs the ``pagerag`` commands on the stand-in model and the embedded engine
over small generated PNG pages (no corpus needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.clirun import invoke as run

# Rich markup in a file name: it must come out exactly as typed, never styled or dropped.
DRAFT = "[draft] scan.png"
BOLD = "[bold]x[/bold].png"


@pytest.fixture
def env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    return {
        "PAGERAG_STORE__PATH": str(tmp_path / "data"),
        "PAGERAG_EMBEDDING__MODEL_PATH": str(tiny_model_dir),
        "PAGERAG_EMBEDDING__DEVICE": "cpu",
        "OPENAI_API_KEY": "",
    }


def page_image(path: Path, text: str) -> Path:
    image = Image.new("RGB", (300, 400), "white")
    draw = ImageDraw.Draw(image)
    for row in range(6):
        draw.text((20, 30 + 50 * row), f"{text} {row}", fill="black")
    image.save(path)
    return path


@pytest.fixture
def pages(tmp_path: Path) -> Path:
    folder = tmp_path / "pages"
    folder.mkdir()
    page_image(folder / DRAFT, "draft")
    (folder / BOLD).parent.mkdir()  # the name holds a slash: folder "[bold]x[", file "bold].png"
    page_image(folder / BOLD, "bold")
    return folder


def test_file_names_with_brackets_print_as_typed(env, pages: Path) -> None:
    code, out, _ = run(env, "ingest", str(pages))
    assert code == 0, out
    # the report table folds long paths over lines: compare without the table's layout
    flat = "".join(out.split())
    assert "[draft]scan.png" in flat
    assert "[bold]x[/bold].png" in flat

    code, out, _ = run(env, "search", "draft", "-k", "2")
    assert code == 0
    flat = "".join(out.split())
    assert "[draft]scan.png" in flat
    assert "[bold]x[/bold].png" in flat

    code, out, _ = run(env, "delete", str(pages / DRAFT))
    assert code == 0
    assert f"{pages / DRAFT}: deleted 1 document(s)" in out


def test_error_messages_keep_their_brackets(env, pages: Path) -> None:
    """The fix named in an error (an extra to install) must survive printing."""
    assert run(env, "ingest", str(pages / DRAFT), "-q")[0] == 0
    code, _, err = run({**env, "PAGERAG_EMBEDDING__DEVICE": "cuda"}, "search", "draft")
    assert code == 1
    assert "'pagerag[gpu]'" in err
    assert err.startswith("error: ")


def test_ingest_summary_counts_in_words(env, pages: Path) -> None:
    code, out, _ = run(env, "ingest", str(pages / DRAFT))
    assert code == 0
    assert "1 file: 1 ingested" in out
    assert "1 files" not in out
    code, out, _ = run(env, "ingest", str(pages))
    assert "2 files: 1 ingested, 1 skipped" in out


def test_ask_without_a_vlm_fails_and_says_what_was_retrieved(env, pages: Path) -> None:
    assert run(env, "ingest", str(pages), "-q")[0] == 0

    code, out, _ = run(env, "ask", "what is drafted?", "-k", "2", "--json")
    assert code == 2
    answer = json.loads(out)
    assert answer["answered"] is False
    assert answer["answer"] is None
    assert "vlm.base_url" in answer["error"]
    assert "OPENAI_API_KEY" in answer["error"]
    assert len(answer["retrieved"]) == 2
    assert answer["sources"] == []  # nothing was sent to a model

    code, out, err = run(env, "ask", "what is drafted?", "-k", "2")
    assert code == 2
    assert "pages sent" not in out + err
    assert "vlm.base_url" in err
    assert "retrieved (not sent to any model)" in out
    assert "[draft]" in out

    code, out, err = run(env, "ask", "what is drafted?", "-k", "2", "--stream")
    assert code == 2
    assert "pages sent" not in out + err
    assert "vlm.base_url" in err


def test_ask_with_no_page_to_answer_from_fails(env, pages: Path) -> None:
    """A VLM is configured, but the filter leaves no page: exit 1, the model is never called."""
    assert run(env, "ingest", str(pages), "-q")[0] == 0
    vlm = {**env, "PAGERAG_VLM__BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "k"}
    code, out, _ = run(vlm, "ask", "anything", "--meta", "team=nobody", "--json")
    assert code == 1
    answer = json.loads(out)
    assert (answer["answer"], answer["retrieved"]) == (None, [])
    assert "no page matches the filter" in answer["error"]


def test_the_set_up_switch_does_not_break_commands(env) -> None:
    """`PAGERAG_EXTRA=gpu` (scripts/setup.sh) may stay exported while pagerag runs."""
    code, out, err = run({**env, "PAGERAG_EXTRA": "gpu"}, "status")
    assert code == 0, err
    assert "nothing ingested yet" in out


def test_a_model_that_cannot_load_is_one_error_before_anything_renders(
    env, pages: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's files are there but do not load: one message, no file rendered."""
    import shutil

    from pipeline.ingest.render import Renderer

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.onnx").write_bytes(b"this is not an ONNX graph")
    rendered: list[object] = []
    real_pages = Renderer.iter_pages

    def spy_pages(self: Renderer, plan: object, **kwargs: object) -> object:
        rendered.append(plan)
        return real_pages(self, plan, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Renderer, "iter_pages", spy_pages)
    for extra in ((), ("--json",)):
        code, out, err = run(
            {**env, "PAGERAG_EMBEDDING__MODEL_PATH": str(broken)}, "ingest", str(pages), *extra
        )
        assert code == 1
        assert (out + err).count("cannot load Qdrant/colpali-v1.3-fp16") == 1, out + err
        if not extra:
            assert "error: cannot load Qdrant/colpali-v1.3-fp16" in err
    assert rendered == [], "a file was rendered"
    report = json.loads(out)
    assert report["error"].startswith("cannot load Qdrant/colpali-v1.3-fp16")
    assert {o["reason"] for o in report["outcomes"]} == {"aborted"}
    assert all(len(o["message"]) < 80 for o in report["outcomes"])


def test_the_progress_bar_counts_first_and_prints_notices_on_their_own_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import logging
    import re

    from rich.console import Console

    from pipeline.cli import ingest as ingest_cli
    from pipeline.ingest.job import IngestProgress

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160, markup=False)
    monkeypatch.setattr(ingest_cli, "err", console)
    bar = ingest_cli._progress(enabled=True)
    update = bar.__enter__()
    try:
        update(IngestProgress(3, 0, 5, 0, counting=True))
        bar._bar.refresh()
        update(IngestProgress(3, 1, 9, 4, counting=False, files_skipped=1))
        bar._bar.refresh()
        logging.getLogger("pagerag").warning("stopping after the current batch (signal 2)")
    finally:
        bar.__exit__(None, None, None)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
    assert any("0/5+ pages (counting)" in line for line in lines)
    assert any("4/9 pages" in line and "files 1/3 (1 unchanged)" in line for line in lines)
    (notice,) = [line for line in lines if "stopping after" in line]
    assert notice == "warning: stopping after the current batch (signal 2)"


def test_a_socks_proxy_setting_brings_no_warning(env, pages: Path) -> None:
    """With ALL_PROXY=socks5://… urllib3 warned above the progress bar (PySocks missing)."""
    from tests.clirun import run as run_process

    proxy = "socks5://127.0.0.1:9"  # nothing listens; nothing is downloaded anyway
    code, _, err = run_process(
        {**env, "ALL_PROXY": proxy, "HTTPS_PROXY": proxy}, "ingest", str(pages), "-q"
    )
    assert code == 0, err
    assert "Warning" not in err, err


def test_socks_proxies_are_supported_without_warnings() -> None:
    """The dependencies that make SOCKS proxies work (and urllib3 quiet) are installed."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # urllib3 warns (DependencyWarning) without PySocks
        importlib.import_module("urllib3.contrib.socks")
        importlib.import_module("socksio")  # httpx's SOCKS support
