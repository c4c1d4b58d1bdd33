"""Retrieval at scale: exact MaxSim vs two-stage (pooled prefetch + rerank), side by side.

For each collection size (default 1k and 10k pages, ``--pages``), one run on
the embedded engine (``connectors.qdrant_edge.EdgePageStore``) measures:

* **exact** MaxSim latency (median, p95) over every page, and a **numpy
  brute-force floor** over the same float16 vectors (``numpy_floor_ms``:
  per chunk of pages, widen to float32, one GEMM with the query, max over
  page tokens, sum over query tokens; 2 threads, the machine's cores);
  ``exact_vs_floor`` is their ratio, and ``engine_matches_numpy`` checks the
  engine ranks as brute force does. ``numpy_floor_f32_ms`` (when memory
  allows) is the compute-only floor: the same vectors widened to float32
  once, outside the timing (numpy has no float16 GEMM, so widening is most of
  the float16 floor's time);
* **two-stage** latency and **recall@10 against exact** for each
  ``prefetch_k`` (default 50, 100, 200, 400) and prefetch vector set:
  ``rows+cols`` prefetches ``prefetch_k`` pages on the row-pooled and on the
  column-pooled vectors and reranks their union by full MaxSim (the first
  default); ``rows`` uses the row means alone (Qdrant's published ColPali
  recipe, and the default ``retrieval.prefetch_vectors``);
* the **true page's hit rate @10** for both (every query is made from one
  known page);
* per **storage option** (float16, float32, scalar int8, binary; each built
  in a fresh child process): bytes per page on disk (after the optimizer and
  a close, WAL included), the child's **peak RSS** (build + optimize +
  queries; mapped vector files count, and the optimizer maps old and new
  segments at once), its RSS while serving queries after a reopen
  (``rss_in_use_mb``, of which ``rss_in_use_anon_mb`` is not file-backed),
  ingest pages/s, and its own exact / two-stage latency and agreement with
  float16 exact.

The headline keys (``two_stage_ms``, ``speedup``, ``recall_at_10``) are what
``search`` does with the configured default ``retrieval.prefetch_k``; every
setting is in ``two_stage``, and ``targets`` names the cheapest one meeting
both the speedup and the recall target. Latencies are interleaved query by query (exact, floor,
each prefetch_k), so a noisy neighbour on the machine slows all of them
alike; the load average is recorded.

Workload: real corpus pages through the stand-in model, synthesised up to
the size, with queries made from one page's patches — see
``bench/_workload.py`` for exactly how, and ``--context`` for the one
modelling choice that matters most (0 = the stand-in's purely local patch
features, unchanged).

Targets at 10k pages on 2 cores: two-stage median ≥ 10× faster than exact;
recall@10 vs exact ≥ 0.95; exact within 2× of the numpy floor.

    python bench/retrieval.py                         # 1k and 10k, a table
    python bench/retrieval.py --pages 10000 --json    # one JSON object per size
    python bench/retrieval.py --pages 1000,10000,30000 --options float16,scalar
    python bench/retrieval.py --cache /tmp/real.npy   # reuse the embedded real pages
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for bench._workload

from bench._workload import (
    BENCH_MODEL,
    add_workload_arguments,
    build_edge_store,
    disk_breakdown,
    latency,
    memory_status,
    numpy_maxsim_topk,
    peak_rss_mb,
    point_id,
    progress_log,
    run_sizes,
    timed,
    workload_for,
)

# isort: split
import numpy as np  # after bench._workload, which caps the BLAS threads before numpy loads

OPTIONS = {  # storage option -> (datatype, quantization)
    "float16": ("float16", "none"),
    "float32": ("float32", "none"),
    "scalar": ("float16", "scalar"),
    "binary": ("float16", "binary"),
}
TARGETS = {"speedup": 10.0, "recall_at_10": 0.95, "exact_vs_floor": 2.0}
K = 10


def _default_prefetch_k() -> int:
    from pipeline.config import RetrievalConfig

    return RetrievalConfig().prefetch_k


# --------------------------------------------------------------------------- child


def child(args: argparse.Namespace) -> int:
    """Build one storage option's store from the raw page file; print one JSON line."""
    from pipeline.models import get_model_spec

    model = get_model_spec(BENCH_MODEL)
    n, tokens, dim = (int(x) for x in args.shape.split(","))
    datatype, quantization = OPTIONS[args.child]
    pages = _RawPages(Path(args.pages_file), n, tokens, dim)
    queries = np.load(args.queries_file)
    store_dir = Path(args.store)
    store, rate = build_edge_store(
        store_dir, pages, model, datatype=datatype, quantization=quantization, optimize=True
    )
    spec = store.spec()
    store.close()  # the optimizer's replaced segments are gone only after a close
    disk = disk_breakdown(store_dir / "bench")
    store.open(spec, create=False)
    exact_ms: list[float] = []
    two_ms: list[float] = []
    tops: list[list[str]] = []
    recall: list[float] = []
    prefetch = [(name, args.prefetch_k) for name in spec.pooled]
    for i, query in enumerate(queries):
        if i < args.exact_queries:
            exact, ms = timed(store.search, query, k=K)
            exact_ms.append(ms)
            tops.append([hit.point_id for hit in exact])
        two, ms = timed(store.search, query, k=K, prefetch=prefetch)
        two_ms.append(ms)
        if i < args.exact_queries:
            recall.append(len({h.point_id for h in two} & set(tops[-1])) / K)
    memory = memory_status()  # after reopen + queries: the store in use
    store.close()
    result = {
        "option": args.child,
        "datatype": datatype,
        "quantization": quantization,
        "bytes_per_page": round(disk["total"] / n),
        "disk_bytes_per_page": {key: round(value / n) for key, value in disk.items()},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_in_use_mb": memory.get("rss"),
        "rss_in_use_anon_mb": memory.get("rss_anon"),
        "ingest_pages_per_s": round(rate, 1),
        "exact_ms": round(latency(exact_ms).median, 2),
        "two_stage_ms": round(latency(two_ms).median, 2),
        "recall_at_10_own_exact": round(float(np.mean(recall)), 4),
        "exact_top10": tops,
    }
    if not args.keep:
        shutil.rmtree(store_dir, ignore_errors=True)
    print(json.dumps(result))
    return 0


