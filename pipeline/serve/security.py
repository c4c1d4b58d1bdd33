"""Safe by default: loopback binds, the bearer API key, request body limits.

* :func:`check_bind` refuses to serve on any address but loopback without
  ``serve.api_key`` (``PAGERAG_API_KEY``).
* :func:`check_key` compares the ``Authorization: Bearer`` token in constant
  time. The key is never logged and never echoed in an error.
* :class:`BodyLimit` refuses a request body larger than its limit from its
  ``Content-Length`` header, before any of it is read (413), and a body
  without a length (411): uploads cannot fill the disk or memory.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import SecretStr

from pipeline.errors import ConfigError
from pipeline.serve.problems import MEDIA_TYPE, ServeError, problem

__all__ = ["BodyLimit", "JSONBodies", "check_bind", "check_key", "is_loopback"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1``; False for ``0.0.0.0`` and the rest."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_bind(host: str, api_key: SecretStr | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if is_loopback(host) or (api_key is not None and api_key.get_secret_value()):
        return
    raise ConfigError(
        f"refusing to serve on {host}: only loopback (127.0.0.1) may be served without an API "
        "key. Set PAGERAG_API_KEY (e.g. `export PAGERAG_API_KEY=$(openssl rand -hex 32)`) and "
        "send it as `Authorization: Bearer <key>`, or bind 127.0.0.1 (serve.host)"
    )


def check_key(api_key: SecretStr | None, authorization: str | None) -> None:
    """Pass when no key is configured or the bearer token equals it; else a 401."""
    if api_key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ServeError(
            401,
            "this service needs an API key: send `Authorization: Bearer <key>` with the key "
            "the service was started with (its PAGERAG_API_KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(token.strip().encode(), api_key.get_secret_value().encode()):
        raise ServeError(
            401,
            "the API key was not accepted: send the key the service was started with "
            "(its PAGERAG_API_KEY) as `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


class BodyLimit:
    """ASGI middleware: a request body may not exceed ``limit_for(path)`` bytes.

    The ``Content-Length`` header decides before the body is read. A body
    without one (chunked) is refused with 411, so no request can stream more
    than its limit. The server (h11) never reads past the declared length.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value for key, value in scope["headers"]}
        limit = self.limit_for(scope["path"])
        length = headers.get("content-length")
        refusal: tuple[int, str] | None = None
        if length is None:
            if "transfer-encoding" in headers:
                refusal = (411, "send the request with a Content-Length header (not chunked)")
        elif not length.isdigit():
            refusal = (400, "the Content-Length header is not a number")
        elif int(length) > limit:
            refusal = (
                413,
                f"the request body is {int(length) / 1e6:.1f} MB, more than this endpoint "
                f"accepts ({limit / 1e6:.1f} MB; uploads: serve.max_upload_mb)",
            )
        if refusal is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(problem(*refusal)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refusal[0],
                "headers": [
                    (b"content-type", MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


_FORM = b"application/x-www-form-urlencoded"


class JSONBodies:
    """ASGI middleware: a POST to ``paths`` with curl's default form type is read as JSON.

    ``curl -d '{"question": …}' …/v1/ask`` sends the JSON labelled
    ``application/x-www-form-urlencoded``; these endpoints take only JSON,
    so the label is corrected instead of refusing the request.
    """

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            # ASGI header names are lower-case.
            declared = dict(scope["headers"]).get(b"content-type", b"")
            if declared.split(b";")[0].strip().lower() in (b"", _FORM):
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
