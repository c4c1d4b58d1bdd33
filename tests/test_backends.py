"""Both embedding backends through the whole pipeline, with their stand-in models.

``embedding.backend`` picks fastembed (ONNX) or torch (colpali-engine); the
stand-ins are ``pipeline.testing.tiny_colpali`` (fixed 32×32 grid) and
``pipeline.testing.tiny_torch`` (ColQwen2.5 and ColSmol: a grid per page that
follows the page's shape). Every store engine here (the embedded one and
qdrant-client ``:memory:``) must rank pages by MaxSim exactly as brute force
over the stored vectors does, pool rows/columns on each page's own grid (at
ingest and again by ``reindex --pooled``), report bytes per page, draw
similarity maps on the page's grid, and apply token pooling.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline import PageRAG
from pipeline.backends import backend_for, build_embedder
from pipeline.config import EmbeddingConfig, load_config
from pipeline.embed.pooling import GRID_FIELD, POOLED_VECTORS, pool_page
from pipeline.errors import (
    CollectionMismatchError,
    ConfigError,
    OptionalDependencyError,
    QueryError,
)
from pipeline.retrieve.store import stored_grids
from pipeline.types import PatchGrid
from tests.conftest import TORCH_MISSING

SHAPES = [(600, 800), (800, 500), (500, 500), (420, 900), (900, 420)]
STAND_INS = ["fastembed:colpali", "torch:colqwen2_5", "torch:colidefics3"]


# -- choosing the backend ------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "backend"),
    [
        ("Qdrant/colpali-v1.3-fp16", "fastembed"),
        ("Qdrant/colmodernvbert", "fastembed"),
        ("vidore/colqwen2.5-v0.2", "torch"),
        ("vidore/colSmol-256M", "torch"),
        ("vidore/colsmol-256m", "torch"),  # hub names are case-insensitive
    ],
)
def test_auto_picks_the_backend_the_registry_names(model: str, backend: str) -> None:
    assert backend_for(EmbeddingConfig(model=model)) == backend
    assert backend_for(EmbeddingConfig(model=model, backend=backend)) == backend


def test_a_backend_that_cannot_serve_the_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"embedding\.backend is 'torch'.*served by fastembed"):
        build_embedder(EmbeddingConfig(model="Qdrant/colpali-v1.3-fp16", backend="torch"))
    with pytest.raises(ConfigError, match="served by torch"):
        build_embedder(EmbeddingConfig(model="vidore/colSmol-256M", backend="fastembed"))
    with pytest.raises(ConfigError, match="mps"):
        build_embedder(EmbeddingConfig(model="Qdrant/colpali-v1.3-fp16", device="mps"))


def test_the_environment_chooses_a_torch_model_without_importing_torch() -> None:
    config = load_config(
        environ={
            "PAGERAG_EMBEDDING__MODEL": "vidore/colSmol-256M",
            "PAGERAG_EMBEDDING__TOKEN_POOLING": "3",
            "PAGERAG_EMBEDDING__DTYPE": "bfloat16",
        }
    )
    embedder = build_embedder(config)  # cheap: nothing imported or loaded
    assert type(embedder).__name__ == "ColPaliTorchEmbedder"
    assert config.embedding.pooling_factor == 3
    assert (
        load_config(environ={"PAGERAG_EMBEDDING__TOKEN_POOLING": "1"}).embedding.pooling_factor
        is None
    )


def test_pagerag_models_lists_every_model_with_what_it_needs() -> None:
    import json

    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.models import MODELS

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.stdout)["models"]}
    assert listed.keys() == MODELS.keys()
    qwen = listed["vidore/colqwen2.5-v0.2"]
    assert qwen["backend"] == "torch" and qwen["extra"] == "torch"
    assert qwen["tokens_per_page"] is None and qwen["patch_grid"] == "per page"
    assert qwen["license"] and qwen["size_gb"] > 0 and qwen["vidore_v1"] == 89.4
    assert listed["Qdrant/colpali-v1.3-fp16"]["tokens_per_page"] == 1030
    table = CliRunner().invoke(app, ["models"])
    assert table.exit_code == 0 and "vidore/colSmol-256M" in table.output


def test_a_missing_torch_extra_names_the_extra_and_the_fallback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    from connectors.colpali_torch import ColPaliTorchEmbedder

    monkeypatch.setitem(sys.modules, "colpali_engine.models", None)  # import fails
    (tmp_path / "config.json").write_text("{}")
    embedder = ColPaliTorchEmbedder(
        EmbeddingConfig(model="vidore/colSmol-256M", model_path=tmp_path)
    )
    with pytest.raises(OptionalDependencyError, match=r"colpali_engine.*\[torch\]'") as info:
        embedder.embed_query("x")
    assert "embedding.backend: fastembed" in str(info.value)


def test_a_torch_torchvision_build_mismatch_says_how_to_reinstall() -> None:
    from connectors.colpali_torch import _missing_torch_extra

    error = _missing_torch_extra(RuntimeError("operator torchvision::nms does not exist"))
    assert isinstance(error, ImportError)
    assert "'torch===2.13.0' 'torchvision===0.28.0'" in str(error)


def test_token_pooling_without_colpali_engine_fails_before_any_page(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    from pipeline.testing.fakes import FakeEmbedder

    monkeypatch.setitem(sys.modules, "colpali_engine.compression.token_pooling", None)
    config = load_config(
        environ={},
        overrides={"store": {"path": str(tmp_path / "data")}, "embedding": {"token_pooling": 3}},
    )
    embedder = FakeEmbedder()
    with (
        PageRAG(config, embedder=embedder) as rag,
        pytest.raises(OptionalDependencyError, match=r"embedding\.token_pooling"),
    ):
        rag.ingest(draw_pages(tmp_path / "docs")[:1])
    assert embedder.pages_embedded == 0


# -- the pipeline over every stand-in ---------------------------------------------------


def draw_pages(folder: Path) -> list[Path]:
    """PNG pages of different shapes and contents (no poppler needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(SHAPES):
        rng = np.random.default_rng(index)
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.rectangle([x, y, x + 50, y + 50], fill=colour)
        path = folder / f"page{index}.png"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module", params=STAND_INS)
def stand_in(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The embedding config of one stand-in: model name and model_path."""
    backend, family = str(request.param).split(":")
    if backend == "fastembed":
        pytest.importorskip("fastembed", reason="the fastembed extra is not installed")
        from pipeline.testing.tiny_colpali import build

        return {
            "model": "Qdrant/colpali-v1.3-fp16",
            "model_path": str(build(tmp_path_factory.mktemp("tiny-colpali"))),
        }
    pytest.importorskip("colpali_engine", reason=TORCH_MISSING)
    dirs = request.getfixturevalue("tiny_torch_dirs")
    from pipeline.testing.tiny_torch import MODEL_NAMES

    return {"model": MODEL_NAMES[family], "model_path": str(dirs[family])}


def make_rag(tmp_path: Path, embedding: dict[str, Any], *, engine: str, **extra: Any) -> PageRAG:
    store: dict[str, Any] = {"collection": "pages"}
    if engine == "memory":
        store["url"] = ":memory:"
    else:
        store["path"] = str(tmp_path / "data")
    config = load_config(
        environ={},
        overrides={
            "store": store,
            "embedding": {"device": "cpu", "threads": 1, "batch_size": 2, **embedding, **extra},
        },
    )
    return PageRAG(config)


@pytest.fixture(scope="module", params=["edge", "memory"])
def filled(
    request: pytest.FixtureRequest,
    stand_in: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PageRAG]:
    tmp = tmp_path_factory.mktemp("backend")
    pages = draw_pages(tmp / "docs")
    rag = make_rag(tmp, stand_in, engine=str(request.param))
    with rag:
        report = rag.ingest(pages)
        assert report.ok, report.to_dict()
        yield rag


def all_ids(rag: PageRAG) -> list[str]:
    return [i for batch in rag.store.iter_page_ids() for i in batch]


def maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    return float((query.astype(np.float32) @ doc.astype(np.float32).T).max(axis=1).sum())


def test_exact_search_ranks_like_brute_force(filled: PageRAG) -> None:
    query = "blocks of colour"
    hits = filled.search(query, k=len(SHAPES), mode="exact")
    stored = filled.store.page_vectors(all_ids(filled))
    q = filled.embedder.embed_query(query)
    brute = sorted(((maxsim(q, v), i) for i, v in stored.items()), reverse=True)
    assert [h.score for h in hits] == pytest.approx([s for s, _ in brute], rel=1e-2)
    assert hits[0].point_id == brute[0][1]


def test_variable_pages_keep_their_own_grid(filled: PageRAG) -> None:
    spec = filled.embedder.spec
    ids = all_ids(filled)
    stored = filled.store.page_vectors(ids)
    grids = stored_grids(filled.store, spec, ids)
    counts = {v.shape[0] for v in stored.values()}
    if spec.per_page_grid:
        assert len(counts) > 1  # dynamic resolution: counts follow the page shapes
        assert len({(g.rows, g.cols) for g in grids.values() if g}) == len(SHAPES)
    else:
        assert counts == {spec.tokens_per_page}
        assert set(grids.values()) == {PatchGrid(32, 32, 0)}
    for point_id, grid in grids.items():
        assert grid is not None and grid.stop <= stored[point_id].shape[0]


def test_pooled_vectors_follow_each_pages_grid(filled: PageRAG) -> None:
    spec = filled.embedder.spec
    ids = all_ids(filled)
    full = filled.store.page_vectors(ids)
    grids = stored_grids(filled.store, spec, ids)
    for name in POOLED_VECTORS:
        pooled = filled.store.page_vectors(ids, using=name)
        for point_id in ids:
            grid = grids[point_id]
            assert grid is not None
            extra = full[point_id].shape[0] - grid.count
            assert pooled[point_id].shape[0] == (grid.rows if name == "rows" else grid.cols) + extra
            expected = pool_page(full[point_id], spec, grid)[name]
            np.testing.assert_allclose(
                pooled[point_id].astype(np.float32), expected.astype(np.float32), atol=1e-2
            )
    hits = filled.search("blocks of colour", k=3, mode="two_stage")
    assert len(hits) == 3


def test_status_reports_bytes_per_page(filled: PageRAG) -> None:
    status = filled.status().to_dict()
    per_page = status["vector_bytes_per_page"]
    assert per_page is not None
    ids = all_ids(filled)
    full = filled.store.page_vectors(ids)
    mean_full = sum(v.shape[0] for v in full.values()) / len(full)
    assert per_page["full"] == pytest.approx(mean_full * 128 * 2, rel=1e-3)
    if filled.embedder.spec.tokens_per_page is None:
        assert per_page["measured_pages"] == len(SHAPES)
        assert per_page["tokens_per_page"]["full"] == pytest.approx(mean_full, abs=0.1)


def test_explain_draws_on_the_pages_grid(filled: PageRAG) -> None:
    hit = filled.search("blocks of colour", k=1, mode="exact")[0]
    explanation = filled.explain("blocks of colour", hit.point_id)
    grid = stored_grids(filled.store, filled.embedder.spec, [hit.point_id])[hit.point_id]
    assert grid is not None
    assert explanation.map.shape == (grid.rows, grid.cols)
    assert explanation.maps.per_token.shape[1:] == (grid.rows, grid.cols)
    assert explanation.image.size == explanation.page.size
    assert explanation.maps.score == pytest.approx(hit.score, rel=2e-2)
    if filled.embedder.spec.per_page_grid:
        assert hit.payload[GRID_FIELD] == [grid.rows, grid.cols, 0]


# -- reindex --pooled and token pooling, per backend ----------------------------------------


def test_reindex_pooled_uses_each_pages_recorded_grid(
    stand_in: dict[str, Any], tmp_path: Path
) -> None:
    """A collection filled without pooled vectors gets the same ones ingest makes."""
    from pipeline.retrieve.collection import wanted_spec

    pages = draw_pages(tmp_path / "docs")
    with make_rag(tmp_path, stand_in, engine="edge") as rag:
        spec = wanted_spec(rag.config.store, rag.embedder)
        import dataclasses

        rag.store.open(dataclasses.replace(spec, pooled=()), create=True)
        rag.store.close()
    with make_rag(tmp_path, stand_in, engine="edge") as rag:
        assert rag.ingest(pages).ok
        assert rag.status().spec is not None and rag.status().spec.pooled == ()  # type: ignore[union-attr]
        report = rag.reindex_pooled(batch=2)
        assert report.pages_updated == len(SHAPES)
        ids = all_ids(rag)
        full = rag.store.page_vectors(ids)
        rows = rag.store.page_vectors(ids, using="rows")
        grids = stored_grids(rag.store, rag.embedder.spec, ids)
        for point_id in ids:
            expected = pool_page(full[point_id], rag.embedder.spec, grids[point_id])["rows"]
            np.testing.assert_allclose(
                rows[point_id].astype(np.float32), expected.astype(np.float32), atol=1e-2
            )


def test_token_pooling_at_ingest(stand_in: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("colpali_engine", reason=TORCH_MISSING)  # the pooler is colpali-engine's
    pages = draw_pages(tmp_path / "docs")
    with make_rag(tmp_path / "plain", stand_in, engine="edge") as plain:
        assert plain.ingest(pages).ok
        unpooled = plain.store.page_vectors(all_ids(plain))
    with make_rag(tmp_path / "pooled", stand_in, engine="edge", token_pooling=3) as rag:
        assert rag.ingest(pages).ok
        spec = rag.status().spec
        assert spec is not None and spec.token_pooling == 3
        pooled = rag.store.page_vectors(all_ids(rag))
        assert pooled.keys() == unpooled.keys()
        for point_id, vectors in pooled.items():
            assert vectors.shape[0] == max(unpooled[point_id].shape[0] // 3, 1)
            assert vectors.dtype == np.float16
        # row/column vectors were made from the unpooled grid, before token pooling
        assert set(spec.pooled) == set(POOLED_VECTORS)
        assert rag.search("blocks", k=2, mode="two_stage")
        status = rag.status().to_dict()["vector_bytes_per_page"]
        mean = sum(v.shape[0] for v in pooled.values()) / len(pooled)
        assert status["full"] == pytest.approx(mean * 128 * 2, rel=1e-3)
        with pytest.raises(QueryError, match="token pooling"):
            rag.explain("blocks", all_ids(rag)[0])
    with (
        make_rag(tmp_path / "pooled", stand_in, engine="edge", token_pooling=2) as other,
        pytest.raises(CollectionMismatchError, match="token_pooling 3"),
    ):
        other.ingest(pages)


@pytest.mark.parametrize("engine", ["edge", "memory"])
def test_reindex_token_pooling_from_stored_vectors(
    stand_in: dict[str, Any], tmp_path: Path, engine: str
) -> None:
    """`reindex --token-pooling 3` merges the stored vectors (no re-embedding) exactly as
    ingest would, switches search to them, frees the old ones, and later ingests follow."""
    pytest.importorskip("colpali_engine", reason=TORCH_MISSING)
    from pipeline.embed.pooling import pool_tokens

    pages = draw_pages(tmp_path / "docs")
    with make_rag(tmp_path, stand_in, engine=engine) as rag:
        assert rag.ingest(pages[:3]).ok
        ids = all_ids(rag)
        before = rag.store.page_vectors(ids)
        report = rag.reindex_token_pooling(3, batch=2)
        assert report.pages_updated == 3 and report.recorded and report.token_pooling == 3
        spec = rag.store.spec()
        assert spec is not None and spec.token_pooling == 3 and spec.full_vector == "full_tp3"
        after = rag.store.page_vectors(ids)
        for point_id in ids:
            np.testing.assert_allclose(
                after[point_id].astype(np.float32),
                pool_tokens(before[point_id], 3).astype(np.float32),
                atol=1e-2,
            )
        try:  # the unmerged vectors are gone: an unknown name, or no page has it
            gone = rag.store.page_vectors(ids, using="full")
        except QueryError:
            gone = {}
        assert gone == {}
        hits = rag.search("blocks", k=3, mode="exact")
        q = rag.embedder.embed_query("blocks")
        assert hits[0].score == pytest.approx(max(maxsim(q, v) for v in after.values()), rel=1e-2)
        assert rag.reindex_token_pooling(3).no_op
        with pytest.raises(ConfigError, match="already token-pooled"):
            rag.reindex_token_pooling(2)
        if engine == "memory":
            return
    with make_rag(tmp_path, stand_in, engine=engine, token_pooling=3) as rag:
        assert rag.ingest(pages[3:4]).ok  # later ingests pool the same way
        (new_id,) = set(all_ids(rag)) - set(ids)
        (fresh,) = embed_pages_of(rag, pages[3])
        assert rag.store.page_vectors([new_id])[new_id].shape[0] == fresh.shape[0] // 3
    with (
        make_rag(tmp_path, stand_in, engine=engine) as plain,
        pytest.raises(CollectionMismatchError, match="token_pooling 3"),
    ):
        plain.ingest(pages[4:])


def embed_pages_of(rag: PageRAG, path: Path) -> list[np.ndarray]:
    with Image.open(path) as image:
        return rag.embedder.embed_images([image.convert("RGB")])
