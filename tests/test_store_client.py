"""ClientPageStore (qdrant-client) against every engine reachable from here.

* ``TestMemoryStore``: the shared contract on qdrant-client's ``:memory:`` mode;
  one in-memory client per test so reopening is testable.
* ``TestServerStore``: the same contract on a real Qdrant server, over gRPC and
  REST: ``$QDRANT_URL`` (+ ``$QDRANT_API_KEY``, ``$QDRANT_GRPC_PORT``) when set,
  else a testcontainers Qdrant; skipped with the reason when neither exists.
* ``TestGrpcWireStore``: the contract through qdrant-client's real gRPC code
  path (message building and REST<->gRPC conversions), with the gRPC stubs
  answered by a ``:memory:`` client instead of a server.
* Error handling, retries, batching and filters, offline: unreachable and
  refusing servers are loopback sockets; flaky writes wrap a memory client.
"""

from __future__ import annotations

import dataclasses
import http.server
import ipaddress
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from pydantic import SecretStr
from qdrant_client import QdrantClient
from qdrant_client import grpc as g
from qdrant_client import models as qm
from qdrant_client.conversions.conversion import GrpcToRest as G2R
from qdrant_client.conversions.conversion import RestToGrpc as R2G
from qdrant_client.http.exceptions import ResponseHandlingException

from connectors.qdrant_client import ClientPageStore, _classify, _page_filter
from pipeline.config import StoreConfig
from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    QueryError,
    StoreError,
    StoreUnavailableError,
)
from pipeline.retrieve.store import COLLECTION_POINT_ID, IMAGE_FIELD, PageStore
from pipeline.types import CollectionSpec, PageFilter, PagePoint

# Pinned: qdrant-client 1.20 supports servers within one minor version.
from tests.conftest import Server
from tests.store_contract import SPEC, PageStoreContract, make_points, maxsim, record

SECRET = "sekrit-123"


# --------------------------------------------------------------------------- :memory:


class TestMemoryStore(PageStoreContract):
    @pytest.fixture
    def make_store(self) -> Iterator[Callable[..., PageStore]]:
        client = QdrantClient(location=":memory:")
        config = StoreConfig(url=":memory:", upsert_batch=4)

        def factory(spec: CollectionSpec, *, create: bool = True) -> PageStore:
            store = ClientPageStore(config, client=client)
            store.open(spec, create=create)
            return store

        yield factory
        client.close()


# --------------------------------------------------------------------------- server


def _allowed(address: object, hosts: set[str]) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX (the Docker socket)
    host = str(address[0])
    if host in hosts or host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.mark.docker
