"""The answering stage, offline at the HTTP boundary.

The real ``openai`` client talks to an ``httpx.MockTransport``: each test
asserts on the request the client actually sent (model, prompt, labels, the
page images as JPEG data URLs) and on how responses, streams and failures come
back as Answers or typed errors.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from connectors.openai_vlm import OpenAIAnswerer, vlm_configured
from pipeline.answer.answerer import (
    SYSTEM_PROMPT,
    Answerer,
    NoVLMAnswerer,
    StreamingAnswer,
    no_vlm_answer,
    parse_citations,
)
from pipeline.config import VLMConfig
from pipeline.errors import (
    QueryError,
    StoreError,
    VLMAuthError,
    VLMError,
    VLMNotConfiguredError,
    VLMUnavailableError,
)
from pipeline.types import Answer, PageHit, Usage

KEY = "sk-test-SECRET-0123456789abcdef"
BASE = "http://vlm.test/v1"
MODEL = "test-vlm"
ANSWER_TEXT = "Capex was $1.6B [10k.pdf p.2], see also [Notes.PDF, p. 7]."


def _jpeg(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _hit(name: str, page: int, score: float, size: tuple[int, int] = (2000, 1000)) -> PageHit:
    jpeg = _jpeg(size, (page * 20 % 256, 90, 160))
    return PageHit(
        point_id=f"{name}#{page}",
        document_id=name,
        source=f"/docs/{name}",
        page_number=page,
        score=score,
        payload={"file_name": name},
        image_loader=lambda: jpeg,
    )


HITS = (_hit("10k.pdf", 2, 0.91), _hit("notes.pdf", 7, 0.80), _hit("10k.pdf", 9, 0.55, (800, 600)))


def _completion(text: str = ANSWER_TEXT, *, usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "test-vlm-2025",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 1200, "completion_tokens": 20, "total_tokens": 1220}
    return body


def _sse(text: str = ANSWER_TEXT, *, usage: bool = True) -> bytes:
    def chunk(**fields: Any) -> str:
        base = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "test-vlm-2025",
        }
        return "data: " + json.dumps({**base, **fields}) + "\n\n"

    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
    events = [chunk(choices=[{"index": 0, "delta": {"role": "assistant"}}])]
    events += [chunk(choices=[{"index": 0, "delta": {"content": p}}]) for p in pieces]
    events.append(chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if usage:
        u = {"prompt_tokens": 1200, "completion_tokens": 20, "total_tokens": 1220}
        events.append(chunk(choices=[], usage=u))
    return ("".join(events) + "data: [DONE]\n\n").encode()


class Endpoint:
    """A scripted OpenAI-compatible endpoint: replies in order, then the last forever."""

    def __init__(self, *replies: Callable[[httpx.Request], httpx.Response]) -> None:
        self.replies = list(replies) or [ok()]
        self.requests: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        self.headers.append(request.headers)
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        return reply(request)

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]


def ok(*, usage: bool = True) -> Callable[[httpx.Request], httpx.Response]:
    def reply(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("stream"):
            return httpx.Response(
                200, content=_sse(usage=usage), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(200, json=_completion(usage=usage))

    return reply


def status(code: int, body: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(code, json=body)


def _config(**changes: Any) -> VLMConfig:
    fields: dict[str, Any] = {"base_url": BASE, "model": MODEL, "api_key": SecretStr(KEY)}
    fields |= {"max_image_side": 512, "jpeg_quality": 70, "max_retries": 3, **changes}
    return VLMConfig(**fields)


@pytest.fixture
def endpoint() -> Endpoint:
    return Endpoint()


Make = Callable[..., OpenAIAnswerer]


@pytest.fixture
def make() -> Iterator[Make]:
    """An answerer whose clients go through the endpoint's MockTransport, tiny backoff."""
    clients: list[httpx.Client] = []
    async_clients: list[httpx.AsyncClient] = []

    def build(endpoint: Endpoint, **config: Any) -> OpenAIAnswerer:
        clients.append(httpx.Client(transport=httpx.MockTransport(endpoint)))
        async_clients.append(httpx.AsyncClient(transport=httpx.MockTransport(endpoint)))
        return OpenAIAnswerer(
            _config(**config),
            http_client=clients[-1],
            async_http_client=async_clients[-1],
            backoff_s=0.001,
            max_backoff_s=0.002,
        )

    yield build
    for client in clients:
        client.close()
    for async_client in async_clients:
        asyncio.run(async_client.aclose())


