"""What the text lane costs at ingest, measured side by side in one run on the same PDFs.

Prints, for the same files (default: a few QA documents from ../shared/corpus):

* ``render_only_pps`` — pages/s of pagerag's renderer alone (probe, page ranges,
  JPEGs), one document at a time;
* ``text_only_pps`` — pages/s of the text extractor alone (``pdftotext -layout``
  per page range, through the same poppler driver), one document at a time;
* the whole ingest job (render → embed → upsert into the embedded Qdrant
  engine) with ``ingest.lanes`` ``visual``, ``visual+text`` and ``text``, each
  into a fresh store, best of ``--repeats`` runs: wall seconds and pages/s.
  The visual lane runs the **stand-in** ColPali model pagerag builds itself
  (random weights through the real fastembed path: *stand-in numbers, not the
  real model's*, which is tens of seconds a page on CPU); ``text`` loads no
  model at all. ``text_lane_overhead`` is visual+text over visual, minus 1:
  the target is ≤ 0.10 (the text is read in a thread beside rendering).

    python bench/text_lane.py                     # table
    python bench/text_lane.py --json              # one JSON object
    python bench/text_lane.py --docs 5 --dpi 150 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for bench.ingest

from bench.ingest import DEFAULT_CORPUS, qa_docs, render_only


def text_only(files: list[Path], dpi: int) -> tuple[int, int, float]:
    """(pages, pages with text, seconds) of the extractor over every page of ``files``."""
    from pipeline.config import RenderConfig, TextConfig
    from pipeline.ingest.render import Renderer
    from pipeline.ingest.text import TextExtractor

    renderer = Renderer(RenderConfig(dpi=dpi))
    plans = [renderer.open(path) for path in files]  # the probe is rendering's, not text's
    extractor = TextExtractor(renderer.config, TextConfig(), renderer.poppler)
    pages = with_text = 0
    started = time.perf_counter()
    for plan in plans:
        texts = extractor.extract(plan.path, [p.number for p in plan.pages])
        pages += len(texts)
        with_text += sum(1 for t in texts.values() if t.text)
    return pages, with_text, time.perf_counter() - started


def ingest(files: list[Path], dpi: int, lanes: str, model_dir: Path, model: str) -> dict:
    from pipeline import PageRAG
    from pipeline.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            environ={},
            overrides={
                "store": {"path": tmp},
                "render": {"dpi": dpi},
                "ingest": {"lanes": lanes},
                "embedding": {"model": model, "model_path": str(model_dir), "device": "cpu"},
            },
        )
        with PageRAG(config) as rag:
            report = rag.ingest(files)
    if not report.ok:
        raise SystemExit(f"ingest ({lanes}) failed: {report.to_dict()['outcomes']}")
    return {"pages": report.pages_ingested, "seconds": report.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--docs", type=int, default=3, help="QA documents to use")
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2, help="best of N ingest runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from pipeline.testing import tiny_colpali

    files = qa_docs(args.corpus, args.docs)
    render_pps = render_only(files, args.dpi)
    pages, with_text, text_seconds = text_only(files, args.dpi)
    result: dict[str, object] = {
        "files": [f.name for f in files],
        "pages": pages,
        "pages_with_text": with_text,
        "dpi": args.dpi,
        "render_only_pps": round(render_pps, 2),
        "text_only_pps": round(pages / text_seconds, 2),
        "text_vs_render_time": round(text_seconds / (pages / render_pps), 3),
        "model": "fastembed ColPali stand-in (random weights): stand-in numbers",
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_colpali.build(Path(tmp) / "onnx")
        for lanes in ("visual", "visual+text", "text"):
            runs = [
                ingest(files, args.dpi, lanes, model_dir, tiny_colpali.MODEL_NAME)
                for _ in range(args.repeats)
            ]
            best = min(runs, key=lambda r: r["seconds"])
            result[f"ingest_{lanes}_seconds"] = round(best["seconds"], 2)
            result[f"ingest_{lanes}_pps"] = round(best["pages"] / best["seconds"], 2)
    visual = float(result["ingest_visual_seconds"])  # type: ignore[arg-type]
    both = float(result["ingest_visual+text_seconds"])  # type: ignore[arg-type]
    result["text_lane_overhead"] = round(both / visual - 1, 3)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
