"""The /v1 endpoints: thin adapters from HTTP to ``PageRAG``'s public methods.

Blocking work (embedding, store calls, the VLM) runs in the server's thread
pool: plain ``def`` endpoints, or ``run_in_threadpool`` inside ``async``
ones, so searches run beside an ingest job and beside each other.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from pipeline.errors import PageRAGError
from pipeline.serve.jobs import Job
from pipeline.serve.problems import ServeError, problem_for
from pipeline.serve.security import check_key
from pipeline.serve.service import Service
from pipeline.serve.uploads import inside_roots, resolve_paths, safe_file_name
from pipeline.serve.wire import answer_to_wire, hits_to_wire, record_to_wire

if TYPE_CHECKING:
    from pipeline.answer.answerer import StreamingAnswer

__all__ = ["router"]

_bearer = HTTPBearer(
    auto_error=False,
    description="The key the service was started with (PAGERAG_API_KEY); "
    "needed when one is set, and always on a non-loopback bind.",
)
_DOCUMENT_ID = re.compile(r"^[0-9a-f]{4,64}$")
_TRUE = ("1", "true", "yes", "on")
# At most this many job events a second (a job reports after every page).
_EVENT_INTERVAL_S = 0.1


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def require_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    check_key(service(request).settings.api_key, request.headers.get("authorization"))


router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])
Svc = Annotated[Service, Depends(service)]
Mode = Literal["auto", "visual", "exact", "two_stage", "text", "hybrid"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Body):
    query: str = Field(description="What to look for, in words.")
    k: int | None = Field(default=None, description="Pages to return (retrieval.k).")
    filter: dict[str, Any] | None = Field(
        default=None,
        description='{"source": file or folder, "document_id": id or list, <meta key>: value}',
    )
    mode: Mode | None = Field(
        default=None,
        description="auto, visual (the page images), exact, two_stage, text (the pages' "
        "text, BM25) or hybrid (both lanes fused); None: retrieval.mode",
    )


class AskRequest(_Body):
    question: str
    k: int | None = None
    filter: dict[str, Any] | None = None
    mode: Mode | None = None
    stream: bool = Field(
        default=False,
        description="Server-sent events: `sources`, then `delta` per piece of text, then "
        "`answer` (or `error`).",
    )


class PathsRequest(_Body):
    paths: list[str] = Field(description="Files or folders under serve.roots (no globs).")
    metadata: dict[str, str] = Field(default_factory=dict)
    retry_incomplete: bool = False


# -- search and ask ---------------------------------------------------------------------


@router.post("/search", summary="Rank pages by late interaction (MaxSim)")
def search(body: SearchRequest, svc: Svc, response: Response) -> dict[str, Any]:
    started = time.perf_counter()
    hits = svc.rag.search(body.query, body.k, filter=body.filter, mode=body.mode)
    # What the search itself took, so a client can tell it from the HTTP around it.
    response.headers["Server-Timing"] = f"search;dur={(time.perf_counter() - started) * 1e3:.2f}"
    return {"query": body.query, "hits": hits_to_wire(hits)}


@router.post(
    "/ask",
    summary="Answer from the best pages (JSON, or SSE with stream: true)",
    response_model=None,
)
async def ask(body: AskRequest, svc: Svc) -> Response:
    rag, question = svc.rag, body.question
    if not body.stream:
        answer = await run_in_threadpool(
            lambda: rag.ask(question, body.k, filter=body.filter, mode=body.mode)
        )
        return JSONResponse({"question": question, **answer_to_wire(answer)})
    # Retrieval and opening the VLM stream happen here, so their errors are plain
    # HTTP problems; only failures while the answer streams become `error` events.
    streaming = await run_in_threadpool(
        lambda: rag.ask_stream(question, body.k, filter=body.filter, mode=body.mode)
    )
    return EventSourceResponse(_answer_events(streaming), ping=15)


async def _answer_events(streaming: StreamingAnswer) -> AsyncIterator[ServerSentEvent]:
    pieces = iter(streaming)
    try:
        yield _event("sources", {"sources": hits_to_wire(streaming.sources)})
        while (delta := await run_in_threadpool(next, pieces, None)) is not None:
            yield _event("delta", {"text": delta})
        yield _event("answer", answer_to_wire(streaming.answer))
    except PageRAGError as exc:
        yield _event("error", problem_for(exc))
    finally:
        await run_in_threadpool(streaming.close)


def _event(name: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(event=name, data=json.dumps(data))


# -- what is stored -----------------------------------------------------------------------


@router.get("/status", summary="Collection, model, documents, pages; the service's jobs")
def status(svc: Svc) -> dict[str, Any]:
    data = svc.rag.status().to_dict()
    jobs = svc.jobs.jobs()
    data["service"] = {
        "auth": svc.settings.api_key is not None,
        "ingest_by_path": bool(svc.settings.roots),
        "max_upload_mb": svc.settings.max_upload_mb,
        "max_upload_files": svc.settings.max_upload_files,
        "extensions": list(svc.extensions),
        "jobs": {
            state: sum(1 for j in jobs if j.state == state) for state in ("queued", "running")
        },
    }
    return data


@router.get("/documents", summary="Every stored document")
def documents(svc: Svc) -> dict[str, Any]:
    return {"documents": [record_to_wire(r) for r in svc.rag.documents()]}


@router.get("/documents/{document_id}", summary="One document, by id or a unique id prefix")
def document(document_id: str, svc: Svc) -> dict[str, Any]:
    found = svc.rag.find_documents(_checked_id(document_id))
    if not found:
        raise ServeError(404, f"no document with id {document_id}: GET /v1/documents lists them")
    return record_to_wire(found[0])


@router.delete("/documents/{document_id}", summary="Delete a document: pages, images, mark")
def delete_document(document_id: str, svc: Svc) -> dict[str, Any]:
    removed = svc.rag.delete(_checked_id(document_id))
    if not removed:
        raise ServeError(404, f"no document with id {document_id}: GET /v1/documents lists them")
    for record in removed:  # an uploaded file goes with its document
        source = Path(record.source)
        if record.source and inside_roots(source, [svc.upload_folder]) and source.is_file():
            source.unlink()
    return {"deleted": [record_to_wire(r) for r in removed]}


def _checked_id(document_id: str) -> str:
    if not _DOCUMENT_ID.match(document_id):
        raise ServeError(
            400,
            f"{document_id!r} is not a document id: use the document_id GET /v1/documents "
            "shows, or a unique prefix of it (4 or more hex characters)",
        )
    return document_id


# -- page images and heatmaps ---------------------------------------------------------------


@router.get(
    "/pages/{point_id}/image",
    summary="The stored page JPEG (width: a thumbnail)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def page_image(
    point_id: uuid.UUID,
    svc: Svc,
    width: Annotated[int | None, Query(ge=16, le=4096)] = None,
) -> Response:
    data = svc.rag.store.page_image(str(point_id))
    if data is None:
        raise ServeError(
            404,
            f"no image stored for page {point_id}: it is not in the collection, or it was "
            "ingested with ingest.store_images: false",
        )
    if width is not None:
        data = _shrunk(data, width, "JPEG")
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"}
    )


@router.get(
    "/pages/{point_id}/explain",
    summary="The page with its MaxSim heatmap for query q (PNG)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def explain(
    point_id: uuid.UUID,
    svc: Svc,
    q: Annotated[str, Query(min_length=1, max_length=2000, description="The query")],
    kind: Literal["contributions", "combined"] = "contributions",
    alpha: Annotated[float, Query(ge=0.0, le=1.0)] = 0.6,
    width: Annotated[int | None, Query(ge=16, le=4096)] = None,
) -> Response:
    explanation = svc.rag.explain(q, str(point_id), kind=kind, alpha=alpha)
    image = explanation.image
    if width is not None and image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))))
    out = io.BytesIO()
    image.save(out, format="PNG")
    maps = explanation.maps
    return Response(
        out.getvalue(),
        media_type="image/png",
        headers={
            "X-PageRAG-Score": f"{maps.score:.4f}",
            "X-PageRAG-Patch-Share": f"{maps.patch_share:.4f}",
            "Cache-Control": "private, max-age=300",
        },
    )


def _shrunk(data: bytes, width: int, fmt: str) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        if image.width <= width:
            return data
        image.draft("RGB", (width, width * 4))
        small = image.convert("RGB")
        small.thumbnail((width, small.height * width // max(1, small.width) + 1))
        out = io.BytesIO()
        small.save(out, format=fmt, quality=85)
        return out.getvalue()


# -- ingest jobs ---------------------------------------------------------------------------

_INGEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "metadata": {"type": "string", "description": "a JSON object of strings"},
                        "retry_incomplete": {"type": "boolean"},
                    },
                    "required": ["files"],
                }
            },
            "application/json": {"schema": PathsRequest.model_json_schema()},
        },
    }
}


@router.post(
    "/ingest",
    status_code=202,
    summary="Ingest uploaded files, or paths under serve.roots, as a background job",
    openapi_extra=_INGEST_BODY,
)
async def ingest(request: Request, svc: Svc) -> JSONResponse:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        job = await _upload_job(request, svc)
    elif kind == "application/json":
        try:
            body = PathsRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise ServeError(422, _validation_message(exc)) from None
        files = await run_in_threadpool(
            resolve_paths, body.paths, svc.settings.roots, svc.extensions
        )
        job = Job(
            kind="paths",
            inputs=list(body.paths),
            files=[Path(f) for f in files],
            metadata=dict(body.metadata),
            retry_incomplete=body.retry_incomplete,
        )
    else:
        raise ServeError(
            415,
            "send the files as multipart/form-data (field `files`), or JSON "
            '{"paths": [...]} naming files under serve.roots',
        )
    svc.jobs.submit(job)
    return JSONResponse(
        svc.jobs.wire(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
    )


async def _upload_job(request: Request, svc: Svc) -> Job:
    limit = svc.settings.max_upload_files
    try:
        form = await request.form(max_files=limit, max_fields=10)
    except HTTPException as exc:
        status = 413 if "files" in str(exc.detail).lower() else 400
        raise ServeError(
            status, f"{exc.detail} (at most {limit} files per upload: serve.max_upload_files)"
        ) from None
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise ServeError(
                400, "no files in the upload: send them in the multipart field `files`"
            )
        names = [safe_file_name(u.filename, svc.extensions) for u in uploads]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ServeError(400, f"{', '.join(twice)} sent twice in one upload: send each once")
        job = Job(
            kind="upload",
            inputs=names,
            files=[svc.upload_folder / name for name in names],
            metadata=_form_metadata(form.get("metadata")),
            retry_incomplete=str(form.get("retry_incomplete") or "").lower() in _TRUE,
        )
        job.staging_dir = svc.upload_folder / ".incoming" / job.id
        job.staged = [(job.staging_dir / n, svc.upload_folder / n) for n in names]
        await run_in_threadpool(_stage, job.staging_dir, job.staged, uploads)
        return job
    finally:
        await form.close()


def _stage(folder: Path, staged: list[tuple[Path, Path]], uploads: list[UploadFile]) -> None:
    """Copy the uploads into the job's staging folder (removed again if that fails)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for (path, _), upload in zip(staged, uploads, strict=True):
            upload.file.seek(0)
            with open(path, "wb") as out:
                shutil.copyfileobj(upload.file, out, 1 << 20)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _form_metadata(value: object) -> dict[str, str]:
    if value is None or value == "":
        return {}
    try:
        data = json.loads(str(value))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ServeError(400, 'metadata must be a JSON object of strings, e.g. {"team": "finance"}')
    return {str(k): str(v) for k, v in data.items()}


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


