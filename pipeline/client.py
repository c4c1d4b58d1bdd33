"""A client of a running ``pagerag serve``: :class:`PageRAGClient` and its async twin.

The same calls as a local :class:`~pipeline.api.PageRAG`, answered by the
service's model and store, so several processes share one loaded model::

    from pipeline.client import PageRAGClient

    with PageRAGClient("http://127.0.0.1:8000") as rag:   # api_key: $PAGERAG_API_KEY
        hits = rag.search("revenue by segment", k=5)
        jpeg = hits[0].load_jpeg()                        # fetched from the service
        answer = rag.ask("What was the FY2018 capex?", k=3)
        for delta in (stream := rag.ask_stream("…")):
            print(delta, end="")
        job = rag.wait(rag.ingest(["q3.pdf"])["id"])      # upload, then follow the job

Hits, answers and document records come back as the same typed values
(``PageHit``, ``Answer``, ``StreamingAnswer``, ``DocumentRecord``); jobs and
status as the service's JSON. Errors the service reports come back as the
same exception classes with the same messages (``QueryError`` …); a missing
or wrong key is :class:`~pipeline.errors.ServiceAuthError`, an unreachable
service :class:`~pipeline.errors.ServiceUnavailableError`.

Both clients share everything but the I/O: each operation is a small
request spec (:class:`_Call`) with a parser, sent by ``_send`` or
``_asend``. Needs httpx and httpx-sse (``pip install 'pagerag[client]'``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from pipeline import errors
from pipeline.answer.answerer import AnswerChunk, AsyncStreamingAnswer, StreamingAnswer
from pipeline.config import API_KEY_ENV
from pipeline.errors import (
    OptionalDependencyError,
    PageRAGError,
    ServiceAuthError,
    ServiceError,
    ServiceUnavailableError,
)
from pipeline.serve.wire import (
    answer_from_wire,
    hit_from_wire,
    page_image_path,
    record_from_wire,
)
from pipeline.types import Answer, DocumentRecord, PageHit, Usage

try:
    import httpx
    from httpx_sse import EventSource, ServerSentEvent, aconnect_sse, connect_sse
except ImportError as exc:  # pragma: no cover - the extra is part of every dev install
    raise OptionalDependencyError("pipeline.client", "client", exc.name or "httpx") from exc

__all__ = ["DEFAULT_URL", "AsyncPageRAGClient", "PageRAGClient"]

DEFAULT_URL = "http://127.0.0.1:8000"
T = TypeVar("T")
Mode = Literal["auto", "visual", "exact", "two_stage", "text", "hybrid"]

# Errors of pagerag's tree that carry only a message: raised again as themselves.
_BY_NAME: dict[str, type[PageRAGError]] = {
    name: cls
    for name in errors.__all__
    if isinstance(cls := getattr(errors, name), type)
    and issubclass(cls, PageRAGError)
    and cls.__init__ is Exception.__init__
}


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request and how to read its response."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] = field(default_factory=list)
    data: Mapping[str, str] | None = None


def _raise_for(response: httpx.Response) -> None:
    """The service's problem details as the exception they name."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    detail = str(problem.get("detail") or f"HTTP {response.status_code} {response.reason_phrase}")
    if response.status_code == 401:
        raise ServiceAuthError(detail, status=401, problem=problem)
    cls = _BY_NAME.get(str(problem.get("error")))
    if cls is not None:
        raise cls(detail)
    raise ServiceError(detail, status=response.status_code, problem=problem)


def _json(response: httpx.Response) -> Any:
    _raise_for(response)
    return response.json()


def _bytes(response: httpx.Response) -> bytes:
    _raise_for(response)
    return response.content


def _query_body(question_key: str, text: str, k: int | None, filter: Any, mode: Any) -> Any:
    return {question_key: text, "k": k, "filter": filter, "mode": mode}


