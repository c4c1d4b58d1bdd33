"""``pagerag serve`` latency: HTTP vs in-process, 8 concurrent clients, during an ingest.

One run, one store, side by side:

1. **HTTP vs in-process.** The same questions, alternately through
   ``PageRAG.search`` in this process and through ``POST /v1/search`` (a
   keep-alive httpx client, hits parsed as ``pipeline.client`` does) to a
   real uvicorn on loopback serving the *same* ``PageRAG``. What the service
   adds (target: ≤ +15 ms median at 1k pages) is reported two ways: the
   difference of the two medians, and per request the client's wall time
   minus the search time the service measured for that same request (its
   ``Server-Timing`` header) — the second stays meaningful when other work
   makes every search slower.
2. **8 concurrent clients.** Eight threads, each with its own client, search
   at once: p50/p95 per request and requests per second.
3. **During an ingest.** An ingest job of real PDFs (``../shared/corpus/qa``)
   runs through the service while one client searches in a loop; the same
   client's idle latency is measured first. The job is cancelled after the
   measuring window.

The store is ``bench/_workload.py``'s synthetic workload (real corpus pages
through the stand-in model, synthesised up to ``--pages``), and the model is
the **stand-in ColPali (random weights)**: its query embedding costs tens of
milliseconds, not the seconds the real 3B model takes on a CPU, so the
absolute latencies say nothing about a real deployment; the *differences*
(HTTP overhead, contention with a job) are what this measures. Client and
server share this process (the embedded store admits one process, and the
in-process baseline needs the same store), so HTTP numbers include the
client's own Python time under the same GIL.

    python bench/serve.py                      # 1k pages, a table
    python bench/serve.py --pages 1000 --json  # one JSON object
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._workload import (  # noqa: E402
    BENCH_MODEL,
    Workload,
    embed_real_pages,
    latency,
    peak_rss_mb,
    questions,
    timed,
    workload_rag_config,
)

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
LABEL = "stand-in ColPali (random weights), synthetic workload"


def _timed_all(search: Callable[[str], Any], texts: Sequence[str]) -> list[float]:
    return [timed(search, text)[1] for text in texts]


def http_vs_local(rag: Any, url: str, texts: Sequence[str], k: int) -> dict[str, Any]:
    """Alternate in-process and HTTP searches; HTTP's cost per request from Server-Timing."""
    import httpx

    from pipeline.serve.wire import hit_from_wire

    local_ms: list[float] = []
    http_ms: list[float] = []
    added_ms: list[float] = []
    with httpx.Client(base_url=url, timeout=600) as http:  # keep-alive, like PageRAGClient
        for text in texts:  # alternate, so drift (caches, load) hits both alike
            local_ms.append(timed(rag.search, text, k)[1])
            started = time.perf_counter()
            response = http.post("/v1/search", json={"query": text, "k": k})
            response.raise_for_status()
            [hit_from_wire(h) for h in response.json()["hits"]]  # what the client does
            wall = (time.perf_counter() - started) * 1000
            http_ms.append(wall)
            # The same request's own search time, measured inside the service.
            added_ms.append(wall - float(response.headers["server-timing"].split("dur=")[1]))
    local, over_http = latency(local_ms), latency(http_ms)
    return {
        "in_process": local.to_dict(),
        "http": over_http.to_dict(),
        "added_median_ms": round(over_http.median - local.median, 2),
        # Per request: client wall time minus the service's search time (Server-Timing):
        # routing, JSON, the socket and the client's parsing. Steady on a busy machine.
        "http_overhead": latency(added_ms).to_dict(),
    }


def concurrent(url: str, texts: Sequence[str], k: int, clients: int, each: int) -> dict[str, Any]:
    from pipeline.client import PageRAGClient

    samples: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            with PageRAGClient(url) as client:
                for i in range(each):
                    text = texts[(index * each + i) % len(texts)]
                    samples[index].append(timed(client.search, text, k=k)[1])
        except BaseException as exc:  # reported, not raised from a thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    flat = [ms for per in samples for ms in per]
    return {
        "clients": clients,
        "requests": len(flat),
        "errors": len(errors),
        "error_examples": sorted({f"{type(e).__name__}: {e}"[:200] for e in errors})[:3],
        **latency(flat).to_dict(),
        "requests_per_s": round(len(flat) / seconds, 1),
    }


