"""``pagerag serve``: the HTTP API and web page, with the model loaded once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli.common import ConfigOpt, err, fail, make_rag
from pipeline.errors import OptionalDependencyError, PageRAGError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to listen on (serve.host; default 127.0.0.1). Any address but "
            "loopback is refused unless PAGERAG_API_KEY is set.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (serve.port; default 8000).", show_default=False)
    ] = None,
    root: Annotated[
        list[Path] | None,
        typer.Option(
            "--root",
            help="A folder POST /v1/ingest may read files from by path (serve.roots); repeat "
            "for more. Without any, files can only be uploaded.",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
    config: ConfigOpt = None,
) -> None:
    """Serve the HTTP API (/v1, docs at /docs) and the web page (/), model loaded once.

    One process holds the store and the model: search and ask while an ingest runs,
    from the page, curl, pipeline.client or PageRetriever. The embedded store admits
    one process, so while this runs other `pagerag` commands on the same store.path
    are refused as "in use": use the HTTP API instead. With PAGERAG_API_KEY set, every
    /v1 request needs `Authorization: Bearer <key>`.
    """
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if root:
        overrides["roots"] = [str(r) for r in root]
    rag = make_rag(config, {"serve": overrides} if overrides else None)
    try:
        import uvicorn

        from pipeline.serve.app import create_app
        from pipeline.serve.security import check_bind
        from pipeline.serve.service import Service
    except ImportError as exc:
        fail(OptionalDependencyError("pagerag serve", "serve", exc.name or "fastapi"))
    settings = rag.config.serve
    try:
        check_bind(settings.host, settings.api_key)
        service = Service(rag, close_rag=True)
        service.open()  # model and store now, so their errors read like every command's
    except PageRAGError as exc:
        rag.close()
        fail(exc)
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    auth = "API key required" if settings.api_key is not None else "no API key (loopback only)"
    err.print(
        f"pagerag serve: collection {rag.config.store.collection!r} on "
        f"http://{shown}:{settings.port}/ (API docs at /docs; {auth})"
    )
    try:
        uvicorn.run(
            create_app(service),
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            timeout_graceful_shutdown=10,
            # uvicorn's 5 s default can close a kept-alive connection just as a busy
            # client reuses it (a reset seen with 8 clients on 2 loaded cores).
            timeout_keep_alive=30,
            server_header=False,
        )
    finally:
        rag.close()
