"""``reindex_pooled`` / ``pagerag reindex --pooled``: upgrading a collection in place.

A collection is created the way an older pagerag (or a config without pooled
vectors) left it — full multivectors only — then upgraded. What must hold:
the pooled vectors equal ``pool_page`` of the stored full vectors, the
manifest lists them only once every page has them, a killed run resumes, a
rerun writes nothing, and search modes behave before and after.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from connectors.qdrant_client import ClientPageStore
from connectors.qdrant_edge import EdgePageStore
from pipeline import PageRAG
from pipeline.cli.reindex import register
from pipeline.config import PageRAGConfig, StoreConfig, load_config
from pipeline.embed.pooling import POOLED_VECTORS, pool_page
from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    ConfigError,
    QueryError,
    StoreError,
)
from pipeline.models import ModelSpec, get_model_spec
from pipeline.retrieve.reindex import (
    PooledVectorStore,
    ReindexProgress,
    reindex_pooled,
)
from pipeline.retrieve.store import PageStore
from pipeline.testing.fakes import FAKE_SPEC, FakeEmbedder
from pipeline.types import CollectionSpec, Float16Array

PAGES = 8
COLLECTION = "pages"


def draw_pages(folder: Path, count: int = PAGES) -> Path:
    """``count`` distinct PNG 'pages' without poppler or the corpus: blocks of one
    colour per page on white, so every page is easy to tell apart (also pooled)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        rng = np.random.default_rng(index)
        colour = rng.integers(0, 255, 3)
        pixels = np.full((400, 320, 3), 255, dtype=np.uint8)
        for _ in range(30):
            top, left = rng.integers(0, 360), rng.integers(0, 280)
            pixels[top : top + 40, left : left + 40] = colour
        Image.fromarray(pixels).save(folder / f"page{index}.png")
    return folder


class PageQueries(FakeEmbedder):
    """A fake embedder whose named queries are given vectors (e.g. a page's own patches)."""

    def __init__(self, spec: ModelSpec = FAKE_SPEC) -> None:
        super().__init__(spec)
        self.queries: dict[str, Float16Array] = {}

    def embed_query(self, query: str) -> Float16Array:
        return self.queries[query] if query in self.queries else super().embed_query(query)


def config_for(data: Path, **retrieval: Any) -> PageRAGConfig:
    return load_config(
        environ={},
        overrides={
            "store": {"path": str(data), "collection": COLLECTION},
            "retrieval": {"mode": "exact", **retrieval},
        },
    )


def exact_only_collection(data: Path, pictures: Path, model: ModelSpec = FAKE_SPEC) -> None:
    """Ingest ``pictures`` into a new collection created without pooled vectors."""
    store = EdgePageStore(data, COLLECTION)
    store.open(CollectionSpec(name=COLLECTION, model=model.name, dim=model.dim, pooled=()))
    store.close()
    with PageRAG(config_for(data), embedder=FakeEmbedder(model)) as rag:
        report = rag.ingest([pictures])
        assert report.exit_code == 0
        spec = rag.store.spec()
        assert spec is not None
        assert spec.pooled == ()


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    return draw_pages(tmp_path / "pictures")


@pytest.fixture
def make_rag(tmp_path: Path, pictures: Path) -> Iterator[Callable[..., PageRAG]]:
    """PageRAG over an exact-only collection of PAGES pages (created once per test)."""
    data = tmp_path / "data"
    exact_only_collection(data, pictures)
    made: list[PageRAG] = []

    def make(**retrieval: Any) -> PageRAG:
        for old in made:
            old.close()
        rag = PageRAG(config_for(data, **retrieval), embedder=PageQueries())
        made.append(rag)
        return rag

    yield make
    for rag in made:
        rag.close()


def own_patches(vectors: Float16Array, count: int = 24) -> Float16Array:
    """The page's ``count`` most distinctive patch vectors (least like its mean patch):
    a query whose right answer is that page."""
    patches = vectors[:1024].astype(np.float32)
    order = np.argsort(patches @ patches.mean(axis=0))
    return patches[order[:count]].astype(np.float16)


def all_ids(store: PageStore) -> list[str]:
    return [i for batch in store.iter_page_ids() for i in batch]


def opened(rag: PageRAG) -> PageStore:
    """The rag's store, opened on its collection (as search would)."""
    rag.documents()
    return rag.store


# --------------------------------------------------------------------------- the upgrade