def _images(body: dict[str, Any]) -> list[tuple[str, Image.Image]]:
    """(label before it, decoded image) for every image part of the user message."""
    content = body["messages"][1]["content"]
    out: list[tuple[str, Image.Image]] = []
    for before, part in itertools.pairwise(content):
        if part["type"] == "image_url":
            url = part["image_url"]["url"]
            assert url.startswith("data:image/jpeg;base64,")
            image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            assert before["type"] == "text"
            out.append((before["text"], image))
    return out


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


# -- the request -------------------------------------------------------------------------


def test_request_carries_model_prompt_labels_and_downscaled_jpegs(
    endpoint: Endpoint, make: Make
) -> None:
    make(endpoint).answer("What was capex?", HITS)

    body = endpoint.last
    assert body["model"] == MODEL
    assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert "[file p.N]" in SYSTEM_PROMPT
    assert "do not contain" in SYSTEM_PROMPT
    images = _images(body)
    assert [label for label, _ in images] == ["[10k.pdf p.2]", "[notes.pdf p.7]", "[10k.pdf p.9]"]
    for _, image in images:
        assert image.format == "JPEG"
        assert max(image.size) <= 512
    assert images[0][1].size == (512, 256)  # 2000×1000 shrunk, aspect kept
    assert body["messages"][1]["content"][-1] == {
        "type": "text",
        "text": "Question: What was capex?",
    }
    assert body["max_tokens"] == 1024
    assert body["temperature"] == 0.0
    assert "stream" not in body
    assert endpoint.headers[-1]["authorization"] == f"Bearer {KEY}"


def test_keyless_local_server_gets_a_placeholder_key(endpoint: Endpoint, make: Make) -> None:
    make(endpoint, api_key=None).answer("q", HITS[:1])
    assert endpoint.headers[-1]["authorization"] == "Bearer EMPTY"


# -- answers -----------------------------------------------------------------------------


def test_answer_parses_text_usage_model_and_citations(endpoint: Endpoint, make: Make) -> None:
    answer = make(endpoint).answer("What was capex?", HITS)

    assert answer.text == ANSWER_TEXT
    assert answer.answered is True
    assert answer.model == "test-vlm-2025"
    assert answer.usage == Usage(prompt_tokens=1200, completion_tokens=20, total_tokens=1220)
    assert answer.sources == HITS
    assert answer.cited == (HITS[0], HITS[1])


def test_stream_matches_the_non_streamed_answer(endpoint: Endpoint, make: Make) -> None:
    answerer = make(endpoint)
    plain = answerer.answer("q", HITS)

    streamed = answerer.stream("q", HITS)
    deltas = list(streamed)
    result = streamed.result()

    assert len(deltas) > 3
    assert "".join(deltas) == plain.text
    assert result == plain
    assert streamed.answer == plain
    assert endpoint.last["stream"] is True
    assert endpoint.last["stream_options"] == {"include_usage": True}


def test_stream_without_usage_from_the_endpoint(make: Make) -> None:
    endpoint = Endpoint(ok(usage=False))
    with make(endpoint).stream("q", HITS) as streamed:
        answer = streamed.result()  # read without iterating first
    assert answer.text == ANSWER_TEXT
    assert answer.usage is None
    assert answer.cited == (HITS[0], HITS[1])


def test_async_answer_and_stream_equal_sync(endpoint: Endpoint, make: Make) -> None:
    answerer = make(endpoint)
    sync = answerer.answer("q", HITS)

    async def run() -> tuple[Answer, list[str], Answer]:
        plain = await answerer.aanswer("q", HITS)
        async with await answerer.astream("q", HITS) as streamed:
            deltas = [d async for d in streamed]
        return plain, deltas, await streamed.result()

    plain, deltas, result = asyncio.run(run())
    assert plain == sync
    assert "".join(deltas) == sync.text
    assert result == sync
    assert endpoint.requests[1] == endpoint.requests[0]  # same request body, sync or async


