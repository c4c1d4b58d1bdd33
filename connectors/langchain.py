"""pagerag as a LangChain retriever, and the prompt that shows its pages to a chat model.

Why a retriever rather than a vector store: pagerag's "documents" are page
images scored by late interaction (MaxSim over ~1030 vectors per page); a
LangChain ``VectorStore`` assumes one text embedding per chunk and would hide
all of that. A ``BaseRetriever`` is the ecosystem's narrow contract (a query
in, ``Document`` objects out) and gives ``invoke``/``ainvoke``/``batch``,
callbacks and LCEL composition for free.

A retrieved page becomes one ``Document``:

* ``page_content`` is the page's extracted text when the collection has the
  text lane and the page has a text layer (pages are never OCR'd); otherwise a
  short stand-in such as ``"[report.pdf p.3] Page 3 of report.pdf …"``;
* ``metadata`` holds where the page comes from and which lanes found it (see
  :data:`METADATA_KEYS`) and,
  unless ``include_images=False``, the page as a base64 JPEG under
  :data:`IMAGE_KEY` with its MIME type under :data:`MIME_TYPE_KEY`.

:func:`pages_to_content_blocks`, :func:`page_prompt` and :data:`format_pages`
turn those Documents into the ``image_url`` content blocks any multimodal
chat model accepts, so the whole RAG chain is one line::

    chain = {"question": RunnablePassthrough(), "docs": retriever} | format_pages | model

The retriever searches a local :class:`~pipeline.api.PageRAG` (``rag=``) or a
running ``pagerag serve`` (``client=``, or :meth:`PageRetriever.from_url`),
so an application in another process shares the service's model and store.

langchain-core is an optional extra (``langchain``; installed from the checkout);
without it, importing this module raises
:class:`~pipeline.errors.OptionalDependencyError` (an ``ImportError``).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from pipeline.errors import OptionalDependencyError, StoreError

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
    )
    from langchain_core.documents import Document
    from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableLambda
except ImportError as exc:  # only a missing langchain-core; a broken install re-raises as is
    if not (exc.name or "langchain_core").startswith("langchain_core"):
        raise
    raise OptionalDependencyError("The LangChain retriever", "langchain", "langchain-core") from exc

from pipeline.answer.answerer import SYSTEM_PROMPT, prepare_page_jpeg
from pipeline.api import MAX_K, PageRAG
from pipeline.client import DEFAULT_URL, PageRAGClient
from pipeline.types import PageFilter, PageHit

__all__ = [
    "IMAGE_KEY",
    "METADATA_KEYS",
    "MIME_TYPE_KEY",
    "PageRetriever",
    "format_pages",
    "page_document",
    "page_prompt",
    "pages_to_content_blocks",
]

IMAGE_KEY = "image_base64"
"""Metadata key of the page image: the JPEG bytes, base64-encoded (no ``data:`` prefix)."""

MIME_TYPE_KEY = "image_mime_type"
"""Metadata key of the image's MIME type, always ``"image/jpeg"``."""

METADATA_KEYS = (
    "document_id",  # sha256 of the file bytes
    "source",  # absolute path the file was ingested from
    "file_name",
    "page",  # 1-based page number
    "page_count",  # pages in the file
    "score",  # MaxSim, BM25 or fused score (by mode): higher is better, not in [0, 1]
    "point_id",  # the page's Qdrant point id (also Document.id)
    "label",  # "file p.N", the name the page is cited by
    "meta",  # user metadata given at ingest (`ingest --meta k=v`)
    "lanes",  # the lanes that found the page and its 1-based rank in each: {"visual": 2, ...}
)
"""Metadata every page Document carries, besides the image keys."""

_JPEG = "image/jpeg"
_JPEG_QUALITY = 85  # vlm.jpeg_quality's default, for pages from a service
# Keyword arguments `invoke(query, k=1)` etc. may override per call.
_OVERRIDABLE = ("k", "filter", "score_threshold", "mode", "include_images", "max_image_side")
# BaseRetriever.invoke reads `verbose` itself but still forwards it to us.
_IGNORED = frozenset({"verbose"})


