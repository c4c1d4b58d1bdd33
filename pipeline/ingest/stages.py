"""The ingestion stages that move pages: render, embed, upsert.

Each is a small object that holds the logic and knows nothing about threads
or queues, so any engine can run it: the local one
(:class:`pipeline.ingest.job.IngestJob`: render threads, the embedder in the
caller's thread, an upsert thread, bounded queues between them) or one that
runs them in other processes (Ray tasks and actors, page batches flowing
between them)::

    doc = planner.plan(path)                       # planner.Planner: a Document, or an outcome
    if render.open(doc):                           # doc.plan, or doc.render_error
        for item in render.pages(doc):             # DecodedPage | PageFailure, in page order
            ...                                    # (failures are recorded in doc.failures)
    results = embed.embed(batch_of_decoded_pages)  # PagePoint | PageFailure per page
    if upsert.add(points):                         # buffered; True when a batch is full
        upsert.flush()                             # StoreError ends the job
    doc.stored_pages = upsert.stored_pages(doc.document_id)
    outcome = completer.complete(doc)              # completer.Completer: marks, prunes, reconciles

The text lane rides along (when the collection has it): :class:`RenderStage`
reads each page's text layer (:class:`~pipeline.ingest.text.TextExtractor`,
pdftotext) in a thread beside rendering, so a :class:`DecodedPage` carries its
``text``; :class:`EmbedStage` stores it in the payload and adds its BM25
sparse vector. A text failure is recorded in ``doc.text_error``, never in the
document's rendering: its images are stored.

:class:`Document` is what travels with one file from the planner to the
completer; :func:`remove_other_versions` is the one-path-one-version rule
both of those apply.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from PIL import Image

from pipeline.embed.pooling import stored_vectors
from pipeline.embed.protocol import PageEmbedder, embed_pages
from pipeline.embed.text import TextEmbedder
from pipeline.errors import (
    InputError,
    ModelError,
    PageRAGError,
    RenderCancelledError,
    TextExtractionError,
)
from pipeline.ingest.render import PageFailure, RenderPlan, jpeg_to_image
from pipeline.ingest.text import DocumentTexts, PageText, TextExtractor, text_payload
from pipeline.retrieve.store import IMAGE_FIELD, KIND_PAGE, PageStore, paths_payload
from pipeline.types import (
    TEXT_VECTOR,
    CollectionSpec,
    Page,
    PageFilter,
    PagePoint,
    PageVectors,
    SparseVector,
    page_point_id,
)

__all__ = [
    "DecodedPage",
    "Document",
    "DocumentRenderer",
    "EmbedStage",
    "RenderStage",
    "UpsertStage",
    "decode_page",
    "remove_other_versions",
]


class DocumentRenderer(Protocol):
    """What the stages need from ``pipeline.ingest.render.Renderer`` (tests use fakes)."""

    def open(
        self, path: Path, *, password: str | None = None, cancel: threading.Event | None = None
    ) -> RenderPlan: ...

    def iter_pages(
        self,
        plan: RenderPlan,
        *,
        document_id: str,
        source: str,
        cancel: threading.Event | None = None,
    ) -> Iterator[Page | PageFailure]: ...


@dataclass
class Document:
    """One file being ingested, and what has happened to it so far.

    The planner makes it; the render stage fills ``plan``, ``failures``,
    ``render_error`` and ``text_error`` (the text lane's: its pages were stored
    with the text that could be read); the engine sets ``stored_pages`` from the
    upsert stage and adds the pages that failed to embed; the completer decides
    its outcome.
    """

    path: Path
    document_id: str
    started: float  # time.monotonic() when the file was taken up
    file_bytes: int
    redo_note: str | None = None  # why a stored, incomplete version is being redone
    plan: RenderPlan | None = None
    stored_pages: set[int] = field(default_factory=set)
    failures: list[PageFailure] = field(default_factory=list)
    render_error: PageRAGError | None = None
    text_error: TextExtractionError | None = None

    @property
    def stored(self) -> int:
        return len(self.stored_pages)


class DecodedPage(NamedTuple):
    """A rendered page, its decoded image (None for a collection without the visual
    lane: nothing looks at the pixels) and its text (None without the text lane)."""

    page: Page
    image: Image.Image | None
    text: PageText | None = None


def remove_other_versions(store: PageStore, names: Iterable[str | None], keep: str) -> list[str]:
    """Delete every document stored under any of ``names`` but ``keep``, marked or not.

    ``names`` are a file's path and the path the user gave for it (None: none).
    Returns the removed document ids. Raises ``StoreError``.
    """
    found: set[str] = set()
    for name in set(names) - {None}:
        found |= store.document_ids(PageFilter(source=name))
    removed = sorted(found - {keep})
    for old_id in removed:
        store.delete_document(old_id)
    return removed


# --------------------------------------------------------------------------- render


class RenderStage:
    """Renders a document's pages and decodes them for the embedder.

    Never raises for a bad file: a document-level error (damaged, timeout,
    poppler missing, a renderer bug) is recorded in ``doc.render_error``, and
    the document still goes on to the completer. A stop (``cancel`` set) ends
    rendering quietly: the completer reports the document interrupted.

    With ``text`` (the text lane), each PDF page's text layer is read
    (:class:`~pipeline.ingest.text.DocumentTexts`: the same page ranges) and
    handed over with the page; a text failure goes to ``doc.text_error``.
    ``text_beside``: read it in a thread beside rendering, at most a few page
    ranges ahead, so it adds no wall time (the engines ask for it); without it
    the stage starts no thread and reads each range's text before its pages
    go on. ``decode`` False (no visual lane) skips decoding the JPEGs, which
    only the embedding model looks at.
    """

    def __init__(
        self,
        renderer: DocumentRenderer,
        password_for: Callable[[Path], str | None] = lambda _p: None,
        *,
        text: TextExtractor | None = None,
        text_beside: bool = False,
        decode: bool = True,
    ) -> None:
        self.renderer = renderer
        self.password_for = password_for
        self.text = text
        self.text_beside = text_beside
        self.decode = decode

    def open(self, doc: Document, *, cancel: threading.Event | None = None) -> bool:
        """Probe the file into ``doc.plan``; False when it cannot be rendered."""
        with _recording_errors(doc):
            doc.plan = self.renderer.open(
                doc.path, password=self.password_for(doc.path), cancel=cancel
            )
            return True
        return False

    def pages(
        self, doc: Document, *, cancel: threading.Event | None = None
    ) -> Iterator[DecodedPage | PageFailure]:
        """Every planned page of an opened ``doc``, in order, decoded or failed.

        Failures are recorded in ``doc.failures`` as they are yielded, so a
        caller can stop after any page and still hand ``doc`` to the completer.
        """
        if doc.plan is None:
            return
        texts = None
        if self.text is not None and doc.plan.kind == "pdf":  # image files have no text layer
            texts = DocumentTexts(self.text, doc.plan, cancel, beside=self.text_beside)
        try:
            with _recording_errors(doc):
                items = self.renderer.iter_pages(
                    doc.plan, document_id=doc.document_id, source=str(doc.path), cancel=cancel
                )
                for item in items:
                    result = item if isinstance(item, PageFailure) else self._ready(doc, item)
                    if isinstance(result, PageFailure):
                        doc.failures.append(result)
                    elif self.text is not None:
                        number = result.page.page_number
                        text = texts.get(number) if texts else PageText(number, "")
                        result = result._replace(text=text)
                    yield result
        finally:
            if texts is not None:
                doc.text_error = texts.close() or doc.text_error

    def _ready(self, doc: Document, page: Page) -> DecodedPage | PageFailure:
        return decode_page(doc.path, page) if self.decode else DecodedPage(page, None)


def decode_page(path: Path, page: Page) -> DecodedPage | PageFailure:
    # Decoded while rendering, not in the embed stage: the embedder's time goes to embedding.
    try:
        return DecodedPage(page, jpeg_to_image(page.jpeg))
    except Exception as exc:  # a corrupt page image
        detail = f"rendered page cannot be decoded: {exc}"
        return PageFailure(page.page_number, InputError(path, detail, page=page.page_number))


@contextlib.contextmanager
def _recording_errors(doc: Document) -> Iterator[None]:
    """Record a rendering error in ``doc`` instead of raising it."""
    try:
        yield
    except RenderCancelledError:
        pass  # the job is stopping: the document ends as interrupted
    except PageRAGError as exc:  # InputError; or e.g. poppler missing: every file fails alike
        doc.render_error = exc
    except Exception as exc:  # a renderer bug must not kill the job
        doc.render_error = InputError(doc.path, f"unexpected rendering failure: {exc!r}")


# --------------------------------------------------------------------------- embed


class EmbedStage:
    """Decoded pages → points, by the collection's lanes. Visual: vectors
    (token-pooled when the collection says so), row/column vectors, the page's
    own patch grid in the payload. Text: the page's text in the payload
    (``TEXT_FIELD``, ``has_text``, ``text_cut`` when cut) and its BM25 sparse
    vector (``TEXT_VECTOR``; none for a page without text).

    A page the model fails on becomes a ``PageFailure``; the others in its
    batch are kept. ``ModelError`` (the model, or the text embedder, cannot run
    at all, so every page would fail alike) is raised. ``aliases`` maps a
    resolved file to the path the user gave for it, stored beside the resolved
    one. ``embedder`` is needed only for the visual lane, ``text_embedder`` only
    for the text lane.
    """

    def __init__(
        self,
        embedder: PageEmbedder | None,
        spec: CollectionSpec,
        *,
        text_embedder: TextEmbedder | None = None,
        store_images: bool = True,
        metadata: Mapping[str, str] | None = None,
        aliases: Mapping[Path, str] | None = None,
    ) -> None:
        if spec.has_visual and embedder is None:
            raise ValueError(f"collection {spec.name!r} has the visual lane: pass an embedder")
        if spec.has_text and text_embedder is None:
            raise ValueError(f"collection {spec.name!r} has the text lane: pass a text_embedder")
        self.embedder = embedder
        self.text_embedder = text_embedder
        self.spec = spec
        self.store_images = store_images
        self.metadata = dict(metadata or {})
        self.aliases = dict(aliases or {})

    def embed(self, batch: Sequence[DecodedPage]) -> list[PagePoint | PageFailure]:
        """One result per page of ``batch``, in order."""
        vectors: list[PageVectors | Exception | None] = [None] * len(batch)
        if self.spec.has_visual:
            images = [jpeg_to_image(d.page.jpeg) if d.image is None else d.image for d in batch]
            vectors = list(self._vectors(images))
        sparse = self._sparse([d.text for d in batch])
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        out: list[PagePoint | PageFailure] = []
        for decoded, vec, terms in zip(batch, vectors, sparse, strict=True):
            page = decoded.page
            if isinstance(vec, Exception):
                error = InputError(page.source, f"embedding failed: {vec}", page=page.page_number)
                out.append(PageFailure(page.page_number, error))
            else:
                out.append(self.point(page, vec, now, text=decoded.text, sparse=terms))
        return out

    def _sparse(self, texts: list[PageText | None]) -> list[SparseVector | None]:
        """Each page's BM25 vector (None without the text lane)."""
        if not self.spec.has_text or self.text_embedder is None:
            return [None] * len(texts)
        try:
            return list(self.text_embedder.embed_texts([t.text if t else "" for t in texts]))
        except Exception as exc:  # the tokenizer cannot run: every page would fail alike
            raise ModelError(f"the text lane's BM25 embedder failed: {exc}") from exc

    def _vectors(self, images: list[Image.Image]) -> list[PageVectors | Exception]:
        """The batch in one call; if it fails, page by page to find the page that breaks it."""
        embedder = self.embedder
        if embedder is None or not images:
            return []
        try:
            return list(embed_pages(embedder, images))
        except ModelError:
            raise
        except Exception:
            results: list[PageVectors | Exception] = []
            for image in images:
                try:
                    results.extend(embed_pages(embedder, [image]))
                except ModelError:
                    raise
                except Exception as exc:
                    results.append(exc)
            return results

    def point(
        self,
        page: Page,
        vectors: PageVectors | None,
        now: str,
        *,
        text: PageText | None = None,
        sparse: SparseVector | None = None,
    ) -> PagePoint:
        """The stored point of ``page``: its vectors (pooled too; none without the
        visual lane), its text lane (when the collection has it) and payload."""
        named: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        if vectors is not None and self.embedder is not None:
            named, fields = stored_vectors(
                vectors,
                self.embedder.spec,
                pooled=tuple(self.spec.pooled),
                token_pooling=self.spec.token_pooling,
                full_vector=self.spec.full_vector,
            )
        identity = self.spec.identity
        payload: dict[str, Any] = {
            "kind": KIND_PAGE,
            "document_id": page.document_id,
            **paths_payload(page.source, self.aliases.get(Path(page.source))),
            "file_name": Path(page.source).name,
            "page": page.page_number,
            "page_count": page.page_count,
            "width": page.width,
            "height": page.height,
            "dpi": page.dpi,
            "ingested_at": now,
            # the label says "stand-in" for random test weights; the fingerprint
            # names the exact weights (as in the collection manifest)
            "model": self.spec.model_label,
            "model_fingerprint": None if identity is None else identity.fingerprint,
            "meta": self.metadata,
            **fields,  # e.g. the page's own patch grid
        }
        if self.spec.has_text:
            payload.update(text_payload(text))
        if self.store_images:
            payload[IMAGE_FIELD] = base64.b64encode(page.jpeg).decode("ascii")
        return PagePoint(
            point_id=page_point_id(page.document_id, page.page_number),
            vectors=named,
            payload=payload,
            sparse={TEXT_VECTOR: sparse} if sparse is not None and len(sparse) else {},
        )


# --------------------------------------------------------------------------- upsert


class UpsertStage:
    """Writes points to the store in batches; remembers which pages of each document it stored."""

    def __init__(self, store: PageStore, batch: int = 8) -> None:
        self.store = store
        self.batch = max(1, batch)
        self._pending: list[PagePoint] = []
        self._stored: dict[str, set[int]] = {}

    def add(self, points: Iterable[PagePoint]) -> bool:
        """Buffer ``points``; True when a batch is full and ``flush()`` is due."""
        self._pending.extend(points)
        return len(self._pending) >= self.batch

    def flush(self) -> int:
        """Write everything buffered, a batch per call; returns the pages written.

        Raises ``StoreError``; the buffer is dropped either way.
        """
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.batch):
            self.store.upsert_pages(pending[start : start + self.batch])
        for point in pending:
            doc = point.payload["document_id"]
            self._stored.setdefault(doc, set()).add(int(point.payload["page"]))
        return len(pending)

    def discard(self) -> None:
        """Drop what is buffered (the job is ending: it will not be marked complete)."""
        self._pending.clear()

    def stored_pages(self, document_id: str) -> set[int]:
        """The pages of ``document_id`` written so far (and forget them)."""
        return self._stored.pop(document_id, set())