def test_answerer_satisfies_the_protocol() -> None:
    assert isinstance(OpenAIAnswerer(_config()), Answerer)
    assert isinstance(NoVLMAnswerer(), Answerer)


# -- retries and errors ------------------------------------------------------------------


def test_429_then_200_is_retried(make: Make) -> None:
    endpoint = Endpoint(status(429, {"error": {"message": "slow down"}}), ok())
    answer = make(endpoint).answer("q", HITS)
    assert answer.text == ANSWER_TEXT
    assert len(endpoint.requests) == 2


def test_async_retries_and_maps_errors_like_sync(make: Make) -> None:
    retried = Endpoint(status(429, {"error": {"message": "slow down"}}), ok())
    refused = Endpoint(status(403, {"error": {"message": f"key {KEY} may not use this model"}}))

    async def run() -> Answer:
        with pytest.raises(VLMAuthError) as info:
            await make(refused).aanswer("q", HITS)
        assert KEY not in str(info.value)
        assert info.value.__context__ is None
        return await make(retried).aanswer("q", HITS)

    assert asyncio.run(run()).text == ANSWER_TEXT
    assert len(retried.requests) == 2
    assert len(refused.requests) == 1


def test_stream_errors_raise_when_opening_not_while_reading(make: Make) -> None:
    endpoint = Endpoint(status(401, {"error": {"message": "invalid key"}}))
    with pytest.raises(VLMAuthError):
        make(endpoint).stream("q", HITS)


def test_error_event_in_the_middle_of_a_stream(make: Make) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        good = _sse().split(b"\n\n")[:3]
        events = [*good, b'data: {"error": {"message": "GPU fell over"}}', b"data: [DONE]", b""]
        return httpx.Response(
            200, content=b"\n\n".join(events), headers={"content-type": "text/event-stream"}
        )

    streamed = make(Endpoint(broken)).stream("q", HITS)
    with pytest.raises(VLMError, match="GPU fell over") as info:
        list(streamed)
    assert streamed.text == ANSWER_TEXT[:14]  # what arrived before the error is kept
    assert info.value.__context__ is None


def test_stopping_early_closes_the_stream(endpoint: Endpoint, make: Make) -> None:
    with make(endpoint).stream("q", HITS) as streamed:
        first = next(iter(streamed))
    assert first == ANSWER_TEXT[:7]
    assert streamed.result().text == first  # closed: nothing more is read


