"""Two ingestion jobs at once (issue 7, point 5).

* The embedded engine is single-process: a second job on the same data
  directory — a real second process — gets ``StoreInUseError`` from the API
  and, from the CLI, exit code 1 with a one-line message (no lock traceback).
* Against a server, jobs over overlapping files end with each page once and
  each document marked once. Offline this is two ``PageRAG`` instances in two
  threads sharing one qdrant-client ``:memory:`` client; with Docker or
  ``QDRANT_URL`` it is two real CLI processes against a real Qdrant server.
* One job given the same bytes under two names (two workers on one document id).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import signal
import socket
import threading
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from qdrant_client import QdrantClient

from connectors.qdrant_client import ClientPageStore
from pipeline import PageRAG, api
from pipeline.config import PageRAGConfig, load_config
from pipeline.errors import StoreError, StoreInUseError
from pipeline.ingest.job import IngestJob, IngestReport
from pipeline.ingest.render import Renderer
from pipeline.testing.fakes import FakeEmbedder
from tests.clirun import cli_env, start
from tests.conftest import Server
from tests.procs import wait_for_process

DOCS = {
    "robust/pdfjs/test/pdfs/three_pages_with_number.pdf": 3,
    "robust/py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf": 4,
    "robust/pdfjs/test/pdfs/file_pdfjs_test.pdf": 5,
    "robust/camelot/tests/files/tabula/icdar2013-dataset/competition-dataset-us/us-020.pdf": 6,
    "robust/pdfium/testing/resources/page_labels.pdf": 7,
    "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf": 8,
}
LOOPING = "robust/qpdf/qpdf/qtest/qpdf/shared-unnamed-field.pdf"  # pdfinfo loops forever

pytestmark = pytest.mark.skipif(
    shutil.which("pdftoppm") is None or shutil.which("pdfinfo") is None,
    reason="poppler-utils is not installed (apt-get install poppler-utils)",
)


@pytest.fixture
def docs(corpus: Path, tmp_path: Path) -> list[Path]:
    folder = tmp_path / "docs"
    folder.mkdir()
    paths = []
    for name in DOCS:
        shutil.copy(corpus / name, folder / Path(name).name)
        paths.append(folder / Path(name).name)
    return paths


# ------------------------------------------------------------------ embedded: one job at a time


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_second_job_on_the_same_data_directory_is_told_it_is_in_use(
    docs: list[Path], corpus: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    looping = tmp_path / "slow" / "loops.pdf"
    looping.parent.mkdir()
    shutil.copy(corpus / LOOPING, looping)
    env = cli_env(data, tiny_model_dir, render__timeout_s="10")
    # Job A holds the store for as long as poppler loops on its first file.
    first = start(env, "ingest", str(looping), *map(str, docs), "--workers", "1", "--json")
    try:
        # Rendering starts after the store is open (the job's own command line names
        # the file too: wait for poppler itself).
        wait_for_process("pdfinfo", str(looping), first, 60)

        # The API, from this process.
        config = load_config(environ={}, overrides={"store": {"path": str(data)}})
        with (
            PageRAG(config, embedder=FakeEmbedder()) as rag,
            pytest.raises(StoreInUseError, match="in use by another pagerag process") as info,
        ):
            rag.ingest(docs)
        assert "store.path" in str(info.value)  # says what to do

        # The CLI, from a third process: exit 1, one line, no traceback.
        second = start(env, "ingest", *map(str, docs), "--json")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1, (out, err)
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("error: ") and "in use" in lines[0], err
        assert "Traceback" not in err and "Timeout" not in err
        # Reading needs the directory too (the engine cannot open a shard read-only).
        status = start(env, "status")
        out, err = status.communicate(timeout=120)
        assert status.returncode == 1 and "in use" in err and "Traceback" not in err, err
        assert first.poll() is None  # A was running all along
    finally:
        # A stops after its batch in flight (here: once poppler's 10 s are up).
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    report = json.loads(out)
    assert report["interrupted"] is True, err[-2000:]

    # The lock goes with the job: now the second one runs.
    again = start(env, "ingest", *map(str, docs), "--json")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, (out[-1000:], err[-2000:])
    assert json.loads(out)["pages_ingested"] + sum(
        o["pages"] for o in report["outcomes"] if o["status"] == "ingested"
    ) == sum(DOCS.values())


# ------------------------------------------------------------------ server: overlapping jobs


def store_contents(client: QdrantClient, collection: str) -> tuple[Counter[Any], dict[str, Any]]:
    """(document_id, page) -> how many page points; document_id -> its mark's payload."""
    pages: Counter[Any] = Counter()
    marks: dict[str, Any] = {}
    offset = None
    while True:
        records, offset = client.scroll(
            collection, limit=256, offset=offset, with_payload=True, with_vectors=False
        )
        for rec in records:
            payload = rec.payload or {}
            if payload.get("kind") == "page":
                pages[(payload["document_id"], payload["page"])] += 1
            elif payload.get("kind") == "document":
                assert payload["document_id"] not in marks, "a document marked twice"
                marks[payload["document_id"]] = payload
        if offset is None:
            return pages, marks