def during_ingest(
    client: Any, texts: Sequence[str], k: int, files: Sequence[Path], window_s: float
) -> dict[str, Any]:
    idle = _timed_all(lambda t: client.search(t, k=k), texts)
    job = client.ingest(paths=[str(f) for f in files])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # measure once pages are flowing, not during start-up
        current = client.job(job["id"])
        if current["state"] != "queued" and (current.get("progress") or {}).get("pages_done"):
            break
        time.sleep(0.1)
    first = (client.job(job["id"]).get("progress") or {}).get("pages_done") or 0
    busy: list[float] = []
    errors = 0
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < window_s:
        state = client.job(job["id"])
        if state["state"] != "running":
            break
        try:
            busy.append(timed(client.search, texts[i % len(texts)], k=k)[1])
        except Exception:
            errors += 1
        i += 1
    progress = client.job(job["id"]).get("progress") or {}
    elapsed = time.monotonic() - started
    client.cancel(job["id"])
    final = client.wait(job["id"])
    done = (progress.get("pages_done") or 0) - first
    return {
        "idle": latency(idle).to_dict(),
        "during_ingest": latency(busy).to_dict() if busy else None,
        "searches_during_ingest": len(busy),
        "errors": errors,
        "ingest_pages_in_window": done,
        "ingest_pages_per_s": round(done / elapsed, 2),
        "job_state": final["state"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline import PageRAG
    from pipeline.client import PageRAGClient
    from pipeline.models import get_model_spec
    from pipeline.serve.app import create_app
    from pipeline.testing.serving import uvicorn_server
    from pipeline.testing.tiny_colpali import build

    texts = questions(args.corpus, args.queries)
    pdfs = sorted((args.corpus / "qa" / "docs").glob("*.pdf"))
    model = get_model_spec(BENCH_MODEL)
    real = embed_real_pages(args.corpus, min(args.real_pages, args.pages), cache=args.cache)
    with tempfile.TemporaryDirectory(prefix="pagerag-serve-bench-", dir=args.workdir) as tmp:
        data = Path(tmp)
        config, _ = workload_rag_config(
            Workload(real, args.pages, model, context=1.0),
            data,
            build(data / "model"),
            render={"dpi": args.dpi},
            serve={"roots": [str(args.corpus / "qa")], "upload_dir": str(data / "up")},
        )
        with (
            PageRAG(config) as rag,
            uvicorn_server(create_app(rag)) as url,
            PageRAGClient(url) as client,
        ):
            for text in texts[:5]:  # warm both paths (model, store caches, connection)
                rag.search(text, args.k)
                client.search(text, k=args.k)
            result: dict[str, Any] = {
                "label": LABEL,
                "pages": args.pages,
                "queries": len(texts),
                "k": args.k,
                "mode": config.retrieval.mode,
                "http_vs_in_process": http_vs_local(rag, url, texts, args.k),
            }
            result["concurrent"] = concurrent(url, texts, args.k, args.clients, args.each)
            result["ingest"] = during_ingest(client, texts, args.k, pdfs, args.window)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    result["cores"] = os.cpu_count()
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"\n== pagerag serve, {result['pages']} pages, k={result['k']} — {result['label']} ==")
    print(f"(load average {result['load_avg_1m_end']} on {result['cores']} cores at the end)")
    print(f"{'':<34} {'median ms':>10} {'p95 ms':>9}")

    def row(name: str, item: dict[str, Any] | None) -> None:
        if item is None:
            print(f"{name:<34} {'-':>10} {'-':>9}")
        else:
            print(f"{name:<34} {item['median_ms']:>10.1f} {item['p95_ms']:>9.1f}")

    versus = result["http_vs_in_process"]
    row("search in-process", versus["in_process"])
    row("search over HTTP", versus["http"])
    print(f"{'  difference of the medians':<34} {versus['added_median_ms']:>10.1f}")
    row("  HTTP's own cost per request", versus["http_overhead"])
    c = result["concurrent"]
    row(f"HTTP, {c['clients']} concurrent clients", c)
    print(f"{'  throughput':<34} {c['requests_per_s']:>10.1f} req/s, {c['errors']} errors")
    ing = result["ingest"]
    row("HTTP, idle (before the job)", ing["idle"])
    row("HTTP, while an ingest job runs", ing["during_ingest"])
    print(
        f"{'  searches during the job':<34} {ing['searches_during_ingest']:>10} "
        f"({ing['errors']} errors; job {ing['ingest_pages_per_s']} pages/s, "
        f"then {ing['job_state']})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--real-pages", type=int, default=300)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--each", type=int, default=15, help="searches per concurrent client")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured during ingest")
    parser.add_argument("--dpi", type=int, default=100, help="render DPI of the ingest job")
    parser.add_argument("--cache", type=Path, default=None, help=".npy cache of real pages")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    # The QA questions are longer than the stand-in's 64 query tokens: every search would
    # warn that it was truncated (the truncation is part of what is measured).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("pagerag").setLevel(logging.ERROR)
    started = time.perf_counter()
    result = run(args)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