def _answer_chunk(event: ServerSentEvent) -> AnswerChunk | None:
    """A streamed answer's event as an AnswerChunk (None for ``sources``); ``error`` raises."""
    data = json.loads(event.data) if event.data else {}
    if event.event == "delta":
        return AnswerChunk(text=str(data.get("text", "")))
    if event.event == "answer":
        usage = data.get("usage")
        return AnswerChunk(usage=None if usage is None else Usage(**usage), model=data.get("model"))
    if event.event == "error":
        cls = _BY_NAME.get(str(data.get("error")))
        detail = str(data.get("detail", "the answer stream failed"))
        raise cls(detail) if cls is not None else ServiceError(detail, problem=data)
    return None


def _stream_sources(event: ServerSentEvent, loader: Callable[[str], bytes]) -> list[PageHit]:
    if event.event != "sources":
        raise ServiceError(f"the answer stream began with {event.event!r}, not 'sources'")
    return [hit_from_wire(h, loader) for h in json.loads(event.data)["sources"]]


def _upload(files: Sequence[str | os.PathLike[str]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("files", (Path(f).name, Path(f).read_bytes(), "application/octet-stream")) for f in files
    ]


class _Base:
    """Settings and request specs both clients share."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout

    def __repr__(self) -> str:  # the key stays out of reprs and logs
        return f"{type(self).__name__}({self.base_url!r})"

    def _unreachable(self, exc: httpx.TransportError) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"cannot reach the pagerag service at {self.base_url} ({type(exc).__name__}: {exc}); "
            "is `pagerag serve` running there?"
        )

    def _image(self, point_id: str) -> bytes:
        """A page JPEG, fetched synchronously (``PageHit.load_jpeg`` is a sync call)."""
        try:
            response = httpx.get(
                self.base_url + page_image_path(point_id),
                headers=self._headers,
                timeout=self.timeout,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return _bytes(response)

    def _loader(self) -> Callable[[str], bytes]:
        return self._image

    # -- request specs ---------------------------------------------------------------

    def _search(self, query: str, k: int | None, filter: Any, mode: Any) -> _Call[list[PageHit]]:
        loader = self._loader()
        return _Call(
            "POST",
            "/v1/search",
            lambda r: [hit_from_wire(h, loader) for h in _json(r)["hits"]],
            json=_query_body("query", query, k, filter, mode),
        )

    def _ask(self, question: str, k: int | None, filter: Any, mode: Any) -> _Call[Answer]:
        loader = self._loader()
        return _Call(
            "POST",
            "/v1/ask",
            lambda r: answer_from_wire(_json(r), loader),
            json=_query_body("question", question, k, filter, mode),
        )

    def _status(self) -> _Call[dict[str, Any]]:
        return _Call("GET", "/v1/status", _json)

    def _documents(self) -> _Call[list[DocumentRecord]]:
        return _Call(
            "GET", "/v1/documents", lambda r: [record_from_wire(d) for d in _json(r)["documents"]]
        )

    def _document(self, document_id: str) -> _Call[DocumentRecord]:
        return _Call("GET", f"/v1/documents/{document_id}", lambda r: record_from_wire(_json(r)))

    def _delete(self, document_id: str) -> _Call[list[DocumentRecord]]:
        return _Call(
            "DELETE",
            f"/v1/documents/{document_id}",
            lambda r: [record_from_wire(d) for d in _json(r)["deleted"]],
        )

    def _ingest(
        self,
        files: Sequence[str | os.PathLike[str]],
        paths: Sequence[str],
        metadata: Mapping[str, str] | None,
        retry_incomplete: bool,
    ) -> _Call[dict[str, Any]]:
        if bool(files) == bool(paths):
            raise ValueError("give files to upload, or paths under the service's serve.roots")
        if paths:
            body = {
                "paths": list(paths),
                "metadata": dict(metadata or {}),
                "retry_incomplete": retry_incomplete,
            }
            return _Call("POST", "/v1/ingest", _json, json=body)
        form = {
            "metadata": json.dumps(dict(metadata or {})),
            "retry_incomplete": str(retry_incomplete),
        }
        return _Call("POST", "/v1/ingest", _json, files=_upload(files), data=form)

    def _job(self, job_id: str) -> _Call[dict[str, Any]]:
        return _Call("GET", f"/v1/jobs/{job_id}", _json)

    def _cancel(self, job_id: str) -> _Call[dict[str, Any]]:
        return _Call("DELETE", f"/v1/jobs/{job_id}", _json)

    def _page_image(self, point_id: str) -> _Call[bytes]:
        return _Call("GET", page_image_path(point_id), _bytes)

    def _explain(self, query: str, point_id: str, kind: str, alpha: float) -> _Call[bytes]:
        params = {"q": query, "kind": kind, "alpha": alpha}
        return _Call("GET", f"/v1/pages/{point_id}/explain", _bytes, params=params)

    def _request_args(self, call: _Call[Any]) -> dict[str, Any]:
        args: dict[str, Any] = {"headers": self._headers, "params": call.params}
        if call.json is not None:
            args["json"] = call.json
        if call.files:
            args["files"] = call.files
            args["data"] = call.data
        return args


class PageRAGClient(_Base):
    """A running ``pagerag serve``, called like a local ``PageRAG`` (blocking calls).

    ``api_key`` defaults to ``$PAGERAG_API_KEY``; ``http`` is an
    ``httpx.Client`` to use instead of the client's own (then ``base_url``
    is that client's). Thread-safe: one client can serve many threads.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(str(http.base_url) if http is not None else base_url, api_key, timeout)
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        self._owned = http is None

    def _send(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, **self._request_args(call))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return call.parse(response)

    def _image(self, point_id: str) -> bytes:
        return self._send(self._page_image(point_id))

    def search(
        self, query: str, k: int | None = None, *, filter: Any = None, mode: Mode | None = None
    ) -> list[PageHit]:
        """The ``k`` best pages; each hit's ``load_jpeg()`` fetches its image from the service."""
        return self._send(self._search(query, k, filter, mode))

    def ask(
        self, question: str, k: int | None = None, *, filter: Any = None, mode: Mode | None = None
    ) -> Answer:
        return self._send(self._ask(question, k, filter, mode))

    def ask_stream(
        self, question: str, k: int | None = None, *, filter: Any = None, mode: Mode | None = None
    ) -> StreamingAnswer:
        """Iterate for text as the service's VLM writes it; ``.answer`` then gives the Answer."""
        stack = contextlib.ExitStack()
        body = {**_query_body("question", question, k, filter, mode), "stream": True}
        try:
            source: EventSource = stack.enter_context(
                connect_sse(self._http, "POST", "/v1/ask", json=body, headers=self._headers)
            )
            if source.response.status_code >= 400:
                source.response.read()
                _raise_for(source.response)
            events = source.iter_sse()
            hits = _stream_sources(next(events), self._loader())
        except httpx.TransportError as exc:
            stack.close()
            raise self._unreachable(exc) from None
        except BaseException:
            stack.close()
            raise

        def chunks() -> Iterator[AnswerChunk]:
            with stack:
                for event in events:
                    if (chunk := _answer_chunk(event)) is not None:
                        yield chunk

        return StreamingAnswer(chunks(), hits)

    def status(self) -> dict[str, Any]:
        return self._send(self._status())

    def documents(self) -> list[DocumentRecord]:
        return self._send(self._documents())

    def document(self, document_id: str) -> DocumentRecord:
        """One document by id or unique id prefix."""
        return self._send(self._document(document_id))

    def delete(self, document_id: str) -> list[DocumentRecord]:
        """Delete a document by id or unique id prefix; the records removed."""
        return self._send(self._delete(document_id))

    def ingest(
        self,
        files: Sequence[str | os.PathLike[str]] = (),
        *,
        paths: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        retry_incomplete: bool = False,
    ) -> dict[str, Any]:
        """Upload ``files``, or name ``paths`` under the service's serve.roots: the job started."""
        return self._send(self._ingest(files, paths, metadata, retry_incomplete))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._send(self._job(job_id))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._send(self._cancel(job_id))

    def wait(self, job_id: str) -> dict[str, Any]:
        """Follow a job's events until it ends; the finished job (``report`` or ``error``)."""
        try:
            with connect_sse(
                self._http, "GET", f"/v1/jobs/{job_id}/events", headers=self._headers
            ) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    _raise_for(source.response)
                for event in source.iter_sse():
                    if event.event == "done":
                        return dict(json.loads(event.data))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return self.job(job_id)  # the stream ended early: the job as it stands

    def page_image(self, point_id: str) -> bytes:
        return self._send(self._page_image(point_id))

    def explain(
        self, query: str, point_id: str, *, kind: str = "contributions", alpha: float = 0.6
    ) -> bytes:
        """The page with its MaxSim heatmap for ``query``, as PNG bytes."""
        return self._send(self._explain(query, point_id, kind, alpha))

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> PageRAGClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncPageRAGClient(_Base):
    """:class:`PageRAGClient` for asyncio: the same methods, awaited.

    A hit's ``load_jpeg()`` is a blocking call (``PageHit`` is shared with the
    sync API); in a coroutine prefer ``await client.page_image(hit.point_id)``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(str(http.base_url) if http is not None else base_url, api_key, timeout)
        self._http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._owned = http is None

    async def _send(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, **self._request_args(call))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return call.parse(response)

    async def search(
        self, query: str, k: int | None = None, *, filter: Any = None, mode: Mode | None = None
    ) -> list[PageHit]:
        return await self._send(self._search(query, k, filter, mode))

    async def ask(
        self, question: str, k: int | None = None, *, filter: Any = None, mode: Mode | None = None
    ) -> Answer:
        return await self._send(self._ask(question, k, filter, mode))

    async def ask_stream(
        self, question: str, k: int | None = None, *, filter: Any = None, mode: Mode | None = None
    ) -> AsyncStreamingAnswer:
        stack = contextlib.AsyncExitStack()
        body = {**_query_body("question", question, k, filter, mode), "stream": True}
        try:
            source: EventSource = await stack.enter_async_context(
                aconnect_sse(self._http, "POST", "/v1/ask", json=body, headers=self._headers)
            )
            if source.response.status_code >= 400:
                await source.response.aread()
                _raise_for(source.response)
            events = source.aiter_sse()
            hits = _stream_sources(await anext(events), self._loader())
        except httpx.TransportError as exc:
            await stack.aclose()
            raise self._unreachable(exc) from None
        except BaseException:
            await stack.aclose()
            raise

        async def chunks() -> AsyncIterator[AnswerChunk]:
            async with stack:
                async for event in events:
                    if (chunk := _answer_chunk(event)) is not None:
                        yield chunk

        return AsyncStreamingAnswer(chunks(), hits)

    async def status(self) -> dict[str, Any]:
        return await self._send(self._status())

    async def documents(self) -> list[DocumentRecord]:
        return await self._send(self._documents())

    async def document(self, document_id: str) -> DocumentRecord:
        return await self._send(self._document(document_id))

    async def delete(self, document_id: str) -> list[DocumentRecord]:
        return await self._send(self._delete(document_id))

    async def ingest(
        self,
        files: Sequence[str | os.PathLike[str]] = (),
        *,
        paths: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        retry_incomplete: bool = False,
    ) -> dict[str, Any]:
        return await self._send(self._ingest(files, paths, metadata, retry_incomplete))

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._send(self._job(job_id))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._send(self._cancel(job_id))

    async def wait(self, job_id: str) -> dict[str, Any]:
        try:
            async with aconnect_sse(
                self._http, "GET", f"/v1/jobs/{job_id}/events", headers=self._headers
            ) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    _raise_for(source.response)
                async for event in source.aiter_sse():
                    if event.event == "done":
                        return dict(json.loads(event.data))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return await self.job(job_id)

    async def page_image(self, point_id: str) -> bytes:
        return await self._send(self._page_image(point_id))

    async def explain(
        self, query: str, point_id: str, *, kind: str = "contributions", alpha: float = 0.6
    ) -> bytes:
        return await self._send(self._explain(query, point_id, kind, alpha))

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncPageRAGClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