def check_overlapping_jobs(
    reports: list[IngestReport], pages: Counter[Any], marks: dict[str, Any], files: list[Path]
) -> None:
    for report in reports:
        assert not report.interrupted
        for o in report.outcomes:
            assert o.status in ("ingested", "skipped"), o
    assert set(pages.values()) == {1}, "a page stored twice"
    assert len(pages) == sum(DOCS[n] for n in DOCS if any(f.name in n for f in files))
    assert {m["source"] for m in marks.values()} == {str(f) for f in files}
    for doc, mark in marks.items():
        stored = sorted(p for d, p in pages if d == doc)
        assert stored == list(range(1, mark["page_count"] + 1)), mark["source"]


def run_together(jobs: list[tuple[PageRAG, list[Path]]]) -> list[IngestReport]:
    """Each job in its own thread, released at the same moment."""
    start = threading.Barrier(len(jobs))
    reports: list[IngestReport | None] = [None] * len(jobs)
    errors: list[BaseException] = []

    def work(i: int, rag: PageRAG, files: list[Path]) -> None:
        try:
            start.wait(timeout=30)
            reports[i] = rag.ingest(files)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(i, rag, files)) for i, (rag, files) in enumerate(jobs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    assert all(r is not None for r in reports)
    return [r for r in reports if r is not None]


class SerialClient:
    """A qdrant-client ``:memory:`` client shared by several jobs, one call at a time.

    A server serializes conflicting writes itself; the in-process engine is not
    thread-safe (concurrent upserts corrupt its numpy arrays), so this stands in
    for the server's request handling.
    """

    def __init__(self, client: QdrantClient) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return value(*args, **kwargs)

        return call


def memory_config(collection: str) -> PageRAGConfig:
    return load_config(
        environ={},
        overrides={
            "store": {"url": ":memory:", "collection": collection, "upsert_batch": 2},
            "render": {"dpi": 40},
        },
    )


def test_two_jobs_over_overlapping_files_share_a_server_without_duplicates(
    docs: list[Path],
) -> None:
    """Two PageRAG instances (two "processes") write the same collection at once.

    Both start with the shared files, in opposite orders, so they render, embed
    and upsert the same documents at the same time; a slow embedder keeps the
    two jobs interleaved.
    """
    shared = QdrantClient(location=":memory:")
    server = cast(QdrantClient, SerialClient(shared))
    config = memory_config("overlap")
    one = [docs[0], docs[1], docs[2], docs[3]]
    two = [docs[3], docs[2], docs[4], docs[5]]
    rags = [
        PageRAG(
            config,
            embedder=FakeEmbedder(seconds_per_page=0.02),
            store=ClientPageStore(config.store, client=server),
        )
        for _ in range(2)
    ]
    try:
        reports = run_together([(rags[0], one), (rags[1], two)])
        pages, marks = store_contents(shared, "overlap")
        check_overlapping_jobs(reports, pages, marks, docs)
        # What a user sees: one hit per page, whichever job stored it.
        hits = rags[0].search("page", k=100)
        assert len(hits) == len({(h.document_id, h.page_number) for h in hits}) == len(pages)
    finally:
        for rag in rags:
            rag.close()
        shared.close()


class BrokenAdapterStore(ClientPageStore):
    """A store adapter with a bug: its third upsert raises a non-StoreError."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upserts = 0

    def upsert_pages(self, points: Any) -> None:
        self.upserts += 1
        if self.upserts == 3:
            raise IndexError("index 17 is out of bounds for axis 0 with size 17")
        super().upsert_pages(points)


def test_an_unexpected_store_failure_ends_the_job_instead_of_hanging_it(
    docs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the shared ``:memory:`` client did before SerialClient: a write failing with an
    error the adapter does not translate. The job must end, every file failed or done."""
    jobs: list[IngestJob] = []

    class RecordedJob(IngestJob):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            jobs.append(self)

    monkeypatch.setattr(api, "IngestJob", RecordedJob)
    config = memory_config("broken")
    store = BrokenAdapterStore(config.store, client=QdrantClient(location=":memory:"))
    rag = PageRAG(config, embedder=FakeEmbedder(), store=store)
    result: list[IngestReport] = []
    worker = threading.Thread(target=lambda: result.append(rag.ingest(docs)), daemon=True)
    worker.start()
    worker.join(timeout=5)
    hung = worker.is_alive()
    if hung:
        # Stop the renderers' and embedder's retry loops. The job's own thread stays
        # blocked on its full queue (no CPU) until the session ends: it is a daemon.
        jobs[0]._set_fatal(StoreError("ended by the test"))
        worker.join(timeout=2)
    rag.close()
    assert not hung, "the job hangs after its upsert thread died"
    (report,) = result
    assert report.exit_code == 1
    assert not report.interrupted
    for o in report.outcomes:
        assert o.status == "ingested" or o.reason in ("store", "aborted"), o


@pytest.mark.docker
def test_two_cli_jobs_over_overlapping_files_against_a_real_server(
    qdrant_server: Server, docs: list[Path], tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real processes, the real CLI and stand-in model, one Qdrant server."""
    host = urlsplit(qdrant_server.url).hostname or "localhost"
    allowed = {host} | {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:  # conftest's guard + the server
        if isinstance(address, tuple) and str(address[0]) not in allowed:
            try:
                loopback = ipaddress.ip_address(str(address[0])).is_loopback
            except ValueError:
                loopback = address[0] == "localhost"
            if not loopback:
                raise OSError(f"tests may only reach the Qdrant server (tried {address!r})")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    collection = f"pagerag-overlap-{uuid.uuid4().hex[:10]}"
    env = cli_env(
        model=tiny_model_dir,
        store__url=qdrant_server.url,
        store__grpc_port=str(qdrant_server.grpc_port),
        store__collection=collection,
        store__upsert_batch="2",
    )
    if qdrant_server.api_key:
        env["QDRANT_API_KEY"] = qdrant_server.api_key
    one = [docs[0], docs[1], docs[2], docs[3]]
    two = [docs[3], docs[2], docs[4], docs[5]]
    procs = [start(env, "ingest", *map(str, files), "--json") for files in (one, two)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, (out[-1000:], err[-2000:])
        assert all(o["status"] in ("ingested", "skipped") for o in json.loads(out)["outcomes"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an API key over http
        admin = QdrantClient(
            url=qdrant_server.url, api_key=qdrant_server.api_key, check_compatibility=False
        )
    try:
        pages, marks = store_contents(admin, collection)
        assert set(pages.values()) == {1}, "a page stored twice"
        assert len(pages) == sum(DOCS.values())
        assert {m["source"] for m in marks.values()} == {str(f) for f in docs}
        for doc, mark in marks.items():
            assert sorted(p for d, p in pages if d == doc) == list(range(1, mark["page_count"] + 1))
    finally:
        admin.delete_collection(collection)
        admin.close()


# ------------------------------------------------------------------ one job, same bytes twice


class LockstepRenderer:
    """The real renderer, but two documents hand over their first page together.

    That forces what two workers do by chance on a busy machine: pages of two
    files with the same bytes (one document id) interleave in the job's queues.
    """

    def __init__(self, inner: Renderer, parties: int) -> None:
        self.inner = inner
        self.barrier = threading.Barrier(parties, timeout=3)

    def open(self, path: Path, **options: Any) -> Any:
        return self.inner.open(path, **options)

    def iter_pages(self, plan: Any, **options: Any) -> Iterator[Any]:
        for number, item in enumerate(self.inner.iter_pages(plan, **options)):
            yield item
            if number == 0:
                # BrokenBarrierError: the other copy never rendered (deduplicated).
                with contextlib.suppress(threading.BrokenBarrierError):
                    self.barrier.wait()


def test_same_bytes_under_two_names_in_one_job(corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    original = corpus / "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf"  # 8 pages
    shutil.copy(original, folder / "report.pdf")
    shutil.copy(original, folder / "report-copy.pdf")
    config = load_config(
        environ={},
        overrides={"store": {"path": str(tmp_path / "data")}, "render": {"dpi": 40, "workers": 2}},
    )
    renderer = LockstepRenderer(Renderer(config.render), parties=2)
    with PageRAG(config, embedder=FakeEmbedder(), renderer=renderer) as rag:  # type: ignore[arg-type]
        report = rag.ingest([folder])
        records = rag.documents()
        hits = rag.search("page", k=50)
    outcomes = {Path(o.path).name: o for o in report.outcomes}
    assert len(outcomes) == 2
    for o in outcomes.values():
        # One copy is ingested; the other is ingested too or skipped as the same content.
        assert o.status in ("ingested", "skipped"), o
        assert o.status == "skipped" or o.pages == 8, o
    (record,) = records
    assert record.page_count == 8
    assert sorted(h.page_number for h in hits) == list(range(1, 9))
    assert {h.source for h in hits} == {record.source}  # pages agree with their document
