"""``ClientPageStore``: the :class:`~pipeline.retrieve.store.PageStore` on a Qdrant server.

It talks to Qdrant through ``qdrant_client.QdrantClient``: a server or cluster
at ``store.url`` (gRPC preferred), or the client's in-process ``:memory:``
mode for throwaway stores and tests. The collection layout is the one the
``pipeline.retrieve.store`` docstring describes (page points, vectorless document and
collection points in one collection).

Why it looks the way it does:

* **Exact MaxSim.** Every multivector is ``DOT`` + ``MAX_SIM`` with HNSW
  disabled (``m=0``): an HNSW graph over late-interaction vectors costs a lot
  to build and would make results approximate; ColPali pages are scored
  exactly, and speed comes from two-stage retrieval over pooled vectors.
* **Durability before completion marks.** Every write waits (``wait=True``),
  so when ``upsert_pages`` returns the pages are applied; ``flush`` is then a
  no-op and ``mark_complete`` can safely follow.
* **Transient failures are retried, the rest fail fast.** Writes and the
  reads a batch job makes (document lookups, scrolls, counts, vectors) retry
  with exponential backoff (``store.upsert_retries``) on connection errors,
  timeouts, 5xx and 429; re-sending is safe because point ids are
  deterministic. ``open``, ``search`` and ``page_image`` do not retry: a
  person is waiting, and an unreachable server should say so at once.
* **No library tracebacks, no secrets.** Every qdrant-client, httpx and gRPC
  exception is turned into a :class:`~pipeline.errors.StoreError` whose
  message names the server URL (without credentials) and says what to check.
  The API key is never put in a message.
* **Local mode quirks.** ``:memory:`` ignores datatypes, quantization and
  payload indexes and returns float64 vectors: indexes are skipped there and
  vectors are converted back to float16 on the way out.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import math
import threading
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc  # a qdrant-client dependency: its errors surface from gRPC calls
import httpx
import numpy as np
import tenacity
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from pipeline.config import StoreConfig
from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    QueryError,
    StoreError,
    StoreUnavailableError,
)
from pipeline.retrieve.store import (
    COLLECTION_POINT_ID,
    IMAGE_FIELD,
    KIND_DOCUMENT,
    KIND_PAGE,
    adopt_identity,
    check_manifest_version,
    manifest_payload,
    record_from_payload,
    record_to_payload,
    spec_from_manifest,
    weights_problem,
    weights_remedy,
)
from pipeline.types import (
    CollectionSpec,
    DocumentRecord,
    Float16Array,
    PageFilter,
    PagePoint,
    ScoredPage,
    StoreStats,
    document_point_id,
)

__all__ = ["ClientPageStore"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

MEMORY_URL = ":memory:"
_UPDATE_CHUNK = 64  # pages per update_vectors request
# Payload fields filtered on by every search, count and delete.
INDEXED_FIELDS = ("kind", "document_id", "source", "source_alias", "source_dirs")
_DATATYPES = {"float16": qm.Datatype.FLOAT16, "float32": qm.Datatype.FLOAT32}
_VECTOR_DATATYPES = {
    "float16": qm.VectorStorageDatatype.FLOAT16,
    "float32": qm.VectorStorageDatatype.FLOAT32,
}
_MAX_SIM = qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM)
# Exact MaxSim: no HNSW graph on any multivector, now or added later.
_NO_HNSW = qm.HnswConfigDiff(m=0)
# Candidates rescored per result on a quantized collection (as connectors.qdrant_edge):
# binary codes rank MaxSim far more coarsely than int8, so they need a wider net.
_OVERSAMPLING = {"scalar": 2.0, "binary": 4.0}
# Bump when the manifest or payload layout changes incompatibly (as connectors.qdrant_edge).
# Longest wait between two retries, whatever the backoff says.
_MAX_BACKOFF_S = 30.0
# Ids per retrieve call in page_vectors: one page is ~130k floats on the wire.
_RETRIEVE_CHUNK = 16
_SCROLL_PAGE = 256
# Estimated bytes per upsert request, under Qdrant's default 32 MB request limit.
_MAX_REQUEST_BYTES = 24 * 2**20


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class _Failure:
    """What went wrong with one call, classified once for messages and retries."""

    kind: str  # "unreachable" | "timeout" | "auth" | "not_found" | "busy" | "server" | "rejected"
    detail: str
    retry_after_s: float | None = None

    @property
    def transient(self) -> bool:
        return self.kind in ("unreachable", "timeout", "busy", "server")


_GRPC_KINDS = {
    "UNAVAILABLE": "unreachable",
    "DEADLINE_EXCEEDED": "timeout",
    "UNAUTHENTICATED": "auth",
    "PERMISSION_DENIED": "auth",
    "NOT_FOUND": "not_found",
    "RESOURCE_EXHAUSTED": "busy",
    "ABORTED": "server",
    "INTERNAL": "server",
    "UNKNOWN": "server",
    "CANCELLED": "unreachable",
}


def _http_detail(exc: UnexpectedResponse) -> str:
    """The server's own error text (``{"status": {"error": ...}}``), short."""
    try:
        body = exc.structured()
        text = str(body["status"]["error"])
    except Exception:
        text = exc.reason_phrase or ""
    return f"HTTP {exc.status_code}" + (f": {text[:300]}" if text else "")


