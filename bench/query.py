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
  ``prefetch_vectors``, as ``PageRAG.search`` sends them);
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
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._workload import (  # noqa: E402
    BENCH_MODEL,
    Workload,
    build_edge_store,
    embed_real_pages,
    latency,
    peak_rss_mb,
    timed,
)

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
MODES: tuple[Literal["exact", "two_stage"], ...] = ("exact", "two_stage")


def questions(corpus: Path, count: int) -> list[str]:
    path = corpus / "qa" / "questions.jsonl"
    with path.open(encoding="utf-8") as handle:
        items = [json.loads(line)["question"] for line in handle if line.strip()]
    if not items:
        raise SystemExit(f"no questions in {path}")
    return [items[i % len(items)] for i in range(count)]


def run_size(pages: int, real: Any, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline import PageRAG
    from pipeline.config import load_config
    from pipeline.models import get_model_spec

    model = get_model_spec(BENCH_MODEL)
    workload = Workload(real, pages, model, context=args.context)
    with tempfile.TemporaryDirectory(prefix="pagerag-query-bench-", dir=args.workdir) as tmp:
        data = Path(tmp)
        store, rate = build_edge_store(data / "store", workload.write(data / "pages.f16"), model)
        store.close()
        config = load_config(
            environ={},
            overrides={
                "store": {"path": str(data / "store"), "collection": "bench"},
                "embedding": {"model": BENCH_MODEL, "model_path": str(model_dir), "device": "cpu"},
            },
        )
        texts = questions(args.corpus, args.queries)
        with PageRAG(config) as rag:
            _, load_ms = timed(rag.search, texts[0], k=args.k, mode="exact")
            embed_ms: list[float] = []
            store_ms: dict[str, list[float]] = {mode: [] for mode in MODES}
            total_ms: dict[str, list[float]] = {mode: [] for mode in MODES}
            retrieval = rag.config.retrieval
            prefetch_k = max(retrieval.prefetch_k, args.k)
            recorded = rag.store.spec()
            assert recorded is not None
            # The first stage search sends (PageRAG._plan): retrieval.prefetch_vectors.
            wanted: list[str] = [n for n in retrieval.prefetch_vectors if n in recorded.pooled]
            pooled = wanted or list(recorded.pooled)
            for text in texts:
                vectors, ms = timed(rag.embedder.embed_query, text)
                embed_ms.append(ms)
                for mode in MODES:
                    prefetch = [(name, prefetch_k) for name in pooled] if mode != "exact" else []
                    _, ms = timed(rag.store.search, vectors, k=args.k, prefetch=prefetch)
                    store_ms[mode].append(ms)
                    _, ms = timed(rag.search, text, k=args.k, mode=mode)
                    total_ms[mode].append(ms)
    return {
        "pages": pages,
        "queries": len(texts),
        "k": args.k,
        "prefetch_k": prefetch_k,
        "prefetch_vectors": "+".join(pooled),
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
    parser.add_argument("--pages", default="1000,10000", help="sizes, comma-separated")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--real-pages", type=int, default=300)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--context", type=float, default=1.0, help="see bench/_workload.py")
    parser.add_argument("--cache", type=Path, default=None, help=".npy cache of real pages")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.pages.split(",") if x]
    from pipeline.testing.tiny_colpali import build

    real = embed_real_pages(args.corpus, min(args.real_pages, max(sizes)), cache=args.cache)
    with tempfile.TemporaryDirectory(prefix="pagerag-tiny-colpali-") as model_tmp:
        model_dir = build(Path(model_tmp))
        for pages in sizes:
            started = time.perf_counter()
            result = run_size(pages, real, model_dir, args)
            result["seconds"] = round(time.perf_counter() - started, 1)
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