@pytest.mark.parametrize("prefer_grpc", [True, False], ids=["grpc", "rest"], scope="class")
class TestServerStore(PageStoreContract):
    @pytest.fixture(autouse=True)
    def _block_network(self, monkeypatch: pytest.MonkeyPatch, qdrant_server: Server) -> None:
        """Overrides conftest's guard: loopback and the test server only."""
        host = urlsplit(qdrant_server.url).hostname or "localhost"
        hosts = {host} | {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex

        def check(address: Any) -> None:
            if not _allowed(address, hosts):
                raise RuntimeError(f"tests may only reach the Qdrant server (tried {address!r})")

        def guarded(sock: socket.socket, address: Any) -> None:
            check(address)
            real_connect(sock, address)

        def guarded_ex(sock: socket.socket, address: Any) -> int:
            check(address)
            return real_connect_ex(sock, address)

        monkeypatch.setattr(socket.socket, "connect", guarded)
        monkeypatch.setattr(socket.socket, "connect_ex", guarded_ex)

    @pytest.fixture
    def make_store(
        self, qdrant_server: Server, prefer_grpc: bool
    ) -> Iterator[Callable[..., PageStore]]:
        name = f"pagerag-test-{uuid.uuid4().hex[:12]}"
        config = StoreConfig(
            url=qdrant_server.url,
            grpc_port=qdrant_server.grpc_port,
            api_key=SecretStr(qdrant_server.api_key) if qdrant_server.api_key else None,
            prefer_grpc=prefer_grpc,
            timeout_s=30,
            upsert_batch=4,
            collection=name,
        )
        stores: list[ClientPageStore] = []

        def factory(spec: CollectionSpec, *, create: bool = True) -> PageStore:
            store = ClientPageStore(config)
            stores.append(store)
            store.open(dataclasses.replace(spec, name=name), create=create)
            return store

        yield factory
        for store in stores:
            store.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # api key over http
            admin = QdrantClient(
                url=qdrant_server.url, api_key=qdrant_server.api_key, check_compatibility=False
            )
        try:
            admin.delete_collection(name)
        finally:
            admin.close()


# --------------------------------------------------------------------------- gRPC wire


class _CollectionsBridge:
    """Qdrant's Collections + root gRPC services, answered by a ``:memory:`` client.

    Requests arrive as the protobuf messages qdrant-client built and leave as
    protobuf replies, so the client's REST<->gRPC conversions run both ways: the
    production path (``prefer_grpc``) minus the network and the server.
    """

    def __init__(self, local: QdrantClient) -> None:
        self.local = local

    def HealthCheck(self, request: Any, timeout: Any = None) -> Any:
        return g.HealthCheckReply(title="bridge", version="1.20.0")

    def CollectionExists(self, request: Any, timeout: Any = None) -> Any:
        exists = self.local.collection_exists(request.collection_name)
        return g.CollectionExistsResponse(result=g.CollectionExists(exists=exists))

    def Create(self, request: Any, timeout: Any = None) -> Any:
        assert request.on_disk_payload
        assert request.hnsw_config.m == 0
        self.local.create_collection(
            request.collection_name,
            vectors_config=G2R.convert_vectors_config(request.vectors_config),
        )
        return g.CollectionOperationResponse(result=True)

    def Get(self, request: Any, timeout: Any = None) -> Any:
        info = self.local.get_collection(request.collection_name)
        return g.GetCollectionInfoResponse(result=R2G.convert_collection_info(info))


class _PointsBridge:
    def __init__(self, local: QdrantClient) -> None:
        self.local = local
        self.upserts: list[tuple[int, bool]] = []

    @staticmethod
    def _ok() -> Any:
        return g.PointsOperationResponse(
            result=g.UpdateResult(operation_id=0, status=g.UpdateStatus.Completed)
        )

    @staticmethod
    def _records(records: list[qm.Record]) -> list[Any]:
        return [
            R2G.convert_record(r.model_copy(update={"payload": r.payload or {}})) for r in records
        ]

    @staticmethod
    def _filter(request: Any) -> qm.Filter | None:
        return G2R.convert_filter(request.filter) if request.HasField("filter") else None

    def CreateFieldIndex(self, request: Any, timeout: Any = None) -> Any:
        return self._ok()

    def Upsert(self, request: Any, timeout: Any = None) -> Any:
        self.upserts.append((len(request.points), request.wait))
        points = [G2R.convert_point_struct(p) for p in request.points]
        self.local.upsert(request.collection_name, points=points)
        return self._ok()

    def Get(self, request: Any, timeout: Any = None) -> Any:
        records = self.local.retrieve(
            request.collection_name,
            ids=[G2R.convert_point_id(i) for i in request.ids],
            with_payload=G2R.convert_with_payload_selector(request.with_payload),
            with_vectors=G2R.convert_with_vectors_selector(request.with_vectors),
        )
        return g.GetResponse(result=self._records(records))

    def Scroll(self, request: Any, timeout: Any = None) -> Any:
        offset = G2R.convert_point_id(request.offset) if request.HasField("offset") else None
        records, next_offset = self.local.scroll(
            request.collection_name,
            scroll_filter=self._filter(request),
            limit=request.limit,
            offset=offset,
            with_payload=G2R.convert_with_payload_selector(request.with_payload),
        )
        return g.ScrollResponse(
            result=self._records(records),
            next_page_offset=(
                R2G.convert_extended_point_id(next_offset) if next_offset is not None else None
            ),
        )

    def Count(self, request: Any, timeout: Any = None) -> Any:
        result = self.local.count(request.collection_name, count_filter=self._filter(request))
        return g.CountResponse(result=g.CountResult(count=result.count))

    def Query(self, request: Any, timeout: Any = None) -> Any:
        response = self.local.query_points(
            request.collection_name,
            query=G2R.convert_query(request.query),
            using=request.using,
            prefetch=[G2R.convert_prefetch_query(p) for p in request.prefetch] or None,
            query_filter=self._filter(request),
            limit=request.limit,
            with_payload=G2R.convert_with_payload_selector(request.with_payload),
        )
        return g.QueryResponse(result=[R2G.convert_scored_point(p) for p in response.points])

    def Delete(self, request: Any, timeout: Any = None) -> Any:
        selector = G2R.convert_points_selector(request.points)
        self.local.delete(request.collection_name, points_selector=selector)
        return self._ok()


class _Channel:
    def close(self) -> None:
        pass


def _grpc_bridged_client(local: QdrantClient) -> tuple[QdrantClient, _PointsBridge]:
    """A gRPC QdrantClient whose stubs are the bridges (skips if the internals moved)."""
    client = QdrantClient(url="http://127.0.0.1:1", prefer_grpc=True, check_compatibility=False)
    remote: Any = client._client  # QdrantRemote; private, hence the guard below
    needed = ("_grpc_channel_pool", "_grpc_points_client_pool", "_grpc_collections_client_pool")
    if not all(hasattr(remote, name) for name in needed):
        pytest.skip("qdrant-client's gRPC internals changed: the wire bridge needs updating")
    points = _PointsBridge(local)
    collections = _CollectionsBridge(local)
    remote._grpc_channel_pool = [_Channel()]
    remote._get_grpc_pool_size = lambda: 1
    remote._grpc_points_client_pool = [points]
    remote._grpc_collections_client_pool = [collections]
    remote._grpc_root_client_pool = [collections]
    return client, points


class TestGrpcWireStore(PageStoreContract):
    """The contract through qdrant-client's gRPC code path (prefer_grpc, the server default)."""

    @pytest.fixture
    def make_store(self) -> Iterator[Callable[..., PageStore]]:
        local = QdrantClient(location=":memory:")
        client, _ = _grpc_bridged_client(local)
        config = StoreConfig(url="http://127.0.0.1:1", upsert_batch=4)

        def factory(spec: CollectionSpec, *, create: bool = True) -> PageStore:
            store = ClientPageStore(config, client=client)
            store.open(spec, create=create)
            return store

        yield factory
        local.close()


def test_grpc_two_stage_search_and_batches() -> None:
    local = QdrantClient(location=":memory:")
    client, points_bridge = _grpc_bridged_client(local)
    spec = dataclasses.replace(SPEC, pooled=("rows",))
    store = ClientPageStore(StoreConfig(url="http://127.0.0.1:1", upsert_batch=3), client=client)
    store.open(spec)
    points = [
        dataclasses.replace(p, vectors={"full": p.vectors["full"], "rows": p.vectors["full"][:4]})
        for p in make_points("doc-a", 7, source="/data/a.pdf")
    ]
    store.upsert_pages(points)
    assert points_bridge.upserts[1:] == [(3, True), (3, True), (1, True)]  # [0]: the manifest
    query = np.ones((2, SPEC.dim), np.float16)
    hits = store.search(
        query, k=3, prefetch=[("rows", 5)], filter=PageFilter(source_prefix="/data")
    )
    assert len(hits) == 3
    assert store.stats().engine == "qdrant-server"
    local.close()


# --------------------------------------------------------------------------- errors


def _assert_no_secret(error: BaseException) -> None:
    assert SECRET not in str(error)
    assert SECRET not in repr(error)
    assert error.__cause__ is None or SECRET not in repr(error.__cause__)


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
def test_unreachable_server_fails_fast_naming_the_url(prefer_grpc: bool) -> None:
    config = StoreConfig(
        url="http://127.0.0.1:1",
        grpc_port=1,
        prefer_grpc=prefer_grpc,
        api_key=SecretStr(SECRET),
        timeout_s=5,
    )
    store = ClientPageStore(config)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        store.open(SPEC)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "http://127.0.0.1:1" in message
    assert "docker compose up -d qdrant" in message
    assert "store.url" in message
    _assert_no_secret(info.value)
    store.close()


def test_constructor_is_cheap_and_never_connects() -> None:
    store = ClientPageStore(StoreConfig(url="http://127.0.0.1:1"))
    assert store._client is None
    store.close()


def test_credentials_in_url_are_not_shown() -> None:
    store = ClientPageStore(
        StoreConfig(url=f"http://admin:{SECRET}@127.0.0.1:1/?api-key={SECRET}", prefer_grpc=False)
    )
    with pytest.raises(StoreUnavailableError) as info:
        store.open(SPEC)
    assert "http://127.0.0.1:1" in str(info.value)
    _assert_no_secret(info.value)


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    status = 401

    def do_GET(self) -> None:
        body = b'{"status": {"error": "Must provide an API key or an Authorization bearer token"}}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_refused_api_key_is_reported_without_echoing_it(refusing_server: str) -> None:
    store = ClientPageStore(
        StoreConfig(url=refusing_server, prefer_grpc=False, api_key=SecretStr(SECRET))
    )
    with pytest.raises(StoreUnavailableError) as info:
        store.open(SPEC)
    message = str(info.value)
    assert "refused the configured API key" in message
    assert "QDRANT_API_KEY" in message
    assert refusing_server in message
    _assert_no_secret(info.value)
    store.close()


def test_missing_api_key_says_how_to_set_it(refusing_server: str) -> None:
    store = ClientPageStore(StoreConfig(url=refusing_server, prefer_grpc=False))
    with pytest.raises(StoreUnavailableError, match=r"requires an API key.*QDRANT_API_KEY"):
        store.open(SPEC)
    store.close()


def test_silent_server_times_out_with_a_clear_error() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (backlog) but never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    store = ClientPageStore(StoreConfig(url=url, prefer_grpc=False, timeout_s=1))
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="did not answer within") as info:
            store.open(SPEC)
        assert time.monotonic() - started < 5
        assert url in str(info.value)
    finally:
        store.close()
        listener.close()


