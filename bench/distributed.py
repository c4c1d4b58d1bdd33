"""The Ray ingestion engine (``--engine ray``) measured on this machine, in one run.

Prints two tables:

* **scaling** — pages/s at 1, 2 and 4 embed actors on one local Ray, with a
  *synthetic* embedder: the fake embedder plus a fixed latency per batch that
  sleeps (releases the CPU, as a GPU call does), so the actors, not these 2
  cores, are the limit. Target: ≥ 3.2× at 4 actors over 1 (≥ 80% of linear).
* **local vs ray** — the same files (default: all 11 QA PDFs, 237 pages)
  through the real fastembed path with the *stand-in* ColPali model pagerag
  builds itself (random weights: stand-in numbers, not ColPali's): the local
  engine, then the Ray engine twice with one embed actor — ``cold``, starting
  its own local Ray as ``pagerag ingest --engine ray`` does with no address
  (Ray's start, Ray Data's first run, worker processes), and ``warm``, a
  second job on that Ray. Target: Ray ≥ 0.8× local in pages/s once running
  (``steady``); the fixed start-up is shown apart (``startup_s``) and in the
  whole-job ratios, so it stays visible.
* **scaling** — pages/s at 1, 2 and 4 embed actors on that Ray, with a
  *synthetic* embedder: the fake embedder plus a fixed latency per batch that
  sleeps (releases the CPU, as a GPU call does), so the actors, not these 2
  cores, are the limit. Target: ≥ 3.2× at 4 actors over 1 (≥ 80% of linear).

Each run reports pages/s over the whole job (``wall_pps``) and between the
first and the last page stored (``steady_pps``: the start-up left out), the
time to the first page stored (``startup_s``), the object store's peak use
(sampled every 0.2 s) and the driver's peak RSS.

    python bench/distributed.py                 # tables
    python bench/distributed.py --json          # one JSON object
    python bench/distributed.py --batch-seconds 0.5 --files 4 --scaling-files 4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import PageRAG  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.testing.fakes import FakeEmbedder  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"


class FixedLatencyEmbedder(FakeEmbedder):
    """The fake embedder, plus ``batch_seconds`` of sleep per batch: a GPU-like call
    that leaves the CPU free (synthetic: its numbers say nothing about a real model)."""

    def __init__(self, batch_seconds: float) -> None:
        super().__init__()
        self.batch_seconds = batch_seconds

    def embed_images(self, images: Sequence[Any]) -> list[Any]:
        time.sleep(self.batch_seconds)
        return super().embed_images(images)


class ObjectStoreSampler:
    """Peak object-store use (MiB) while running, from Ray's memory summary."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import ray
        from ray._private.internal_api import memory_summary

        while not self._stop.wait(0.2):
            if not ray.is_initialized():  # the cold run starts Ray itself
                continue
            try:
                text = memory_summary(stats_only=True)
            except Exception:  # the cluster is busy or shutting down: skip a sample
                continue
            found = re.search(r"Plasma memory usage (\d+) MiB", text)
            if found:
                self.peak_mib = max(self.peak_mib, int(found.group(1)))

    def __enter__(self) -> ObjectStoreSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(
    files: list[Path], work: Path, engine: str, embedder: Any, dpi: int, **ray: Any
) -> dict[str, Any]:
    """One ingest into a fresh embedded store: its rates, object store and driver memory."""
    data = work / f"store-{time.monotonic_ns()}"
    overrides: dict[str, Any] = {"store": {"path": str(data)}, "render": {"dpi": dpi}}
    if ray:
        overrides["ray"] = ray
    config = load_config(environ={}, overrides=overrides)
    if isinstance(embedder, Path):  # the stand-in model's directory: built from config
        config.embedding.model_path = embedder
        embedder = None
    stored: list[float] = []

    def progress(event: Any) -> None:
        if event.pages_done and (not stored or stored[-1] != event.pages_done):
            stored.append(time.monotonic())

    started = time.monotonic()
    with ObjectStoreSampler() as sampler, PageRAG(config, embedder=embedder) as rag:
        report = rag.ingest(files, engine=engine, progress=progress)  # type: ignore[arg-type]
    wall = time.monotonic() - started
    shutil.rmtree(data, ignore_errors=True)
    pages = report.pages_ingested
    steady = stored[-1] - stored[0] if len(stored) > 1 else 0.0
    return {
        "engine": engine,
        "pages": pages,
        "seconds": round(wall, 2),
        "wall_pps": round(pages / wall, 2),
        "startup_s": round(stored[0] - started, 2) if stored else None,
        "steady_pps": round(pages / steady, 2) if steady else None,
        "object_store_peak_mib": sampler.peak_mib if engine == "ray" else None,
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "ok": report.exit_code == 0,
    }