def page_document(
    hit: PageHit,
    *,
    include_image: bool = True,
    max_image_side: int | None = None,
    jpeg_quality: int = 85,
) -> Document:
    """One retrieved page as a LangChain ``Document`` (see the module docstring).

    With ``max_image_side`` the stored JPEG is shrunk so its longest side fits
    (chat models bill by image size); without it, the stored JPEG is passed
    through unchanged.
    """
    metadata: dict[str, Any] = {
        "document_id": hit.document_id,
        "source": hit.source,
        "file_name": hit.file_name,
        "page": hit.page_number,
        "page_count": hit.payload.get("page_count"),
        "score": hit.score,
        "point_id": hit.point_id,
        "label": hit.label,
        "meta": dict(hit.payload.get("meta") or {}),
        "lanes": dict(hit.lanes),
    }
    if include_image:
        metadata[IMAGE_KEY] = base64.b64encode(_jpeg(hit, max_image_side, jpeg_quality)).decode()
        metadata[MIME_TYPE_KEY] = _JPEG
        where = f"the page image is in metadata[{IMAGE_KEY!r}]"
    else:
        where = "the page image was left out (include_images=False)"
    text = hit.text.strip() or (
        f"[{hit.label}] Page {hit.page_number} of {hit.file_name}. This page was retrieved "
        f"as an image and has no extracted text (no OCR); {where}."
    )
    return Document(id=hit.point_id, page_content=text, metadata=metadata)


def _jpeg(hit: PageHit, max_side: int | None, quality: int) -> bytes:
    if max_side is not None:
        return prepare_page_jpeg(hit, max_side=max_side, quality=quality)
    try:
        return hit.load_jpeg()
    except LookupError as exc:  # the collection was ingested with store_images: false
        raise StoreError(f"{exc}, or build the retriever with include_images=False") from None