def test_missing_collection_without_create_says_to_ingest() -> None:
    store = ClientPageStore(StoreConfig(url=":memory:"))
    with pytest.raises(CollectionNotFoundError, match="pagerag ingest"):
        store.open(SPEC, create=False)
    assert store.spec() is None
    store.close()


# --------------------------------------------------------------------------- writes


@pytest.fixture
def memory_client() -> Iterator[QdrantClient]:
    client = QdrantClient(location=":memory:")
    yield client
    client.close()


def _connect_error() -> ResponseHandlingException:
    return ResponseHandlingException(httpx.ConnectError("[Errno 111] Connection refused"))


def test_upserts_are_batched_and_waited(
    memory_client: QdrantClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, bool]] = []
    real_upsert = memory_client.upsert

    def spy(collection_name: str, points: Any, **kwargs: Any) -> Any:
        calls.append((len(points), kwargs.get("wait", False)))
        return real_upsert(collection_name, points=points, **kwargs)

    store = ClientPageStore(StoreConfig(url=":memory:", upsert_batch=3), client=memory_client)
    store.open(SPEC)
    monkeypatch.setattr(memory_client, "upsert", spy)
    store.upsert_pages(make_points("doc-a", 8, source="/data/a.pdf"))
    assert calls == [(3, True), (3, True), (2, True)]
    assert store.count_pages() == 8


