"""Answering through any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama …).

:class:`OpenAIAnswerer` implements :class:`pipeline.answer.answerer.Answerer` with the
``openai`` client, in three parts:

* the **messages** are engine-neutral (:func:`pipeline.answer.messages.chat_messages`:
  prompt, page labels and images, shared with every adapter); the answerer adds
  model, token limit and streaming, and parses the reply into an ``Answer``;
* the **transport** (:class:`ChatTransport`): the clients, retries, and the
  translation of the library's errors into pagerag's;
* **streaming**: reading a stream of chunks, closing it when the caller stops,
  errors mid-stream translated like the others.

Retries are ours (tenacity), not the client's (``max_retries=0``): the
client's backoff starts at 0.5 s and cannot be tuned without private hooks, and
tests need a 429-then-200 retry to take milliseconds (``backoff_s``).

Secrets: the key is read from ``config.api_key`` only when a client is built.
Errors are built from our own words, the status code and the endpoint's
message with anything key-like masked, and raised outside the ``except``
block, so neither ``__cause__`` nor ``__context__`` carries the library's
exception (whose request holds the ``Authorization`` header).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import httpx
import openai
import tenacity
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from pipeline.answer.answerer import (
    AnswerChunk,
    AsyncStreamingAnswer,
    StreamingAnswer,
    finish_answer,
)
from pipeline.answer.messages import chat_messages
from pipeline.config import VLMConfig
from pipeline.errors import VLMAuthError, VLMError, VLMNotConfiguredError, VLMUnavailableError
from pipeline.types import Answer, PageHit, Usage

__all__ = ["ChatTransport", "OpenAIAnswerer", "vlm_configured"]

log = logging.getLogger(__name__)

T = TypeVar("T")

OPENAI_BASE_URL = "https://api.openai.com/v1"
# Local servers (vLLM, Ollama) need no key, but the client refuses to start without one.
_KEYLESS = "EMPTY"
# Longest server-requested wait (Retry-After) we honour before the next attempt.
_MAX_RETRY_AFTER_S = 60.0
_MAX_DETAIL = 300
# Exceptions a call or a stream can end with; everything else is a bug and propagates.
# (httpx errors only escape the client mid-stream, on openai versions that do not wrap them.)
_CALL_ERRORS = (openai.OpenAIError, httpx.TransportError)
_KEYLIKE = re.compile(r"(sk-[\w*.\-]{3,})|((?<=Bearer )\S+)", re.I)


def vlm_configured(config: VLMConfig) -> bool:
    """Whether answering is possible: an endpoint, or a key for OpenAI's default one."""
    return bool(config.base_url or config.api_key)


# --------------------------------------------------------------------------- the answerer