class _RawPages:
    """Pages read from a raw float16 file a batch at a time: never mapped whole, so
    the child's RSS is the engine's, not the workload's."""

    def __init__(self, path: Path, n: int, tokens: int, dim: int) -> None:
        self.path, self.shape = path, (n, tokens, dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        _, tokens, dim = self.shape
        count = tokens * dim
        data = np.fromfile(self.path, dtype=np.float16, count=count, offset=index * count * 2)
        return data.reshape(tokens, dim)


def run_child(
    option: str, workdir: Path, shape: tuple[int, ...], args: argparse.Namespace, *, keep: bool
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        option,
        "--pages-file",
        str(workdir / "pages.f16"),
        "--shape",
        ",".join(str(x) for x in shape),
        "--queries-file",
        str(workdir / "queries.npy"),
        "--store",
        str(workdir / option),
        "--prefetch-k",
        str(args.headline_prefetch),
        "--exact-queries",
        str(args.child_exact_queries),
    ]
    if keep:
        cmd.append("--keep")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"storage option {option} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- one size


def run_size(pages: int, real: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    from connectors.qdrant_edge import EdgePageStore

    log = progress_log(args)
    workload = workload_for(pages, real, args)
    queries = workload.queries(args.queries)
    with tempfile.TemporaryDirectory(prefix="pagerag-bench-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        # On disk, mapped: 30k pages are 7.9 GB, kept as evictable page cache rather
        # than process memory while a child builds a store of the same size.
        matrix = workload.write(workdir / "pages.f16")
        log(f"[{pages}] synthesised {pages} pages in {time.perf_counter() - started:.0f} s")
        np.save(workdir / "queries.npy", np.stack([q for _, q in queries]))
        storage: dict[str, dict[str, Any]] = {}
        options = list(dict.fromkeys(["float16", *args.options]))  # float16 is always built
        for option in options:
            t0 = time.perf_counter()
            storage[option] = run_child(
                option, workdir, matrix.shape, args, keep=option == "float16"
            )
            log(
                f"[{pages}] {option}: {storage[option]['bytes_per_page']} B/page, "
                f"peak RSS {storage[option]['peak_rss_mb']} MB ({time.perf_counter() - t0:.0f} s)"
            )
        store = EdgePageStore(workdir / "float16", "bench")
        spec = store.spec()
        assert spec is not None
        store.open(spec, create=False)
        spec_pooled = spec.pooled
        try:
            f32 = args.f32_floor == "yes" or (
                args.f32_floor == "auto" and matrix.nbytes * 2 < 8 * 2**30
            )
            measured = _measure(store, matrix, queries, spec_pooled, args, log, f32_floor=f32)
        finally:
            store.close()
    exact_tops = storage["float16"].pop("exact_top10")
    for info in storage.values():
        tops = info.pop("exact_top10", exact_tops)
        agree = [len(set(a) & set(b)) / K for a, b in zip(tops, exact_tops, strict=True)]
        info["exact_agrees_with_float16"] = round(float(np.mean(agree)), 4)
    from pipeline.config import RetrievalConfig

    # The first stage PageRAG.search runs by default (retrieval.prefetch_vectors).
    what_search_sends = "+".join(RetrievalConfig().prefetch_vectors)
    headline = next(
        t
        for t in measured["two_stage"]
        if t["prefetch_k"] == args.headline_prefetch and t["vectors"] == what_search_sends
    )
    result: dict[str, Any] = {
        "pages": pages,
        "exact_ms": measured["exact"]["median_ms"],
        "exact_p95_ms": measured["exact"]["p95_ms"],
        "numpy_floor_ms": measured["floor"]["median_ms"],
        "numpy_floor_p95_ms": measured["floor"]["p95_ms"],
        "exact_vs_floor": round(measured["exact"]["median_ms"] / measured["floor"]["median_ms"], 3),
        "numpy_floor_f32_ms": (measured["floor_f32"] or {}).get("median_ms"),
        "engine_matches_numpy": measured["engine_matches_numpy"],
        "prefetch_k": headline["prefetch_k"],
        "prefetch_vectors": headline["vectors"],
        "two_stage_ms": headline["median_ms"],
        "two_stage_p95_ms": headline["p95_ms"],
        "speedup": headline["speedup"],
        "recall_at_10": headline["recall_at_10"],
        "true_hit_at_10_exact": measured["true_hit_exact"],
        "true_hit_at_10_two_stage": headline["true_hit_at_10"],
        "bytes_per_page": storage["float16"]["bytes_per_page"],
        "peak_rss_mb": storage["float16"]["peak_rss_mb"],
        "two_stage": measured["two_stage"],
        "storage": storage,
    }
    result["targets"] = {
        "speedup_ge_10": result["speedup"] >= TARGETS["speedup"],
        "recall_at_10_ge_0.95": result["recall_at_10"] >= TARGETS["recall_at_10"],
        "exact_within_2x_floor": result["exact_vs_floor"] <= TARGETS["exact_vs_floor"],
        "cheapest_meeting_speedup_and_recall": _best(measured["two_stage"]),
    }
    result["workload"] = {
        # Pages synthesised from real ones, embedded by the stand-in model; queries made
        # from one page's patches (bench/_workload.py). Recall describes this workload only.
        "kind": "synthetic, stand-in model",
        "real_pages": int(real.shape[0]),
        "queries": len(queries),
        "query_tokens": workload.query_tokens,
        "noise": workload.noise,
        "query_noise": workload.query_noise,
        "context": workload.context,
        "seed": workload.seed,
    }
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_1m_end": round(os.getloadavg()[0], 2)}
    return result


def _best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest two-stage setting meeting both the speedup and the recall target."""
    ok = [
        r
        for r in rows
        if r["speedup"] >= TARGETS["speedup"] and r["recall_at_10"] >= TARGETS["recall_at_10"]
    ]
    if not ok:
        return None
    best = min(ok, key=lambda r: r["median_ms"])
    return {key: best[key] for key in ("vectors", "prefetch_k", "speedup", "recall_at_10")}


def _measure(
    store: Any,
    matrix: np.ndarray,
    queries: list[tuple[int, np.ndarray]],
    pooled: Sequence[str],
    args: argparse.Namespace,
    log: Any,
    *,
    f32_floor: bool,
) -> dict[str, Any]:
    """Interleaved per query: exact, numpy floor(s) (first ``floor_queries``), then every
    (prefetch vector set, prefetch_k) pair."""
    exact_ms: list[float] = []
    floor_ms: list[float] = []
    floor32_ms: list[float] = []
    matches: list[bool] = []
    true_exact: list[bool] = []
    sets = [tuple(pooled) if name == "all" else tuple(name.split("+")) for name in args.sets]
    for vectors in sets:
        if not set(vectors) <= set(pooled):
            raise SystemExit(f"prefetch set {'+'.join(vectors)}: the store has {pooled}")
    runs = [(vectors, pk) for vectors in sets for pk in args.prefetch]
    two: dict[tuple[tuple[str, ...], int], dict[str, list[Any]]] = {
        run: {"ms": [], "recall": [], "hit": []} for run in runs
    }
    # The compute-only floor: the same vectors widened to float32 once, outside the timing.
    wide = matrix.astype(np.float32) if f32_floor else None
    for i, (target, query) in enumerate(queries):
        hits, ms = timed(store.search, query, k=K)
        exact_ms.append(ms)
        exact_ids = [h.point_id for h in hits]
        true_exact.append(point_id(target) in exact_ids)
        if i < args.floor_queries:
            (top, _), ms = timed(numpy_maxsim_topk, matrix, query, K, threads=2)
            floor_ms.append(ms)
            matches.append({point_id(int(j)) for j in top} == set(exact_ids))
            if wide is not None:
                _, ms = timed(numpy_maxsim_topk, wide, query, K, threads=2)
                floor32_ms.append(ms)
        for vectors, pk in runs:
            prefetch = [(name, pk) for name in vectors]
            hits, ms = timed(store.search, query, k=K, prefetch=prefetch)
            ids = {h.point_id for h in hits}
            row = two[(vectors, pk)]
            row["ms"].append(ms)
            row["recall"].append(len(ids & set(exact_ids)) / K)
            row["hit"].append(point_id(target) in ids)
        if (i + 1) % 10 == 0:
            log(f"  {i + 1}/{len(queries)} queries")
    del wide
    exact = latency(exact_ms)
    rows = []
    for vectors, pk in runs:
        row = two[(vectors, pk)]
        lat = latency(row["ms"])
        rows.append(
            {
                "vectors": "+".join(vectors),
                "prefetch_k": pk,
                "median_ms": round(lat.median, 2),
                "p95_ms": round(lat.p95, 2),
                "speedup": round(exact.median / lat.median, 2),
                "recall_at_10": round(statistics.fmean(row["recall"]), 4),
                "true_hit_at_10": round(statistics.fmean(row["hit"]), 4),
            }
        )
    return {
        "exact": exact.to_dict(),
        "floor": latency(floor_ms).to_dict(),
        "floor_f32": latency(floor32_ms).to_dict() if floor32_ms else None,
        "engine_matches_numpy": round(statistics.fmean(matches), 4),
        "true_hit_exact": round(statistics.fmean(true_exact), 4),
        "two_stage": rows,
    }


# --------------------------------------------------------------------------- output


def print_table(result: dict[str, Any]) -> None:
    n = result["pages"]
    print(
        f"\n== {n} pages ({result['workload']['queries']} queries, k={K}; synthetic workload, "
        "stand-in model: recall figures describe this workload only) =="
    )
    print(
        f"exact      median {result['exact_ms']:9.1f} ms   p95 {result['exact_p95_ms']:9.1f} ms"
        f"   true page @10 {result['true_hit_at_10_exact']:.2f}"
    )
    print(
        f"numpy floor median {result['numpy_floor_ms']:8.1f} ms   p95 "
        f"{result['numpy_floor_p95_ms']:9.1f} ms   exact/floor {result['exact_vs_floor']:.2f}"
        f"   same top-10 {result['engine_matches_numpy']:.2f}"
    )
    if result["numpy_floor_f32_ms"] is not None:
        print(f"numpy f32 (pre-widened) median {result['numpy_floor_f32_ms']:.1f} ms")
    print(
        f"{'prefetch':>10} {'k':>5} {'median ms':>10} {'p95 ms':>9} {'speedup':>8} "
        f"{'recall@10':>10} {'true@10':>8}"
    )
    for row in result["two_stage"]:
        print(
            f"{row['vectors']:>10} {row['prefetch_k']:>5} {row['median_ms']:>10.1f} "
            f"{row['p95_ms']:>9.1f} {row['speedup']:>8.1f} {row['recall_at_10']:>10.3f} "
            f"{row['true_hit_at_10']:>8.2f}"
        )
    print(
        f"{'storage':>10} {'B/page':>9} {'peak RSS MB':>12} {'ingest p/s':>11} "
        f"{'exact ms':>9} {'2-stage ms':>11} {'=f16 exact':>11}"
    )
    for option, info in result["storage"].items():
        print(
            f"{option:>10} {info['bytes_per_page']:>9} {info['peak_rss_mb']:>12.0f} "
            f"{info['ingest_pages_per_s']:>11.0f} {info['exact_ms']:>9.1f} "
            f"{info['two_stage_ms']:>11.1f} {info['exact_agrees_with_float16']:>11.2f}"
        )
    print("targets:", json.dumps(result["targets"]))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_arguments(parser)
    parser.add_argument("--floor-queries", type=int, default=10, help="queries timed in numpy")
    parser.add_argument("--prefetch", default="50,100,200,400", help="prefetch_k values")
    parser.add_argument(
        "--headline-prefetch", type=int, default=None, help="default: retrieval.prefetch_k"
    )
    parser.add_argument(
        "--sets",
        default="all,rows",
        help="prefetch vector sets: 'all' (every pooled vector), 'rows' (search's default), …",
    )
    parser.add_argument(
        "--f32-floor",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also time numpy over a float32 copy (auto: when it takes < 8 GB)",
    )
    parser.add_argument("--options", default="float16,float32,scalar,binary")
    parser.add_argument("--child-exact-queries", type=int, default=5)
    # internal: one storage option in a fresh process
    parser.add_argument("--child", choices=sorted(OPTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--pages-file", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--prefetch-k", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--exact-queries", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    args.prefetch = [int(x) for x in str(args.prefetch).split(",") if x]
    args.options = [x for x in str(args.options).split(",") if x]
    args.sets = [x for x in str(args.sets).split(",") if x]
    unknown = set(args.options) - set(OPTIONS)
    if unknown:
        parser.error(f"unknown storage options {sorted(unknown)}; choose from {sorted(OPTIONS)}")
    if args.headline_prefetch is None:
        args.headline_prefetch = _default_prefetch_k()
    if args.headline_prefetch not in args.prefetch:
        args.prefetch.append(args.headline_prefetch)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    return run_sizes(args, lambda pages, real: run_size(pages, real, args), print_table)


if __name__ == "__main__":
    raise SystemExit(main())