@router.get("/jobs", summary="Ingest jobs, newest first")
def jobs(svc: Svc) -> dict[str, Any]:
    return {"jobs": [svc.jobs.wire(job) for job in svc.jobs.jobs()]}


@router.get("/jobs/{job_id}", summary="One ingest job: state, progress, report")
def job(job_id: str, svc: Svc) -> dict[str, Any]:
    return svc.jobs.wire(_job(svc, job_id))


@router.delete("/jobs/{job_id}", summary="Cancel a queued job, or stop the running one")
def cancel_job(job_id: str, svc: Svc) -> dict[str, Any]:
    _job(svc, job_id)
    cancelled = svc.jobs.cancel(job_id)
    assert cancelled is not None  # it existed a moment ago; jobs are only forgotten when finished
    return svc.jobs.wire(cancelled)


@router.get(
    "/jobs/{job_id}/events",
    summary="The job's progress as server-sent events (`progress`…, then `done`)",
    response_class=EventSourceResponse,
)
async def job_events(job_id: str, svc: Svc) -> EventSourceResponse:
    return EventSourceResponse(_job_events(svc, _job(svc, job_id)), ping=15)


async def _job_events(svc: Service, job: Job) -> AsyncIterator[ServerSentEvent]:
    while True:
        version = svc.jobs.version
        data = svc.jobs.wire(job)
        if job.finished:
            yield _event("done", data)
            return
        yield _event("progress", data)
        await svc.jobs.changed(version, timeout=15.0)
        await asyncio.sleep(_EVENT_INTERVAL_S)


def _job(svc: Service, job_id: str) -> Job:
    found = svc.jobs.get(job_id)
    if found is None:
        raise ServeError(
            404, f"no ingest job {job_id}: GET /v1/jobs lists the jobs this service remembers"
        )
    return found