class PageRetriever(BaseRetriever):
    """The pages of a pagerag collection that best match a query, as Documents.

    >>> retriever = PageRetriever(rag=PageRAG.from_config(), k=3)  # doctest: +SKIP
    >>> docs = retriever.invoke("revenue by segment")               # doctest: +SKIP
    >>> remote = PageRetriever.from_url("http://127.0.0.1:8000")   # doctest: +SKIP

    Every field can also be given per call: ``retriever.invoke(q, k=1)``.
    ``score_threshold`` drops pages scoring below it *after* the top ``k`` are
    found; MaxSim scores grow with the query's token count, so pick it from
    scores seen for queries like yours, not as a fraction.

    The retriever does not own ``rag`` or ``client``: close it (``rag.close()``
    releases the embedded engine's data directory) when done.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    rag: PageRAG | None = None
    """The pagerag instance to search (its config picks the store and the model)."""
    client: PageRAGClient | None = None
    """Or a running ``pagerag serve`` to search (:mod:`pipeline.client`); give one of the two."""
    k: int = Field(default=4, ge=1, le=MAX_K)
    """Pages to return."""
    filter: dict[str, Any] | PageFilter | None = None
    """``{"source": path-or-folder, "document_id": id-or-list, <ingest --meta key>: value}``."""
    score_threshold: float | None = None
    """Drop pages whose MaxSim score is below this."""
    mode: Literal["auto", "visual", "exact", "two_stage", "text", "hybrid"] | None = None
    """Search mode (``"hybrid"``: the page images and their text fused; ``"text"``: the
    text alone); None uses ``retrieval.mode`` from the config."""
    include_images: bool = True
    """Put the page JPEG (base64) in ``metadata[IMAGE_KEY]``; off for text-only chains."""
    max_image_side: int | None = Field(default=None, ge=64)
    """Shrink images so their longest side is at most this many pixels (None: as stored)."""

    @model_validator(mode="after")
    def _one_target(self) -> PageRetriever:
        if (self.rag is None) == (self.client is None):
            raise ValueError(
                "give the retriever rag= (a local PageRAG) or client= (a running pagerag "
                "serve: PageRetriever.from_url(url)), exactly one of the two"
            )
        return self

    @classmethod
    def from_config(cls, path: str | Path | None = None, **fields: Any) -> PageRetriever:
        """A retriever over a new ``PageRAG`` built from ``path`` (None: defaults + env)."""
        return cls(rag=PageRAG.from_config(path), **fields)

    @classmethod
    def from_url(
        cls, url: str = DEFAULT_URL, *, api_key: str | None = None, **fields: Any
    ) -> PageRetriever:
        """A retriever over a running ``pagerag serve`` (``api_key``: ``$PAGERAG_API_KEY``).

        Close ``retriever.client`` when done.
        """
        return cls(client=PageRAGClient(url, api_key=api_key), **fields)

    def _search(self, query: str) -> list[PageHit]:
        target = self.rag if self.rag is not None else self.client
        assert target is not None  # _one_target
        return target.search(query, self.k, filter=self.filter, mode=self.mode)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        options = self._with(kwargs)
        return options._documents(options._search(query))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        options = self._with(kwargs)
        if options.rag is not None:
            hits = await options.rag.asearch(
                query, options.k, filter=options.filter, mode=options.mode
            )
        else:  # the service client's calls block: in a worker thread, like PageRAG.asearch
            hits = await asyncio.to_thread(options._search, query)
        # Fetching images is a blocking call per page: keep it off the event loop.
        return await asyncio.to_thread(options._documents, hits)

    def _with(self, overrides: Mapping[str, Any]) -> PageRetriever:
        """This retriever, or a validated copy with the per-call overrides applied."""
        unknown = sorted(set(overrides) - set(_OVERRIDABLE) - _IGNORED)
        if unknown:
            raise TypeError(
                f"unexpected argument(s) {', '.join(unknown)}; "
                f"PageRetriever accepts {', '.join(_OVERRIDABLE)} per call"
            )
        given = {name: overrides[name] for name in _OVERRIDABLE if name in overrides}
        if not given:
            return self
        current = {name: getattr(self, name) for name in _OVERRIDABLE}
        return type(self)(rag=self.rag, client=self.client, **(current | given))

    def _documents(self, hits: Sequence[PageHit]) -> list[Document]:
        """The one hits → Documents step both the sync and the async path share."""
        threshold = self.score_threshold
        quality = _JPEG_QUALITY if self.rag is None else self.rag.config.vlm.jpeg_quality
        return [
            page_document(
                hit,
                include_image=self.include_images,
                max_image_side=self.max_image_side,
                jpeg_quality=quality,
            )
            for hit in hits
            if threshold is None or hit.score >= threshold
        ]


def pages_to_content_blocks(docs: Sequence[Document]) -> list[dict[str, Any]]:
    """Chat-model content blocks showing each page: its ``[file p.N]`` label, then its image.

    The blocks use the OpenAI ``image_url`` format with a ``data:`` URL, which
    LangChain's multimodal chat models accept. A Document without an image
    (from ``include_images=False`` or from another, text retriever) is given
    as a text block of its ``page_content``, after its ``[file p.N]`` label when
    it has one and the text does not start with it.
    """
    blocks: list[dict[str, Any]] = []
    for doc in docs:
        meta = doc.metadata
        image = meta.get(IMAGE_KEY)
        if not image:
            named = meta.get("label") and not doc.page_content.startswith(f"[{meta['label']}]")
            text = f"[{meta['label']}]\n{doc.page_content}" if named else doc.page_content
            blocks.append({"type": "text", "text": text})
            continue
        label = meta.get("label") or f"{meta.get('file_name', '?')} p.{meta.get('page', '?')}"
        url = f"data:{meta.get(MIME_TYPE_KEY, _JPEG)};base64,{image}"
        blocks.append({"type": "text", "text": f"[{label}]"})
        blocks.append({"type": "image_url", "image_url": {"url": url}})
    return blocks


def page_prompt(
    question: str, docs: Sequence[Document], *, system: str = SYSTEM_PROMPT
) -> list[BaseMessage]:
    """The messages pagerag's own answerer sends: its system prompt, then the pages and
    the question, so a LangChain chat model answers citing pages as ``[file p.N]``."""
    content: list[str | dict[Any, Any]] = [
        *pages_to_content_blocks(docs),
        {"type": "text", "text": f"Question: {question}"},
    ]
    return [SystemMessage(content=system), HumanMessage(content=content)]


def _format_pages(inputs: Mapping[str, Any]) -> list[BaseMessage]:
    try:
        question, docs = inputs["question"], inputs["docs"]
    except (KeyError, TypeError):
        raise TypeError(
            "format_pages takes {'question': str, 'docs': list[Document]}, e.g. "
            '{"question": RunnablePassthrough(), "docs": retriever} | format_pages'
        ) from None
    return page_prompt(question, docs)


format_pages: RunnableLambda[Mapping[str, Any], list[BaseMessage]] = RunnableLambda(
    _format_pages, name="format_pages"
)
"""``{"question": str, "docs": list[Document]}`` → :func:`page_prompt` messages, as a Runnable."""