def test_reindex_writes_pool_page_of_the_stored_vectors_and_records_them(
    make_rag: Callable[..., PageRAG],
) -> None:
    rag = make_rag()
    report = rag.reindex_pooled()
    store = opened(rag)
    assert report.pages == PAGES
    assert report.pages_updated == PAGES
    assert report.recorded
    assert report.pooled == POOLED_VECTORS
    ids = all_ids(store)
    full = store.page_vectors(ids)
    for name in POOLED_VECTORS:
        pooled = store.page_vectors(ids, using=name)
        assert set(pooled) == set(ids)
        for point_id in ids:
            expected = pool_page(full[point_id], FAKE_SPEC)[name]
            np.testing.assert_array_equal(pooled[point_id], expected)
    spec = store.spec()
    assert spec is not None
    assert spec.pooled == POOLED_VECTORS
    rag.close()
    # The manifest on disk says so too: a fresh open sees a pooled collection.
    reopened = EdgePageStore(rag.config.store.path, COLLECTION)
    recorded = reopened.spec()
    assert recorded is not None
    assert recorded.pooled == POOLED_VECTORS


def test_payloads_and_full_vectors_are_untouched(make_rag: Callable[..., PageRAG]) -> None:
    rag = make_rag()
    store = opened(rag)
    ids = all_ids(store)
    before = store.page_vectors(ids)
    images = {i: store.page_image(i) for i in ids}
    hits_before = {h.point_id: h.payload for h in rag.search("blue squares", k=PAGES)}
    rag.reindex_pooled()
    after = store.page_vectors(ids)
    for point_id in ids:
        np.testing.assert_array_equal(before[point_id], after[point_id])
        assert store.page_image(point_id) == images[point_id]
    hits_after = {h.point_id: h.payload for h in rag.search("blue squares", k=PAGES)}
    assert hits_after == hits_before


def test_rerun_is_a_no_op(make_rag: Callable[..., PageRAG]) -> None:
    rag = make_rag()
    first = rag.reindex_pooled()
    assert not first.no_op
    events: list[ReindexProgress] = []
    second = rag.reindex_pooled(progress=events.append)
    assert second.no_op
    assert (second.pages_updated, second.passes, second.recorded) == (0, 0, False)
    assert events == []
    assert second.to_dict()["no_op"] is True


def test_killed_reindex_resumes_and_records_only_when_complete(
    make_rag: Callable[..., PageRAG],
) -> None:
    rag = make_rag(prefetch_k=2)

    class Killed(Exception):
        pass

    def kill_after_first_batch(event: ReindexProgress) -> None:
        raise Killed

    with pytest.raises(Killed):
        rag.reindex_pooled(batch=3, progress=kill_after_first_batch)
    store = opened(rag)
    assert isinstance(store, PooledVectorStore)
    assert store.count_pages_missing(POOLED_VECTORS) == PAGES - 3
    spec = store.spec()
    assert spec is not None
    assert spec.pooled == ()  # not recorded: two_stage stays refused
    with pytest.raises(QueryError, match="pagerag reindex --pooled"):
        rag.search("anything", mode="two_stage")
    rag.close()

    rag = make_rag(prefetch_k=2)
    events: list[ReindexProgress] = []
    report = rag.reindex_pooled(batch=3, progress=events.append)
    assert report.pages_updated == PAGES - 3
    assert report.recorded
    assert events[-1].pages_done == events[-1].pages_total == PAGES - 3
    assert rag.search("anything", mode="two_stage")


def test_pages_lacking_pooled_vectors_in_a_pooled_collection_are_filled(
    tmp_path: Path, pictures: Path
) -> None:
    """Opening an exact collection with a pooled spec records the names at once
    (the adapters' in-place evolution); reindex still finds and fills the pages."""
    data = tmp_path / "data"
    exact_only_collection(data, pictures)
    store = EdgePageStore(data, COLLECTION)
    store.open(
        CollectionSpec(name=COLLECTION, model=FAKE_SPEC.name, dim=FAKE_SPEC.dim, pooled=("rows",))
    )
    try:
        assert isinstance(store, PooledVectorStore)
        assert store.count_pages_missing(POOLED_VECTORS) == PAGES
        report = reindex_pooled(store, FAKE_SPEC)
        assert report.pages_updated == PAGES
        assert store.count_pages_missing(POOLED_VECTORS) == 0
        spec = store.spec()
        assert spec is not None
        assert set(spec.pooled) == set(POOLED_VECTORS)
    finally:
        store.close()


# --------------------------------------------------------------------------- search modes


def test_search_modes_before_and_after_reindex(make_rag: Callable[..., PageRAG]) -> None:
    rag = make_rag(prefetch_k=2)
    store = opened(rag)
    ids = all_ids(store)
    target = ids[5]
    rag.embedder.queries["own"] = own_patches(store.page_vectors([target])[target])  # type: ignore[attr-defined]

    exact_before = rag.search("own", k=3, mode="exact")
    assert exact_before[0].point_id == target
    with pytest.raises(QueryError, match="pagerag reindex --pooled"):
        rag.search("own", mode="two_stage")
    assert [h.point_id for h in rag.search("own", k=3, mode="auto")] == [
        h.point_id for h in exact_before
    ]

    rag.reindex_pooled()

    exact_after = rag.search("own", k=3, mode="exact")
    two_stage = rag.search("own", k=3, mode="two_stage")
    assert [(h.point_id, h.score) for h in exact_after] == [
        (h.point_id, h.score) for h in exact_before
    ]
    assert two_stage[0].point_id == target
    assert two_stage[0].score == pytest.approx(exact_after[0].score, rel=1e-3)


