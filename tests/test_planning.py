"""Search options and plans: one value for every search call, and what it asks the store."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.config import RetrievalConfig
from pipeline.errors import QueryError
from pipeline.retrieve.planning import MAX_K, SearchOptions, SearchPlan, plan_search
from pipeline.types import CollectionSpec, PageFilter

POOLED = CollectionSpec(name="c", model="m", dim=128, pooled=("rows", "cols"))
EXACT_ONLY = dataclasses.replace(POOLED, pooled=())


def test_options_from_k_keywords_or_a_value() -> None:
    assert SearchOptions.of() == SearchOptions()
    assert SearchOptions.of(3) == SearchOptions(k=3)
    assert SearchOptions.of(k=3, mode="exact") == SearchOptions(k=3, mode="exact")
    base = SearchOptions(k=3, filter={"team": "blue"}, mode="exact")
    assert SearchOptions.of(base) is base
    # keywords override the value, field by field
    assert SearchOptions.of(base, mode="two_stage") == dataclasses.replace(base, mode="two_stage")
    assert SearchOptions.of(4, mode="auto") == SearchOptions(k=4, mode="auto")


def test_options_refuse_what_no_search_takes() -> None:
    with pytest.raises(TypeError, match="top_k"):
        SearchOptions.of(top_k=3)
    with pytest.raises(TypeError, match="k given twice"):
        SearchOptions.of(3, k=4)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"k": 0}, "k must be an integer from 1 to 1000"),
        ({"k": MAX_K + 1}, "k must be"),
        ({"k": True}, "k must be"),
        ({"k": 2.0}, "k must be"),
        ({"mode": "fast"}, "mode must be one of auto, visual, exact, two_stage, text, hybrid"),
        ({"filter": "reports/"}, "filter must be a mapping or PageFilter"),
    ],
)
def test_bad_options_are_query_errors_on_construction(given: dict, words: str) -> None:
    with pytest.raises(QueryError, match=words):
        SearchOptions(**given)


def test_the_filter_resolves_paths_and_an_empty_one_is_none(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    options = SearchOptions(filter={"source": "reports", "document_id": "abc", "team": "b"})
    assert options.page_filter() == PageFilter(
        document_ids=("abc",), source_prefix=str(tmp_path / "reports"), metadata={"team": "b"}
    )
    assert SearchOptions(filter={}).page_filter() is None
    assert SearchOptions(filter=PageFilter()).page_filter() is None


def counter(pages: int) -> tuple[list[int], object]:
    calls: list[int] = []

    def count() -> int:
        calls.append(pages)
        return pages

    return calls, count


def test_exact_plans_no_prefetch_and_takes_k_from_the_config() -> None:
    calls, count = counter(10**6)
    plan = plan_search(SearchOptions(mode="exact"), POOLED, RetrievalConfig(k=7), count)
    assert plan == SearchPlan("exact", 7, None)
    assert calls == []  # the size matters only to auto


def test_two_stage_prefetches_the_configured_pooled_vectors() -> None:
    retrieval = RetrievalConfig(prefetch_k=50, prefetch_vectors=["rows", "cols"])
    plan = plan_search(SearchOptions(k=5, mode="two_stage"), POOLED, retrieval, lambda: 0)
    assert (plan.mode, plan.prefetch) == ("two_stage", (("rows", 50), ("cols", 50)))
    # never fewer candidates than pages asked for
    plan = plan_search(SearchOptions(k=80, mode="two_stage"), POOLED, retrieval, lambda: 0)
    assert plan.prefetch == (("rows", 80), ("cols", 80))
    # configured vectors the collection lacks fall back to the ones it has
    cols_only = dataclasses.replace(POOLED, pooled=("cols",))
    plan = plan_search(SearchOptions(mode="two_stage"), cols_only, RetrievalConfig(), lambda: 0)
    assert plan.prefetch == (("cols", 400),)


def test_two_stage_without_pooled_vectors_names_the_fix() -> None:
    with pytest.raises(QueryError, match="reindex --pooled"):
        plan_search(SearchOptions(mode="two_stage"), EXACT_ONLY, RetrievalConfig(), lambda: 0)


@pytest.mark.parametrize(("pages", "mode"), [(1999, "exact"), (2000, "two_stage")])
def test_auto_goes_two_stage_from_two_stage_min_pages(pages: int, mode: str) -> None:
    calls, count = counter(pages)
    plan = plan_search(SearchOptions(), POOLED, RetrievalConfig(), count)
    assert (plan.mode, calls) == (mode, [pages])
    calls, count = counter(pages)
    assert plan_search(SearchOptions(), EXACT_ONLY, RetrievalConfig(), count).mode == "exact"
    assert calls == []  # no pooled vectors: nothing to count