def _classify(exc: BaseException) -> _Failure | None:
    """Map a qdrant-client / httpx / gRPC exception to a failure kind (None: not ours)."""
    if isinstance(exc, ResourceExhaustedResponse):
        return _Failure("busy", exc.message, float(exc.retry_after_s))
    if isinstance(exc, ResponseHandlingException):
        return _classify(exc.source) or _Failure("rejected", f"unreadable response: {exc.source}")
    if isinstance(exc, UnexpectedResponse):
        status = exc.status_code or 0
        if status in (401, 403):
            return _Failure("auth", _http_detail(exc))
        if status == 404:
            return _Failure("not_found", _http_detail(exc))
        if status == 429:
            return _Failure("busy", _http_detail(exc))
        if status >= 500 or status == 408:
            return _Failure("server", _http_detail(exc))
        return _Failure("rejected", _http_detail(exc))
    if isinstance(exc, httpx.TimeoutException):
        return _Failure("timeout", type(exc).__name__)
    if isinstance(exc, httpx.TransportError):
        return _Failure("unreachable", str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.HTTPError):
        return _Failure("rejected", str(exc) or type(exc).__name__)
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        details = getattr(exc, "details", None)
        name = code().name if callable(code) and code() is not None else "UNKNOWN"
        text = details() if callable(details) else ""
        detail = f"gRPC {name}" + (f": {str(text)[:300]}" if text else "")
        return _Failure(_GRPC_KINDS.get(name, "rejected"), detail)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return _Failure("unreachable", str(exc) or type(exc).__name__)
    return None


def _safe_url(url: str) -> str:
    """The URL as shown to people: no ``user:password@`` and no query string."""
    if url == MEMORY_URL:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# --------------------------------------------------------------------------- store


