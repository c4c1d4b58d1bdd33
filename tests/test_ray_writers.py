"""The Ray engine's writer actors (a store several processes may write) on a local Ray.

With a Qdrant server (``store.url``) the embed actors' points go to writer
actors that upsert in parallel and pass page acks on; the driver marks a
document complete only from those acks. No Qdrant server runs here, so the
"server" is one Ray actor holding an embedded store, reached from the driver
and from every writer actor through a proxy: every write crosses processes as
it would to a server. The local engine's store is the reference.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pipeline import PageRAG
from pipeline.errors import ConfigError
from pipeline.ingest.outcome import IngestReport
from pipeline.testing.fakes import FakeEmbedder
from tests.test_crash import snapshot
from tests.test_ray_engine import (
    BAD,
    EIGHT_PAGES,
    THREE_PAGES,
    _ray_session,
    config_for,
    local_ray,
    outcomes,
)

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

__all__ = ["_ray_session", "local_ray"]  # fixtures, used by name


# Two writers (0.5 CPU each) beside one embed actor and a rendering task, on 2 CPUs.
TWO_CPUS = {"writers": 2, "cpus_per_actor": 0.5, "render_cpus": 0.5}


class _StoreHost:
    """The stand-in server: one embedded store in one actor, called by name."""

    def __init__(self, path: str, collection: str) -> None:
        from connectors.qdrant_edge import EdgePageStore

        self.store = EdgePageStore(Path(path), collection)
        self.callers: dict[str, list[int]] = {}  # method -> the calling process of each call

    def call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], caller: int = 0
    ) -> Any:
        self.callers.setdefault(method, []).append(caller)
        return getattr(self.store, method)(*args, **kwargs)

    def count(self, method: str) -> int:
        return len(self.callers.get(method, []))

    def pids(self, method: str) -> set[int]:
        return set(self.callers.get(method, []))


class _ServerStore:
    """A PageStore proxy to the host actor: what each process gets from ``make_store``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def close(self) -> None:
        """A client closing: the server (the host's store) stays up."""

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("__"):
            raise AttributeError(method)
        host = ray.get_actor(self.name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return ray.get(host.call.remote(method, args, kwargs, os.getpid()))

        return call


@dataclass
class Server:
    host: Any  # the actor
    name: str
    path: Path

    def store(self) -> _ServerStore:
        return _ServerStore(self.name)

    def calls(self, method: str) -> int:
        return int(ray.get(self.host.count.remote(method)))

    def callers(self, method: str) -> set[int]:
        """The processes that called ``method``."""
        return set(ray.get(self.host.pids.remote(method)))


@pytest.fixture
def server(local_ray: None, tmp_path: Path) -> Iterator[Server]:
    """The host actor over ``tmp_path/server``, closed (so it can be read) after the test."""
    name = f"store-host-{tmp_path.name}"
    host = ray.remote(_StoreHost).options(name=name).remote(str(tmp_path / "server"), "pagerag")
    running = Server(host, name, tmp_path / "server")
    running.calls("open")  # started
    yield running
    with contextlib.suppress(Exception):
        ray.get(host.call.remote("close", (), {}))
    ray.kill(host)


def close(server: Server) -> None:
    """Close the host's store so :func:`snapshot` can open it."""
    ray.get(server.host.call.remote("close", (), {}))


def ingest_through_writers(
    server: Server, data: Path, files: list[Path], **ray_settings: Any
) -> IngestReport:
    """The Ray engine as it runs against a server: the driver and the writer actors
    each get ``make_store()`` (the host's proxy)."""
    make_store = partial(_ServerStore, server.name)
    config = config_for(data, **ray_settings)
    rag = PageRAG(config, embedder=FakeEmbedder(), store=make_store())
    build_job = rag._ray_job

    def with_writers(*args: Any, **kwargs: Any) -> Any:
        job = build_job(*args, **kwargs)
        job.make_store = make_store  # what api does for store.url
        return job

    rag._ray_job = with_writers  # type: ignore[method-assign]
    with rag:
        return rag.ingest(files, engine="ray")


@pytest.fixture
def files(corpus: Path, tmp_path: Path) -> list[Path]:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, source in (("three.pdf", THREE_PAGES), ("eight.pdf", EIGHT_PAGES)):
        shutil.copy(corpus / source, folder / name)
    shutil.copy(corpus / BAD[0], folder / "bad.pdf")
    return sorted(folder.iterdir())


def ingest_locally(data: Path, files: list[Path]) -> IngestReport:
    with PageRAG(config_for(data), embedder=FakeEmbedder()) as rag:
        return rag.ingest(files, engine="local")


def test_writer_actors_store_what_the_local_engine_stores(
    server: Server, files: list[Path], tmp_path: Path
) -> None:
    """Points go through two writer actors (the driver writes none), the driver marks
    from their acks: the store, the outcomes and the exit code are the local engine's."""
    report = ingest_through_writers(server, tmp_path / "unused", files, **TWO_CPUS)
    local = ingest_locally(tmp_path / "local", files)
    assert outcomes(report) == outcomes(local)
    assert report.exit_code == local.exit_code == 1  # the bad file
    assert report.pages_ingested == local.pages_ingested == 11
    assert server.calls("upsert_pages") >= 2 and server.calls("mark_complete") == 2
    writers = server.callers("upsert_pages")
    assert os.getpid() not in writers and 1 <= len(writers) <= 2  # actors wrote, not the driver
    assert server.callers("mark_complete") == {os.getpid()}  # the driver marks, from acks
    close(server)
    stored = snapshot(server.path)
    assert stored.problems() == []
    assert stored.comparable() == snapshot(tmp_path / "local").comparable()


def test_a_rerun_through_writers_skips_what_they_stored(
    server: Server, files: list[Path], tmp_path: Path
) -> None:
    first = ingest_through_writers(server, tmp_path / "unused", files, **TWO_CPUS)
    upserts = server.calls("upsert_pages")
    again = ingest_through_writers(server, tmp_path / "unused", files, **TWO_CPUS)
    assert [o.status for o in again.outcomes] == [
        "failed" if o.status == "failed" else "skipped" for o in first.outcomes
    ]
    assert server.calls("upsert_pages") == upserts  # nothing written twice


def test_writers_that_leave_no_cpu_to_render_are_refused_before_any_work(
    server: Server, files: list[Path], tmp_path: Path
) -> None:
    """1 embed actor × 1 CPU + 2 writers × 0.5 fill this 2-CPU Ray: no rendering task
    could ever start and Ray would wait forever. The job says so, and what to change."""
    with pytest.raises(ConfigError) as refused:
        ingest_through_writers(server, tmp_path / "unused", files, writers=2)
    message = str(refused.value)
    assert "has 2 CPU(s)" in message and "2 writer(s)" in message
    assert "ray.cpus_per_actor" in message and "ray start --num-cpus" in message
    assert server.calls("upsert_pages") == 0


# The engine silences Ray's own deprecation warnings with warnings.catch_warnings, which is
# not thread-safe: with two jobs in one process, one thread may restore the filters while
# the other is inside, and under pytest's "error" filter Ray's warning would fail the job.
# Two jobs are two driver processes in real use; here two threads stand in for them. Ray
# Data also swaps a per-dataset log file handler when a second dataset starts in the same
# process and leaves the first file for the garbage collector (a ResourceWarning).
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_two_concurrent_jobs_over_overlapping_files_never_duplicate(
    server: Server, files: list[Path], tmp_path: Path
) -> None:
    """Two Ray jobs at once (two drivers' worth: two threads, two datasets on one Ray)
    over {three, eight} and {eight, bad}: both write eight.pdf, by the same point ids;
    the server ends with exactly what one local job over all three files stores."""
    three, eight, bad = (
        next(f for f in files if f.name == n) for n in ("three.pdf", "eight.pdf", "bad.pdf")
    )
    halves = {"cpus_per_actor": 0.25, "render_cpus": 0.25, "writers": 1}  # 1 CPU a job
    reports: dict[str, IngestReport] = {}

    def job(name: str, inputs: list[Path]) -> None:
        reports[name] = ingest_through_writers(server, tmp_path / name, inputs, **halves)

    threads = [
        threading.Thread(target=job, args=("a", [three, eight])),
        threading.Thread(target=job, args=("b", [eight, bad])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    gc.collect()  # Ray Data's dropped log file is collected here, under this test's filters
    assert sorted(reports) == ["a", "b"], "a job did not finish"
    assert [o.status for o in reports["a"].outcomes] == ["ingested", "ingested"]
    assert [o.status for o in reports["b"].outcomes][1] == "failed"
    local = ingest_locally(tmp_path / "local", files)
    assert local.pages_ingested == 11
    close(server)
    stored = snapshot(server.path)
    assert stored.problems() == []
    assert stored.comparable() == snapshot(tmp_path / "local").comparable()
