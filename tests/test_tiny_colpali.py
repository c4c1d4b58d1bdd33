"""The stand-in ColPali honours the ONNX contract fastembed relies on.

These tests talk to onnxruntime and fastembed directly (not through pagerag's
connector), so a failure here points at the stand-in, not at the adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.testing import tiny_colpali

ort = pytest.importorskip("onnxruntime")
tokenizers = pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[1]
IMAGE_IDS = [257152] * 1024 + [2, 50721, 573, 2416, 235265, 108]


def _session(model_dir: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _run(
    session: ort.InferenceSession, ids: list[list[int]], mask: list[list[int]], pixels: np.ndarray
) -> np.ndarray:
    out = session.run(
        None,
        {
            "input_ids": np.asarray(ids, dtype=np.int64),
            "attention_mask": np.asarray(mask, dtype=np.int64),
            "pixel_values": pixels.astype(np.float32),
        },
    )
    return np.asarray(out[0])


def test_files_are_small_and_complete(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {
        "model.onnx",
        "model.onnx_data",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "config.json",
        "preprocessor_config.json",
    } <= names
    total = sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert total < 2_000_000
    # weights went to external data like the real model's; the graph stayed small
    assert (tiny_model_dir / "model.onnx").stat().st_size < 20_000
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert isinstance(config["model_max_length"], int)
    assert config["pad_token"] == "<pad>"
    pre = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 448, "width": 448}
    assert pre["image_mean"] == pre["image_std"] == [0.5, 0.5, 0.5]


def test_build_is_deterministic_per_seed(tmp_path: Path) -> None:
    first = tiny_colpali.build(tmp_path / "a")
    second = tiny_colpali.build(tmp_path / "b")
    other = tiny_colpali.build(tmp_path / "c", seed=1)
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name
    assert (first / "model.onnx_data").read_bytes() != (other / "model.onnx_data").read_bytes()


def test_rebuild_in_place_does_not_grow(tmp_path: Path) -> None:
    model_dir = tiny_colpali.build(tmp_path / "m")
    size = (model_dir / "model.onnx_data").stat().st_size
    tiny_colpali.build(model_dir)
    assert (model_dir / "model.onnx_data").stat().st_size == size
    _session(model_dir)  # still loadable


def test_onnx_io_contract(tiny_model_dir: Path) -> None:
    session = _session(tiny_model_dir)
    inputs = {i.name: i for i in session.get_inputs()}
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}
    assert inputs["input_ids"].type == "tensor(int64)"
    assert inputs["attention_mask"].type == "tensor(int64)"
    assert inputs["pixel_values"].type == "tensor(float)"
    assert inputs["pixel_values"].shape[1:] == [3, 448, 448]
    assert session.get_outputs()[0].type == "tensor(float16)"

    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 448, 448))
    out = _run(session, [IMAGE_IDS, IMAGE_IDS], [[1] * 1030, [1] * 1029 + [0]], pixels)
    assert out.shape == (2, 1030, 128)
    assert out.dtype == np.float16
    norms = np.linalg.norm(out.astype(np.float32), axis=-1)
    np.testing.assert_allclose(norms[0], 1.0, atol=2e-3)
    assert norms[1, -1] == 0.0  # masked positions come back as zero rows


def test_patch_k_lands_on_kth_image_position(tiny_model_dir: Path) -> None:
    session = _session(tiny_model_dir)
    base = np.zeros((1, 3, 448, 448))
    changed = base.copy()
    row, col = 5, 7
    changed[0, :, row * 14 : (row + 1) * 14, col * 14 : (col + 1) * 14] = 1.0
    ones = [[1] * 1030]
    a = _run(session, [IMAGE_IDS], ones, base)[0]
    b = _run(session, [IMAGE_IDS], ones, changed)[0]
    differs = np.flatnonzero(np.any(a != b, axis=-1))
    assert differs.tolist() == [row * 32 + col]

    # with text before the image tokens, the patches shift along with them
    shifted_ids = [[2, 3, 4, *IMAGE_IDS[:1024]]]
    shifted = _run(session, shifted_ids, [[1] * 1027], changed)[0]
    np.testing.assert_array_equal(shifted[3:], b[:1024])


def test_tokenizer_has_the_single_tokens_fastembed_needs(tiny_model_dir: Path) -> None:
    tok = tokenizers.Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    enc = tok.encode("<s>Query: hello" + "<pad>" * 10 + "\n")
    assert enc.tokens[:2] == ["<s>", "Query"]
    assert enc.tokens.count("<pad>") == 10
    for token in ("<s>", "Query", "<pad>", "<image>", "<bos>", "<eos>"):
        assert tok.token_to_id(token) is not None, token
        assert len(tok.encode(token).ids) == 1, token
    assert tok.token_to_id("<pad>") == 0
    assert tok.token_to_id("<bos>") == 2


def test_fastembed_loads_and_runs_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    fastembed = pytest.importorskip("fastembed")
    model = fastembed.LateInteractionMultimodalEmbedding(
        model_name="Qdrant/colpali-v1.3-fp16",
        specific_model_path=str(tiny_model_dir),
        cache_dir=str(tmp_path / "cache"),
        providers=["CPUExecutionProvider"],
        threads=1,
    )
    pages = [Image.new("RGB", (300, 400), "white"), Image.new("RGB", (500, 300), "navy")]
    images = list(model.embed_image(pages, batch_size=2))
    assert [(v.shape, v.dtype) for v in images] == [((1030, 128), np.float16)] * 2
    queries = list(model.embed_text(["short", "a somewhat longer query about invoices"]))
    # fastembed pads ColPali queries to the longest of the batch: same row count
    assert queries[0].shape == queries[1].shape
    assert queries[0].dtype == np.float16


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.testing.tiny_colpali", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_cli_builds_a_model(tmp_path: Path) -> None:
    out = tmp_path / "cli-model"
    result = _cli(str(out), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert (out / "model.onnx").is_file()
    expected = tiny_colpali.build(tmp_path / "api-model", seed=3)
    assert (out / "model.onnx_data").read_bytes() == (expected / "model.onnx_data").read_bytes()


def test_cli_help_says_what_it_is() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "random-weight stand-in" in text
    assert "offline tests" in text


@pytest.mark.parametrize("module", ["onnx", "tokenizers"])
def test_without_the_testing_extra_the_builder_says_what_to_install(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """After the runtime-only set-up onnx is missing: one line naming the extra, no traceback."""
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert tiny_colpali.main([str(tmp_path / "model")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("error: ")
    assert f"'{module}'" in line
    assert "[testing]" in line
    assert not (tmp_path / "model").exists()
