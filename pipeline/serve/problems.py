"""Errors as JSON problem details (RFC 9457), with the CLI's messages.

Every error pagerag raises on purpose keeps its message as ``detail`` (the
same text ``pagerag`` prints after ``error:``) and its class name as
``error``, so a client can raise the same exception again
(:mod:`pipeline.client` does). The HTTP status follows the branch of the
tree in :mod:`pipeline.errors`.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    ConfigError,
    InputError,
    ModelNotAvailableError,
    OptionalDependencyError,
    PageRAGError,
    QueryError,
    StoreInUseError,
    StoreUnavailableError,
    VLMError,
    VLMNotConfiguredError,
)

__all__ = ["MEDIA_TYPE", "ServeError", "problem", "problem_for"]

MEDIA_TYPE = "application/problem+json"

# Most specific first: the first class an error is an instance of decides.
_STATUS: tuple[tuple[type[PageRAGError], int, str], ...] = (
    (CollectionNotFoundError, 404, "Nothing ingested yet"),
    (CollectionMismatchError, 409, "Collection built differently"),
    (StoreInUseError, 503, "Store in use by another process"),
    (StoreUnavailableError, 503, "Store unavailable"),
    (ModelNotAvailableError, 503, "Model not available"),
    (VLMNotConfiguredError, 503, "No vision-language model configured"),
    (VLMError, 502, "Vision-language model failed"),
    (OptionalDependencyError, 501, "Optional package missing"),
    (QueryError, 400, "Bad request"),
    (ConfigError, 400, "Bad configuration"),
    (InputError, 422, "File cannot be ingested"),
    (PageRAGError, 500, "pagerag error"),
)

_TITLES = {
    400: "Bad request",
    401: "API key required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    411: "Length required",
    413: "Request too large",
    415: "Unsupported file type",
    422: "Invalid request",
    429: "Too many ingest jobs",
    500: "Internal error",
}


def problem(status: int, detail: str, *, error: str | None = None, **extra: Any) -> dict[str, Any]:
    """A problem-details body: ``type``, ``title``, ``status``, ``detail``, ``error``."""
    name = error or _TITLES.get(status, "Error").title().replace(" ", "")
    return {
        "type": f"urn:pagerag:error:{name}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "error": error,
        **extra,
    }


def problem_for(exc: PageRAGError) -> dict[str, Any]:
    """The problem details of an error of pagerag's tree, its message unchanged."""
    for cls, status, title in _STATUS:
        if isinstance(exc, cls):
            body = problem(status, str(exc), error=type(exc).__name__)
            body["title"] = title
            return body
    raise AssertionError("unreachable: PageRAGError is the last entry")  # pragma: no cover


class ServeError(Exception):
    """A refusal of the service itself (auth, limits, paths), raised as its problem."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})

    def to_problem(self) -> dict[str, Any]:
        return problem(self.status, self.detail)
