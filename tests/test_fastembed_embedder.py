"""``connectors.fastembed.FastEmbedColPali`` through fastembed's real code path.

The model is the offline stand-in from ``pipeline.testing.tiny_colpali``
(random weights), so these tests check plumbing — shapes, dtypes, padding,
batching, laziness, errors — never retrieval quality.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.config import EmbeddingConfig
from pipeline.embed.protocol import PageEmbedder
from pipeline.errors import ModelError, ModelNotAvailableError, OptionalDependencyError

pytest.importorskip("fastembed")

from connectors.fastembed import FastEmbedColPali

MODEL = "Qdrant/colpali-v1.3-fp16"


def _config(model_path: Path | None, cache_dir: Path, **overrides: Any) -> EmbeddingConfig:
    return EmbeddingConfig(
        model_path=model_path, cache_dir=cache_dir, device="cpu", threads=1, **overrides
    )


@pytest.fixture(scope="module")
def embedder(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FastEmbedColPali:
    cache = tmp_path_factory.mktemp("fastembed-cache")
    return FastEmbedColPali(_config(tiny_model_dir, cache, batch_size=2))


def _page(seed: int, size: tuple[int, int] = (620, 800)) -> Image.Image:
    """A synthetic page: white, a title bar and a few coloured blocks placed by seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([40, 30, size[0] - 40, 80], fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
    for _ in range(6):
        x, y = (int(v) for v in rng.integers(0, max(1, min(size) - 150), 2))
        w, h = (int(v) for v in rng.integers(10, 150, 2))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.rectangle([x, y + 100, x + w, y + 100 + h], fill=colour)
    draw.text((50, size[1] - 60), f"page {seed}", fill="black")
    return image


def _maxsim(query: np.ndarray, page: np.ndarray) -> float:
    sims = query.astype(np.float32) @ page.astype(np.float32).T
    return float(sims.max(axis=1).sum())


# -- construction and loading ---------------------------------------------------


def test_satisfies_the_protocol(embedder: FastEmbedColPali) -> None:
    assert isinstance(embedder, PageEmbedder)
    assert embedder.spec.name == MODEL
    assert embedder.spec.dim == 128


def test_constructor_loads_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    embedder = FastEmbedColPali(_config(missing, tmp_path / "cache"))
    assert not embedder.loaded
    assert not (tmp_path / "cache").exists()  # fastembed not even constructed
    with pytest.raises(ModelNotAvailableError):
        embedder.embed_query("x")


def test_loads_on_first_embed(tiny_model_dir: Path, tmp_path: Path) -> None:
    embedder = FastEmbedColPali(_config(tiny_model_dir, tmp_path / "cache"))
    assert not embedder.loaded
    embedder.embed_images([_page(0)])
    assert embedder.loaded


def test_query_token_limit_reads_only_the_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    embedder = FastEmbedColPali(_config(tiny_model_dir, tmp_path / "cache"))
    assert embedder.query_token_limit() == 64  # the stand-in's model_max_length
    assert not embedder.loaded


def test_concurrent_first_calls_load_once(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastembed.late_interaction_multimodal.colpali import ColPali

    calls: list[int] = []
    real_load: Callable[[Any], None] = ColPali.load_onnx_model

    def counting_load(self: Any) -> None:
        calls.append(1)
        time.sleep(0.05)  # widen the race window
        real_load(self)

    monkeypatch.setattr(ColPali, "load_onnx_model", counting_load)
    embedder = FastEmbedColPali(_config(tiny_model_dir, tmp_path / "cache"))
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(embedder.embed_query("thread safety"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(calls) == 1
    assert all(np.array_equal(r, results[0]) for r in results)


def test_cpu_device_uses_only_the_cpu_provider(embedder: FastEmbedColPali) -> None:
    embedder.warm_up()
    session = embedder._embedding.model.model  # fastembed wrapper -> ColPali -> ORT session
    assert session.get_providers() == ["CPUExecutionProvider"]


# -- images ---------------------------------------------------------------------


def test_image_shapes_and_dtype(embedder: FastEmbedColPali) -> None:
    pages = [
        _page(1),
        _page(2, (900, 600)),
        _page(3).convert("L"),
        _page(4).convert("RGBA"),
        _page(5, (100, 100)),
    ]
    vectors = embedder.embed_images(pages)  # batch_size 2: batches of 2, 2, 1
    assert len(vectors) == len(pages)
    for vec in vectors:
        assert vec.shape == (1030, 128)
        assert vec.dtype == np.float16
        assert np.all(np.isfinite(vec))


def test_empty_input_gives_empty_output(tmp_path: Path) -> None:
    embedder = FastEmbedColPali(_config(tmp_path / "missing", tmp_path / "cache"))
    assert embedder.embed_images([]) == []
    assert embedder.embed_queries([]) == []
    assert not embedder.loaded


def test_images_are_deterministic_and_batch_independent(
    embedder: FastEmbedColPali, tiny_model_dir: Path, tmp_path: Path
) -> None:
    pages = [_page(10), _page(11), _page(12)]
    together = embedder.embed_images(pages)
    alone = [embedder.embed_images([page])[0] for page in pages]
    again = FastEmbedColPali(_config(tiny_model_dir, tmp_path / "cache")).embed_images(pages)
    for a, b, c in zip(together, alone, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_different_pages_give_different_vectors(embedder: FastEmbedColPali) -> None:
    a, b = embedder.embed_images([_page(20), _page(21)])
    patches = slice(0, 1024)
    assert not np.array_equal(a[patches], b[patches])
    # the 6 trailing text tokens do not depend on the page
    np.testing.assert_array_equal(a[1024:], b[1024:])


def test_a_pages_own_patches_retrieve_it(embedder: FastEmbedColPali) -> None:
    pages = embedder.embed_images([_page(seed) for seed in range(30, 36)])
    grid = embedder.spec.patch_grid
    assert grid == (32, 32)
    for index, page in enumerate(pages):
        # a query made of a band of this page's patch vectors (rows 2..6 of the grid)
        query = page[2 * 32 : 7 * 32]
        scores = [_maxsim(query, other) for other in pages]
        assert int(np.argmax(scores)) == index


# -- queries --------------------------------------------------------------------


def test_query_shape_dtype_and_no_padding_rows(embedder: FastEmbedColPali) -> None:
    vec = embedder.embed_query("what is the total amount due?")
    assert vec.ndim == 2
    assert vec.shape[1] == 128
    assert vec.dtype == np.float16
    norms = np.linalg.norm(vec.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)  # the stand-in zeroes padding rows
    # the prompt's tokens, including ColPali's 10 <pad> augmentation tokens
    assert vec.shape[0] == embedder._embedding.token_count(
        "what is the total amount due?", include_extension=True
    )


def test_batched_queries_of_different_lengths_match_single_ones(
    embedder: FastEmbedColPali,
) -> None:
    queries = ["a", "which table lists the quarterly revenue by region", "b c", "invoice"]
    batched = embedder.embed_queries(queries, batch_size=3)
    assert len(batched) == len(queries)
    lengths = {vec.shape[0] for vec in batched}
    assert len(lengths) > 1
    for query, vec in zip(queries, batched, strict=True):
        single = embedder.embed_query(query)
        assert vec.dtype == np.float16
        np.testing.assert_array_equal(vec, single)


def test_query_is_deterministic(embedder: FastEmbedColPali) -> None:
    np.testing.assert_array_equal(embedder.embed_query("same"), embedder.embed_query("same"))
    assert not np.array_equal(embedder.embed_query("one"), embedder.embed_query("two"))


def test_long_query_is_truncated_not_rejected(embedder: FastEmbedColPali) -> None:
    short = embedder.embed_query("word")
    assert short.shape[0] < embedder.query_token_limit()
    # reaching the limit is how callers tell that a query was truncated
    vec = embedder.embed_query("word " * 500)
    assert vec.shape == (embedder.query_token_limit(), 128)


# -- errors ---------------------------------------------------------------------


def _assert_says_how_to_fix(message: str) -> None:
    assert MODEL in message
    assert "6.5 GB" in message
    assert "embedding.model_path" in message
    assert "PAGERAG_EMBEDDING__MODEL_PATH" in message
    assert "hf download" in message  # huggingface-cli download is gone from huggingface_hub


def test_missing_model_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    embedder = FastEmbedColPali(_config(missing, tmp_path / "cache"))
    with pytest.raises(ModelNotAvailableError) as info:
        embedder.embed_images([_page(0)])
    assert str(missing) in str(info.value)
    _assert_says_how_to_fix(str(info.value))


def test_model_path_without_model_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny_model_dir / "model.onnx", partial / "model.onnx")
    embedder = FastEmbedColPali(_config(partial, tmp_path / "cache"))
    with pytest.raises(ModelNotAvailableError) as info:
        embedder.query_token_limit()
    message = str(info.value)
    assert "tokenizer.json" in message
    assert "model.onnx_data" in message
    _assert_says_how_to_fix(message)


def test_offline_with_an_empty_cache_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = FastEmbedColPali(_config(None, tmp_path / "empty-cache"))
    started = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as info:
        embedder.embed_query("x")
    assert time.monotonic() - started < 5  # no 3/9/27 s download retries
    assert str(tmp_path / "empty-cache") in str(info.value)
    assert "HF_HUB_OFFLINE" in str(info.value)
    _assert_says_how_to_fix(str(info.value))


def test_online_without_hub_access_fails_fast_and_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """No HF_HUB_OFFLINE, but the hub is unreachable (here: the network guard): one error
    at once, instead of ~40 s of fastembed's download retries and their log lines."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    embedder = FastEmbedColPali(_config(None, tmp_path / "empty-cache"))
    started = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as info:
        embedder.embed_query("x")
    assert time.monotonic() - started < 15  # fastembed alone: 3 + 9 + 27 s of retries
    message = str(info.value)
    assert "cannot be reached" in message
    assert "huggingface.co" in message
    _assert_says_how_to_fix(message)
    assert "ERROR" not in capfd.readouterr().err  # fastembed's own retry logging


def test_finds_the_model_in_a_hugging_face_cache(
    embedder: FastEmbedColPali,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    revision = "0" * 40
    repo = tmp_path / "cache" / "models--Qdrant--colpali-v1.3-fp16"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    cached = FastEmbedColPali(_config(None, tmp_path / "cache"))
    page = _page(40)
    np.testing.assert_array_equal(cached.embed_images([page])[0], embedder.embed_images([page])[0])


def test_cuda_without_a_gpu_build_says_which_extra(tiny_model_dir: Path, tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has CUDA: the error cannot be provoked")
    config = EmbeddingConfig(model_path=tiny_model_dir, cache_dir=tmp_path, device="cuda")
    with pytest.raises(ModelError) as info:
        FastEmbedColPali(config).embed_query("x")
    assert "pagerag[gpu]" in str(info.value)
    assert "embedding.device" in str(info.value)


def test_missing_fastembed_is_an_optional_dependency_error(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fastembed", None)  # makes `import fastembed` fail
    embedder = FastEmbedColPali(_config(tiny_model_dir, tmp_path / "cache"))
    with pytest.raises(OptionalDependencyError) as info:
        embedder.embed_query("x")
    assert isinstance(info.value, ImportError)
    # pagerag is not on a package index: the command installs the extra from this checkout
    checkout = Path(__file__).resolve().parents[1]
    assert f"{sys.executable} -m pip install -e '{checkout}[cpu]'" in str(info.value)
    assert "pip install 'pagerag[" not in str(info.value)
    assert "gpu extra" in str(info.value)