class ClientPageStore:
    """A :class:`~pipeline.retrieve.store.PageStore` backed by ``qdrant_client.QdrantClient``.

    Construction is cheap and never connects: the client is created on first
    use. Pass ``client`` to share one (e.g. one ``:memory:`` client between
    two stores in a test); a shared client is not closed by :meth:`close`.

    ``upsert_parallel`` bounds how many upsert batches are in flight at once
    against a server (the first batch always goes alone, so the client's
    lazily built gRPC channel is created by one thread). ``retry_backoff_s`` is
    the first retry delay, doubled on each retry.
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        client: QdrantClient | None = None,
        upsert_parallel: int | None = None,
        retry_backoff_s: float = 1.0,
    ) -> None:
        self._config = config
        self._client = client
        self._owns_client = client is None
        self._spec: CollectionSpec | None = None
        self._retry_backoff_s = retry_backoff_s
        self._upsert_parallel = upsert_parallel
        self._client_lock = threading.Lock()
        url = config.url or MEMORY_URL
        if client is not None:
            url = _client_location(client)
        self._url = url
        self._location = _safe_url(url)

    # ------------------------------------------------------------------ connection

    @property
    def is_local(self) -> bool:
        """True for qdrant-client's in-process engine (``:memory:`` or ``path=``)."""
        if self._client is not None:
            options = self._client.init_options
            return bool(options.get("location") == MEMORY_URL or options.get("path"))
        return self._url == MEMORY_URL

    def _get_client(self) -> QdrantClient:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> QdrantClient:
        config = self._config
        if self._url == MEMORY_URL:
            return QdrantClient(location=MEMORY_URL)
        api_key = config.api_key.get_secret_value() if config.api_key is not None else None
        scheme = urlsplit(self._url).scheme
        if api_key and scheme == "http":
            host = urlsplit(self._url).hostname or ""
            if host not in ("localhost", "127.0.0.1", "::1"):
                _log.warning(
                    "the Qdrant API key is sent unencrypted to %s: fine on a private network "
                    "(a compose network, a VPN), otherwise use an https:// store.url",
                    self._location,
                )
        with warnings.catch_warnings():
            # qdrant-client warns on every construction with a key over http; the
            # decision (and our own, once-per-store note above) belongs to the user.
            warnings.filterwarnings(
                "ignore",
                message="Api key is used with an insecure connection",
                category=UserWarning,
            )
            try:
                return QdrantClient(
                    url=self._url,
                    api_key=api_key,
                    prefer_grpc=config.prefer_grpc,
                    grpc_port=config.grpc_port,
                    timeout=max(1, math.ceil(config.timeout_s)),
                    # The background version check warns from a thread on every
                    # unreachable start; open() checks the version itself.
                    check_compatibility=False,
                )
            except ValueError as exc:
                raise StoreError(
                    f"store.url {self._location!r} is not a usable Qdrant URL ({exc}); "
                    "expected http(s)://host:6333 or ':memory:'"
                ) from None

    def _error(self, failure: _Failure, action: str) -> StoreError:
        where = f"Qdrant at {self._location}"
        grpc_hint = (
            f", and store.grpc_port={self._config.grpc_port} (gRPC is preferred)"
            if self._config.prefer_grpc and not self.is_local
            else ""
        )
        if failure.kind == "auth":
            if self._config.api_key is None:
                return StoreUnavailableError(
                    f"{where} requires an API key ({failure.detail}) while {action}: set "
                    "store.api_key or the QDRANT_API_KEY environment variable to the key the "
                    "server was started with (QDRANT__SERVICE__API_KEY)."
                )
            return StoreUnavailableError(
                f"{where} refused the configured API key ({failure.detail}) while {action}: "
                "check store.api_key / QDRANT_API_KEY against the server's "
                "QDRANT__SERVICE__API_KEY (or its read-only key, which cannot write)."
            )
        if failure.kind == "timeout":
            return StoreUnavailableError(
                f"{where} did not answer within store.timeout_s={self._config.timeout_s:g} s "
                f"while {action} ({failure.detail}). The server may be down, overloaded or "
                "unreachable: check it is running (`docker compose ps qdrant`), or raise "
                "store.timeout_s for large batches."
            )
        if failure.kind in ("unreachable", "busy", "server"):
            return StoreUnavailableError(
                f"cannot use {where} while {action} ({failure.detail}). Is Qdrant running? "
                "Start it with `docker compose up -d qdrant`, and check store.url "
                f"(or PAGERAG_STORE__URL){grpc_hint}."
            )
        if failure.kind == "not_found":
            return CollectionNotFoundError(
                f"{where} has no such collection or point while {action} ({failure.detail}): "
                "was the collection deleted meanwhile? Check store.collection, and rerun "
                "`pagerag ingest` to rebuild it."
            )
        return StoreError(f"{where} rejected the request while {action}: {failure.detail}")

    def _call(self, action: str, fn: Callable[[QdrantClient], _T], *, retry: bool = False) -> _T:
        """Run one client call, translating failures; retry transient ones if ``retry``."""
        client = self._get_client()
        attempts = self._config.upsert_retries + 1 if retry else 1

        def is_transient(exc: BaseException) -> bool:
            failure = _classify(exc)
            return failure is not None and failure.transient

        def wait(state: tenacity.RetryCallState) -> float:
            backoff = self._retry_backoff_s * 2 ** (state.attempt_number - 1)
            exc = state.outcome.exception() if state.outcome is not None else None
            failure = _classify(exc) if exc is not None else None
            floor = failure.retry_after_s if failure and failure.retry_after_s else 0.0
            return min(_MAX_BACKOFF_S, max(backoff, floor))

        def log_retry(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            failure = _classify(exc) if exc is not None else None
            _log.warning(
                "Qdrant at %s failed while %s (%s); retry %d of %d",
                self._location,
                action,
                failure.detail if failure else exc,
                state.attempt_number,
                attempts - 1,
            )

        try:
            for attempt in tenacity.Retrying(
                stop=tenacity.stop_after_attempt(attempts),
                wait=wait,
                retry=tenacity.retry_if_exception(is_transient),
                before_sleep=log_retry,
                reraise=True,
            ):
                with attempt:
                    return fn(client)
        except StoreError:
            raise
        except Exception as exc:
            failure = _classify(exc)
            if failure is None:
                raise
            _log.debug("Qdrant call failed while %s", action, exc_info=True)
            raise self._error(failure, action) from None
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    # ------------------------------------------------------------------ collection

    @property
    def _name(self) -> str:
        return self._spec.name if self._spec is not None else self._config.collection

    def _opened(self) -> CollectionSpec:
        if self._spec is None:
            raise StoreError("the page store is not open: call open(spec) first")
        return self._spec

    def open(self, spec: CollectionSpec, *, create: bool = True) -> None:
        """Create the collection, or validate (and evolve) an existing one against ``spec``.

        An existing collection must have the same model, full vector name,
        dimension, distance and comparator. Changes Qdrant can apply in place
        are applied, as the embedded engine does: missing pooled vectors are
        added (server 1.18+) and the quantization is switched.
        """
        name = spec.name
        if not self.is_local:
            self._check_server_version()
        exists = self._call(f"checking collection {name!r}", lambda c: c.collection_exists(name))
        if not exists:
            if not create:
                raise CollectionNotFoundError(
                    f"collection {name!r} does not exist in {self._describe_engine()}: nothing "
                    "has been ingested yet. Run `pagerag ingest <folder>` first, or check "
                    "store.collection and store.url."
                )
            self._spec = self._create(spec)
        else:
            self._spec = self._open_existing(spec)

    def _engine_name(self) -> str:
        if not self.is_local:
            return "qdrant-server"
        return "qdrant-memory" if self._url == MEMORY_URL else "qdrant-local"

    def _describe_engine(self) -> str:
        return "the in-memory store" if self.is_local else f"Qdrant at {self._location}"

    def _check_server_version(self) -> None:
        from importlib.metadata import version

        from qdrant_client.common.version_check import is_compatible

        info = self._call("connecting", lambda c: c.info())
        client_version = version("qdrant-client")
        if not is_compatible(client_version, info.version):
            _log.warning(
                "Qdrant server %s at %s and qdrant-client %s differ by more than one minor "
                "version; some requests may fail. Pin the server image to a matching version.",
                info.version,
                self._location,
                client_version,
            )

    def _vector_params(self, spec: CollectionSpec, *, on_disk: bool) -> qm.VectorParams:
        return qm.VectorParams(
            size=spec.dim,
            distance=qm.Distance.DOT,
            multivector_config=_MAX_SIM,
            hnsw_config=_NO_HNSW,
            datatype=_DATATYPES[spec.datatype],
            on_disk=on_disk,
        )

    def _create(self, spec: CollectionSpec) -> CollectionSpec:
        config = self._config
        vectors = {spec.full_vector: self._vector_params(spec, on_disk=spec.on_disk)}
        for pooled in spec.pooled:
            # Pooled vectors are small and scanned by every two-stage query: keep them in RAM.
            vectors[pooled] = self._vector_params(spec, on_disk=False)
        kwargs: dict[str, Any] = {}
        if config.shard_number is not None:
            kwargs["shard_number"] = config.shard_number
        if config.replication_factor is not None:
            kwargs["replication_factor"] = config.replication_factor
        if config.write_consistency_factor is not None:
            kwargs["write_consistency_factor"] = config.write_consistency_factor
        try:
            self._call(
                f"creating collection {spec.name!r}",
                lambda c: c.create_collection(
                    spec.name,
                    vectors_config=vectors,
                    # Also collection-wide: vectors added later inherit "no HNSW".
                    hnsw_config=_NO_HNSW,
                    quantization_config=_quantization(spec.quantization),
                    # Payloads hold page JPEGs: keep them on disk, not in RAM.
                    on_disk_payload=True,
                    **kwargs,
                ),
            )
        except StoreError as exc:
            # Another worker created it between our check and our create: use theirs.
            if "already exists" not in str(exc):
                raise
            return self._open_existing(spec)
        self._write_manifest(spec)
        self._ensure_indexes(spec.name)
        return spec

    def _ensure_indexes(self, name: str) -> None:
        if self.is_local:  # local mode ignores payload indexes (and warns about them)
            return
        for field in INDEXED_FIELDS:  # idempotent on the server
            self._call(
                f"indexing payload field {field!r} of {name!r}",
                lambda c, f=field: c.create_payload_index(  # type: ignore[misc]
                    name, field_name=f, field_schema=qm.PayloadSchemaType.KEYWORD, wait=True
                ),
                retry=True,
            )

    def _write_manifest(self, spec: CollectionSpec) -> None:
        payload = manifest_payload(spec, engine=self._engine_name())
        point = qm.PointStruct(id=COLLECTION_POINT_ID, vector={}, payload=payload)
        self._call(
            f"recording the model of collection {spec.name!r}",
            lambda c: c.upsert(spec.name, points=[point], wait=True),
            retry=True,
        )

    def _manifest(self, name: str) -> dict[str, Any] | None:
        records = self._call(
            f"reading the manifest of collection {name!r}",
            lambda c: c.retrieve(name, ids=[COLLECTION_POINT_ID], with_payload=True),
        )
        if not records or not records[0].payload:
            return None
        manifest = dict(records[0].payload)
        check_manifest_version(manifest, where=f"collection {name!r} in {self._describe_engine()}")
        return manifest

    def _layout(self, name: str) -> Mapping[str, qm.VectorParams]:
        info = self._call(f"reading collection {name!r}", lambda c: c.get_collection(name))
        vectors = info.config.params.vectors
        if not isinstance(vectors, Mapping):
            raise CollectionMismatchError(
                f"collection {name!r} in {self._describe_engine()} has a single unnamed vector: "
                "it was not created by pagerag. Use another collection (store.collection), or "
                "delete it and re-ingest."
            )
        return vectors

    def _open_existing(self, spec: CollectionSpec) -> CollectionSpec:
        name = spec.name
        manifest = self._manifest(name)
        layout = self._layout(name)
        self._validate(spec, manifest, layout)
        if manifest is None:
            pages = self._count(name, _page_filter(None))
            if pages:
                raise CollectionMismatchError(
                    f"collection {name!r} in {self._describe_engine()} holds {pages} pages but "
                    "no pagerag manifest, so the model that filled it is unknown. Use another "
                    "collection (store.collection), or delete it and re-ingest."
                )
            # Created, then interrupted before the manifest was written: adopt it.
            recorded = dataclasses.replace(
                spec, pooled=tuple(n for n in layout if n != spec.full_vector)
            )
            self._write_manifest(recorded)
        else:
            recorded = spec_from_manifest(name, manifest)
        return self._evolve(spec, recorded, layout)

    def _validate(
        self,
        spec: CollectionSpec,
        manifest: Mapping[str, Any] | None,
        layout: Mapping[str, qm.VectorParams],
    ) -> None:
        """Refuse a collection built differently, naming every difference and the fix."""
        problems: list[str] = []
        recorded_model = manifest.get("model") if manifest is not None else None
        if manifest is not None and recorded_model != spec.model:
            problems.append(
                f"it was filled by model {recorded_model!r}, but embedding.model is "
                f"{spec.model!r} (vectors of different models cannot be compared)"
            )
        recorded = spec_from_manifest(spec.name, manifest) if manifest is not None else None
        weights = weights_problem(recorded, spec)
        if weights:
            problems.append(weights)
        if spec.full_vector not in layout:
            problems.append(
                f"it has no vector named {spec.full_vector!r} (it has: "
                f"{', '.join(sorted(layout)) or 'none'})"
            )
        for vector_name in (spec.full_vector, *spec.pooled):
            params = layout.get(vector_name)
            if params is None:
                continue  # missing pooled vectors are added by _evolve
            if params.size != spec.dim:
                problems.append(
                    f"its vector {vector_name!r} has {params.size} dimensions, but the model "
                    f"produces {spec.dim}"
                )
            if params.distance != qm.Distance.DOT:
                problems.append(
                    f"its vector {vector_name!r} uses distance {params.distance.value!r}, not 'Dot'"
                )
            config = params.multivector_config
            if config is None or config.comparator != qm.MultiVectorComparator.MAX_SIM:
                found = config.comparator.value if config else "none (single vectors)"
                problems.append(
                    f"its vector {vector_name!r} has multivector comparator {found!r}, "
                    "not 'max_sim'"
                )
        if not problems:
            return
        back = (
            f", or set embedding.model back to {recorded_model!r}"
            if recorded_model is not None and recorded_model != spec.model
            else ""
        )
        raise CollectionMismatchError(
            f"collection {spec.name!r} in {self._describe_engine()} was built differently: "
            + "; ".join(problems)
            + ". To fix it: use another collection (store.collection) and re-ingest into it, "
            + f"or delete this collection and re-ingest to re-embed every page{back}"
            + f"{weights_remedy(recorded, spec)}."
        )

    def _evolve(
        self,
        spec: CollectionSpec,
        recorded: CollectionSpec,
        layout: Mapping[str, qm.VectorParams],
    ) -> CollectionSpec:
        """Apply what an existing collection accepts in place; record it in the manifest."""
        name = spec.name
        for field in ("datatype", "on_disk"):
            if getattr(spec, field) != getattr(recorded, field):
                _log.warning(
                    "collection %r keeps %s=%r (fixed at creation); store.%s=%r applies to new "
                    "collections only",
                    name,
                    field,
                    getattr(recorded, field),
                    field,
                    getattr(spec, field),
                )
        updated = adopt_identity(recorded, spec)
        missing = [n for n in spec.pooled if n not in layout]
        if missing:
            self._add_pooled_vectors(recorded, missing)
            updated = dataclasses.replace(updated, pooled=(*updated.pooled, *missing))
        if spec.quantization != recorded.quantization:
            self._call(
                f"changing the quantization of {name!r} to {spec.quantization!r}",
                lambda c: c.update_collection(
                    name,
                    quantization_config=_quantization(spec.quantization) or qm.Disabled.DISABLED,
                ),
            )
            updated = dataclasses.replace(updated, quantization=spec.quantization)
        if updated != recorded:
            self._write_manifest(updated)
        return updated

    def _add_pooled_vectors(self, recorded: CollectionSpec, missing: Sequence[str]) -> None:
        name = recorded.name
        pages = self._count(name, _page_filter(None))
        if pages:
            _log.warning(
                "adding pooled vectors %s to collection %r: its %d existing pages lack them "
                "and two-stage search will miss those pages until they are reindexed",
                missing,
                name,
                pages,
            )
        for vector_name in missing:
            config = qm.DenseVectorNameConfig(
                dense=qm.DenseVectorConfig(
                    size=recorded.dim,
                    distance=qm.Distance.DOT,
                    multivector_config=_MAX_SIM,
                    datatype=_VECTOR_DATATYPES[recorded.datatype],
                )
            )
            try:
                self._call(
                    f"adding vector {vector_name!r} to {name!r}",
                    lambda c, v=vector_name, cfg=config: c.create_vector_name(  # type: ignore[misc]
                        name, vector_name=v, vector_name_config=cfg, wait=True
                    ),
                )
                # The new vector's index is inferred; make "exact MaxSim" explicit.
                self._call(
                    f"disabling HNSW on vector {vector_name!r} of {name!r}",
                    lambda c, v=vector_name: c.update_collection(  # type: ignore[misc]
                        name, vectors_config={v: qm.VectorParamsDiff(hnsw_config=_NO_HNSW)}
                    ),
                )
            except StoreUnavailableError:
                raise
            except StoreError as exc:  # 404 / UNIMPLEMENTED from a server older than 1.18
                raise CollectionMismatchError(
                    f"collection {name!r} in {self._describe_engine()} has no vector named "
                    f"{vector_name!r} and Qdrant could not add it ({exc}). Adding named "
                    "vectors needs Qdrant 1.18 or newer: upgrade the server, use another "
                    "collection (store.collection), or search with --mode exact."
                ) from None

    # ------------------------------------------ in-place reindex (pipeline.retrieve.reindex)

    def add_vectors(self, names: Sequence[str]) -> None:
        """Create pooled multivectors (not yet in the manifest); existing names are kept."""
        spec = self._opened()
        missing = [name for name in names if name not in self._layout(spec.name)]
        if missing:
            self._add_pooled_vectors(spec, missing)

    def update_vectors(self, vectors: Mapping[str, Mapping[str, Float16Array]]) -> None:
        """Set named vectors of existing points; payloads and other vectors stay."""
        name = self._opened().name
        points = [
            qm.PointVectors(
                id=point_id,
                vector={k: np.asarray(v, dtype=np.float32).tolist() for k, v in named.items()},
            )
            for point_id, named in vectors.items()
        ]
        # Chunked: a page's pooled vectors are ~170 KB as JSON, and Qdrant refuses
        # requests over 32 MB.
        for start in range(0, len(points), _UPDATE_CHUNK):
            chunk = points[start : start + _UPDATE_CHUNK]
            self._call(
                f"updating vectors in {name!r}",
                lambda c, part=chunk: c.update_vectors(name, points=part, wait=True),  # type: ignore[misc]
                retry=True,
            )

    def page_ids_missing(self, names: Sequence[str], *, batch: int = 256) -> Iterator[list[str]]:
        name = self._opened().name
        ids: list[str] = []
        for record in self._scroll(name, _missing_filter(names), with_payload=False, limit=batch):
            ids.append(str(record.id))
            if len(ids) >= batch:
                yield ids
                ids = []
        if ids:
            yield ids

    def count_pages_missing(self, names: Sequence[str]) -> int:
        return self._count(self._opened().name, _missing_filter(names))

    def record_pooled(self, names: Sequence[str]) -> CollectionSpec:
        spec = self._opened()
        updated = replace(spec, pooled=tuple(dict.fromkeys((*spec.pooled, *names))))
        if updated != spec:
            self._write_manifest(updated)
            self._spec = updated
        return updated

    def spec(self) -> CollectionSpec | None:
        """The spec recorded in the collection's manifest point, or None if absent."""
        name = self._name
        exists = self._call(f"checking collection {name!r}", lambda c: c.collection_exists(name))
        if not exists:
            return None
        manifest = self._manifest(name)
        return spec_from_manifest(name, manifest) if manifest is not None else None

    # ------------------------------------------------------------------ writes

    def _point_struct(self, point: PagePoint, spec: CollectionSpec) -> qm.PointStruct:
        vectors: dict[str, Any] = {}
        for vector_name, array in point.vectors.items():
            if array.ndim != 2 or array.shape[1] != spec.dim or array.shape[0] == 0:
                raise ValueError(
                    f"point {point.point_id}: vector {vector_name!r} has shape {array.shape}, "
                    f"expected (tokens, {spec.dim})"
                )
            # A float16 array's tolist() yields Python floats exactly; pydantic
            # validates plain lists far faster than numpy arrays.
            vectors[vector_name] = array.tolist()
        if spec.full_vector not in vectors:
            raise ValueError(f"point {point.point_id} has no {spec.full_vector!r} vector")
        unknown = set(vectors) - {spec.full_vector, *spec.pooled}
        if unknown:
            raise ValueError(
                f"point {point.point_id} has vectors {sorted(unknown)} that collection "
                f"{spec.name!r} does not define (it has {[spec.full_vector, *spec.pooled]})"
            )
        return qm.PointStruct(id=point.point_id, vector=vectors, payload=dict(point.payload))

    def _batches(self, points: Sequence[PagePoint]) -> list[Sequence[PagePoint]]:
        """Split into at most ``store.upsert_batch`` points and ~``_MAX_REQUEST_BYTES`` each.

        Qdrant refuses requests above ``service.max_request_size_mb`` (32 MB by
        default). A page is ~0.5 MB of floats on gRPC but ~2.5 MB as JSON, plus
        its base64 JPEG, so a count alone does not bound a request.
        """
        grpc_wire = self._config.prefer_grpc and not self.is_local
        per_float = 5 if grpc_wire else 18
        batches: list[Sequence[PagePoint]] = []
        start, size = 0, 0
        for i, point in enumerate(points):
            floats = sum(int(v.size) for v in point.vectors.values())
            image = point.payload.get(IMAGE_FIELD)
            cost = floats * per_float + (len(image) if isinstance(image, str) else 0) + 1024
            if i > start and (
                i - start >= self._config.upsert_batch or size + cost > _MAX_REQUEST_BYTES
            ):
                batches.append(points[start:i])
                start, size = i, 0
            size += cost
        batches.append(points[start:])
        return batches

    def upsert_pages(self, points: Sequence[PagePoint]) -> None:
        """Upsert in batches (count- and size-bounded), each waited for and retried."""
        spec = self._opened()
        if not points:
            return
        batches = self._batches(points)

        def send(batch: Sequence[PagePoint]) -> None:
            structs = [self._point_struct(p, spec) for p in batch]
            self._call(
                f"upserting {len(structs)} pages into {spec.name!r}",
                lambda c: c.upsert(spec.name, points=structs, wait=True),
                retry=True,
            )

        send(batches[0])
        parallel = self._upsert_parallel or (1 if self.is_local else 4)
        rest = batches[1:]
        if parallel <= 1 or len(rest) <= 1:
            for batch in rest:
                send(batch)
            return
        with ThreadPoolExecutor(max_workers=min(parallel, len(rest))) as pool:
            # list() re-raises the first failure (a StoreError) after all settle.
            list(pool.map(send, rest))

    def flush(self) -> None:
        """No-op: every write already waited until Qdrant applied it."""

    def mark_complete(self, record: DocumentRecord) -> None:
        spec = self._opened()
        point = qm.PointStruct(
            id=document_point_id(record.document_id), vector={}, payload=record_to_payload(record)
        )
        self._call(
            f"marking document {record.document_id!r} complete",
            lambda c: c.upsert(
                spec.name, points=[point], wait=True, ordering=qm.WriteOrdering.MEDIUM
            ),
            retry=True,
        )

    def delete_document(self, document_id: str) -> int:
        """Delete every point of the document (pages and mark); returns pages removed."""
        spec = self._opened()
        pages = self._count(spec.name, _page_filter(PageFilter(document_ids=(document_id,))))
        selector = qm.FilterSelector(filter=qm.Filter(must=[_match("document_id", document_id)]))
        self._call(
            f"deleting document {document_id!r}",
            lambda c: c.delete(
                spec.name, points_selector=selector, wait=True, ordering=qm.WriteOrdering.MEDIUM
            ),
            retry=True,
        )
        return pages

    def prune_pages(self, document_id: str, keep: Collection[int]) -> int:
        spec = self._opened()
        flt = qm.Filter(
            must=[_match("kind", KIND_PAGE), _match("document_id", document_id)],
            must_not=[qm.FieldCondition(key="page", match=qm.MatchAny(any=sorted(keep)))]
            if keep
            else None,
        )
        extra = self._count(spec.name, flt)
        if extra:
            self._call(
                f"removing stale pages of {document_id!r}",
                lambda c: c.delete(
                    spec.name,
                    points_selector=qm.FilterSelector(filter=flt),
                    wait=True,
                    ordering=qm.WriteOrdering.MEDIUM,
                ),
                retry=True,
            )
        return extra

    def set_payload(self, document_id: str, fields: Mapping[str, Any]) -> None:
        spec = self._opened()
        flt = qm.Filter(must=[_match("document_id", document_id)])
        self._call(
            f"updating metadata of {document_id!r}",
            lambda c: c.set_payload(
                spec.name,
                payload=dict(fields),
                points=qm.FilterSelector(filter=flt),
                wait=True,
                ordering=qm.WriteOrdering.MEDIUM,
            ),
            retry=True,
        )

    # ------------------------------------------------------------------ reads

    def document_ids(self, where: PageFilter) -> set[str]:
        """Marked documents in one scroll; then one small scroll per unmarked one."""
        spec = self._opened()
        selector = ["document_id"]
        found = {
            str((r.payload or {})["document_id"])
            for r in self._scroll(
                spec.name, _document_filter(where, KIND_DOCUMENT), with_payload=selector
            )
        }
        pages = _document_filter(where, KIND_PAGE)
        while True:
            exclude = qm.FieldCondition(key="document_id", match=qm.MatchAny(any=sorted(found)))
            flt = qm.Filter(must=[pages], must_not=[exclude] if found else None)
            records, _next = self._call(
                f"listing documents of {spec.name!r}",
                lambda c, f=flt: c.scroll(  # type: ignore[misc]
                    spec.name, scroll_filter=f, limit=16, with_payload=selector, with_vectors=False
                ),
                retry=True,
            )
            ids = {str((r.payload or {})["document_id"]) for r in records}
            if not ids:
                return found
            found |= ids

    def get_document(self, document_id: str) -> DocumentRecord | None:
        spec = self._opened()
        records = self._call(
            f"reading document {document_id!r}",
            lambda c: c.retrieve(
                spec.name, ids=[document_point_id(document_id)], with_payload=True
            ),
            retry=True,  # ingestion asks this before every file: ride out a blip
        )
        if not records or not records[0].payload:
            return None
        payload = records[0].payload
        if payload.get("kind") != KIND_DOCUMENT:
            return None
        return record_from_payload(dict(payload))

    def documents(self, *, source: str | None = None) -> list[DocumentRecord]:
        spec = self._opened()
        must: list[qm.Condition] = [_match("kind", KIND_DOCUMENT)]
        if source is not None:
            must.append(_match("source", source))
        records = [
            record_from_payload(dict(r.payload or {}))
            for r in self._scroll(spec.name, qm.Filter(must=must), with_payload=True)
        ]
        return sorted(records, key=lambda r: (r.source, r.document_id))

    def _scroll(
        self,
        name: str,
        flt: qm.Filter,
        *,
        with_payload: bool | Sequence[str],
        limit: int = _SCROLL_PAGE,
    ) -> Iterator[qm.Record]:
        offset: qm.ExtendedPointId | None = None
        while True:
            records, offset = self._call(
                f"listing points of {name!r}",
                lambda c, o=offset: c.scroll(  # type: ignore[misc]
                    name,
                    scroll_filter=flt,
                    limit=limit,
                    offset=o,
                    with_payload=with_payload,
                    with_vectors=False,
                ),
                retry=True,
            )
            yield from records
            if offset is None:
                return

    def _count(self, name: str, flt: qm.Filter) -> int:
        result = self._call(
            f"counting points of {name!r}",
            lambda c: c.count(name, count_filter=flt, exact=True),
            retry=True,
        )
        return int(result.count)

    def count_pages(self, filter: PageFilter | None = None) -> int:
        return self._count(self._opened().name, _page_filter(filter))

    def search(
        self,
        query: Float16Array,
        *,
        k: int,
        filter: PageFilter | None = None,
        using: str | None = None,
        prefetch: Sequence[tuple[str, int]] = (),
    ) -> list[ScoredPage]:
        """Top-``k`` pages by exact MaxSim; ``prefetch`` stages are reranked by ``using``."""
        spec = self._opened()
        vector_names = (spec.full_vector, *spec.pooled)
        using = using or spec.full_vector
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        if query.ndim != 2 or query.shape[0] == 0 or query.shape[1] != spec.dim:
            raise QueryError(
                f"the query must be a (tokens, {spec.dim}) array, got shape {query.shape}"
            )
        for name in (using, *(name for name, _ in prefetch)):
            if name not in vector_names:
                raise QueryError(
                    f"unknown vector {name!r} for collection {spec.name!r}; it has: "
                    f"{', '.join(vector_names)}"
                )
        flt = _page_filter(filter)
        vector = query.tolist()
        params = self._search_params(spec)
        stages = [
            qm.Prefetch(query=vector, using=name, limit=limit, filter=flt, params=params)
            for name, limit in prefetch
        ]
        response = self._call(
            f"searching {spec.name!r}",
            lambda c: c.query_points(
                spec.name,
                query=vector,
                using=using,
                prefetch=stages or None,
                query_filter=flt,
                search_params=params,
                limit=k,
                with_payload=qm.PayloadSelectorExclude(exclude=[IMAGE_FIELD]),
                with_vectors=False,
            ),
        )
        return [
            ScoredPage(point_id=str(p.id), score=float(p.score), payload=dict(p.payload or {}))
            for p in response.points
        ]

    def _search_params(self, spec: CollectionSpec) -> qm.SearchParams | None:
        """On a quantized collection: rescore with the stored vectors, so scores stay
        exact MaxSim, after oversampling the quantized candidates (as the embedded
        engine does). Local mode has no quantization and warns on search params."""
        if spec.quantization == "none" or self.is_local:
            return None
        return qm.SearchParams(
            quantization=qm.QuantizationSearchParams(
                rescore=True, oversampling=_OVERSAMPLING[spec.quantization]
            )
        )

    def page_image(self, point_id: str) -> bytes | None:
        spec = self._opened()
        records = self._call(
            f"reading the image of page {point_id}",
            lambda c: c.retrieve(
                spec.name,
                ids=[point_id],
                with_payload=qm.PayloadSelectorInclude(include=[IMAGE_FIELD]),
            ),
        )
        if not records or not records[0].payload or IMAGE_FIELD not in records[0].payload:
            return None
        try:
            return base64.b64decode(records[0].payload[IMAGE_FIELD], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise StoreError(
                f"the stored image of page {point_id} in {spec.name!r} is not valid base64; "
                "re-ingest its document"
            ) from None

    def page_vectors(
        self, point_ids: Iterable[str], using: str | None = None
    ) -> dict[str, Float16Array]:
        spec = self._opened()
        name = using or spec.full_vector
        ids = list(point_ids)
        out: dict[str, Float16Array] = {}
        for start in range(0, len(ids), _RETRIEVE_CHUNK):
            chunk = ids[start : start + _RETRIEVE_CHUNK]
            records = self._call(
                f"reading vectors of {len(chunk)} pages",
                lambda c, ch=chunk: c.retrieve(  # type: ignore[misc]
                    spec.name, ids=ch, with_payload=False, with_vectors=[name]
                ),
                retry=True,
            )
            for record in records:
                vectors = record.vector
                if isinstance(vectors, Mapping) and name in vectors:
                    # Local mode hands back float64 lists, the server float32: back to float16.
                    out[str(record.id)] = np.asarray(vectors[name], dtype=np.float16)
        return out

    def iter_page_ids(self, *, batch: int = 256) -> Iterator[list[str]]:
        spec = self._opened()
        ids: list[str] = []
        for record in self._scroll(
            spec.name, _page_filter(None), with_payload=False, limit=max(1, batch)
        ):
            ids.append(str(record.id))
            if len(ids) >= batch:
                yield ids
                ids = []
        if ids:
            yield ids

    def stats(self) -> StoreStats:
        spec = self._opened()
        documents = self._count(spec.name, qm.Filter(must=[_match("kind", KIND_DOCUMENT)]))
        manifest = self._manifest(spec.name)
        return StoreStats(
            collection=spec.name,
            model=str(manifest["model"]) if manifest else None,
            documents=documents,
            pages=self.count_pages(),
            bytes_on_disk=None,
            engine=self._engine_name(),
            location=self._location,
        )

    def close(self) -> None:
        """Close the client if this store created it (a shared client stays open)."""
        if not self._owns_client:
            return
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


# --------------------------------------------------------------------------- filters


def _match(key: str, value: str) -> qm.FieldCondition:
    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


def _missing_filter(names: Sequence[str]) -> qm.Filter:
    """Pages lacking at least one of the named vectors."""
    return qm.Filter(
        must=[_match("kind", KIND_PAGE)],
        should=[qm.Filter(must_not=[qm.HasVectorCondition(has_vector=n)]) for n in names],
    )


def _page_filter(flt: PageFilter | None) -> qm.Filter:
    """A ``PageFilter`` as a Qdrant filter, always restricted to page points.

    ``source_prefix`` is an exact keyword match on ``source`` or on any entry
    of ``source_dirs`` (MatchValue on an array field matches any element), so
    it uses the payload indexes instead of a prefix scan.
    """
    must: list[qm.Condition] = [_match("kind", KIND_PAGE)]
    if flt is None:
        return qm.Filter(must=must)
    if flt.document_ids:
        must.append(
            qm.FieldCondition(key="document_id", match=qm.MatchAny(any=list(flt.document_ids)))
        )
    if flt.source_prefix is not None:
        must.append(_under(flt.source_prefix))
    if flt.source is not None:
        must.append(_at(flt.source))
    must.extend(_meta_conditions(flt.metadata))
    return qm.Filter(must=must)


def _meta_conditions(metadata: Mapping[str, str]) -> list[qm.Condition]:
    conditions: list[qm.Condition] = []
    for key, value in metadata.items():
        if not key or any(c in key for c in ".[]"):
            raise QueryError(
                f"metadata key {key!r} cannot be filtered on: use keys without '.', '[' or ']'"
            )
        conditions.append(_match(f"meta.{key}", str(value)))
    return conditions


def _at(source: str) -> qm.Filter:
    """Points stored from exactly ``source`` (its resolved path or the path given)."""
    return qm.Filter(should=[_match("source", source), _match("source_alias", source)])


def _under(prefix: str) -> qm.Filter:
    """Points stored from ``prefix`` (a file, by resolved or given path) or below it."""
    prefix = prefix.rstrip("/") or "/"
    return qm.Filter(
        should=[
            _match("source", prefix),
            _match("source_alias", prefix),
            _match("source_dirs", prefix),
        ]
    )


def _document_filter(where: PageFilter, kind: str) -> qm.Filter:
    """Points of ``kind`` (pages or completion marks) matching ``where``."""
    must: list[qm.Condition] = [_match("kind", kind)]
    if where.document_ids:
        must.append(
            qm.FieldCondition(key="document_id", match=qm.MatchAny(any=list(where.document_ids)))
        )
    if where.source_prefix is not None:
        must.append(_under(where.source_prefix))
    if where.source is not None:
        must.append(_at(where.source))
    must.extend(_meta_conditions(where.metadata))
    return qm.Filter(must=must)


def _quantization(kind: str) -> qm.QuantizationConfig | None:
    """Quantized copies kept in RAM; Qdrant rescores with the stored vectors."""
    if kind == "scalar":
        return qm.ScalarQuantization(
            scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, always_ram=True)
        )
    if kind == "binary":
        return qm.BinaryQuantization(binary=qm.BinaryQuantizationConfig(always_ram=True))
    return None


def _client_location(client: QdrantClient) -> str:
    """Where an injected client points, for messages and stats (never its key)."""
    options = client.init_options
    if options.get("location") == MEMORY_URL:
        return MEMORY_URL
    if options.get("path"):
        return str(options["path"])
    if options.get("url"):
        return str(options["url"])
    host = options.get("host") or options.get("location") or "localhost"
    scheme = "https" if options.get("https") else "http"
    port = options.get("port") or 6333
    return f"{scheme}://{host}:{port}"
