"""Query latency of ``PageRAG.search`` at 1k and 10k stored pages, split by stage.

For each size, pages are stored in the embedded engine (the workload of
``bench/_workload.py``: real corpus pages through the stand-in model,
synthesised up to the size, pooled vectors included, optimizer run), then
real questions from ``../shared/corpus/qa/questions.jsonl`` are searched
through the public API with the stand-in ColPali loaded by fastembed. Per
question it times, separately:

* ``embed`` — ``embedder.embed_query`` (tokenise + ONNX run of the stand-in);
* ``store`` — ``store.search`` with those vectors, per retrieval mode
  (``exact``; ``two_stage`` with the configured ``prefetch_k`` and
  ``prefetch_vectors``: the plan ``PageRAG.plan`` gives, as ``search`` sends it);
* ``total`` — ``PageRAG.search(question, mode=...)`` end to end (embedding,
  planning, store, hits), as a user sees it.

Medians and p95s in milliseconds; the one-off model load (first query) is
reported on its own. The questions are long: ColPali's prompt plus a
question is often 40–64 tokens (the stand-in truncates at 64), and MaxSim
costs grow with query tokens, so the store times here are ~2.5× those of
``bench/retrieval.py``'s 20-token queries at the same size. The stand-in's
embedding cost says nothing about the real ColPali's (a 3B-parameter model:
seconds per query on these cores); the store times are what this benchmark
is for.

    python bench/query.py                       # 1k and 10k, a table
    python bench/query.py --pages 1000 --json   # one JSON object per size
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for bench._workload

from bench._workload import (
    add_workload_arguments,
    latency,
    peak_rss_mb,
    questions,
    run_sizes,
    timed,
    workload_for,
    workload_rag_config,
)

MODES: tuple[Literal["exact", "two_stage"], ...] = ("exact", "two_stage")


def run_size(pages: int, real: Any, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline import PageRAG

    workload = workload_for(pages, real, args)
    with tempfile.TemporaryDirectory(prefix="pagerag-query-bench-", dir=args.workdir) as tmp:
        config, rate = workload_rag_config(workload, Path(tmp), model_dir)
        texts = questions(args.corpus, args.queries)
        with PageRAG(config) as rag:
            _, load_ms = timed(rag.search, texts[0], k=args.k, mode="exact")
            embed_ms: list[float] = []
            store_ms: dict[str, list[float]] = {mode: [] for mode in MODES}
            total_ms: dict[str, list[float]] = {mode: [] for mode in MODES}
            # What search sends the store in each mode (its first stage included).
            plans = {mode: rag.plan(k=args.k, mode=mode) for mode in MODES}
            for text in texts:
                vectors, ms = timed(rag.embedder.embed_query, text)
                embed_ms.append(ms)
                for mode, plan in plans.items():
                    prefetch = list(plan.prefetch)
                    _, ms = timed(rag.store.search, vectors, k=args.k, prefetch=prefetch)
                    store_ms[mode].append(ms)
                    _, ms = timed(rag.search, text, k=args.k, mode=mode)
                    total_ms[mode].append(ms)
    return {
        "pages": pages,
        "queries": len(texts),
        "k": args.k,
        "prefetch_k": plans["two_stage"].prefetch[0][1],
        "prefetch_vectors": "+".join(name for name, _ in plans["two_stage"].prefetch),
        "ingest_pages_per_s": round(rate, 1),
        "first_query_ms": round(load_ms, 1),
        "embed": latency(embed_ms).to_dict(),
        "store": {mode: latency(store_ms[mode]).to_dict() for mode in MODES},
        "total": {mode: latency(total_ms[mode]).to_dict() for mode in MODES},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n== {result['pages']} pages, {result['queries']} questions, k={result['k']} ==")
    print(f"first query (model load): {result['first_query_ms']:.0f} ms")
    embed = result["embed"]
    print(f"{'stage':<22} {'median ms':>10} {'p95 ms':>9}")
    print(f"{'embed (stand-in)':<22} {embed['median_ms']:>10.1f} {embed['p95_ms']:>9.1f}")
    for mode in MODES:
        for part in ("store", "total"):
            row = result[part][mode]
            label = f"{part} {mode}"
            print(f"{label:<22} {row['median_ms']:>10.1f} {row['p95_ms']:>9.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_arguments(parser)
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args(argv)
    from pipeline.testing.tiny_colpali import build

    with tempfile.TemporaryDirectory(prefix="pagerag-tiny-colpali-") as model_tmp:
        model_dir = build(Path(model_tmp))
        return run_sizes(
            args, lambda pages, real: run_size(pages, real, model_dir, args), print_table
        )


if __name__ == "__main__":
    raise SystemExit(main())
