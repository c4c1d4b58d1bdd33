"""Shared retrieval workload for ``bench/retrieval.py`` and ``bench/query.py``.

Why synthesise at all: rendering and embedding thousands of pages through
the stand-in model costs minutes per thousand, and the benchmarks need 10k
and 30k pages. Why not i.i.d. noise: random vectors have none of the
structure that decides whether pooled first-stage search finds the right
candidates (neighbouring patches that look alike, blank margins shared by
every page, pages that resemble each other). So the workload is built from
real pages:

1. **Real pages.** A few hundred pages of ``../shared/corpus`` (the QA
   documents: papers, brochures, slide decks; then first pages of
   well-behaved robustness PDFs) are rendered with poppler at a low DPI (the
   model resizes to 448×448 anyway) and embedded by the stand-in ColPali
   (``pipeline.testing.tiny_colpali``) through the real fastembed path. Its
   patch vectors are a convolution of the page pixels, so they follow page
   content: text blocks, figures, white margins.
2. **Synthetic pages.** Page ``i < R`` is real page ``i``. Page ``i >= R`` is
   derived, deterministically from ``i``, from a real *base* page: its 32×32
   patch grid is rolled by a random number of rows (content moved up or down
   the page) and columns, a random band of 4–12 grid rows is replaced by the
   same band of another real page (mixed content), Gaussian noise of norm
   ``noise`` is added to every token, and every token is re-normalised to
   unit length (as the model's output is). The non-image tokens get noise
   too.
3. **Queries.** A query targets a known page: ``query_tokens`` of that page's
   patch vectors, drawn from its most distinctive half (the patches least
   like the page's mean patch, i.e. not blank margin), each with noise of
   norm ``query_noise``, re-normalised. So the true page is known and the
   benchmark can report how often it is in the top 10.

Everything is seeded: the same arguments give the same pages and queries.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import resource
import stat
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

# Before numpy loads (../shared/ENVIRONMENT.md): 2-thread OpenBLAS makes the embedded
# engine erratically slow, and the model hub is never reachable here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from pipeline.embed.pooling import POOLED_VECTORS, pool_page
from pipeline.models import ModelSpec, get_model_spec
from pipeline.retrieve.store import KIND_PAGE, source_dirs
from pipeline.types import CollectionSpec, PagePoint, page_point_id

__all__ = [
    "BENCH_MODEL",
    "DEFAULT_CORPUS",
    "Latency",
    "PageSource",
    "Workload",
    "add_workload_arguments",
    "build_edge_store",
    "corpus_files",
    "disk_breakdown",
    "embed_real_pages",
    "latency",
    "memory_status",
    "numpy_maxsim_topk",
    "page_point",
    "peak_rss_mb",
    "point_id",
    "progress_log",
    "questions",
    "report_sizes",
    "run_sizes",
    "timed",
    "workload_for",
    "workload_rag_config",
]

log = logging.getLogger("bench")
P = ParamSpec("P")
T = TypeVar("T")

# The stand-in model mimics this entry (1024 patches on a 32×32 grid + 6 text tokens).
BENCH_MODEL = "Qdrant/colpali-v1.3-fp16"
PAGES_PER_DOCUMENT = 20
DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


# --------------------------------------------------------------------------- a benchmark run


def add_workload_arguments(parser: argparse.ArgumentParser, *, queries: int = 30) -> None:
    """The options of every benchmark on this workload: sizes, corpus, queries, the
    workload's knobs, the real-page cache, the work folder, output."""
    parser.add_argument("--pages", default="1000,10000", help="sizes, comma-separated")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--real-pages", type=int, default=300, help="real pages to embed")
    parser.add_argument("--queries", type=int, default=queries)
    parser.add_argument("--context", type=float, default=1.0, help="see bench/_workload.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help=".npy cache of real pages")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--json", action="store_true", help="one JSON object per size")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def progress_log(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines on stderr, unless ``--quiet``."""

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def workload_for(pages: int, real: np.ndarray, args: argparse.Namespace) -> Workload:
    """``pages`` pages synthesised from ``real`` with the arguments' context and seed."""
    model = get_model_spec(BENCH_MODEL)
    return Workload(real, pages, model, context=args.context, seed=args.seed)


def questions(corpus: Path, count: int) -> list[str]:
    """``count`` real questions from ``corpus/qa/questions.jsonl``, repeated as needed."""
    path = corpus / "qa" / "questions.jsonl"
    with path.open(encoding="utf-8") as handle:
        items = [json.loads(line)["question"] for line in handle if line.strip()]
    if not items:
        raise SystemExit(f"no questions in {path}")
    return [items[i % len(items)] for i in range(count)]


def workload_rag_config(
    workload: Workload, data: Path, model_dir: Path, **overrides: dict[str, Any]
) -> tuple[Any, float]:
    """The workload's pages in an embedded store under ``data``, and the ``PageRAGConfig``
    that opens it with the stand-in model in ``model_dir`` (plus ``overrides``, by
    config section); returns the config and the store's ingest rate in pages/s."""
    from pipeline.config import load_config

    pages = workload.write(data / "pages.f16")
    store, rate = build_edge_store(data / "store", pages, workload.model)
    store.close()
    config = load_config(
        environ={},
        overrides={
            "store": {"path": str(data / "store"), "collection": "bench"},
            "embedding": {"model": BENCH_MODEL, "model_path": str(model_dir), "device": "cpu"},
            **overrides,
        },
    )
    return config, rate


def run_sizes(
    args: argparse.Namespace,
    run_size: Callable[[int, np.ndarray], dict[str, Any]],
    print_table: Callable[[dict[str, Any]], None],
) -> int:
    """Embed the real pages once, then ``run_size`` per size in ``--pages``: one JSON
    line (``--json``) or a table each, with the size's wall time in ``seconds``."""
    sizes = [int(x) for x in str(args.pages).split(",") if x]
    if not args.corpus.is_dir():
        raise SystemExit(f"corpus not found at {args.corpus}: pass --corpus")
    count = min(args.real_pages, max(sizes))
    real = embed_real_pages(args.corpus, count, cache=args.cache, progress=progress_log(args))
    return report_sizes(sizes, lambda pages: run_size(pages, real), print_table, args.json)


def report_sizes(
    sizes: Sequence[int],
    run_size: Callable[[int], dict[str, Any]],
    print_table: Callable[[dict[str, Any]], None],
    as_json: bool,
) -> int:
    """``run_size`` per size: one JSON line or a table each, with its wall time in
    ``seconds``."""
    for pages in sizes:
        started = time.perf_counter()
        result = run_size(pages)
        result["seconds"] = round(time.perf_counter() - started, 1)
        if as_json:
            print(json.dumps(result), flush=True)
        else:
            print_table(result)
    return 0


# --------------------------------------------------------------------------- real pages


def corpus_files(corpus: Path) -> list[tuple[Path, int | None]]:
    """PDFs to render, with how many pages to take (None: all).

    The QA documents first (all pages), then page 1 of robustness PDFs that
    poppler renders fine and that carry no trap (no category in MANIFEST.tsv),
    biggest first (blank test pages are the smallest files).
    """
    files: list[tuple[Path, int | None]] = [
        (path, None) for path in sorted((corpus / "qa" / "docs").glob("*.pdf"))
    ]
    manifest = corpus / "robust" / "MANIFEST.tsv"
    if manifest.is_file():
        with manifest.open(encoding="utf-8") as handle:
            rows = [
                row
                for row in csv.DictReader(handle, delimiter="\t")
                if row["pdftoppm_p1_rc"] == "0"
                and not row["category"]
                and 20_000 <= int(row["bytes"]) <= 5_000_000
            ]
        rows.sort(key=lambda row: -int(row["bytes"]))
        files.extend((corpus / "robust" / row["path"], 1) for row in rows)
    if not files:
        raise FileNotFoundError(f"no PDFs under {corpus}/qa/docs or {corpus}/robust")
    return files


def embed_real_pages(
    corpus: Path,
    count: int,
    *,
    model_dir: Path | None = None,
    dpi: int = 60,
    cache: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> np.ndarray:
    """``count`` real pages of ``corpus`` through the stand-in model: (count, 1030, 128) f16.

    ``cache`` (an ``.npy`` path) is read when it holds at least ``count``
    pages and written otherwise, so repeated benchmark runs skip this step.
    """
    if cache is not None and cache.is_file():
        cached = np.load(cache, mmap_mode="r")
        if cached.shape[0] >= count:
            return np.ascontiguousarray(cached[:count])
    from connectors.fastembed import FastEmbedColPali
    from pipeline.config import EmbeddingConfig, RenderConfig
    from pipeline.errors import InputError
    from pipeline.ingest.render import Renderer, jpeg_to_image
    from pipeline.testing.tiny_colpali import build

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="pagerag-bench-model-") as tmp:
        model = build(Path(model_dir or tmp))
        embedder = FastEmbedColPali(
            EmbeddingConfig(model=BENCH_MODEL, model_path=model, device="cpu", batch_size=8)
        )
        renderer = Renderer(RenderConfig(dpi=dpi, timeout_s=30, max_page_pixels=4_000_000))
        out: list[np.ndarray] = []
        started = time.perf_counter()
        for path, take in corpus_files(corpus):
            if len(out) >= count:
                break
            want = min(count - len(out), take or count)
            images = []
            try:
                for page in renderer.render(path, document_id="bench", source=str(path)):
                    images.append(jpeg_to_image(page.jpeg))
                    if len(images) >= want:
                        break
            except InputError as exc:  # a robustness file that fails after all: skip it
                log.info("skipping %s: %s", path, exc)
            before = len(out)
            if images:
                out.extend(embedder.embed_images(images))
            if progress is not None and (len(out) // 50 > before // 50 or len(out) >= count):
                progress(
                    f"real pages: {min(len(out), count)}/{count} "
                    f"({time.perf_counter() - started:.0f} s)"
                )
    if len(out) < count:
        raise RuntimeError(f"only {len(out)} pages could be rendered from {corpus}, need {count}")
    pages = np.stack(out[:count]).astype(np.float16)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, pages)
    return pages


# --------------------------------------------------------------------------- synthesis


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


@dataclass(frozen=True)
class Workload:
    """``pages`` pages derived from ``real`` (see the module docstring), and queries."""

    real: np.ndarray  # (R, tokens, dim) float16
    pages: int
    model: ModelSpec
    seed: int = 0
    noise: float = 0.3
    query_tokens: int = 20
    query_noise: float = 0.3
    context: float = 1.0

    def __post_init__(self) -> None:
        if self.model.patch_grid is None:
            raise ValueError(f"{self.model.name} has no patch grid to synthesise pages on")
        if self.real.ndim != 3 or self.real.shape[0] == 0:
            raise ValueError(f"real pages must be (R, tokens, dim), got {self.real.shape}")
        rows, cols = self.model.patch_grid
        start = self.model.patch_offset
        patches = self.real[:, start : start + rows * cols].astype(np.float32)
        # The mean patch vector of the real pages: the shared offset removed before
        # adding context (the stand-in's random weights put all patches in a narrow cone).
        object.__setattr__(self, "_offset", patches.reshape(-1, self.dim).mean(axis=0))

    @property
    def dim(self) -> int:
        return int(self.real.shape[2])

    @property
    def tokens(self) -> int:
        return int(self.real.shape[1])

    def page(self, index: int) -> np.ndarray:
        """The vectors of page ``index``: (tokens, dim) float16, unit rows."""
        if not 0 <= index < self.pages:
            raise IndexError(f"page {index} is outside 0..{self.pages - 1}")
        n_real = self.real.shape[0]
        if index < n_real:
            return self._contextualise(self.real[index].astype(np.float32))
        rng = np.random.default_rng([self.seed, index])
        rows, cols = self.model.patch_grid or (0, 0)
        start, stop = self.model.patch_offset, self.model.patch_offset + rows * cols
        base = self.real[int(rng.integers(n_real))].astype(np.float32)
        other = self.real[int(rng.integers(n_real))].astype(np.float32)
        grid = base[start:stop].reshape(rows, cols, -1)
        grid = np.roll(grid, (int(rng.integers(-6, 7)), int(rng.integers(-2, 3))), axis=(0, 1))
        band = int(rng.integers(4, 13))
        top = int(rng.integers(0, rows - band + 1))
        grid[top : top + band] = other[start:stop].reshape(rows, cols, -1)[top : top + band]
        vectors = base.copy()
        vectors[start:stop] = grid.reshape(rows * cols, -1)
        sigma = self.noise / math.sqrt(self.dim)
        vectors += rng.standard_normal(vectors.shape, dtype=np.float32) * sigma
        return self._contextualise(_normalise(vectors))

    def _contextualise(self, vectors: np.ndarray) -> np.ndarray:
        """Mix a page-level context vector into every token (see the module docstring)."""
        if self.context <= 0:
            return vectors.astype(np.float16)
        rows, cols = self.model.patch_grid or (0, 0)
        start = self.model.patch_offset
        local = _normalise(vectors - self._offset)  # type: ignore[attr-defined]
        page = _normalise(local[start : start + rows * cols].mean(axis=0))
        return _normalise(local + self.context * page).astype(np.float16)

    def iter_pages(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        for index in range(start, self.pages if stop is None else stop):
            yield self.page(index)

    def matrix(self) -> np.ndarray:
        """Every page stacked: (pages, tokens, dim) float16 (the numpy floor's input)."""
        out = np.empty((self.pages, self.tokens, self.dim), dtype=np.float16)
        for index in range(self.pages):
            out[index] = self.page(index)
        return out

    def write(self, path: Path, *, chunk: int = 256) -> np.ndarray:
        """Every page written to ``path`` as raw float16 (page ``i`` at byte
        ``i * tokens * dim * 2``), returned memory-mapped read-only."""
        shape = (self.pages, self.tokens, self.dim)
        out = np.memmap(path, dtype=np.float16, mode="w+", shape=shape)
        for first in range(0, self.pages, chunk):
            last = min(first + chunk, self.pages)
            out[first:last] = np.stack([self.page(i) for i in range(first, last)])
        out.flush()
        del out
        return np.memmap(path, dtype=np.float16, mode="r", shape=shape)

    def queries(self, count: int, *, seed: int = 1) -> list[tuple[int, np.ndarray]]:
        """``count`` queries as (true page index, (query_tokens, dim) float16)."""
        rng = np.random.default_rng([self.seed, seed, self.pages])
        rows, cols = self.model.patch_grid or (0, 0)
        start = self.model.patch_offset
        out = []
        for target in rng.choice(self.pages, size=count, replace=count > self.pages):
            patches = self.page(int(target))[start : start + rows * cols].astype(np.float32)
            typical = _normalise(patches.mean(axis=0))
            distinctive = np.argsort(patches @ typical)[: len(patches) // 2]
            chosen = rng.choice(distinctive, size=self.query_tokens, replace=False)
            sigma = self.query_noise / math.sqrt(self.dim)
            q = patches[chosen] + rng.standard_normal((self.query_tokens, self.dim)) * sigma
            out.append((int(target), _normalise(q).astype(np.float16)))
        return out


def point_id(index: int) -> str:
    return page_point_id(f"bench-{index // PAGES_PER_DOCUMENT:06d}", index % PAGES_PER_DOCUMENT + 1)


def page_point(
    index: int, vectors: np.ndarray, model: ModelSpec, *, pooled: Sequence[str]
) -> PagePoint:
    """Page ``index`` as the ingest job writes it (full + pooled vectors, no JPEG)."""
    full = np.asarray(vectors, dtype=np.float16)
    named = {"full": full}
    if pooled:
        pools = pool_page(full, model)
        named.update({name: pools[name] for name in pooled})
    document = f"bench-{index // PAGES_PER_DOCUMENT:06d}"
    source = f"/bench/{document}.pdf"
    return PagePoint(
        point_id=point_id(index),
        vectors=named,
        payload={
            "kind": KIND_PAGE,
            "document_id": document,
            "source": source,
            "source_dirs": source_dirs(source),
            "file_name": f"{document}.pdf",
            "page": index % PAGES_PER_DOCUMENT + 1,
            "page_count": PAGES_PER_DOCUMENT,
            "model": model.name,
            "meta": {},
        },
    )


class PageSource(Protocol):
    """Pages by index with a ``(pages, tokens, dim)`` shape: an array or a lazy reader."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def build_edge_store(
    path: Path,
    pages: PageSource,
    model: ModelSpec,
    *,
    datatype: str = "float16",
    quantization: str = "none",
    pooled: Sequence[str] = POOLED_VECTORS,
    batch: int = 32,
    optimize: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[Any, float]:
    """An open ``EdgePageStore`` at ``path`` holding ``pages``; returns it and pages/s.

    ``optimize`` runs the engine's optimizers once at the end, as ``close()``
    does for quantized collections: it merges the appendable segment into
    indexed ones (and builds scalar quantization), the state a collection is
    in after a real ingest and reopen.
    """
    from connectors.qdrant_edge import EdgePageStore

    store = EdgePageStore(path, "bench")
    spec = CollectionSpec(
        name="bench",
        model=model.name,
        dim=int(pages.shape[2]),
        pooled=tuple(pooled),
        datatype=datatype,  # type: ignore[arg-type]
        quantization=quantization,  # type: ignore[arg-type]
    )
    store.open(spec, create=True)
    started = time.perf_counter()
    total = int(pages.shape[0])
    for first in range(0, total, batch):
        last = min(first + batch, total)
        store.upsert_pages(
            [page_point(i, pages[i], model, pooled=pooled) for i in range(first, last)]
        )
        if progress is not None and (last // batch) % 40 == 0:
            rate = last / (time.perf_counter() - started)
            progress(f"stored {last}/{total} pages ({rate:.0f} pages/s)")
    store.flush()
    rate = total / (time.perf_counter() - started)
    if optimize:
        store.optimize()
    return store, rate


# --------------------------------------------------------------------------- measuring


def numpy_maxsim_topk(
    pages: np.ndarray, query: np.ndarray, k: int, *, chunk: int = 16, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force MaxSim top-``k`` over float16 ``pages`` (N, tokens, dim): (indices, scores).

    The floor an engine is measured against: each chunk of pages is widened
    to float32 once (BLAS has no float16 kernels) and multiplied with the
    query in one GEMM; the per-page max over tokens is summed over query
    tokens. ``threads`` > 1 splits chunks over a thread pool (numpy releases
    the GIL in both steps).
    """
    n, tokens, dim = pages.shape
    q = np.ascontiguousarray(query, dtype=np.float32).T  # (dim, qt)
    scores = np.empty(n, dtype=np.float32)

    def run(first: int) -> None:
        last = min(first + chunk, n)
        block = pages[first:last].reshape(-1, dim).astype(np.float32)
        sims = (block @ q).reshape(last - first, tokens, -1)
        scores[first:last] = sims.max(axis=1).sum(axis=1)

    starts = range(0, n, chunk)
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, starts))
    else:
        for first in starts:
            run(first)
    k = min(k, n)
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return top, scores[top]


@dataclass(frozen=True)
class Latency:
    """Wall-clock milliseconds of repeated calls."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    def to_dict(self) -> dict[str, float]:
        return {"median_ms": round(self.median, 2), "p95_ms": round(self.p95, 2)}


def latency(samples_ms: Sequence[float]) -> Latency:
    if not samples_ms:
        raise ValueError("no samples")
    return Latency(tuple(samples_ms))


def timed(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[T, float]:
    """``fn(*args, **kwargs)`` and its wall time in ms."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, (time.perf_counter() - started) * 1000


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_status() -> dict[str, float]:
    """This process's memory now and at its peak, in MiB, from ``/proc/self/status``.

    ``rss`` counts mapped file pages too: the engine mmaps its vector files,
    so a store being scanned shows its vectors as resident. ``rss_anon`` is
    memory the process allocated itself; ``rss_file`` the mapped files;
    ``peak_rss`` (VmHWM) the high-water mark, often reached while the
    optimizer rewrites segments (old and new both mapped).
    """
    fields = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "VmHWM": "peak_rss"}
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in fields:
                    out[fields[key]] = round(int(value.split()[0]) / 1024, 1)
    except OSError:  # not Linux
        out["peak_rss"] = round(peak_rss_mb(), 1)
    return out


def disk_breakdown(root: Path) -> dict[str, int]:
    """Bytes allocated under an engine shard directory (like ``du``), by part.

    ``full`` / ``pooled``: vector storage of the full and pooled vectors;
    ``quantized``: quantized copies; ``wal``: the write-ahead log (bounded,
    so it matters less per page as the collection grows); ``other``: payload
    storage and indexes, id trackers. The engine preallocates sparse mmap
    chunks, so allocated blocks are counted, not apparent sizes.
    """
    parts = {"full": 0, "pooled": 0, "quantized": 0, "wal": 0, "other": 0}
    for path in root.rglob("*"):
        try:
            st = path.lstat()
        except OSError:  # removed by the optimizer meanwhile
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        size = st.st_blocks * 512
        text = str(path.relative_to(root))
        if text.startswith("wal"):
            parts["wal"] += size
        elif "quantiz" in text:
            parts["quantized"] += size
        elif "vector_storage-full" in text:
            parts["full"] += size
        elif "vector_storage-" in text:
            parts["pooled"] += size
        else:
            parts["other"] += size
    parts["total"] = sum(parts.values())
    return parts
