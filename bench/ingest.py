"""Ingestion throughput and memory, measured side by side in one run.

Prints, for the same PDFs:

* ``raw_pdftoppm_pps`` — pages/s of plain ``pdftoppm -jpeg -r DPI`` over each
  whole file, one process at a time (the floor nothing can beat);
* ``render_only_pps`` — pages/s of pagerag's renderer alone (probe, page
  ranges, JPEG bytes read back), one document at a time; target ≥ 0.9× raw;
* ``end_to_end_pps`` — the whole job (render → embed → upsert into the
  embedded Qdrant engine) with an embedder of fixed cost per page (a sleep:
  it stands in for a GPU running ColPali without eating these 2 cores), and
  ``embed_busy_share``, the share of the job's wall time the embedder was
  busy; target ≥ 0.95 when embedding is the slowest stage;
  (``steady_busy_share`` leaves out the start-up before the first batch:
  the first poppler run, paid once per job);
* memory of a job over a short PDF and over a 500+ page PDF (made with
  ``pdfunite`` from the corpus), each in a fresh process, with no model (the
  fake embedder has none): ``python_peak_mb`` is the pipeline's own peak
  (tracemalloc: Python objects and numpy buffers) and must not grow with
  length; ``peak_rss_mb`` is the whole process, which also holds the embedded
  Qdrant engine's segments — that part grows with the data stored
  (``*_store_mb``, the store's size on disk: ~0.35 MB per page here), as any
  database's would.

    python bench/ingest.py                 # table
    python bench/ingest.py --json          # one JSON object
    python bench/ingest.py --seconds-per-page 0.2 --dpi 150

``--backend fastembed|torch`` measures real embedding code instead: the job
with the stand-in models pagerag builds itself (random weights; *stand-in
numbers, not the real models'*), each in a fresh process, the torch stand-in
(``--family``: ColQwen2.5 or ColSmol, a patch grid per page) beside the
fastembed ColPali stand-in. The short PDF is one pass over the corpus files
and the 500+ page one repeats those very pages, so only the length differs
(page sizes vary within each: slides, A4, letter). For each: pages/s, peak
RSS of the whole job, the store's size on disk, and peak RSS of the same job
with the store's writes dropped. The last one is pipeline + model and must
not grow with length; the whole job's grows with the store (its segments are
memory-mapped), as any database's would. tracemalloc is off in these runs:
its own bookkeeping grows RSS with the allocations made. Measured 2026-11-30,
150 DPI, ColQwen2.5 stand-in: without store 1083 MB (122 pages) vs 1099 MB
(527 pages); at 527 pages 1351 MB with the store vs 1114 MB without, the
store 257 MB on disk (~0.49 MB/page: vectors and the page JPEGs kept in
the payload).

    python bench/ingest.py --backend torch --family colqwen2_5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"


def qa_docs(corpus: Path, limit: int) -> list[Path]:
    docs = sorted((corpus / "qa" / "docs").glob("*.pdf"))
    if not docs:
        raise SystemExit(f"no PDFs under {corpus / 'qa' / 'docs'}: pass --corpus")
    return docs[:limit]


def page_count(path: Path) -> int:
    out = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True)
    return next(int(x.split()[1]) for x in out.stdout.splitlines() if x.startswith("Pages:"))


def raw_pdftoppm(files: list[Path], dpi: int) -> float:
    pages = 0
    started = time.perf_counter()
    for path in files:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["pdftoppm", "-jpeg", "-r", str(dpi), str(path), f"{tmp}/p"],
                check=True,
                capture_output=True,
            )
            pages += len(os.listdir(tmp))
    return pages / (time.perf_counter() - started)


def render_only(files: list[Path], dpi: int) -> float:
    from pipeline.config import RenderConfig
    from pipeline.ingest.render import Renderer
    from pipeline.types import Page

    renderer = Renderer(RenderConfig(dpi=dpi))
    pages = 0
    started = time.perf_counter()
    for path in files:
        plan = renderer.open(path)
        for item in renderer.iter_pages(plan, document_id="bench", source=str(path)):
            pages += isinstance(item, Page)
    return pages / (time.perf_counter() - started)


def end_to_end(
    files: list[str],
    dpi: int,
    seconds_per_page: float,
    workers: int,
    *,
    trace: bool = False,
    model: str | None = None,
    model_path: str | None = None,
    store: bool = True,
) -> dict:
    """One ingestion job into a fresh embedded store; runs in the calling process.

    With ``model_path`` the embedder is the one the config builds (fastembed or
    torch, the stand-in in that directory); else the fake of fixed cost. With
    ``store=False`` the store drops every write (the job runs as usual up to
    the upsert): what remains of the peak RSS is the pipeline's and the model's."""
    import tracemalloc

    from pipeline import PageRAG
    from pipeline.config import load_config
    from pipeline.testing.fakes import FakeEmbedder

    if trace:
        tracemalloc.start()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            environ={},
            overrides={
                "store": {"path": tmp},
                "render": {"dpi": dpi, "workers": workers},
                "embedding": {"batch_size": 2, "device": "cpu"}
                | ({"model": model, "model_path": model_path} if model_path else {}),
            },
        )
        fake = None if model_path else FakeEmbedder(seconds_per_page=seconds_per_page)
        with PageRAG(config, embedder=fake) as rag:
            if not store:
                rag.store.upsert_pages = lambda points: None  # type: ignore[method-assign]
            report = rag.ingest(files)
            store_bytes = (rag.store.stats().bytes_on_disk or 0) if store else 0
    if not report.ok:
        raise SystemExit(f"ingest failed: {report.to_dict()['outcomes']}")
    return {
        "pages": report.pages_ingested,
        "seconds": report.seconds,
        "pps": report.pages_ingested / report.seconds,
        "embed_busy_share": report.embed_busy_seconds / report.seconds,
        "first_batch_seconds": report.first_batch_seconds or 0.0,
        "steady_busy_share": report.embed_busy_seconds
        / (report.seconds - (report.first_batch_seconds or 0.0)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # what the embedded engine holds on disk at the end (its segments, mapped into RSS)
        "store_mb": store_bytes / 2**20,
        # Python-level peak (numpy buffers included, the Rust engine not).
        "python_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20 if trace else None,
    }


def end_to_end_subprocess(
    files: list[Path],
    dpi: int,
    seconds_per_page: float,
    workers: int,
    *,
    trace: bool = False,
    model: str | None = None,
    model_path: Path | None = None,
    store: bool = True,
) -> dict:
    """``end_to_end`` in a fresh interpreter, so its peak RSS is its own."""
    stand_in = ["--model", str(model), "--model-path", str(model_path)] if model_path else []
    stand_in += [] if store else ["--no-store"]
    args = [
        sys.executable,
        __file__,
        "--child",
        "--dpi",
        str(dpi),
        "--workers",
        str(workers),
        "--seconds-per-page",
        str(seconds_per_page),
        *(["--trace"] if trace else []),
        *stand_in,
        *map(str, files),
    ]
    out = subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout)


def long_pdf(files: list[Path], target_pages: int, out: Path) -> Path:
    """Concatenate corpus PDFs with pdfunite until the result has target_pages+."""
    parts: list[Path] = []
    total = 0
    while total < target_pages:
        for path in files:
            parts.append(path)
            total += page_count(path)
            if total >= target_pages:
                break
    subprocess.run(["pdfunite", *map(str, parts), str(out)], check=True, capture_output=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--docs", type=int, default=6, help="QA documents to use")
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--workers", type=int, default=2, help="render.workers end to end")
    parser.add_argument(
        "--seconds-per-page",
        type=float,
        default=0.25,
        help="fixed embedder cost per page (stands in for the model)",
    )
    parser.add_argument("--long-pages", type=int, default=520)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--backend",
        choices=["fake", "fastembed", "torch"],
        default="fake",
        help="fake: fixed-cost embedder (default); fastembed/torch: the stand-in models",
    )
    parser.add_argument(
        "--family",
        default="colqwen2_5",
        help="torch stand-in family (colqwen2_5 or colidefics3)",
    )
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-store", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(
            json.dumps(
                end_to_end(
                    args.files,
                    args.dpi,
                    args.seconds_per_page,
                    args.workers,
                    trace=args.trace,
                    model=args.model,
                    model_path=args.model_path,
                    store=not args.no_store,
                )
            )
        )
        return

    files = qa_docs(args.corpus, args.docs)
    if args.backend != "fake":
        backends_side_by_side(args, files)
        return
    raw = raw_pdftoppm(files, args.dpi)
    rendered = render_only(files, args.dpi)
    e2e = end_to_end_subprocess(files, args.dpi, args.seconds_per_page, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        big = long_pdf(files, args.long_pages, Path(tmp) / "long.pdf")
        short = end_to_end_subprocess(files[:1], args.dpi, 0.0, args.workers, trace=True)
        long = end_to_end_subprocess([big], args.dpi, 0.0, args.workers, trace=True)
    result = {
        "files": [p.name for p in files],
        "dpi": args.dpi,
        "raw_pdftoppm_pps": round(raw, 2),
        "render_only_pps": round(rendered, 2),
        "render_vs_raw": round(rendered / raw, 3),
        "embedder_seconds_per_page": args.seconds_per_page,
        "end_to_end_pps": round(e2e["pps"], 2),
        "embedder_bound_pps": round(1 / args.seconds_per_page, 2)
        if args.seconds_per_page
        else None,
        "embed_busy_share": round(e2e["embed_busy_share"], 3),
        # busy share after the first batch arrived (start-up: the first poppler run)
        "first_batch_seconds": round(e2e["first_batch_seconds"], 2),
        "steady_busy_share": round(e2e["steady_busy_share"], 3),
        "short_doc_pages": short["pages"],
        "short_doc_peak_rss_mb": round(short["peak_rss_mb"], 1),
        "long_doc_pages": long["pages"],
        "long_doc_peak_rss_mb": round(long["peak_rss_mb"], 1),
        # the embedded engine's segments on disk: the part of peak RSS that grows with length
        "short_doc_store_mb": round(short["store_mb"], 1),
        "long_doc_store_mb": round(long["store_mb"], 1),
        "short_doc_python_peak_mb": round(short["python_peak_mb"], 1),
        "long_doc_python_peak_mb": round(long["python_peak_mb"], 1),
        "long_doc_pps_no_embed_cost": round(long["pps"], 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print()
    print(
        f"targets: render_vs_raw >= 0.9 ({'ok' if result['render_vs_raw'] >= 0.9 else 'MISSED'}),"
        f" embed_busy_share >= 0.95 "
        f"({'ok' if result['embed_busy_share'] >= 0.95 else 'MISSED'}), "
        "pipeline memory flat in length "
        f"({result['short_doc_python_peak_mb']} MB for {result['short_doc_pages']} pages vs "
        f"{result['long_doc_python_peak_mb']} MB for {result['long_doc_pages']} pages)"
    )


def stand_ins(backend: str, family: str, folder: Path) -> list[tuple[str, str, Path]]:
    """(label, model name, directory) of the stand-ins to compare: the fastembed one,
    and with ``--backend torch`` the torch family's beside it."""
    from pipeline.testing import tiny_colpali

    chosen = [
        (
            "fastembed:colpali (stand-in)",
            tiny_colpali.MODEL_NAME,
            tiny_colpali.build(folder / "onnx"),
        )
    ]
    if backend == "torch":
        from pipeline.testing import tiny_torch

        model_dir = tiny_torch.build(family, folder / family)
        chosen.append((f"torch:{family} (stand-in)", tiny_torch.MODEL_NAMES[family], model_dir))
    return chosen


