"""Search latency per lane: text, visual and hybrid, side by side, on the embedded engine.

For each collection size (default 1k and 10k pages, ``--pages``) one store
(``connectors.qdrant_edge.EdgePageStore``, visual + text lanes, pooled
``rows``/``cols`` vectors) is built and each query is run, interleaved so a
noisy neighbour slows all alike, as:

* **text**: the text lane alone (BM25 over the sparse vectors, IDF by the engine);
* **visual exact**: exact MaxSim over every page's full multivector;
* **hybrid exact**: both lanes fused by RRF in one engine query (visual lane
  exact), with the text lane alone beside it in one batch for the lane ranks
  (what ``PageStore.search_hybrid`` sends);
* **visual two-stage** / **hybrid two-stage**: the same with the visual lane
  as pooled ``rows`` prefetch (``--prefetch-k`` pages) reranked by exact MaxSim;
* **hybrid DBSF** (exact): DBSF runs the visual lane alone once more for the
  lane ranks.

The numbers to read are ``hybrid − visual`` per visual mode (target at 10k
pages: ≤ 20 ms) — what adding the text lane to a search costs: the median of
per-query differences in wall time, and in CPU time of the whole process
(every engine thread; ``time.process_time``), which a busy machine inflates
far less than wall time. The load average is recorded.

Workload: synthetic, stand-in shapes. Every page has the stand-in ColPali's
shape (1030 tokens × 128 dims, float16, unit-norm random tokens: ranking
quality means nothing here, only cost does) and a synthetic text of 150-450
words drawn from a 20 000-word vocabulary with a Zipf distribution (s=1.1),
embedded by Qdrant's BM25 (``connectors.bm25.QdrantBm25``). A query is 20
random unit tokens and 2-5 words of one page's text.

    python bench/hybrid_search.py                      # 1k and 10k, a table
    python bench/hybrid_search.py --pages 1000 --json
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for bench._workload

from bench._workload import BENCH_MODEL, latency, page_point, report_sizes, timed

# isort: split
import numpy as np  # after bench._workload, which caps the BLAS threads before numpy loads

K = 10
LABEL = "synthetic workload, stand-in shapes"
TARGET_DELTA_MS = 20.0
MODES = (
    "text",
    "visual_exact",
    "hybrid_exact",
    "visual_two_stage",
    "hybrid_two_stage",
    "hybrid_dbsf_exact",
)


def _vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    """``size`` distinct pronounceable pseudo-words (no stopwords, stable under stemming)."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.integers(2, 4)
        words.add(
            "".join(
                consonants[rng.integers(len(consonants))] + vowels[rng.integers(len(vowels))]
                for _ in range(syllables)
            )
            + consonants[rng.integers(len(consonants))]
        )
    return sorted(words)


class Texts:
    """Synthetic page texts: word counts 150-450, words Zipf-distributed over a vocabulary."""

    def __init__(self, seed: int = 0, vocabulary: int = 20_000, s: float = 1.1) -> None:
        self._rng = np.random.default_rng(seed)
        self.words = _vocabulary(vocabulary, self._rng)
        weights = 1.0 / np.arange(1, vocabulary + 1) ** s
        self._p = weights / weights.sum()

    def page(self) -> str:
        count = int(self._rng.integers(150, 451))
        return " ".join(self.words[i] for i in self._rng.choice(len(self.words), count, p=self._p))


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16)


def build(path: Path, pages: int, *, seed: int = 0) -> tuple[Any, list[str], float]:
    """An open hybrid store of ``pages`` synthetic pages; returns it, the texts, pages/s."""
    from connectors.bm25 import QdrantBm25
    from connectors.qdrant_edge import EdgePageStore
    from pipeline.embed.pooling import POOLED_VECTORS
    from pipeline.models import get_model_spec
    from pipeline.types import TEXT_FIELD, TEXT_VECTOR, CollectionSpec, PagePoint

    model = get_model_spec(BENCH_MODEL)
    tokens = model.tokens_per_page or 1030
    spec = CollectionSpec(
        name="bench",
        model=model.name,
        dim=model.dim,
        pooled=POOLED_VECTORS,
        lanes=("visual", "text"),
    )
    store = EdgePageStore(path, "bench")
    store.open(spec)
    bm25, texts, rng = QdrantBm25("english"), Texts(seed), np.random.default_rng(seed)
    all_texts: list[str] = []
    started = time.perf_counter()
    for first in range(0, pages, 32):
        batch = [texts.page() for _ in range(first, min(first + 32, pages))]
        sparse = bm25.embed_texts(batch)
        points = []
        for offset, (text, vector) in enumerate(zip(batch, sparse, strict=True)):
            point = page_point(
                first + offset, _unit(rng, (tokens, model.dim)), model, pooled=POOLED_VECTORS
            )
            points.append(
                PagePoint(
                    point.point_id,
                    point.vectors,
                    {**point.payload, TEXT_FIELD: text},
                    {TEXT_VECTOR: vector},
                )
            )
        store.upsert_pages(points)
        all_texts += batch
    store.flush()
    rate = pages / (time.perf_counter() - started)
    store.optimize()
    return store, all_texts, rate


