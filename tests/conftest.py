"""Test-wide guards: no network, offline model hub, deterministic BLAS.

The network guard refuses every connection that is not to loopback, so a
test that would download a model or call a real API fails loudly instead of
hanging or passing by luck. Loopback stays open for local test servers.
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.corpus import corpus_location, missing_reason

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
CORPUS = corpus_location()  # read before the PAGERAG_* variables are cleared
os.environ.pop("PAGERAG_CONFIG", None)
for _name in [n for n in os.environ if n.startswith("PAGERAG_")]:
    os.environ.pop(_name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run only when selected (``-m slow``), skipped with the reason."""
    expression = config.getoption("markexpr") or ""
    if "slow" in expression and "not slow" not in expression:
        return
    skip = pytest.mark.skip(reason="slow: minutes of work; select with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class NetworkBlockedError(OSError):
    """An OSError, like a real refused connection, so libraries close their sockets."""


def _is_loopback(address: object) -> bool:
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX socket paths
    if not (isinstance(address, tuple) and address):
        return False
    host = str(address[0])
    try:
        return host in ("localhost", "") or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded_connect(self: socket.socket, address: object) -> None:
        if not _is_loopback(address):
            raise NetworkBlockedError(f"tests may not reach the network (tried {address!r})")
        return real_connect(self, address)  # type: ignore[arg-type]

    def guarded_connect_ex(self: socket.socket, address: object) -> int:
        if not _is_loopback(address):
            raise NetworkBlockedError(f"tests may not reach the network (tried {address!r})")
        return real_connect_ex(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(missing_reason(CORPUS))
    return CORPUS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in ColPali model, built once per session (~0.5 s)."""
    from pipeline.testing.tiny_colpali import build

    return build(tmp_path_factory.mktemp("tiny-colpali"))


TORCH_MISSING = (
    "the torch backend's extra is not installed (pip install 'pagerag[torch]'; "
    "scripts/setup.sh --dev installs it unless PAGERAG_TORCH=0)"
)


@pytest.fixture(scope="session")
def tiny_torch_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The torch backend's stand-ins (pipeline.testing.tiny_torch), by family, built
    once per session: ColQwen2.5 and ColSmol (ColIdefics3). Importing colpali-engine
    costs ~10-20 s once; each build well under a second."""
    pytest.importorskip("colpali_engine", reason=TORCH_MISSING)
    from pipeline.testing.tiny_torch import BUILDERS, build

    return {family: build(family, tmp_path_factory.mktemp(f"tiny-{family}")) for family in BUILDERS}


# --------------------------------------------------------------------------- a real Qdrant

QDRANT_IMAGE = "qdrant/qdrant:v1.20.0"  # as docker-compose.yml (tests/test_deployment.py checks)
TEST_API_KEY = "pagerag-test-key"


@dataclasses.dataclass(frozen=True)
class Server:
    url: str
    grpc_port: int
    api_key: str | None


def _docker_skip_reason(exc: Exception) -> str:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return f"no Docker engine reachable ({first_line}); set QDRANT_URL to run against a server"


@pytest.fixture(scope="session")
def qdrant_server() -> Iterator[Server]:
    url = os.environ.get("QDRANT_URL")
    if url:
        yield Server(
            url=url,
            grpc_port=int(os.environ.get("QDRANT_GRPC_PORT", "6334")),
            api_key=os.environ.get("QDRANT_API_KEY") or None,
        )
        return
    try:
        from docker.errors import DockerException
        from testcontainers.community.qdrant import QdrantContainer
    except ImportError as exc:
        pytest.skip(f"testcontainers is not installed ({exc}); set QDRANT_URL to run")
    reason = None
    with warnings.catch_warnings():
        # A failed Docker probe leaves its unix socket to the garbage collector.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            container = QdrantContainer(QDRANT_IMAGE, api_key=TEST_API_KEY)
        except DockerException as exc:
            reason = _docker_skip_reason(exc)
        # Outside the except block, so the traceback holding the socket is gone.
        gc.collect()
    if reason is not None:
        pytest.skip(reason)
    with container:
        yield Server(
            url=f"http://{container.get_container_host_ip()}:{container.exposed_rest_port}",
            grpc_port=int(container.exposed_grpc_port),
            api_key=TEST_API_KEY,
        )