def test_parallel_upserts_send_every_batch_once(
    memory_client: QdrantClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = threading.Lock()
    seen: list[str] = []
    real_upsert = memory_client.upsert

    def spy(collection_name: str, points: Any, **kwargs: Any) -> Any:
        with lock:
            seen.extend(str(p.id) for p in points)
            return real_upsert(collection_name, points=points, **kwargs)

    store = ClientPageStore(
        StoreConfig(url=":memory:", upsert_batch=2), client=memory_client, upsert_parallel=3
    )
    store.open(SPEC)
    monkeypatch.setattr(memory_client, "upsert", spy)
    points = make_points("doc-a", 9, source="/data/a.pdf")
    store.upsert_pages(points)
    assert sorted(seen) == sorted(p.point_id for p in points)
    assert store.count_pages() == 9


def test_transient_write_errors_are_retried(
    memory_client: QdrantClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = iter([_connect_error(), _connect_error()])
    real_upsert = memory_client.upsert

    def flaky(*args: Any, **kwargs: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return real_upsert(*args, **kwargs)

    store = ClientPageStore(
        StoreConfig(url=":memory:", upsert_retries=3), client=memory_client, retry_backoff_s=0
    )
    store.open(SPEC)
    monkeypatch.setattr(memory_client, "upsert", flaky)
    store.upsert_pages(make_points("doc-a", 2, source="/data/a.pdf"))
    assert store.count_pages() == 2


def test_outage_outlasting_the_retries_raises_store_unavailable(
    memory_client: QdrantClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = 0

    def down(*args: Any, **kwargs: Any) -> Any:
        nonlocal attempts
        attempts += 1
        raise _connect_error()

    store = ClientPageStore(
        StoreConfig(url=":memory:", upsert_retries=2), client=memory_client, retry_backoff_s=0
    )
    store.open(SPEC)
    monkeypatch.setattr(memory_client, "upsert", down)
    with pytest.raises(StoreUnavailableError, match="Connection refused") as info:
        store.upsert_pages(make_points("doc-a", 1, source="/data/a.pdf"))
    assert attempts == 3
    assert info.value.__cause__ is None  # no library traceback for users
    with pytest.raises(StoreUnavailableError):
        store.mark_complete(record("doc-a", "/data/a.pdf", 1))


def test_bad_requests_are_not_retried(
    memory_client: QdrantClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qdrant_client.http.exceptions import UnexpectedResponse

    attempts = 0

    def rejected(*args: Any, **kwargs: Any) -> Any:
        nonlocal attempts
        attempts += 1
        raise UnexpectedResponse(
            400,
            "Bad Request",
            b'{"status": {"error": "Wrong input: vector too large"}}',
            httpx.Headers(),
        )

    store = ClientPageStore(
        StoreConfig(url=":memory:", upsert_retries=4), client=memory_client, retry_backoff_s=0
    )
    store.open(SPEC)
    monkeypatch.setattr(memory_client, "upsert", rejected)
    with pytest.raises(StoreError, match="vector too large") as info:
        store.upsert_pages(make_points("doc-a", 1, source="/data/a.pdf"))
    assert not isinstance(info.value, StoreUnavailableError)
    assert attempts == 1


def test_batches_are_bounded_by_request_size() -> None:
    store = ClientPageStore(StoreConfig(url=":memory:", upsert_batch=50))
    big = "A" * (10 * 2**20)  # a 10 MB base64 image: three of them exceed one request
    points = [
        dataclasses.replace(p, payload={**p.payload, IMAGE_FIELD: big})
        for p in make_points("doc-a", 3, source="/data/a.pdf")
    ]
    small = make_points("doc-b", 120, source="/data/b.pdf")
    assert [len(b) for b in store._batches(points)] == [2, 1]
    assert [len(b) for b in store._batches(small)] == [50, 50, 20]


def test_wrong_vector_shape_is_refused_before_sending(memory_client: QdrantClient) -> None:
    store = ClientPageStore(StoreConfig(url=":memory:"), client=memory_client)
    store.open(SPEC)
    bad = PagePoint(
        point_id=str(uuid.uuid4()), vectors={"full": np.zeros((3, 7), np.float16)}, payload={}
    )
    with pytest.raises(ValueError, match=r"expected \(tokens, 16\)"):
        store.upsert_pages([bad])
    extra = dataclasses.replace(
        bad, vectors={"full": np.zeros((3, 16), np.float16), "rows": np.zeros((2, 16), np.float16)}
    )
    with pytest.raises(ValueError, match=r"vectors \['rows'\] that collection"):
        store.upsert_pages([extra])
    assert store.count_pages() == 0


# --------------------------------------------------------------------------- reads


def test_two_stage_search_with_pooled_vectors(memory_client: QdrantClient) -> None:
    spec = dataclasses.replace(SPEC, name="pooled", pooled=("rows",))
    store = ClientPageStore(StoreConfig(url=":memory:"), client=memory_client)
    store.open(spec)
    points = []
    for p in make_points("doc-a", 6, source="/data/a.pdf") + make_points(
        "doc-b", 6, source="/other/b.pdf", seed=3
    ):
        full = p.vectors["full"]
        rows = full.reshape(4, 3, SPEC.dim).mean(axis=1).astype(np.float16)
        points.append(dataclasses.replace(p, vectors={"full": full, "rows": rows}))
    store.upsert_pages(points)
    query = np.random.default_rng(5).standard_normal((3, SPEC.dim)).astype(np.float16)
    hits = store.search(query, k=3, prefetch=[("rows", 12)])
    expected = sorted(points, key=lambda p: -maxsim(query, p.vectors["full"]))[:3]
    assert [h.point_id for h in hits] == [p.point_id for p in expected]
    filtered = store.search(
        query, k=10, prefetch=[("rows", 4)], filter=PageFilter(source_prefix="/other")
    )
    assert filtered
    assert {h.payload["document_id"] for h in filtered} == {"doc-b"}
    coarse = store.search(query, k=2, using="rows")
    assert len(coarse) == 2
    assert set(store.page_vectors([points[0].point_id], using="rows")) == {points[0].point_id}


def test_reopen_adds_missing_pooled_vectors(
    memory_client: QdrantClient, caplog: pytest.LogCaptureFixture
) -> None:
    first = ClientPageStore(StoreConfig(url=":memory:"), client=memory_client)
    first.open(SPEC)
    first.upsert_pages(make_points("doc-a", 2, source="/data/a.pdf"))
    wants_pooled = dataclasses.replace(SPEC, pooled=("rows",), quantization="binary")
    again = ClientPageStore(StoreConfig(url=":memory:"), client=memory_client)
    with caplog.at_level("WARNING"):
        again.open(wants_pooled)
    assert "existing pages lack them" in caplog.text
    assert again.spec() == wants_pooled
    params = memory_client.get_collection("contract").config.params.vectors
    assert isinstance(params, dict)
    assert set(params) == {"full", "rows"}


def test_manifest_problems_are_refused(memory_client: QdrantClient) -> None:
    store = ClientPageStore(StoreConfig(url=":memory:"), client=memory_client)
    store.open(SPEC)
    memory_client.set_payload("contract", {"schema_version": 99}, points=[COLLECTION_POINT_ID])
    with pytest.raises(StoreError, match="newer pagerag"):
        ClientPageStore(StoreConfig(url=":memory:"), client=memory_client).open(SPEC)
    store.upsert_pages(make_points("doc-a", 1, source="/data/a.pdf"))
    memory_client.delete("contract", points_selector=[COLLECTION_POINT_ID])
    with pytest.raises(CollectionMismatchError, match="no pagerag manifest"):
        ClientPageStore(StoreConfig(url=":memory:"), client=memory_client).open(SPEC)


def test_empty_collection_without_manifest_is_adopted(memory_client: QdrantClient) -> None:
    store = ClientPageStore(StoreConfig(url=":memory:"), client=memory_client)
    store.open(SPEC)
    memory_client.delete("contract", points_selector=[COLLECTION_POINT_ID])
    assert store.spec() is None
    ClientPageStore(StoreConfig(url=":memory:"), client=memory_client).open(SPEC)
    assert store.spec() == SPEC


def test_mismatch_message_says_how_to_fix(memory_client: QdrantClient) -> None:
    ClientPageStore(StoreConfig(url=":memory:"), client=memory_client).open(SPEC)
    other = dataclasses.replace(SPEC, model="vidore/colqwen2")
    with pytest.raises(CollectionMismatchError) as info:
        ClientPageStore(StoreConfig(url=":memory:"), client=memory_client).open(other)
    message = str(info.value)
    for words in (
        "'contract'",
        "vidore/colqwen2",
        f"set embedding.model back to {SPEC.model!r}",
        "store.collection",
        "re-ingest",
    ):
        assert words in message


def test_spec_round_trips_through_the_manifest(memory_client: QdrantClient) -> None:
    spec = dataclasses.replace(SPEC, pooled=("rows", "cols"), quantization="scalar", on_disk=True)
    ClientPageStore(StoreConfig(url=":memory:"), client=memory_client).open(spec)
    reader = ClientPageStore(
        StoreConfig(url=":memory:", collection="contract"), client=memory_client
    )
    assert reader.spec() == spec


def test_queries_are_validated(memory_client: QdrantClient) -> None:
    store = ClientPageStore(StoreConfig(url=":memory:"), client=memory_client)
    store.open(SPEC)
    good = np.ones((2, SPEC.dim), np.float16)
    with pytest.raises(QueryError, match="k must be"):
        store.search(good, k=0)
    with pytest.raises(QueryError, match="tokens, 16"):
        store.search(np.ones((2, 8), np.float16), k=1)
    with pytest.raises(QueryError, match="unknown vector 'rows'"):
        store.search(good, k=1, prefetch=[("rows", 10)])
    with pytest.raises(QueryError, match="metadata key"):
        store.search(good, k=1, filter=PageFilter(metadata={"a.b": "x"}))


def test_stats_name_the_engine_and_location(memory_client: QdrantClient) -> None:
    store = ClientPageStore(StoreConfig(url=":memory:"), client=memory_client)
    store.open(SPEC)
    stats = store.stats()
    assert (stats.engine, stats.location, stats.bytes_on_disk) == (
        "qdrant-memory",
        ":memory:",
        None,
    )


def test_calls_before_open_explain_themselves() -> None:
    store = ClientPageStore(StoreConfig(url=":memory:"))
    with pytest.raises(StoreError, match="call open"):
        store.count_pages()


def test_page_filter_translation() -> None:
    flt = _page_filter(
        PageFilter(document_ids=("a", "b"), source_prefix="/data/", metadata={"team": "x"})
    )
    assert flt.must is not None
    must = list(flt.must) if isinstance(flt.must, list) else [flt.must]
    keys = [getattr(c, "key", None) for c in must]
    assert keys == ["kind", "document_id", None, "meta.team"]
    assert isinstance(must[1].match, qm.MatchAny)  # type: ignore[union-attr]
    source = must[2]
    assert isinstance(source, qm.Filter)
    assert [c.key for c in source.should] == ["source", "source_alias", "source_dirs"]  # type: ignore[union-attr]
    assert {c.match.value for c in source.should} == {"/data"}  # type: ignore[union-attr]


class _FakeRpcError(Exception):
    def __init__(self, name: str) -> None:
        import grpc

        self._code = getattr(grpc.StatusCode, name)

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return "failed to connect to all addresses"


@pytest.mark.parametrize(
    ("name", "kind", "transient"),
    [
        ("UNAVAILABLE", "unreachable", True),
        ("DEADLINE_EXCEEDED", "timeout", True),
        ("UNAUTHENTICATED", "auth", False),
        ("PERMISSION_DENIED", "auth", False),
        ("INVALID_ARGUMENT", "rejected", False),
    ],
)
def test_grpc_errors_are_classified(name: str, kind: str, transient: bool) -> None:
    import grpc

    error_type = type("RpcErr", (_FakeRpcError, grpc.RpcError), {})
    failure = _classify(error_type(name))
    assert failure is not None
    assert (failure.kind, failure.transient) == (kind, transient)


@pytest.mark.parametrize(
    ("url", "warns"),
    [
        ("http://qdrant:6333", False),  # a compose service name: a private network
        ("http://localhost:6333", False),
        ("http://10.0.3.7:6333", False),
        ("http://192.168.1.20:6333", False),
        ("http://[fd00::5]:6333", False),
        ("https://qdrant.example.com:6333", False),  # encrypted
        ("http://qdrant.example.com:6333", True),
        ("http://93.184.216.34:6333", True),
    ],
)
def test_api_key_over_plain_http_warns_only_for_hosts_that_may_be_public(
    url: str, warns: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from pydantic import SecretStr

    from pipeline.config import StoreConfig

    secret = "s3cr3t-api-key"
    store = ClientPageStore(StoreConfig(url=url, api_key=SecretStr(secret), prefer_grpc=False))
    with caplog.at_level("WARNING"):
        store._make_client().close()  # builds the client; nothing is sent
    assert ("sent unencrypted" in caplog.text) is warns
    assert secret not in caplog.text
