"""A fake OpenAI-compatible VLM on loopback, for tests of anything that answers.

``/v1/chat/completions`` answers from the request itself: it cites the first
page label (``[file p.N]``) it was shown, so citations parse as with a real
model. ``stream: true`` sends the answer as chat-completion chunks over SSE
(a few characters each, ``delay_s`` apart), then usage and ``[DONE]``. Every
request body and header set is kept in ``requests``/``headers`` to assert on.

    with FakeVLM() as vlm:
        config.vlm.base_url = vlm.base_url   # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["FakeVLM"]

_LABEL = re.compile(r"^\[[^\[\]]+ p\.\d+\]$")


class FakeVLM:
    """A loopback chat-completions endpoint that answers citing the first page shown."""

    def __init__(self, *, answer: str = "The pages say so", delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def reply_for(self, body: dict[str, Any]) -> str:
        """The answer text: ``answer`` followed by the first page label in the request."""
        labels = [
            part.get("text", "")
            for message in body.get("messages", [])
            if isinstance(message.get("content"), list)
            for part in message["content"]
            if part.get("type") == "text" and _LABEL.match(part.get("text", ""))
        ]
        return f"{self.answer} {labels[0]}." if labels else f"{self.answer}."

    def __enter__(self) -> FakeVLM:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append(body)
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                text = fake.reply_for(body)
                if body.get("stream"):
                    self._stream(text, str(body.get("model")))
                else:
                    self._json(_completion(text, str(body.get("model"))))

            def _json(self, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _stream(self, text: str, model: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                pieces = [text[i : i + 6] for i in range(0, len(text), 6)]
                chunks = [{"role": "assistant"}] + [{"content": p} for p in pieces]
                for delta in chunks:
                    self._send(_chunk(model, [{"index": 0, "delta": delta}]))
                    time.sleep(fake.delay_s)
                self._send(_chunk(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}]))
                self._send(_chunk(model, [], usage=_USAGE))
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _send(self, data: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
                self.wfile.flush()

        return Handler


_USAGE = {"prompt_tokens": 1000, "completion_tokens": 12, "total_tokens": 1012}


def _completion(text: str, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": _USAGE,
    }


def _chunk(model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": choices,
        **extra,
    }