def backends_side_by_side(args: argparse.Namespace, files: list[Path]) -> None:
    """Pages/s, peak RSS and store size of each stand-in over a short and a 500+ page
    PDF made of the same pages (so only the length differs), with the store and
    without it (writes dropped: the pipeline's and the model's RSS alone)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # One pass over the files: the long PDF repeats exactly these pages, so the
        # page sizes (and so the per-page buffers) are the same in both.
        short = folder / "short.pdf"
        subprocess.run(["pdfunite", *map(str, files), str(short)], check=True, capture_output=True)
        big = long_pdf(files, args.long_pages, folder / "long.pdf")
        for label, model, model_dir in stand_ins(args.backend, args.family, folder):
            row: dict[str, object] = {"backend": label}
            bare_peak: dict[str, float] = {}
            for name, pdf in (("short", short), ("long", big)):
                # No tracemalloc in these runs: its own bookkeeping costs RSS that grows
                # with the allocations made (+137 MB from 122 to 527 pages, torch stand-in).
                run = end_to_end_subprocess(
                    [pdf],
                    args.dpi,
                    0.0,
                    args.workers,
                    model=model,
                    model_path=model_dir,
                )
                bare = end_to_end_subprocess(
                    [pdf],
                    args.dpi,
                    0.0,
                    args.workers,
                    model=model,
                    model_path=model_dir,
                    store=False,
                )
                row[f"{name}_pages"] = run["pages"]
                row[f"{name}_pps"] = round(run["pps"], 2)
                row[f"{name}_peak_rss_mb"] = round(run["peak_rss_mb"], 1)
                row[f"{name}_store_mb"] = round(run["store_mb"], 1)
                bare_peak[name] = bare["peak_rss_mb"]
                row[f"{name}_no_store_peak_rss_mb"] = round(bare["peak_rss_mb"], 1)
            row["no_store_rss_growth_mb"] = round(bare_peak["long"] - bare_peak["short"], 1)
            rows.append(row)
    result = {
        "dpi": args.dpi,
        "note": "stand-in models (random weights): pages/s are not the real models'",
        "runs": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"STAND-IN models (random weights, tiny): not the real models' speed or memory; "
        f"{args.dpi} DPI; each run a fresh process; short = one pass over {len(files)} corpus "
        "PDFs, long = the same pages repeated"
    )
    for row in rows:
        print(row["backend"])
        for name in ("short", "long"):
            print(
                f"  {name:<5} {row[f'{name}_pages']:>4} pages {row[f'{name}_pps']:>6} pages/s | "
                f"peak RSS {row[f'{name}_peak_rss_mb']:>7} MB with store "
                f"(store {row[f'{name}_store_mb']:>6} MB on disk), "
                f"{row[f'{name}_no_store_peak_rss_mb']:>7} MB without"
            )
        print(f"  pipeline + model RSS, long - short: {row['no_store_rss_growth_mb']:+} MB")
    print(
        "peak RSS with store: the whole process, including the embedded Qdrant engine, which "
        "grows with the data stored (its segments are mapped into RSS), as any database's "
        "would; without store: the same job with the writes dropped, i.e. pipeline + model, "
        "which must not grow with length"
    )


if __name__ == "__main__":
    main()
