"""The Ray engine (``ingest.engine: ray``) on a local Ray: the local engine's results, exactly.

Stores are compared whole (point ids, vectors, payloads minus timestamps, and
completion marks) with :func:`tests.test_crash.snapshot`. Ray runs locally
(``num_cpus=2``) under the test network guard: its own traffic is loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline import PageRAG
from pipeline.config import PageRAGConfig, RayConfig, load_config
from pipeline.errors import ConfigError, DamagedFileError, ModelNotAvailableError
from pipeline.ingest.outcome import IngestReport
from pipeline.ingest.render import Renderer
from pipeline.testing.fakes import FakeEmbedder
from tests.store_contract import SPEC
from tests.test_crash import snapshot

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

THREE_PAGES = "robust/pdfjs/test/pdfs/three_pages_with_number.pdf"
FIVE_PAGES = "robust/pdfjs/test/pdfs/file_pdfjs_test.pdf"
EIGHT_PAGES = "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf"
# Bad input from ../shared/corpus/robust (see tests/test_robustness.py): not a PDF, wrong
# passwords, damaged.
BAD = (
    "robust/ocrmypdf/tests/resources/invalid.pdf",
    "robust/pdfium/testing/resources/encrypted_hello_world_r2_bad_okey.pdf",
    "robust/qpdf/qpdf/qtest/qpdf/bad-encryption-length.pdf",
    "robust/poppler-test/unittestcases/PasswordEncrypted.pdf",
)


@pytest.fixture(scope="module")
def _ray_session() -> Iterator[None]:
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def local_ray(_ray_session: None, _block_network: None) -> None:
    """A local Ray with 2 CPUs, started under the network guard (the first test starts it)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def config_for(data: Path, **ray_settings: Any) -> PageRAGConfig:
    return load_config(
        environ={},
        overrides={
            "store": {"path": str(data)},
            "render": {"dpi": 60},
            "ray": {"pages_per_task": 3, **ray_settings},  # the 8-page file: 3 ranges
        },
    )


def ingest(data: Path, files: Sequence[Path], engine: str, **kwargs: Any) -> IngestReport:
    embedder = kwargs.pop("embedder", None) or FakeEmbedder()
    with PageRAG(config_for(data, **kwargs.pop("ray", {})), embedder=embedder) as rag:
        return rag.ingest(files, engine=engine, **kwargs)  # type: ignore[arg-type]


def outcomes(report: IngestReport) -> list[tuple[str, str, str | None, int, list[int]]]:
    return sorted(
        (Path(o.path).name, o.status, o.reason, o.pages, o.failed_pages) for o in report.outcomes
    )


