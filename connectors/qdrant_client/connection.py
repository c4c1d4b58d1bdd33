"""The connection to Qdrant: one lazily made client, retries, and errors people can act on.

Every call the adapter makes goes through :meth:`Connection.call`: the client
is created on first use, transient failures (connection errors, timeouts,
5xx, 429) are retried with exponential backoff when the caller allows it, and
every qdrant-client, httpx or gRPC exception becomes a
:class:`~pipeline.errors.StoreError` naming the server URL without
credentials and saying what to check.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc  # a qdrant-client dependency: its errors surface from gRPC calls
import httpx
import tenacity
from qdrant_client import QdrantClient
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from pipeline.config import StoreConfig
from pipeline.errors import (
    CollectionNotFoundError,
    StoreError,
    StoreUnavailableError,
)

__all__ = ["MEMORY_URL", "Connection", "Failure", "classify", "safe_url"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

MEMORY_URL = ":memory:"
# Longest wait between two retries, whatever the backoff says.
_MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class Failure:
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


def classify(exc: BaseException) -> Failure | None:
    """Map a qdrant-client / httpx / gRPC exception to a failure kind (None: not ours)."""
    if isinstance(exc, ResourceExhaustedResponse):
        return Failure("busy", exc.message, float(exc.retry_after_s))
    if isinstance(exc, ResponseHandlingException):
        return classify(exc.source) or Failure("rejected", f"unreadable response: {exc.source}")
    if isinstance(exc, UnexpectedResponse):
        status = exc.status_code or 0
        if status in (401, 403):
            return Failure("auth", _http_detail(exc))
        if status == 404:
            return Failure("not_found", _http_detail(exc))
        if status == 429:
            return Failure("busy", _http_detail(exc))
        if status >= 500 or status == 408:
            return Failure("server", _http_detail(exc))
        return Failure("rejected", _http_detail(exc))
    if isinstance(exc, httpx.TimeoutException):
        return Failure("timeout", type(exc).__name__)
    if isinstance(exc, httpx.TransportError):
        return Failure("unreachable", str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.HTTPError):
        return Failure("rejected", str(exc) or type(exc).__name__)
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        details = getattr(exc, "details", None)
        name = code().name if callable(code) and code() is not None else "UNKNOWN"
        text = details() if callable(details) else ""
        detail = f"gRPC {name}" + (f": {str(text)[:300]}" if text else "")
        return Failure(_GRPC_KINDS.get(name, "rejected"), detail)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return Failure("unreachable", str(exc) or type(exc).__name__)
    return None


def safe_url(url: str) -> str:
    """The URL as shown to people: no ``user:password@`` and no query string."""
    if url == MEMORY_URL:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _private_host(host: str) -> bool:
    """Whether an API key sent to ``host`` over plain http stays on a private network.

    The rule (docs/deployment.md): loopback, private and link-local IP
    addresses, and names without a dot — a compose service such as
    ``qdrant``, resolvable only inside its network — are private; any other
    name or address may be public, so an http:// URL to it gets a warning.
    """
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host
    return address.is_loopback or address.is_private or address.is_link_local


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


class Connection:
    """One ``QdrantClient`` (made on first use, or the one given) and every call through it.

    A given ``client`` is shared and not closed by :meth:`close`.
    ``retry_backoff_s`` is the first retry delay, doubled on each retry.
    """

    def __init__(
        self, config: StoreConfig, client: QdrantClient | None, *, retry_backoff_s: float
    ) -> None:
        self.config = config
        self.client = client  # None until first use
        self._owns_client = client is None
        self._retry_backoff_s = retry_backoff_s
        self._client_lock = threading.Lock()
        self._url = _client_location(client) if client is not None else config.url or MEMORY_URL
        self.location = safe_url(self._url)

    @property
    def is_local(self) -> bool:
        """True for qdrant-client's in-process engine (``:memory:`` or ``path=``)."""
        if self.client is not None:
            options = self.client.init_options
            return bool(options.get("location") == MEMORY_URL or options.get("path"))
        return self._url == MEMORY_URL

    @property
    def engine_name(self) -> str:
        if not self.is_local:
            return "qdrant-server"
        return "qdrant-memory" if self._url == MEMORY_URL else "qdrant-local"

    def describe(self) -> str:
        """Where the collections live, for messages."""
        return "the in-memory store" if self.is_local else f"Qdrant at {self.location}"

    def call(self, action: str, fn: Callable[[QdrantClient], _T], *, retry: bool = False) -> _T:
        """Run one client call, translating failures; retry transient ones if ``retry``."""
        client = self._get_client()
        attempts = self.config.upsert_retries + 1 if retry else 1

        def is_transient(exc: BaseException) -> bool:
            failure = classify(exc)
            return failure is not None and failure.transient

        def wait(state: tenacity.RetryCallState) -> float:
            backoff = self._retry_backoff_s * 2 ** (state.attempt_number - 1)
            exc = state.outcome.exception() if state.outcome is not None else None
            failure = classify(exc) if exc is not None else None
            floor = failure.retry_after_s if failure and failure.retry_after_s else 0.0
            return min(_MAX_BACKOFF_S, max(backoff, floor))

        def log_retry(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            failure = classify(exc) if exc is not None else None
            _log.warning(
                "Qdrant at %s failed while %s (%s); retry %d of %d",
                self.location,
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
            failure = classify(exc)
            if failure is None:
                raise
            _log.debug("Qdrant call failed while %s", action, exc_info=True)
            raise self._error(failure, action) from None
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def close(self) -> None:
        """Close the client if this connection made it (a shared client stays open)."""
        if not self._owns_client:
            return
        with self._client_lock:
            client, self.client = self.client, None
        if client is not None:
            client.close()

    def _get_client(self) -> QdrantClient:
        with self._client_lock:
            if self.client is None:
                self.client = self.make_client()
            return self.client

    def make_client(self) -> QdrantClient:
        """A new client for the configured URL (what the first call makes)."""
        config = self.config
        if self._url == MEMORY_URL:
            return QdrantClient(location=MEMORY_URL)
        api_key = config.api_key.get_secret_value() if config.api_key is not None else None
        parts = urlsplit(self._url)
        if api_key and parts.scheme == "http" and not _private_host(parts.hostname or ""):
            _log.warning(
                "the Qdrant API key is sent unencrypted to %s, which may be a public host: "
                "use an https:// store.url (no warning for loopback, private IP addresses "
                "and dotless names such as a compose service)",
                self.location,
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
                    f"store.url {self.location!r} is not a usable Qdrant URL ({exc}); "
                    "expected http(s)://host:6333 or ':memory:'"
                ) from None

    def _error(self, failure: Failure, action: str) -> StoreError:
        where = f"Qdrant at {self.location}"
        grpc_hint = (
            f", and store.grpc_port={self.config.grpc_port} (gRPC is preferred)"
            if self.config.prefer_grpc and not self.is_local
            else ""
        )
        if failure.kind == "auth":
            if self.config.api_key is None:
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
                f"{where} did not answer within store.timeout_s={self.config.timeout_s:g} s "
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