def test_500s_until_retries_run_out(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    endpoint = Endpoint(status(500, {"error": {"message": "engine overloaded"}}))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(VLMUnavailableError) as info:
        make(endpoint, max_retries=2).answer("q", HITS)
    assert len(endpoint.requests) == 3
    assert "retrying" in caplog.text
    assert KEY not in caplog.text
    message = str(info.value)
    assert "vlm.test/v1" in message
    assert "500" in message
    assert "engine overloaded" in message


def test_401_is_an_auth_error_without_the_key(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    # Real endpoints echo (part of) the key back: it must still not surface.
    endpoint = Endpoint(status(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(VLMAuthError) as info:
        make(endpoint).answer("q", HITS)

    assert len(endpoint.requests) == 1  # never retried
    assert "vlm.api_key" in str(info.value)
    assert "OPENAI_API_KEY" in str(info.value)
    for exc in _chain(info.value):
        assert KEY not in str(exc)
        assert KEY not in repr(exc)
        assert "SECRET" not in str(exc)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None
    assert KEY not in caplog.text


def test_bad_request_names_the_model_and_the_endpoint_message(make: Make) -> None:
    body = {"object": "error", "message": "model does not support image input", "code": 400}
    with pytest.raises(VLMError) as info:
        make(Endpoint(status(400, body))).answer("q", HITS)
    assert type(info.value) is VLMError
    assert "model does not support image input" in str(info.value)
    assert repr(MODEL) in str(info.value)


def test_a_web_page_instead_of_the_api_says_to_check_base_url(make: Make) -> None:
    page = Endpoint(lambda request: httpx.Response(200, text="<html>Ollama is running</html>"))
    with pytest.raises(VLMError, match=r"vlm\.base_url.*/v1"):
        make(page).answer("q", HITS)


def test_connection_refused_is_unavailable() -> None:
    # The answerer's own default client, against a closed loopback port.
    answerer = OpenAIAnswerer(
        _config(base_url="http://127.0.0.1:1/v1", max_retries=1), backoff_s=0.001
    )
    try:
        with pytest.raises(VLMUnavailableError) as info:
            answerer.answer("q", HITS[:1])
    finally:
        answerer.close()
    assert "127.0.0.1:1" in str(info.value)
    assert "vlm.base_url" in str(info.value)
    assert info.value.__context__ is None


def test_not_configured() -> None:
    config = VLMConfig()
    assert not vlm_configured(config)
    with pytest.raises(VLMNotConfiguredError, match=r"vlm\.base_url"):
        OpenAIAnswerer(config).answer("q", HITS)


def test_bad_inputs_fail_before_any_request(endpoint: Endpoint, make: Make) -> None:
    answerer = make(endpoint)
    with pytest.raises(QueryError):
        answerer.answer("   ", HITS)
    with pytest.raises(QueryError):
        answerer.answer("q", [])
    no_image = PageHit("x", "d", "/d/x.pdf", 1, 0.5, {})
    with pytest.raises(StoreError, match="store_images"):
        answerer.answer("q", [no_image])
    assert endpoint.requests == []


# -- without a VLM -----------------------------------------------------------------------


def test_no_vlm_answer_lists_pages_and_says_how_to_configure() -> None:
    answer = no_vlm_answer(HITS)
    assert answer.answered is False
    assert "vlm.base_url" in answer.text
    assert "OPENAI_API_KEY" in answer.text
    assert "PAGERAG_VLM__BASE_URL" in answer.text
    assert "[notes.pdf p.7]" in answer.text
    assert answer.sources == HITS
    assert answer.cited == ()

    streamed = NoVLMAnswerer().stream("q", HITS)
    assert "".join(streamed) == answer.text
    assert streamed.result() == answer
    assert StreamingAnswer.completed(answer).result() == answer


# -- citations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[10k.pdf p.2]", [0]),
        ("[10K.PDF p.2]", [0]),
        ("[10k.pdf, p. 9]", [2]),
        ("[10k.pdf page 9]", [2]),
        ("[notes.pdf p.7; 10k.pdf p.2]", [1, 0]),
        ("[10k.pdf p.2, p.9]", [0, 2]),  # the file carries over within a bracket
        ("[10k.pdf pp. 2-9]", [0, 2]),
        ("[p.7]", [1]),  # only one page 7 was sent
        ("[10k p.2]", [0]),  # stem without extension
        ("[/docs/notes.pdf p.7]", [1]),  # the full source path
        ("[10k.pdf p.3]", []),  # a page that was not sent
        ("[other.pdf p.2]", []),
        ("[10k.pdf p.2] again [10k.pdf p.2]", [0]),
        ("no citations here, p.2", []),
        ("[see the table]", []),
    ],
)
def test_parse_citations(text: str, expected: list[int]) -> None:
    assert parse_citations(text, HITS) == tuple(HITS[i] for i in expected)


def test_parse_citations_ambiguous_bare_page() -> None:
    hits = (_hit("a.pdf", 3, 0.9, (10, 10)), _hit("b.pdf", 3, 0.8, (10, 10)))
    assert parse_citations("[p.3]", hits) == ()
    assert parse_citations("[B.pdf p.3]", hits) == (hits[1],)


def test_file_name_that_looks_like_a_page_reference() -> None:
    hits = (_hit("p2.pdf", 5, 0.9, (10, 10)), _hit("x.pdf", 2, 0.8, (10, 10)))
    assert parse_citations("[p2.pdf p.5]", hits) == (hits[0],)