def test_two_stage_after_reindex_survives_reopen(make_rag: Callable[..., PageRAG]) -> None:
    rag = make_rag()
    rag.reindex_pooled()
    rag = make_rag(two_stage_min_pages=0, mode="auto")
    assert len(rag.search("red blocks", k=4)) == 4
    assert len(rag.search("red blocks", k=4, mode="two_stage")) == 4


# --------------------------------------------------------------------------- refusals


def test_collection_filled_by_another_model_is_refused(make_rag: Callable[..., PageRAG]) -> None:
    rag = make_rag()
    store = opened(rag)
    other = ModelSpec(
        name="someone/else",
        dim=FAKE_SPEC.dim,
        tokens_per_page=1030,
        patch_grid=(32, 32),
        patch_offset=0,
        size_gb=0,
        license="-",
        notes="-",
    )
    with pytest.raises(CollectionMismatchError, match=r"embedding\.model"):
        reindex_pooled(store, other)


def test_model_without_a_patch_grid_is_refused(tmp_path: Path) -> None:
    gridless = get_model_spec("Qdrant/colmodernvbert")
    with EdgePageStore(tmp_path / "data", COLLECTION) as store:
        store.open(CollectionSpec(name=COLLECTION, model=gridless.name, dim=gridless.dim))
        with pytest.raises(ConfigError, match="no fixed patch grid"):
            reindex_pooled(store, gridless)


def test_missing_collection_is_reported(tmp_path: Path) -> None:
    rag = PageRAG(config_for(tmp_path / "empty"), embedder=FakeEmbedder())
    with rag, pytest.raises(CollectionNotFoundError):
        rag.reindex_pooled()


def test_store_without_in_place_writes_is_refused() -> None:
    class ReadOnly:
        def spec(self) -> CollectionSpec:
            return CollectionSpec(name="c", model=FAKE_SPEC.name, dim=FAKE_SPEC.dim)

    with pytest.raises(StoreError, match="re-ingest"):
        reindex_pooled(ReadOnly(), FAKE_SPEC)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- other engine


def test_reindex_on_qdrant_client_memory_mode(pictures: Path) -> None:
    """The qdrant-client adapter (server and ``:memory:``) implements the same protocol."""
    store = ClientPageStore(StoreConfig(url=":memory:", collection=COLLECTION))
    store.open(CollectionSpec(name=COLLECTION, model=FAKE_SPEC.name, dim=FAKE_SPEC.dim))
    config = config_for(Path("unused"))
    with PageRAG(config, embedder=FakeEmbedder(), store=store) as rag:
        assert rag.ingest([pictures]).exit_code == 0
        assert isinstance(store, PooledVectorStore)
        report = rag.reindex_pooled()
        assert report.pages_updated == PAGES
        assert report.recorded
        ids = all_ids(store)
        full = store.page_vectors(ids)
        rows = store.page_vectors(ids, using="rows")
        for point_id in ids:
            expected = pool_page(full[point_id], FAKE_SPEC)["rows"]
            np.testing.assert_array_equal(rows[point_id], expected)
        assert rag.reindex_pooled().no_op
        assert len(rag.search("green", k=3, mode="two_stage")) == 3


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """pagerag (test app)."""

    register(app)
    return app


def test_cli_reindex_pooled(cli: typer.Typer, tmp_path: Path, pictures: Path) -> None:
    colpali = get_model_spec("Qdrant/colpali-v1.3-fp16")
    data = tmp_path / "data"
    exact_only_collection(data, pictures, colpali)
    config = tmp_path / "pagerag.yaml"
    config.write_text(f"store:\n  path: {data}\n  collection: {COLLECTION}\n", encoding="utf-8")
    runner = CliRunner()

    result = runner.invoke(cli, ["reindex", "--pooled", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pages_updated"] == PAGES
    assert report["pooled"] == list(POOLED_VECTORS)
    assert report["recorded"] is True

    again = runner.invoke(cli, ["reindex", "--pooled", "--config", str(config)])
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.stdout


def test_cli_reindex_usage_and_missing_collection(cli: typer.Typer, tmp_path: Path) -> None:
    config = tmp_path / "pagerag.yaml"
    config.write_text(f"store:\n  path: {tmp_path / 'none'}\n", encoding="utf-8")
    runner = CliRunner()
    usage = runner.invoke(cli, ["reindex", "--config", str(config)])
    assert usage.exit_code == 2
    assert "--pooled" in usage.output
    missing = runner.invoke(cli, ["reindex", "--pooled", "--config", str(config)])
    assert missing.exit_code == 1
    assert "pagerag ingest" in missing.output
