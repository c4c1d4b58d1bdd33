"""``pagerag serve``: one process that keeps the model and the store open, behind HTTP.

An entry point beside the CLI, over :class:`~pipeline.api.PageRAG`::

    wire.py      the JSON shapes of hits, answers, documents and jobs (no web
                 framework: the client in pipeline/client.py imports it too)
    problems.py  errors as RFC 9457 problem details, with the CLI's messages
    security.py  the bearer API key, loopback binds, request body limits
    jobs.py      ingest jobs: one at a time, a bounded queue, progress, cancel
    uploads.py   uploaded file names and ingest-by-path under ``serve.roots``
    routes.py    the /v1 endpoints (search, ask + SSE, status, documents,
                 ingest, jobs + SSE, page images, heatmaps)
    app.py       create_app(): the FastAPI app, its lifespan and the web page
    static/      the web page: plain HTML, CSS and JS, no build step

FastAPI, uvicorn and sse-starlette are the ``serve`` extra
(``pip install 'pagerag[serve]'``); only ``app.py`` and ``routes.py``
import them.
"""

from __future__ import annotations

__all__: list[str] = []