def qa_docs(corpus: Path, count: int) -> list[Path]:
    docs = sorted((corpus / "qa" / "docs").glob("*.pdf"))[:count]
    if not docs:
        raise SystemExit(f"no PDFs under {corpus / 'qa' / 'docs'}: pass --corpus")
    return docs


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--files", type=int, default=11, help="qa PDFs, local vs ray (11)")
    parser.add_argument("--scaling-files", type=int, default=4, help="qa PDFs, scaling (4)")
    parser.add_argument("--dpi", type=int, default=72)
    parser.add_argument("--batch-seconds", type=float, default=0.6)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import ray

    from pipeline.testing.tiny_colpali import build

    if ray.is_initialized():
        raise SystemExit("run this bench in a fresh process: the cold run starts Ray itself")
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, no GPU; load average at start "
        + " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "local_vs_ray_model": "stand-in ColPali (random weights, real fastembed path)",
        "local_vs_ray": [],
        "scaling_embedder": f"synthetic: fake vectors + {args.batch_seconds} s sleep per batch "
        "(a GPU-like call that releases the CPU)",
        "scaling": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build(work / "tiny-colpali")
        files = qa_docs(args.corpus, args.files)
        sizing: dict[str, Any] = {"pages_per_task": 8}
        results["local_vs_ray"].append(
            {"run": "local", **run(files, work, "local", model, args.dpi, **sizing)}
        )
        for label in ("ray cold", "ray warm"):  # cold: the engine starts a local Ray
            row = run(files, work, "ray", model, args.dpi, **sizing)
            results["local_vs_ray"].append({"run": label, **row})
        results["ray_cpus"] = int(ray.cluster_resources().get("CPU", 0))
        local, cold, warm = results["local_vs_ray"]
        results["ray_over_local"] = {
            "steady": ratio(warm["steady_pps"], local["steady_pps"]),
            "whole_job_warm": ratio(warm["wall_pps"], local["wall_pps"]),
            "whole_job_cold": ratio(cold["wall_pps"], local["wall_pps"]),
        }
        # actors take a quarter CPU each, so 4 fit beside the rendering tasks on 2 cores
        sizing = {"cpus_per_actor": 0.25, "render_cpus": 0.5, "pages_per_task": 8}
        files = qa_docs(args.corpus, args.scaling_files)
        for actors in args.actors:
            embedder = FixedLatencyEmbedder(args.batch_seconds)
            row = run(files, work, "ray", embedder, args.dpi, embed_actors=actors, **sizing)
            results["scaling"].append({"actors": actors, **row})
        base = results["scaling"][0]["steady_pps"]
        for row in results["scaling"]:
            row["speedup"] = ratio(row["steady_pps"], base)
    ray.shutdown()
    if args.json:
        print(json.dumps(results))
        return
    show(results)


def show(results: dict[str, Any]) -> None:
    print(f"machine: {results['machine']}; the local Ray: {results['ray_cpus']} logical CPUs")
    print(f"\nlocal vs ray (1 embed actor), {results['local_vs_ray_model']}:")
    keys: tuple[str, ...] = ("pages", "seconds", "wall_pps", "startup_s", "steady_pps")
    keys += ("object_store_peak_mib", "driver_peak_rss_mb")
    print("run      " + " ".join(f"{k:>21}" for k in keys))
    for row in results["local_vs_ray"]:
        print(f"{row['run']:<8} " + " ".join(f"{row.get(k)!s:>21}" for k in keys))
    ratios = results["ray_over_local"]
    print(
        f"ray / local pages/s: {ratios['steady']} steady (target >= 0.8), "
        f"{ratios['whole_job_warm']} whole job on a running Ray, "
        f"{ratios['whole_job_cold']} whole job starting Ray"
    )
    print(f"\nscaling, {results['scaling_embedder']}:")
    keys = ("pages", "seconds", "wall_pps", "startup_s", "steady_pps", "speedup")
    keys += ("object_store_peak_mib", "driver_peak_rss_mb")
    print("actors " + " ".join(f"{k:>21}" for k in keys))
    for row in results["scaling"]:
        print(f"{row['actors']:>6} " + " ".join(f"{row.get(k)!s:>21}" for k in keys))
    print("target: speedup >= 3.2 at 4 actors")


if __name__ == "__main__":
    main()
