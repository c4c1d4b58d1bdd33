"""The JSON the service sends and the client reads back, in one place.

Both sides import this module (it needs no web framework), so a hit, an
answer or a document record crosses the wire and comes back as the same
typed value: :func:`hit_from_wire` rebuilds a :class:`~pipeline.types.PageHit`
whose image is fetched lazily from the service, exactly as a local hit's is
from the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.retrieve.display import text_snippet
from pipeline.retrieve.store import IMAGE_FIELD
from pipeline.types import Answer, DocumentRecord, PageHit, Usage

__all__ = [
    "answer_from_wire",
    "answer_to_wire",
    "hit_from_wire",
    "hit_to_wire",
    "hits_to_wire",
    "page_image_path",
    "record_from_wire",
    "record_to_wire",
]


def page_image_path(point_id: str) -> str:
    """Where the service serves a page's stored JPEG."""
    return f"/v1/pages/{point_id}/image"


def hit_to_wire(hit: PageHit) -> dict[str, Any]:
    """A retrieved page: where it comes from, its score, the lanes that found it (1-based
    rank in each), the start of its text, and where its image is."""
    payload = {key: value for key, value in hit.payload.items() if key != IMAGE_FIELD}
    return {
        "point_id": hit.point_id,
        "document_id": hit.document_id,
        "source": hit.source,
        "file_name": hit.file_name,
        "page": hit.page_number,
        "page_count": payload.get("page_count"),
        "score": hit.score,
        "label": hit.label,
        "meta": dict(payload.get("meta") or {}),
        "lanes": dict(hit.lanes),
        "snippet": text_snippet(hit.text),
        "image_url": page_image_path(hit.point_id),
        "payload": payload,
    }


def hits_to_wire(hits: Sequence[PageHit]) -> list[dict[str, Any]]:
    return [hit_to_wire(hit) for hit in hits]


def hit_from_wire(
    data: Mapping[str, Any], image_loader: Callable[[str], bytes] | None = None
) -> PageHit:
    """The :class:`PageHit` a wire hit stands for; ``image_loader(point_id)`` fetches its JPEG."""
    point_id = str(data["point_id"])
    loader = None if image_loader is None else (lambda: image_loader(point_id))
    return PageHit(
        point_id=point_id,
        document_id=str(data["document_id"]),
        source=str(data["source"]),
        page_number=int(data["page"]),
        score=float(data["score"]),
        payload=dict(data.get("payload") or {}),
        image_loader=loader,
        lanes={str(lane): int(rank) for lane, rank in (data.get("lanes") or {}).items()},
    )


def answer_to_wire(answer: Answer) -> dict[str, Any]:
    """An answer with the pages it was shown (``sources``) and those it cites."""
    return {
        "answered": answer.answered,
        "answer": answer.text,
        "model": answer.model,
        "sources": hits_to_wire(answer.sources),
        "cited": [hit.point_id for hit in answer.cited],
        "usage": None if answer.usage is None else dataclasses.asdict(answer.usage),
    }


def answer_from_wire(
    data: Mapping[str, Any], image_loader: Callable[[str], bytes] | None = None
) -> Answer:
    sources = tuple(hit_from_wire(hit, image_loader) for hit in data.get("sources") or ())
    by_id = {hit.point_id: hit for hit in sources}
    usage = data.get("usage")
    return Answer(
        text=str(data.get("answer") or ""),
        sources=sources,
        cited=tuple(by_id[i] for i in data.get("cited") or () if i in by_id),
        usage=None if usage is None else Usage(**usage),
        model=data.get("model"),
        answered=bool(data.get("answered", True)),
    )


def record_to_wire(record: DocumentRecord) -> dict[str, Any]:
    """A stored document: every field of its record, plus ``complete``."""
    data = dataclasses.asdict(record)
    data["complete"] = record.is_complete
    return data


_RECORD_FIELDS = {field.name for field in dataclasses.fields(DocumentRecord)}
_TUPLE_FIELDS = {"failed_pages"}


def record_from_wire(data: Mapping[str, Any]) -> DocumentRecord:
    fields: dict[str, Any] = {
        key: tuple(value) if key in _TUPLE_FIELDS else value
        for key, value in data.items()
        if key in _RECORD_FIELDS
    }
    return DocumentRecord(**fields)
