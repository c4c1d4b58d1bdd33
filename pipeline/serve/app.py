"""``create_app``: the FastAPI application of ``pagerag serve``.

::

    app = create_app(PageRAG.from_config())      # then: uvicorn.run(app, host=…, port=…)

On start-up (the ASGI lifespan) the model is loaded and the collection opened
once (:meth:`Service.open`); on shutdown ingest jobs stop after the batch in
flight. Errors of every kind leave as problem details (``problems.py``); the
web page is served from ``static/`` at ``/``, the OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from pipeline.api import PageRAG
from pipeline.config import ServeConfig
from pipeline.errors import PageRAGError
from pipeline.serve.problems import MEDIA_TYPE, ServeError, problem, problem_for
from pipeline.serve.routes import router
from pipeline.serve.security import BodyLimit, JSONBodies
from pipeline.serve.service import Service

__all__ = ["JSON_LIMIT_BYTES", "create_app"]

log = logging.getLogger("pagerag.serve")

# Requests other than uploads carry a question or a list of paths.
JSON_LIMIT_BYTES = 1 << 20
# What the page's own files may do: nothing from elsewhere, no inline script.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(rag: PageRAG | Service, settings: ServeConfig | None = None) -> FastAPI:
    """The service over ``rag`` (its ``serve:`` settings unless ``settings`` are given)."""
    svc = rag if isinstance(rag, Service) else Service(rag, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(svc.open)
        try:
            yield
        finally:
            await run_in_threadpool(svc.close)

    app = FastAPI(
        title="pagerag",
        summary="Questions over PDF page images: ColPali + Qdrant MaxSim + a VLM.",
        description=(
            "Errors are problem details (`application/problem+json`) whose `detail` is the "
            "message the `pagerag` command prints. With an API key configured "
            "(`PAGERAG_API_KEY`), every /v1 request needs `Authorization: Bearer <key>`."
        ),
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = svc
    upload_limit = int(svc.settings.max_upload_mb * 1e6) + 64 * 1024  # + multipart framing
    app.add_middleware(
        BodyLimit,
        limit_for=lambda path: upload_limit if path == "/v1/ingest" else JSON_LIMIT_BYTES,
    )
    app.add_middleware(JSONBodies, paths=frozenset({"/v1/search", "/v1/ask"}))
    _add_error_handlers(app)
    app.include_router(router)
    static = files("pipeline.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    index = (static / "index.html").read_text(encoding="utf-8")

    legend = _legend_png()

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(index, headers=_PAGE_HEADERS)

    @app.get("/legend.png", include_in_schema=False)
    def legend_png() -> Response:
        return Response(legend, media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    return app


def _legend_png() -> bytes:
    """The heatmaps' colour scale, low to high, drawn by the code that colours them."""
    import numpy as np
    from PIL import Image

    from pipeline.evaluate.explain import colorize

    ramp = colorize(np.linspace(0.0, 1.0, 256, dtype=np.float32))
    out = io.BytesIO()
    Image.fromarray(np.repeat(ramp[None, :, :], 12, axis=0)).save(out, format="PNG")
    return out.getvalue()


def _add_error_handlers(app: FastAPI) -> None:
    def reply(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            body, status_code=body["status"], headers=headers, media_type=MEDIA_TYPE
        )

    async def pagerag_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PageRAGError)
        return reply(problem_for(exc))

    async def serve_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        return reply(exc.to_problem(), exc.headers)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return reply(problem(exc.status_code, str(exc.detail)), dict(exc.headers or {}))

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return reply(problem(422, errors))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return reply(problem(500, f"internal error ({type(exc).__name__}): see the service log"))

    app.add_exception_handler(PageRAGError, pagerag_error)
    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pagerag")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"