def run_size(pages: int, args: argparse.Namespace) -> dict[str, Any]:
    from connectors.bm25 import QdrantBm25

    root = Path(tempfile.mkdtemp(prefix="pagerag-hybrid-bench-"))
    try:
        store, texts, rate = build(root, pages, seed=args.seed)
        bm25, rng = QdrantBm25("english"), np.random.default_rng(args.seed + 1)
        prefetch = (("rows", args.prefetch_k),)
        samples: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu_samples: dict[str, list[float]] = {mode: [] for mode in MODES}
        found_by_both = 0
        for i in range(args.warmup + args.queries):
            words = texts[int(rng.integers(len(texts)))].split()
            start = int(rng.integers(len(words) - 5))
            text_q = bm25.embed_query(" ".join(words[start : start + int(rng.integers(2, 6))]))
            visual_q = _unit(rng, (20, 128))
            calls = _calls(store, visual_q, text_q, args, prefetch)
            for mode, call in calls.items():
                cpu = time.process_time()
                hits, ms = timed(call)
                cpu_ms = (time.process_time() - cpu) * 1000
                if i >= args.warmup:
                    samples[mode].append(ms)
                    cpu_samples[mode].append(cpu_ms)
                    if mode == "hybrid_exact":
                        found_by_both += sum(len(h.lanes) == 2 for h in hits)
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {
        "pages": pages,
        "workload": LABEL,
        "queries": args.queries,
        "k": K,
        "lane_k": args.lane_k,
        "prefetch_k": args.prefetch_k,
        "ingest_pages_per_s": round(rate, 1),
        "hits_found_by_both_lanes": round(found_by_both / args.queries, 2),
    }
    for mode in MODES:
        result[mode] = {
            **latency(samples[mode]).to_dict(),
            "cpu_median_ms": round(float(np.median(cpu_samples[mode])), 2),
        }
    for visual in ("exact", "two_stage"):
        for key, series in (("ms", samples), ("cpu_ms", cpu_samples)):
            pairs = zip(series[f"hybrid_{visual}"], series[f"visual_{visual}"], strict=True)
            delta = float(np.median([h - v for h, v in pairs]))
            result[f"hybrid_minus_visual_{visual}_{key}"] = round(delta, 2)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    result["target_delta_ms"] = TARGET_DELTA_MS
    return result


def _calls(
    store: Any,
    visual_q: np.ndarray,
    text_q: Any,
    args: argparse.Namespace,
    prefetch: tuple[tuple[str, int], ...],
) -> dict[str, Callable[[], list[Any]]]:
    """One query's searches, by mode."""
    from pipeline.retrieve.fusion import Fuse

    rrf, dbsf = Fuse("rrf", (1.0, 1.0), k=60), Fuse("dbsf", (1.0, 1.0))
    lane_k = args.lane_k
    return {
        "text": lambda: store.search_text(text_q, k=K),
        "visual_exact": lambda: store.search(visual_q, k=K),
        "hybrid_exact": lambda: store.search_hybrid(
            visual_q, text_q, k=K, fusion=rrf, lane_k=lane_k
        ),
        "visual_two_stage": lambda: store.search(visual_q, k=K, prefetch=prefetch),
        "hybrid_two_stage": lambda: store.search_hybrid(
            visual_q, text_q, k=K, fusion=rrf, lane_k=lane_k, prefetch=prefetch
        ),
        "hybrid_dbsf_exact": lambda: store.search_hybrid(
            visual_q, text_q, k=K, fusion=dbsf, lane_k=lane_k
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n== {result['pages']} pages ({result['queries']} queries, k={K}, lane_k="
        f"{result['lane_k']}, prefetch_k={result['prefetch_k']}; {LABEL}) =="
    )
    print(f"{'search':<20}{'median ms':>12}{'p95 ms':>12}{'CPU ms':>12}")
    for mode in MODES:
        row = result[mode]
        print(
            f"{mode:<20}{row['median_ms']:>12.1f}{row['p95_ms']:>12.1f}"
            f"{row['cpu_median_ms']:>12.1f}"
        )
    for visual in ("exact", "two_stage"):
        delta = result[f"hybrid_minus_visual_{visual}_ms"]
        cpu = result[f"hybrid_minus_visual_{visual}_cpu_ms"]
        verdict = "meets" if delta <= TARGET_DELTA_MS else "misses"
        print(
            f"hybrid - visual ({visual}): {delta:+.1f} ms wall, {cpu:+.1f} ms CPU, median of "
            f"per-query differences ({verdict} the {TARGET_DELTA_MS:.0f} ms target on wall time)"
        )
    print(f"load average {result['load_average']} (on {os.cpu_count()} CPUs)")
    print(
        f"ingest {result['ingest_pages_per_s']} pages/s; hybrid hits found by both lanes: "
        f"{result['hits_found_by_both_lanes']} of {K} per query"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", default="1000,10000", help="collection sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lane-k", type=int, default=100, help="retrieval.lane_k")
    parser.add_argument("--prefetch-k", type=int, default=400, help="retrieval.prefetch_k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per size")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.pages.split(",") if x]
    return report_sizes(sizes, lambda pages: run_size(pages, args), print_table, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
