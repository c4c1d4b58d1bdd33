"""Two-stage retrieval (pooled prefetch + exact MaxSim rerank) through ``PageRAG.search``,
and a small run of ``bench/retrieval.py`` so the benchmark cannot rot unnoticed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import PageRAG
from pipeline.config import PageRAGConfig, load_config
from pipeline.embed.pooling import POOLED_VECTORS
from tests.test_reindex import PAGES, PageQueries, draw_pages, own_patches

ROOT = Path(__file__).resolve().parents[1]


def config_for(data: Path, **retrieval: Any) -> PageRAGConfig:
    return load_config(
        environ={},
        overrides={"store": {"path": str(data)}, "retrieval": {"mode": "exact", **retrieval}},
    )


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pooled collection of PAGES pages, ingested once for the module."""
    root = tmp_path_factory.mktemp("two-stage")
    data = root / "data"
    with PageRAG(config_for(data), embedder=PageQueries()) as rag:
        assert rag.ingest([draw_pages(root / "pictures")]).exit_code == 0
        spec = rag.store.spec()
        assert spec is not None
        assert spec.pooled == POOLED_VECTORS
    return data


@pytest.fixture
def make_rag(collection: Path) -> Iterator[Callable[..., PageRAG]]:
    made: list[PageRAG] = []

    def make(**retrieval: Any) -> PageRAG:
        for old in made:
            old.close()
        rag = PageRAG(config_for(collection, **retrieval), embedder=PageQueries())
        made.append(rag)
        return rag

    yield make
    for rag in made:
        rag.close()


def page_query(rag: PageRAG, index: int) -> str:
    """Register a query made of page ``index``'s own patches, named by the page id."""
    rag.documents()  # opens the store
    ids = sorted(i for batch in rag.store.iter_page_ids() for i in batch)
    target = ids[index]
    embedder = rag.embedder
    assert isinstance(embedder, PageQueries)
    embedder.queries[target] = own_patches(rag.store.page_vectors([target])[target])
    return target


def spy_prefetch(rag: PageRAG) -> list[Any]:
    """Record the ``prefetch`` argument of every store search."""
    calls: list[Any] = []
    store = rag.store
    real = store.search

    def search(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("prefetch", ()))
        return real(*args, **kwargs)

    store.search = search  # type: ignore[method-assign]
    return calls


def test_two_stage_equals_exact_when_the_prefetch_covers_every_page(
    make_rag: Callable[..., PageRAG],
) -> None:
    rag = make_rag(prefetch_k=PAGES)
    for words in ("red square", "a chart of revenue", "blue"):
        exact = rag.search(words, k=PAGES, mode="exact")
        two = rag.search(words, k=PAGES, mode="two_stage")
        # Same pages, same scores, same order (pages with equal scores in either order).
        assert sorted((-h.score, h.point_id) for h in two) == sorted(
            (-h.score, h.point_id) for h in exact
        )
        assert [h.score for h in two] == [h.score for h in exact]


@pytest.mark.parametrize("index", range(0, PAGES, 3))
def test_two_stage_finds_a_page_from_its_own_patches(
    make_rag: Callable[..., PageRAG], index: int
) -> None:
    rag = make_rag(prefetch_k=2)
    target = page_query(rag, index)
    exact = rag.search(target, k=3, mode="exact")
    two = rag.search(target, k=3, mode="two_stage")
    assert exact[0].point_id == two[0].point_id == target
    assert two[0].score == pytest.approx(exact[0].score, rel=1e-3)


def test_prefetch_below_k_still_returns_k_pages(make_rag: Callable[..., PageRAG]) -> None:
    rag = make_rag(prefetch_k=1)
    assert len(rag.search("anything at all", k=6, mode="two_stage")) == 6


def test_auto_uses_two_stage_from_two_stage_min_pages(make_rag: Callable[..., PageRAG]) -> None:
    rag = make_rag(mode="auto", two_stage_min_pages=PAGES + 1, prefetch_k=6)
    calls = spy_prefetch(rag)
    rag.search("small collection")
    assert calls == [[]]

    rag = make_rag(mode="auto", two_stage_min_pages=PAGES, prefetch_k=6)
    calls = spy_prefetch(rag)
    rag.search("large enough")
    assert calls == [[("rows", 6)]]  # retrieval.prefetch_vectors defaults to rows only
    rag.search("explicit", mode="exact")
    assert calls[-1] == []


def test_small_benchmark_run(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bench/retrieval.py --pages N --json`` end to end at a tiny size (~15 s)."""
    import bench.retrieval as bench

    code = bench.main(
        [
            "--pages", "120",
            "--corpus", str(corpus),
            "--real-pages", "8",
            "--queries", "3",
            "--floor-queries", "2",
            "--prefetch", "10,40",
            "--headline-prefetch", "40",
            "--options", "float16,binary",
            "--child-exact-queries", "2",
            "--json",
            "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in (
        "pages", "exact_ms", "two_stage_ms", "speedup", "recall_at_10",
        "numpy_floor_ms", "bytes_per_page",
    ):  # fmt: skip
        assert key in result, key
    assert result["pages"] == 120
    assert result["engine_matches_numpy"] == 1.0  # the engine's MaxSim is brute force's
    assert [(row["vectors"], row["prefetch_k"]) for row in result["two_stage"]] == [
        ("rows+cols", 10),
        ("rows+cols", 40),
        ("rows", 10),
        ("rows", 40),
    ]
    assert result["prefetch_vectors"] == "rows"  # the headline is what search sends by default
    assert 0.0 <= result["recall_at_10"] <= 1.0
    assert set(result["storage"]) == {"float16", "binary"}
    assert result["storage"]["binary"]["exact_agrees_with_float16"] >= 0.9
    assert result["bytes_per_page"] > 1030 * 128 * 2  # at least the float16 full vectors


def test_prefetch_vectors_setting_chooses_the_first_stage(
    make_rag: Callable[..., PageRAG],
) -> None:
    rag = make_rag(mode="two_stage", prefetch_k=6, prefetch_vectors=["rows", "cols"])
    calls = spy_prefetch(rag)
    rag.search("both pooled vectors")
    assert calls == [[("rows", 6), ("cols", 6)]]
