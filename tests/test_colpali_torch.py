"""``connectors.colpali_torch`` through colpali-engine's real classes and loading path.

The models are the tiny random-weight stand-ins of ``pipeline.testing.tiny_torch``
(real ColQwen2_5 / ColIdefics3 classes and processors, tiny configs), saved to
a temporary directory and loaded with ``from_pretrained`` as a hub snapshot
would be. They check plumbing — shapes, dtypes, variable token counts, patch
grids, query vs document paths, laziness, errors — never retrieval quality.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.config import EmbeddingConfig
from pipeline.embed.protocol import GridEmbedder, PageEmbedder, embed_pages
from pipeline.errors import ConfigError, ModelNotAvailableError
from pipeline.testing.tiny_torch import MODEL_NAMES
from tests.conftest import TORCH_MISSING

pytest.importorskip("colpali_engine", reason=TORCH_MISSING)

from connectors.colpali_torch import ColPaliTorchEmbedder

FAMILIES = sorted(MODEL_NAMES)


def make(model_dir: Path | None, family: str, **overrides: Any) -> ColPaliTorchEmbedder:
    settings: dict[str, Any] = {"device": "cpu", "threads": 1, **overrides}
    return ColPaliTorchEmbedder(
        EmbeddingConfig(model=MODEL_NAMES[family], model_path=model_dir, **settings)
    )


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def embedder(family: str, tiny_torch_dirs: dict[str, Path]) -> ColPaliTorchEmbedder:
    return make(tiny_torch_dirs[family], family, batch_size=2)


def page(seed: int, size: tuple[int, int] = (600, 800)) -> Image.Image:
    """A synthetic page: white, a title bar and coloured blocks placed by seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([20, 20, size[0] - 20, 60], fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
    for _ in range(6):
        x, y = (int(v) for v in rng.integers(0, max(1, min(size) - 120), 2))
        w, h = (int(v) for v in rng.integers(10, 120, 2))
        draw.rectangle([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


def maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    return float((query.astype(np.float32) @ doc.astype(np.float32).T).max(axis=1).sum())


# -- the contract ----------------------------------------------------------------


def test_satisfies_the_protocols(embedder: ColPaliTorchEmbedder, family: str) -> None:
    assert isinstance(embedder, PageEmbedder)
    assert isinstance(embedder, GridEmbedder)
    assert embedder.spec.name == MODEL_NAMES[family]
    assert embedder.spec.backend == "torch"


def test_constructor_loads_nothing(tmp_path: Path) -> None:
    embedder = make(tmp_path / "no-such-model", "colqwen2_5")
    assert not embedder.loaded
    with pytest.raises(ModelNotAvailableError) as caught:
        embedder.embed_query("x")
    message = str(caught.value)
    assert "hf download vidore/colqwen2.5-v0.2" in message
    assert "embedding.model_path" in message
    assert not embedder.loaded


def test_a_directory_that_is_no_model_says_so(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelNotAvailableError, match=r"config\.json"):
        make(tmp_path, "colidefics3").identity()


def test_a_fastembed_model_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="served by fastembed"):
        ColPaliTorchEmbedder(EmbeddingConfig(model="Qdrant/colpali-v1.3-fp16"))


def test_pages_come_back_float16_with_a_grid_that_varies_with_shape(
    embedder: ColPaliTorchEmbedder,
) -> None:
    images = [page(1, (600, 800)), page(2, (900, 300)), page(3, (400, 400))]
    pages = embedder.embed_pages(images)
    assert len(pages) == 3
    counts = set()
    grids = set()
    for item in pages:
        assert item.vectors.dtype == np.float16
        assert item.vectors.ndim == 2 and item.vectors.shape[1] == 128
        assert item.grid is not None and item.grid.offset == 0
        assert item.grid.stop < item.vectors.shape[0]  # prompt tokens follow the patches
        norms = np.linalg.norm(item.vectors.astype(np.float32), axis=1)
        assert norms == pytest.approx(1.0, abs=2e-2)  # no padding rows left in
        counts.add(item.vectors.shape[0])
        grids.add((item.grid.rows, item.grid.cols))
    assert len(counts) == 3 and len(grids) == 3  # dynamic resolution: one layout per shape
    portrait, landscape, _ = pages
    assert portrait.grid is not None and landscape.grid is not None
    assert portrait.grid.rows > portrait.grid.cols  # the grid follows the page's shape
    assert landscape.grid.cols > landscape.grid.rows


def test_embed_images_equals_embed_pages(embedder: ColPaliTorchEmbedder) -> None:
    images = [page(4), page(5, (800, 500))]
    plain = embedder.embed_images(images)
    paged = embed_pages(embedder, images)
    for a, b in zip(plain, paged, strict=True):
        np.testing.assert_array_equal(a, b.vectors)


def test_batching_does_not_change_vectors(embedder: ColPaliTorchEmbedder) -> None:
    """Left padding of a mixed batch must not leak into any page's vectors."""
    images = [page(6, (600, 800)), page(7, (500, 200)), page(8, (300, 300))]
    batched = embedder.embed_pages(images)  # batch_size 2: a padded pair, then one
    for image, together in zip(images, batched, strict=True):
        (alone,) = embedder.embed_pages([image])
        assert alone.grid == together.grid
        assert alone.vectors.shape == together.vectors.shape
        np.testing.assert_allclose(
            alone.vectors.astype(np.float32), together.vectors.astype(np.float32), atol=2e-2
        )


def test_grid_is_the_processors_own(embedder: ColPaliTorchEmbedder, family: str) -> None:
    """The grid comes from the processor's output: image_grid_thw (Qwen) or the tile
    tokens (Idefics3), cross-checked with colpali-engine's own interpretability API."""
    image = page(9, (700, 500))
    (item,) = embedder.embed_pages([image])
    processor = embedder._load_processor()
    batch = processor.process_images([image])
    assert item.grid is not None
    if family == "colqwen2_5":
        _t, h, w = (int(v) for v in batch["image_grid_thw"][0])
        assert (item.grid.rows, item.grid.cols) == (h // 2, w // 2)
        n_x, n_y = processor.get_n_patches((image.width, image.height), spatial_merge_size=2)
    else:
        tile_px = processor.image_processor.max_image_size["longest_edge"]
        per_side = int(processor.image_seq_len**0.5)
        n_x, n_y = processor.get_n_patches((image.height, image.width), tile_px // per_side)
    assert (item.grid.cols, item.grid.rows) == (n_x, n_y)


def test_patch_cells_are_placed_as_colpali_engine_places_them(
    embedder: ColPaliTorchEmbedder, family: str
) -> None:
    """Cell (r, c) of the grid holds the vector colpali-engine's similarity-map code puts
    at (r, c), and reordering keeps every MaxSim score (it is a set operation)."""
    import torch

    image, query = page(10, (640, 480)), "total revenue"
    (item,) = embedder.embed_pages([image])
    model, processor = embedder._ready()
    batch = processor.process_images([image])
    with torch.inference_mode():
        raw = model(**batch)[0].to(torch.float32)
    grid = item.grid
    assert grid is not None
    cells = item.vectors[: grid.count].astype(np.float32).reshape(grid.rows, grid.cols, -1)
    if family == "colidefics3":
        mask = processor.get_local_image_mask(batch)[0]
        spatial = processor.rearrange_image_embeddings(raw, mask, (grid.cols, grid.rows))
        reference = spatial.permute(1, 0, 2).numpy()  # (n_x, n_y) -> (rows, cols)
    else:
        mask = processor.get_image_mask(batch)[0]
        reference = raw[mask].numpy().reshape(grid.rows, grid.cols, -1)
    np.testing.assert_allclose(cells, reference, atol=2e-3)

    q = embedder.embed_query(query)
    unordered = raw[batch["attention_mask"][0].bool()].numpy()
    expected = float(
        processor.score_multi_vector(
            [torch.from_numpy(q.astype(np.float32))], [torch.from_numpy(unordered)]
        )[0, 0]
    )
    assert maxsim(q, item.vectors) == pytest.approx(expected, rel=1e-2)


# -- queries ---------------------------------------------------------------------


def test_queries_are_built_by_the_processor_and_unpadded(embedder: ColPaliTorchEmbedder) -> None:
    processor = embedder._load_processor()
    short, long = "revenue", "what was the total revenue by region in the last quarter"
    together = embedder.embed_queries([short, long])
    for text, vectors in zip([short, long], together, strict=True):
        expected_rows = int(processor.process_queries([text])["attention_mask"].sum())
        assert vectors.shape == (expected_rows, 128)  # prefix + 10 augmentation tokens kept
        assert vectors.dtype == np.float16
        alone = embedder.embed_query(text)
        np.testing.assert_allclose(alone.astype(np.float32), vectors.astype(np.float32), atol=2e-2)
    assert together[1].shape[0] > together[0].shape[0]
    assert embedder.query_token_limit() >= together[1].shape[0]


def test_query_and_document_paths_differ(embedder: ColPaliTorchEmbedder) -> None:
    image = page(11)
    (doc,) = embedder.embed_images([image])
    query = embedder.embed_query("a page")
    assert query.shape[0] < doc.shape[0]
    assert not np.allclose(query[:1].astype(np.float32), doc[:1].astype(np.float32))


def test_query_token_limit_reads_only_the_processor(
    family: str, tiny_torch_dirs: dict[str, Path]
) -> None:
    fresh = make(tiny_torch_dirs[family], family)
    assert fresh.query_token_limit() == 512  # the stand-in tokenizer's model_max_length
    assert not fresh.loaded


# -- identity and loading ----------------------------------------------------------


def test_identity_marks_the_stand_in_and_follows_the_weights(
    family: str, tiny_torch_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from pipeline.testing.tiny_torch import build

    first = make(tiny_torch_dirs[family], family).identity()
    assert first.stand_in and "stand-in" in first.label
    assert first.source == str(tiny_torch_dirs[family].resolve())
    again = make(tiny_torch_dirs[family], family).identity()
    assert again.fingerprint == first.fingerprint
    other = make(build(family, tmp_path / "seed1", seed=1), family).identity()
    assert other.fingerprint != first.fingerprint


def test_concurrent_first_calls_load_once(
    family: str, tiny_torch_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = make(tiny_torch_dirs[family], family)
    loads: list[int] = []
    real = ColPaliTorchEmbedder._load_model

    def counting(self: ColPaliTorchEmbedder) -> Any:
        loads.append(1)
        return real(self)

    monkeypatch.setattr(ColPaliTorchEmbedder, "_load_model", counting)
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(fresh.embed_query("page"))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len(results) == 4
    assert fresh.device == "cpu"
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_cpu_defaults_to_float32_and_bfloat16_is_honoured(
    family: str, tiny_torch_dirs: dict[str, Path]
) -> None:
    import torch

    default = make(tiny_torch_dirs[family], family)
    default.warm_up()
    assert next(default._model.parameters()).dtype == torch.float32
    half = make(tiny_torch_dirs[family], family, dtype="bfloat16")
    (vectors,) = half.embed_images([page(12)])
    assert next(half._model.parameters()).dtype == torch.bfloat16
    assert vectors.dtype == np.float16  # stored as float16 whatever the compute dtype


def test_an_explicit_cuda_device_without_one_says_how_to_fix(
    tiny_torch_dirs: dict[str, Path],
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device exists here: the error path cannot be reached")
    from pipeline.errors import ModelError

    embedder = make(tiny_torch_dirs["colqwen2_5"], "colqwen2_5", device="cuda")
    with pytest.raises(ModelError, match="no CUDA device"):
        embedder.embed_query("x")


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine"
)
def test_the_tiny_models_run_on_a_gpu(family: str, tiny_torch_dirs: dict[str, Path]) -> None:
    cpu = make(tiny_torch_dirs[family], family)
    gpu = make(tiny_torch_dirs[family], family, device="cuda", dtype="float32")
    image = page(13)
    (on_cpu,) = cpu.embed_pages([image])
    (on_gpu,) = gpu.embed_pages([image])
    assert gpu.device is not None and gpu.device.startswith("cuda")
    assert on_gpu.grid == on_cpu.grid
    np.testing.assert_allclose(
        on_gpu.vectors.astype(np.float32), on_cpu.vectors.astype(np.float32), atol=3e-2
    )
    bf16 = make(tiny_torch_dirs[family], family, device="cuda")  # auto dtype: bfloat16
    (half,) = bf16.embed_pages([image])
    assert half.vectors.dtype == np.float16 and half.vectors.shape == on_cpu.vectors.shape