class OpenAIAnswerer:
    """:class:`pipeline.answer.answerer.Answerer` over the ``openai`` chat-completions API.

    The constructor only stores its arguments; clients are built on first use.
    ``http_client``/``async_http_client`` replace the transport (tests pass an
    ``httpx`` client with a ``MockTransport``); they stay the caller's to close.
    ``backoff_s`` is the first retry delay, doubled per retry up to
    ``max_backoff_s`` (a server's ``Retry-After`` wins when it sends one).
    ``page_text_chars`` > 0 (``text.answer_with_text``) also shows the VLM each page's
    extracted text, cut at that many characters.
    """

    def __init__(
        self,
        config: VLMConfig,
        *,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        page_text_chars: int = 0,
    ) -> None:
        self._config = config
        self._page_text_chars = page_text_chars
        self._transport = ChatTransport(
            config,
            http_client=http_client,
            async_http_client=async_http_client,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
        )

    def __repr__(self) -> str:
        return f"OpenAIAnswerer(model={self.model!r}, endpoint={self.endpoint!r})"

    @property
    def model(self) -> str:
        return self._config.model

    @property
    def endpoint(self) -> str:
        """The base URL requests go to, safe to print."""
        return self._transport.endpoint

    def answer(self, question: str, hits: Sequence[PageHit]) -> Answer:
        body = self._request(question, hits, stream=False)
        return self._parse(self._transport.create(body), hits)

    def stream(self, question: str, hits: Sequence[PageHit]) -> StreamingAnswer:
        body = self._request(question, hits, stream=True)
        chunks = _chunks(self._transport.create(body), self._transport.stream_error)
        return StreamingAnswer(chunks, hits, model=self.model)

    async def aanswer(self, question: str, hits: Sequence[PageHit]) -> Answer:
        # Loading and re-encoding k page images is CPU and store I/O: keep it off the loop.
        body = await asyncio.to_thread(self._request, question, hits, stream=False)
        return self._parse(await self._transport.acreate(body), hits)

    async def astream(self, question: str, hits: Sequence[PageHit]) -> AsyncStreamingAnswer:
        body = await asyncio.to_thread(self._request, question, hits, stream=True)
        chunks = _achunks(await self._transport.acreate(body), self._transport.stream_error)
        return AsyncStreamingAnswer(chunks, hits, model=self.model)

    def close(self) -> None:
        """Close the sync client if this answerer built it (injected clients are left open)."""
        self._transport.close()

    async def aclose(self) -> None:
        """Close both clients this answerer built."""
        await self._transport.aclose()

    def _request(self, question: str, hits: Sequence[PageHit], *, stream: bool) -> dict[str, Any]:
        """The chat-completions request body; shared by the sync and async paths."""
        self._transport.check_configured()  # fail on a missing endpoint before loading images
        config = self._config
        body: dict[str, Any] = {
            "model": config.model,
            "messages": chat_messages(
                question,
                hits,
                max_image_side=config.max_image_side,
                jpeg_quality=config.jpeg_quality,
                page_text_chars=self._page_text_chars,
            ),
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        if stream:
            # Endpoints that ignore stream_options simply send no usage: usage stays None.
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return body

    def _parse(self, completion: Any, hits: Sequence[PageHit]) -> Answer:
        if not isinstance(completion, ChatCompletion):
            # The client hands back raw text when a 200 response is not JSON (a web page,
            # a proxy): the base URL points somewhere that is not the API root.
            raise VLMError(
                f"the VLM endpoint {self.endpoint} did not return a chat completion; check "
                "that vlm.base_url is the API root of an OpenAI-compatible server "
                "(usually ending in /v1)"
            )
        if not completion.choices:
            raise VLMError(
                f"the VLM endpoint {self.endpoint} returned no answer for model {self.model!r}"
            )
        message = completion.choices[0].message
        text = message.content or getattr(message, "refusal", None) or ""
        model = completion.model or self.model
        return finish_answer(text, hits, usage=_usage(completion.usage), model=model)


def _usage(raw: Any) -> Usage | None:
    if raw is None:
        return None
    return Usage(
        prompt_tokens=getattr(raw, "prompt_tokens", None),
        completion_tokens=getattr(raw, "completion_tokens", None),
        total_tokens=getattr(raw, "total_tokens", None),
    )


# --------------------------------------------------------------------------- streaming


def _chunk(raw: ChatCompletionChunk) -> AnswerChunk:
    delta = raw.choices[0].delta if raw.choices else None
    text = (delta.content if delta is not None else None) or ""
    return AnswerChunk(text=text, usage=_usage(raw.usage), model=raw.model or None)


def _chunks(
    stream: openai.Stream[ChatCompletionChunk], translate: Callable[[BaseException], VLMError]
) -> Iterator[AnswerChunk]:
    """The stream's chunks; closes it also when the caller stops early."""
    error: VLMError | None = None
    try:
        iterator = iter(stream)
        while error is None:
            try:
                raw = next(iterator)
            except StopIteration:
                break
            except _CALL_ERRORS as exc:
                error = translate(exc)
            else:
                yield _chunk(raw)
    finally:
        stream.close()
    if error is not None:
        raise error  # outside the except block: no __context__ holding the request


async def _achunks(
    stream: openai.AsyncStream[ChatCompletionChunk],
    translate: Callable[[BaseException], VLMError],
) -> AsyncIterator[AnswerChunk]:
    """The async form of :func:`_chunks`."""
    error: VLMError | None = None
    try:
        iterator = stream.__aiter__()
        while error is None:
            try:
                raw = await iterator.__anext__()
            except StopAsyncIteration:
                break
            except _CALL_ERRORS as exc:
                error = translate(exc)
            else:
                yield _chunk(raw)
    finally:
        await stream.close()
    if error is not None:
        raise error


# --------------------------------------------------------------------------- the transport


class ChatTransport:
    """The ``openai`` clients of one endpoint, with our retries and error translation.

    :meth:`create` / :meth:`acreate` send a chat-completions request body and
    return what the client returns (a completion, or a stream when the body
    asks for one); every library error comes out as a
    :class:`~pipeline.errors.VLMError` that names the endpoint and what to do.
    """

    def __init__(
        self,
        config: VLMConfig,
        *,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
    ) -> None:
        if backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        self._config = config
        self._http_client = http_client
        self._async_http_client = async_http_client
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._client: openai.OpenAI | None = None
        self._async_client: openai.AsyncOpenAI | None = None
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """The base URL requests go to, safe to print: no user:password@, no query string."""
        url = self._config.base_url or OPENAI_BASE_URL
        return re.sub(r"//[^/@]*@", "//", url).split("?", 1)[0]

    def check_configured(self) -> None:
        """Raise :class:`VLMNotConfiguredError`, saying how to set one, without an endpoint."""
        self._client_options()

    def create(self, body: dict[str, Any]) -> Any:
        """``chat.completions.create(**body)``, retried; errors translated."""
        try:
            return tenacity.Retrying(**self._retry_policy())(self._create, body)
        except _CALL_ERRORS as exc:
            error = self._error(exc, attempts=self._config.max_retries + 1)
        raise error  # outside the except block: no __context__ holding the request

    async def acreate(self, body: dict[str, Any]) -> Any:
        """Async :meth:`create`."""
        send: Callable[[dict[str, Any]], Awaitable[Any]] = self._async_create
        try:
            return await tenacity.AsyncRetrying(**self._retry_policy())(send, body)
        except _CALL_ERRORS as exc:
            error = self._error(exc, attempts=self._config.max_retries + 1)
        raise error

    def stream_error(self, exc: BaseException) -> VLMError:
        """A stream's error mid-way, translated (streams are not retried)."""
        return self._error(exc, attempts=1)

    def close(self) -> None:
        """Close the sync client if this transport built it (injected clients are left open)."""
        client, self._client = self._client, None
        if client is not None and self._http_client is None:
            client.close()

    async def aclose(self) -> None:
        """Close both clients this transport built."""
        self.close()
        client, self._async_client = self._async_client, None
        if client is not None and self._async_http_client is None:
            await client.close()

    # -- clients ----------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        config = self._config
        if not vlm_configured(config):
            raise VLMNotConfiguredError(
                "answering needs a vision-language model: set vlm.base_url (env "
                "PAGERAG_VLM__BASE_URL) to an OpenAI-compatible endpoint, or set "
                "OPENAI_API_KEY to use OpenAI"
            )
        return {
            "api_key": config.api_key.get_secret_value() if config.api_key else _KEYLESS,
            # Explicit, so OPENAI_BASE_URL in the environment cannot override the config.
            "base_url": config.base_url or OPENAI_BASE_URL,
            "timeout": config.timeout_s,
            "max_retries": 0,  # ours: see the module docstring
        }

    def _sync(self) -> openai.OpenAI:
        with self._lock:
            if self._client is None:
                self._client = openai.OpenAI(
                    **self._client_options(), http_client=cast(Any, self._http_client)
                )
            return self._client

    def _async(self) -> openai.AsyncOpenAI:
        with self._lock:
            if self._async_client is None:
                self._async_client = openai.AsyncOpenAI(
                    **self._client_options(), http_client=cast(Any, self._async_http_client)
                )
            return self._async_client

    def _create(self, body: dict[str, Any]) -> Any:
        return self._sync().chat.completions.create(**body)

    async def _async_create(self, body: dict[str, Any]) -> Any:
        # A coroutine function, not a lambda returning a coroutine: AsyncRetrying
        # awaits only what it recognises as async, and would retry nothing otherwise.
        return await self._async().chat.completions.create(**body)

    # -- retries ------------------------------------------------------------------------

    def _retry_policy(self) -> dict[str, Any]:
        return {
            "stop": tenacity.stop_after_attempt(self._config.max_retries + 1),
            "wait": self._wait,
            "retry": tenacity.retry_if_exception(_retryable),
            "before_sleep": self._log_retry,
            "reraise": True,
        }

    def _wait(self, state: tenacity.RetryCallState) -> float:
        asked = _retry_after(state.outcome.exception() if state.outcome else None)
        if asked is not None:
            return asked
        delay = min(self._max_backoff_s, self._backoff_s * 2 ** (state.attempt_number - 1))
        return delay * (1 - 0.25 * random.random())  # jitter: clients do not retry in step

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        status = getattr(exc, "status_code", None)
        what = f"HTTP {status}" if status else type(exc).__name__
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "VLM endpoint %s: %s; retrying in %.2f s (attempt %d of %d)",
            self.endpoint,
            what,
            wait,
            state.attempt_number + 1,
            self._config.max_retries + 1,
        )

    # -- errors -------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """Mask the key (and anything key-like: some servers echo part of it)."""
        key = self._config.api_key.get_secret_value() if self._config.api_key else ""
        if len(key) >= 4:
            text = text.replace(key, "***")
        text = _KEYLIKE.sub("***", " ".join(text.split()))
        return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"

    def _detail(self, exc: BaseException) -> str:
        """The endpoint's own words: OpenAI, vLLM and Ollama error bodies all differ."""
        body = getattr(exc, "body", None)
        message: Any = None
        if isinstance(body, Mapping):
            message = body.get("message") or body.get("error") or body.get("detail")
            if isinstance(message, Mapping):
                message = message.get("message")
        elif isinstance(body, str):
            message = body
        return self._scrub(str(message or getattr(exc, "message", "") or type(exc).__name__))

    def _error(self, exc: BaseException, *, attempts: int) -> VLMError:
        where = f"the VLM endpoint {self.endpoint}"
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        if isinstance(exc, openai.APITimeoutError):
            return VLMUnavailableError(
                f"{where} did not answer within vlm.timeout_s={self._config.timeout_s:g} s"
                f"{tried}; check the server, or raise vlm.timeout_s"
            )
        if isinstance(exc, (openai.APIConnectionError, httpx.TransportError)):
            cause = exc.__cause__ or exc
            return VLMUnavailableError(
                f"cannot reach {where}{tried} ({type(cause).__name__}: "
                f"{self._scrub(str(cause))}); check vlm.base_url and that the server is running"
            )
        if not isinstance(exc, openai.APIStatusError):
            return VLMError(f"{where} failed: {self._detail(exc)}")
        return self._status_error(exc, where, tried)

    def _status_error(self, exc: openai.APIStatusError, where: str, tried: str) -> VLMError:
        status, detail, model = exc.status_code, self._detail(exc), self._config.model
        if status in (401, 403):
            return VLMAuthError(
                f"{where} refused the credentials (HTTP {status}: {detail}); check vlm.api_key "
                f"(env OPENAI_API_KEY or PAGERAG_VLM__API_KEY) and that it may use model {model!r}"
            )
        if _error_code(exc) == "insufficient_quota":
            return VLMError(f"{where} says the account has no quota left (HTTP {status}: {detail})")
        if _retryable(exc):
            return VLMUnavailableError(
                f"{where} kept failing (HTTP {status}: {detail}){tried}; "
                "try again later, or raise vlm.max_retries"
            )
        hint = (
            "check vlm.model, and that vlm.base_url is the API root (usually ending in /v1)"
            if status == 404
            else "check vlm.model and that the model accepts image input"
        )
        return VLMError(
            f"{where} rejected the request for model {model!r} (HTTP {status}: {detail}); {hint}"
        )


def _error_code(exc: BaseException) -> str | None:
    body = getattr(exc, "body", None)
    code = body.get("code") if isinstance(body, Mapping) else None
    return str(code) if code is not None else None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    if isinstance(exc, openai.APIStatusError):
        if _error_code(exc) == "insufficient_quota":  # a 429 that waiting never fixes
            return False
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def _retry_after(exc: BaseException | None) -> float | None:
    """The wait a 429/503 asked for (``retry-after-ms`` or ``retry-after`` seconds)."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(response.headers.get(header, "")) * scale
        except ValueError:
            continue
        if 0 <= seconds <= _MAX_RETRY_AFTER_S:
            return seconds
    return None
