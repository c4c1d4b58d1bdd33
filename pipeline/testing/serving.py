"""Serve an ASGI app with a real uvicorn on a free loopback port, in a thread.

For tests and benchmarks that need real HTTP (browsers, other processes,
keep-alive connections) without starting ``pagerag serve`` as a process::

    with uvicorn_server(create_app(rag)) as url:   # http://127.0.0.1:<port>
        ...
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["uvicorn_server"]


@contextmanager
def uvicorn_server(app: Any, *, start_timeout: float = 120.0) -> Iterator[str]:
    """``app`` served on ``127.0.0.1`` (lifespan included) until the block ends: its URL."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            timeout_keep_alive=30,  # as `pagerag serve`
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start (see its log above)")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