@pytest.fixture
def docs(corpus: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, source in (("three.pdf", THREE_PAGES), ("five.pdf", FIVE_PAGES)):
        shutil.copy(corpus / source, folder / name)
    shutil.copy(corpus / EIGHT_PAGES, folder / "eight.pdf")
    shutil.copy(corpus / BAD[0], folder / "bad.pdf")
    return folder


def test_errors_cross_process_boundaries() -> None:
    """A file's error travels from a Ray worker to the driver (pickled) intact."""
    import pickle

    error = pickle.loads(pickle.dumps(DamagedFileError("/x.pdf", "broken xref", page=3)))
    assert (type(error), str(error), error.page, error.reason) == (
        DamagedFileError,
        "/x.pdf (page 3): broken xref",
        3,
        "damaged",
    )


def test_without_the_ray_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import OptionalDependencyError
    from pipeline.ingest.ray_engine import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    with pytest.raises(OptionalDependencyError, match=r"\[ray\]|ray") as caught:
        require_ray()
    assert caught.value.extra == "ray" and isinstance(caught.value, ImportError)


def test_ray_store_equals_local_with_the_stand_in_model(
    local_ray: None, docs: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The real fastembed path (built from config inside each embed actor) over several
    documents, one split into page ranges, and a bad file: the same store and outcomes."""
    reports = {}
    for engine in ("local", "ray"):
        config = config_for(tmp_path / engine)
        config.embedding.model_path = tiny_model_dir
        with PageRAG(config) as rag:
            reports[engine] = rag.ingest([docs], engine=engine)  # type: ignore[arg-type]
    assert outcomes(reports["ray"]) == outcomes(reports["local"])
    assert [o.status for o in reports["ray"].outcomes].count("ingested") == 3
    assert reports["ray"].exit_code == reports["local"].exit_code == 1  # the bad file
    local, distributed = snapshot(tmp_path / "local"), snapshot(tmp_path / "ray")
    assert len(distributed.pages) == 16 and len(distributed.marks) == 3
    assert distributed.problems() == []
    assert distributed.comparable() == local.comparable()


def test_embed_actors_asking_for_gpus_the_cluster_lacks_are_refused(
    local_ray: None, docs: Path, tmp_path: Path
) -> None:
    """--gpus-per-actor 1 on a Ray without GPUs: the actor pool could never start and Ray
    would wait forever; the job stops at once with the fix, nothing stored."""
    with pytest.raises(ConfigError) as refused:
        ingest(tmp_path / "data", [docs], "ray", ray={"gpus_per_actor": 1})
    message = str(refused.value)
    assert "has 0 GPU(s)" in message and "need 1" in message
    assert "--gpus-per-actor" in message and "ray start --num-gpus" in message
    assert snapshot(tmp_path / "data").pages == {}


@pytest.mark.parametrize("check", [True, False])
def test_an_autoscaling_cluster_can_skip_the_resource_check(check: bool) -> None:
    """ray.check_resources false: no refusal (the autoscaler adds the GPU nodes)."""
    from types import SimpleNamespace

    from pipeline.ingest.ray_engine import RayIngestJob
    from pipeline.ingest.settings import IngestSettings

    job = RayIngestJob(
        IngestSettings(store=None, renderer=None, spec=SPEC, hash_file=str),  # type: ignore[arg-type]
        cluster=RayConfig(gpus_per_actor=1, check_resources=check),
        make_embedder=FakeEmbedder,
    )
    cpu_only = SimpleNamespace(cluster_resources=lambda: {"CPU": 8.0})
    if check:
        with pytest.raises(ConfigError, match=r"ray\.check_resources: false"):
            job._check_resources(cpu_only)
    else:
        job._check_resources(cpu_only)


@pytest.mark.parametrize(
    ("settings", "cores", "cpus"),
    [
        ({}, 2, 3),  # 2 rendering tasks (render.workers) + 1 embed actor: the local engine's
        ({}, 16, 16),  # a bigger machine: its cores
        ({"embed_actors": 2, "cpus_per_actor": 0.5}, 1, 3),
        ({"num_cpus": 2}, 8, 2),  # set: as given
    ],
)
def test_a_local_ray_has_room_for_the_local_engines_rendering(
    settings: dict[str, Any], cores: int, cpus: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.ingest.ray_engine import RayIngestJob
    from pipeline.ingest.settings import IngestSettings

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    job = RayIngestJob(
        IngestSettings(store=None, renderer=None, spec=SPEC, hash_file=str),  # type: ignore[arg-type]
        cluster=RayConfig(**settings),
        make_embedder=FakeEmbedder,
        render_workers=2,
    )
    assert job._local_cpus() == cpus


def test_rerun_skips_and_progress_reaches_the_total(
    local_ray: None, docs: Path, tmp_path: Path
) -> None:
    events: list[Any] = []
    first = ingest(tmp_path / "data", [docs], "ray", progress=events.append)
    last = events[-1]
    assert (last.files_done, last.files_total) == (4, 4)
    assert last.pages_done == last.pages_total == 16 and not last.counting
    again = ingest(tmp_path / "data", [docs], "ray")
    assert [o.status for o in again.outcomes] == [
        "failed" if o.status == "failed" else "skipped" for o in first.outcomes
    ]
    assert again.pages_ingested == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's DataContext, on creation
def test_the_job_leaves_the_processs_ray_data_settings_alone(
    local_ray: None, docs: Path, tmp_path: Path
) -> None:
    """The engine tolerates failed blocks and hides progress bars in its own dataset's
    context; a caller's other Ray Data work in the same process keeps its settings."""
    context = ray.data.DataContext.get_current()
    before = (context.max_errored_blocks, context.enable_progress_bars)
    ingest(tmp_path / "data", [docs], "ray")
    after = ray.data.DataContext.get_current()
    assert (after.max_errored_blocks, after.enable_progress_bars) == before


def test_bad_files_get_the_local_engines_outcomes(
    local_ray: None, corpus: Path, tmp_path: Path
) -> None:
    files = [corpus / p for p in (*BAD, THREE_PAGES)]
    local = ingest(tmp_path / "local", files, "local")
    distributed = ingest(tmp_path / "ray", files, "ray")
    assert outcomes(distributed) == outcomes(local)
    assert [o.status for o in distributed.outcomes].count("failed") == len(BAD)
    for a, b in zip(local.outcomes, distributed.outcomes, strict=True):
        assert a.message == b.message, (a, b)


class _KillsItsActorOnce(FakeEmbedder):
    """Kills the embed actor it runs in (``ray.kill``) on its second batch, once per ``marker``."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker
        self.batches = 0

    def embed_images(self, images: Sequence[Image.Image]) -> list[Any]:
        self.batches += 1
        if self.batches == 2 and not self.marker.exists():
            self.marker.touch()
            ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
            time.sleep(30)  # the kill lands first: this batch never returns
        return super().embed_images(images)


def test_a_killed_embed_actor_is_restarted_and_the_store_is_identical(
    local_ray: None, docs: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "killed"
    clean = ingest(tmp_path / "clean", [docs], "ray")
    killed = ingest(tmp_path / "killed-run", [docs], "ray", embedder=_KillsItsActorOnce(marker))
    assert marker.exists(), "the embed actor was never killed"
    assert outcomes(killed) == outcomes(clean)
    assert (
        snapshot(tmp_path / "killed-run").comparable() == snapshot(tmp_path / "clean").comparable()
    )


class _DiesOnARange(Renderer):
    """Kills the Ray worker rendering eight.pdf's second page range (os._exit), on
    every try: the range never comes back, whatever ``ray.max_retries``."""

    def iter_pages(self, plan: Any, **kwargs: Any) -> Any:
        if Path(kwargs["source"]).name == "eight.pdf" and any(p.number == 4 for p in plan.pages):
            os._exit(1)
        return super().iter_pages(plan, **kwargs)


def test_a_range_whose_worker_always_dies_fails_its_file_and_a_rerun_completes(
    local_ray: None, docs: Path, tmp_path: Path
) -> None:
    """eight.pdf's pages 4-6 kill their worker on each of 1 + ray.max_retries tries: that
    file is failed (worker_lost, never marked), the others complete, the job exits 1; a
    rerun without the fault completes it, the store then equals a clean run's."""
    files = [docs / name for name in ("three.pdf", "eight.pdf", "five.pdf")]
    data = tmp_path / "data"
    config = config_for(data, max_retries=1)
    with PageRAG(config, embedder=FakeEmbedder(), renderer=_DiesOnARange(config.render)) as rag:
        report = rag.ingest(files, engine="ray")
    by_name = {Path(o.path).name: o for o in report.outcomes}
    assert {name: o.status for name, o in by_name.items()} == {
        "three.pdf": "ingested",
        "eight.pdf": "failed",
        "five.pdf": "ingested",
    }
    lost = by_name["eight.pdf"]
    assert lost.reason == "worker_lost" and lost.message is not None
    assert "ray.max_retries" in lost.message and "rerun" in lost.message, lost.message
    assert report.exit_code == 1 and report.error is None
    snap = snapshot(data)
    assert snap.problems() == [] and len(snap.marks) == 2
    assert "eight.pdf" not in {Path(s).name for s in snap.complete()}
    rerun = ingest(data, files, "ray")
    assert [o.status for o in rerun.outcomes] == ["skipped", "ingested", "skipped"]
    assert rerun.exit_code == 0
    ingest(tmp_path / "clean", files, "local")
    assert snapshot(data).comparable() == snapshot(tmp_path / "clean").comparable()


def test_a_model_that_cannot_load_stops_the_job_with_one_error(
    local_ray: None, docs: Path, tmp_path: Path
) -> None:
    class Missing(FakeEmbedder):
        def warm_up(self) -> None:
            raise ModelNotAvailableError("model not found: set embedding.model_path")

    report = ingest(tmp_path / "data", [docs], "ray", embedder=Missing())
    assert report.error is not None and "embedding.model_path" in report.error
    assert report.exit_code == 1
    assert {o.status for o in report.outcomes} == {"failed"}
    assert snapshot(tmp_path / "data").marks == {}


def test_a_stop_request_ends_the_job_cleanly(local_ray: None, docs: Path, tmp_path: Path) -> None:
    import threading

    stop = threading.Event()

    def progress(event: Any) -> None:
        if event.pages_done:
            stop.set()

    report = ingest(tmp_path / "data", [docs], "ray", stop=stop, progress=progress)
    assert report.interrupted and report.exit_code == 1
    assert len(report.outcomes) == 4
    snap = snapshot(tmp_path / "data")
    assert snap.problems() == []  # nothing marked without all its pages
    rest = ingest(tmp_path / "data", [docs], "ray")
    assert (
        snapshot(tmp_path / "data").comparable() == snapshot(_clean(tmp_path, docs)).comparable()
    ), rest.to_dict()


def _clean(tmp_path: Path, docs: Path) -> Path:
    ingest(tmp_path / "clean", [docs], "local")
    return tmp_path / "clean"


# A driver in its own process (its own local Ray), pages slowed to 0.5 s: it prints
# "progress N" as pages are stored, then "report {json}".
DRIVER = """
import json, sys
from pipeline import PageRAG
from pipeline.config import load_config
from pipeline.testing.fakes import FakeEmbedder
rag = PageRAG(load_config(), embedder=FakeEmbedder(seconds_per_page=0.5))
report = rag.ingest([sys.argv[1]], engine="ray", handle_signals=True,
                    progress=lambda e: print("progress", e.pages_done, flush=True))
print("report", json.dumps(report.to_dict()), flush=True)
"""


def _start_driver(docs: Path, data: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PAGERAG_STORE__PATH": str(data),
        "PAGERAG_RENDER__DPI": "60",
        "PAGERAG_RAY__PAGES_PER_TASK": "1",
        "PAGERAG_RAY__NUM_CPUS": "2",
    }
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(docs)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def _wait_for_pages(proc: subprocess.Popen[str], pages: int) -> None:
    """Read the driver's progress until ``pages`` pages are stored (the job still running)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("progress") and int(line.split()[1]) >= pages:
            return
    pytest.fail(f"the driver ended before storing {pages} pages")


@pytest.mark.slow  # ~90 s: a second local Ray (the driver's own), then two more runs
def test_a_sigkilled_driver_is_resumed_by_a_rerun(
    local_ray: None, docs: Path, tmp_path: Path
) -> None:
    """A driver killed with SIGKILL once pages are stored; a rerun ends identical to a
    clean run."""
    data = tmp_path / "data"
    with _start_driver(docs, data) as proc:
        try:
            _wait_for_pages(proc, 2)
        finally:
            proc.kill()  # SIGKILL, the driver only: its local Ray notices and exits
            proc.wait()
            time.sleep(2)
            with contextlib.suppress(ProcessLookupError):  # what it started and left behind
                os.killpg(proc.pid, signal.SIGKILL)
    rerun = ingest(data, [docs], "ray")
    assert rerun.exit_code == 1  # the bad file
    assert snapshot(data).problems() == []
    assert snapshot(data).comparable() == snapshot(_clean(tmp_path, docs)).comparable()


def _comparable(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(
        (Path(o["path"]).name, o["status"], o["reason"], o["pages"], o["message"])
        for o in report["outcomes"]
    )


def test_cli_engine_ray_prints_the_local_report(
    local_ray: None, docs: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """``pagerag ingest --engine ray --embed-actors 1 --json``: the local job's JSON and
    exit code (this process's Ray is used: it is running already)."""
    from tests.clirun import cli_env, invoke_json

    results = {}
    for engine in ("local", "ray"):
        env = cli_env(tmp_path / engine, tiny_model_dir, ray__pages_per_task="3")
        extra = ("--embed-actors", "1", "--gpus-per-actor", "0") if engine == "ray" else ()
        results[engine] = invoke_json(env, "ingest", docs, "--engine", engine, *extra, "--json")
    (code, distributed), (local_code, local) = results["ray"], results["local"]
    assert isinstance(distributed, dict), distributed
    assert code == local_code == 1  # the bad file
    assert set(distributed) == set(local)
    assert (
        distributed["files"]
        == local["files"]
        == {
            "ingested": 3,
            "skipped": 0,
            "partial": 0,
            "failed": 1,
        }
    )
    assert _comparable(distributed) == _comparable(local)


@pytest.mark.slow  # ~60 s: the driver starts its own local Ray
def test_sigterm_stops_the_job_cleanly_and_a_rerun_completes(
    local_ray: None, docs: Path, tmp_path: Path
) -> None:
    """SIGTERM to a driver (``handle_signals``, as the CLI runs it) after ray.init, which
    installs its own SIGTERM handler: the job stops after the batch in flight, reports
    interrupted, marks nothing incomplete; a rerun ends identical to a clean run."""
    data = tmp_path / "data"
    with _start_driver(docs, data) as proc:
        _wait_for_pages(proc, 2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    with contextlib.suppress(ProcessLookupError):  # what it started and left behind
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out  # the job returned its report
    (line,) = [x for x in out.splitlines() if x.startswith("report ")]
    report = json.loads(line.removeprefix("report "))
    assert report["interrupted"] is True and len(report["outcomes"]) == 4
    assert snapshot(data).problems() == []
    ingest(data, [docs], "ray")
    assert snapshot(data).comparable() == snapshot(_clean(tmp_path, docs)).comparable()
