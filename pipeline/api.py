"""``PageRAG``: the one object users hold — ingest, search, ask.

This is the composition root: it picks the adapters named by the config
(embedded Qdrant or a server, fastembed, an OpenAI-compatible VLM) and wires
them into the pipeline stages. Everything is built lazily, so constructing a
``PageRAG`` is cheap and ``search`` never needs a VLM.

What is not wiring lives in the stages: search planning in
:mod:`pipeline.retrieve.planning`, opening and checking the collection in
:mod:`pipeline.retrieve.collection`, finding documents and the status in
:mod:`pipeline.retrieve.inventory`.

Async methods run the same sync code in a worker thread (the work is CPU-
bound embedding and a blocking store call), so there is one body per
operation, not a sync/async pair of copies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pipeline.config import PageRAGConfig, load_config
from pipeline.embed.protocol import PageEmbedder
from pipeline.errors import CollectionNotFoundError, QueryError
from pipeline.ingest.job import FileOutcome, IngestJob, IngestProgress, IngestReport
from pipeline.ingest.settings import IngestSettings
from pipeline.models import get_model_spec
from pipeline.retrieve.collection import CollectionGate, check_model, wanted_spec
from pipeline.retrieve.inventory import (
    Status,
    find_documents,
    measure_tokens,
    vector_bytes_per_page,
)
from pipeline.retrieve.planning import (
    MAX_K,
    Mode,
    SearchOptions,
    SearchPlan,
    parse_filter,
    plan_search,
)
from pipeline.retrieve.store import PageStore
from pipeline.types import (
    LANES,
    LIMIT_KEYS,
    Answer,
    CollectionSpec,
    DocumentRecord,
    Lane,
    PageHit,
    ScoredPage,
    SparseVector,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from pipeline.answer.answerer import Answerer, StreamingAnswer
    from pipeline.embed.text import TextEmbedder
    from pipeline.evaluate.explain import Explanation, MapKind
    from pipeline.ingest.ray_engine import RayIngestJob
    from pipeline.ingest.relane import SourceFiles
    from pipeline.ingest.render import Renderer
    from pipeline.ingest.text import TextExtractor
    from pipeline.retrieve.planning import SearchArgs
    from pipeline.retrieve.reindex import ReindexProgress, ReindexReport

# MAX_K, Mode, parse_filter and vector_bytes_per_page live in pipeline.retrieve and stay
# importable from here, where they used to be.
__all__ = [
    "MAX_K",
    "Mode",
    "PageRAG",
    "SearchOptions",
    "Status",
    "build_answerer",
    "build_embedder",
    "build_store",
    "build_text_embedder",
    "parse_filter",
    "vector_bytes_per_page",
]

log = logging.getLogger("pagerag")

T = TypeVar("T")


class PageRAG:
    """Ingest PDFs and images, search their pages, ask questions about them.

    >>> rag = PageRAG.from_config()            # defaults + PAGERAG_* env
    >>> rag.ingest(["reports/"]).exit_code     # doctest: +SKIP
    >>> rag.ask("What was the FY2018 capex?")  # doctest: +SKIP

    Pass ready-made parts (``embedder=``, ``store=`` …) to replace the ones
    the config would build, e.g. the fakes in ``pipeline.testing``.

    ``search``, ``ask``, ``ask_stream``, ``asearch`` and ``aask`` take the same
    :class:`SearchOptions` (``k``, ``filter``, ``mode``): as a value, as ``k``
    alone, or as keywords — ``rag.search(q, k=5, filter={"source": "q3.pdf"})``.
    """

    def __init__(
        self,
        config: PageRAGConfig | None = None,
        *,
        embedder: PageEmbedder | None = None,
        store: PageStore | None = None,
        renderer: Renderer | None = None,
        answerer: Answerer | None = None,
        text_embedder: TextEmbedder | None = None,
    ) -> None:
        self.config = config or PageRAGConfig()
        self._embedder = embedder
        self._text_embedder = text_embedder
        self._parts_given = {"embedder": embedder is not None, "store": store is not None}
        self._store = store
        self._renderer = renderer
        self._answerer = answerer
        self._gate = CollectionGate(
            self.config.store, token_pooling=self.config.embedding.pooling_factor
        )
        self._lock = threading.RLock()

    @classmethod
    def from_config(cls, path: str | Path | None = None, **overrides: Mapping[str, Any]) -> PageRAG:
        """Load ``path`` (None: ``$PAGERAG_CONFIG`` or defaults) plus env overrides."""
        return cls(load_config(path, overrides=overrides or None))

    # -- parts, built on first use ------------------------------------------------

    def _part(self, slot: str, build: Callable[[PageRAGConfig], T]) -> T:
        """The part in ``slot``: the one passed in, else built from the config once."""
        with self._lock:
            part: T | None = getattr(self, slot)
            if part is None:
                part = build(self.config)
                setattr(self, slot, part)
            return part

    @property
    def embedder(self) -> PageEmbedder:
        """Embeds pages and queries (:func:`build_embedder`; the model loads on first use)."""
        return self._part("_embedder", build_embedder)

    @property
    def text_embedder(self) -> TextEmbedder:
        """Embeds page texts and queries for the text lane (BM25; no model files)."""
        return self._part("_text_embedder", build_text_embedder)

    @property
    def store(self) -> PageStore:
        """The page store (:func:`build_store`), not yet opened on the collection."""
        return self._part("_store", build_store)

    @property
    def renderer(self) -> Renderer:
        """Renders documents to page images (poppler)."""
        return self._part("_renderer", _build_renderer)

    @property
    def answerer(self) -> Answerer:
        """The VLM; a stand-in that explains how to configure one when none is set."""
        return self._part("_answerer", build_answerer)

    def wanted_spec(self, *, weights: bool = True) -> CollectionSpec:
        """The collection the config asks for: see :mod:`pipeline.retrieve.collection`."""
        return wanted_spec(self.config.store, self.embedder, weights=weights)

    def _open(self, *, create: bool, weights: bool = False) -> CollectionSpec:
        """Open (or create) the collection and return the spec recorded in it.

        ``weights``: for commands that embed (ingest, search): the model and the
        weights must be the ones that filled the collection. Reading commands
        (status, delete, reindex --pooled) leave it off and need no model files.
        """
        with self._lock:
            return self._gate.open(self.store, self.embedder, create=create, weights=weights)

    def close(self) -> None:
        """Release the store (the embedded engine's directory lock)."""
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._gate.reset()

    def __enter__(self) -> PageRAG:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ingest ------------------------------------------------------------------

    def ingest(
        self,
        inputs: Iterable[str | Path],
        *,
        password: str | None = None,
        metadata: Mapping[str, str] | None = None,
        progress: Callable[[IngestProgress], None] | None = None,
        handle_signals: bool = False,
        retry_incomplete: bool = False,
        stop: threading.Event | None = None,
        engine: Literal["local", "ray"] | None = None,
    ) -> IngestReport:
        """Ingest files, folders (recursively) and globs; see :mod:`pipeline.ingest.job`.

        ``engine`` (None: ``ingest.engine``): ``local``, threads on this machine, or
        ``ray``, the same stages on a Ray cluster (:mod:`pipeline.ingest.ray_engine`,
        settings in ``ray``); both return the same report.

        With ``handle_signals`` (the CLI sets it) SIGINT/SIGTERM stop the job
        after the batch in flight and the report so far is returned; so does
        setting ``stop`` (``pagerag serve`` cancels jobs with it).
        Documents stored incomplete (truncated, timed out, failed pages) are
        redone when a render limit changed since, or always with
        ``retry_incomplete``. ``metadata`` replaces the metadata of files
        already stored, without re-embedding them.
        """
        from pipeline.ingest.sources import PasswordBook, discover, hash_file

        discovery = discover(list(inputs), self.config.ingest.extensions)
        missing = [
            FileOutcome(path=str(item), status="failed", reason=item.kind, message=item.message)
            for item in discovery.missing
        ]
        spec = self._open_for_ingest()
        book = PasswordBook(self.config.render, default=password)
        settings = IngestSettings(
            store=self.store,
            renderer=self.renderer,
            spec=spec,
            hash_file=hash_file,
            password_for=book.password_for,
            embed_batch=self.config.embedding.batch_size,
            upsert_batch=self.config.store.upsert_batch,
            store_images=self.config.ingest.store_images,
            metadata=dict(metadata or {}),
            limits={key: getattr(self.config.render, key) for key in LIMIT_KEYS},
            retry_incomplete=retry_incomplete,
            text_extractor=self._text_extractor() if spec.has_text else None,
        )
        job: IngestJob | RayIngestJob
        if (engine or self.config.ingest.engine) == "ray":
            job = self._ray_job(settings, progress)
        else:
            job = IngestJob(
                settings=settings,
                embedder=self.embedder if spec.has_visual else None,
                text_embedder=self.text_embedder if spec.has_text else None,
                render_workers=self.config.render.workers,
                queue_pages=self.config.ingest.queue_pages,
                progress=progress,
            )
        if stop is not None:
            job.stop_event = stop
        aliases = {f.path: f.given for f in discovery.files if f.given}
        with _stop_on_signals(job.request_stop, enabled=handle_signals):
            return job.run([f.path for f in discovery.files], failed=missing, aliases=aliases)

    def _open_for_ingest(self) -> CollectionSpec:
        """Open (or create) the collection for the lanes ``ingest.lanes`` resolves to.

        ``auto``: the existing collection's lanes, visual+text for a new one. The
        text lane alone needs no embedding model: the model is named by its
        registry entry (the collection still declares its visual vectors), and
        no embedder is built or loaded.
        """
        with self._lock:
            setting = self.config.ingest.lanes
            if setting == "auto":
                recorded = self.store.spec()
                lanes = LANES if recorded is None else recorded.lanes
            else:
                lanes = tuple(lane for lane in LANES if lane in setting.split("+"))
            visual = "visual" in lanes
            model = self._embedder.spec if self._embedder is not None else None
            source = (
                self.embedder if visual else model or get_model_spec(self.config.embedding.model)
            )
            spec = self._gate.open(
                self.store,
                source,
                create=True,
                weights=visual,
                lanes=lanes,
                text_language=self.config.text.language,
            )
        if spec.has_text:
            self.text_embedder.embed_query("language")  # a bad text.language fails here, once
        return spec

    def _text_extractor(self) -> TextExtractor:
        """Page texts for the text lane, through the renderer's poppler driver."""
        from pipeline.ingest.text import TextExtractor

        poppler = getattr(self.renderer, "poppler", None)
        return TextExtractor(self.config.render, self.config.text, poppler=poppler)

    def _ray_job(
        self, settings: IngestSettings, progress: Callable[[IngestProgress], None] | None
    ) -> RayIngestJob:
        """The Ray engine: each embed actor builds the embedder from the config (or gets
        a copy of the one passed in); writer actors only for a Qdrant server."""
        from pipeline.ingest.ray_engine import RayIngestJob

        config = self.config
        given = self._parts_given
        make_embedder = (
            partial(_same, self.embedder) if given["embedder"] else partial(build_embedder, config)
        )
        spec = settings.spec
        make_text = partial(_same, self.text_embedder) if spec.has_text else None
        server = bool(config.store.url) and config.store.url != ":memory:" and not given["store"]
        return RayIngestJob(
            settings,
            cluster=config.ray,
            render_workers=config.render.workers,
            make_embedder=make_embedder if spec.has_visual else None,
            make_text_embedder=make_text,
            make_store=partial(build_store, config) if server else None,
            progress=progress,
        )

    # -- manage ------------------------------------------------------------------

    def status(self) -> Status:
        """The collection, its model and weights, documents, pages and bytes."""
        try:
            spec = self._open(create=False)
        except CollectionNotFoundError:
            return Status.empty(self.config.store, self.config.embedding.model)
        documents = tuple(self.store.documents())
        measured = measure_tokens(self.store, spec)  # pages whose vector count varies
        return Status(self.store.stats(), spec, self.config.embedding.model, documents, measured)

    def documents(self) -> list[DocumentRecord]:
        self._open(create=False)
        return self.store.documents()

    def find_documents(self, target: str | Path) -> list[DocumentRecord]:
        """The documents ``delete(target)`` would remove, without removing them: a
        document id or a unique prefix of one, a file or a folder; see
        :func:`pipeline.retrieve.inventory.find_documents`."""
        self._open(create=False)
        return find_documents(self.store, target)

    def delete(self, target: str | Path) -> list[DocumentRecord]:
        """Delete what :meth:`find_documents` finds: pages, stored images and marks.

        Returns the records removed (empty when nothing matched).
        """
        records = self.find_documents(target)
        for record in records:
            self.store.delete_document(record.document_id)
        return records

    # -- search and ask ----------------------------------------------------------

    def search(
        self, query: str, options: SearchOptions | int | None = None, **given: Unpack[SearchArgs]
    ) -> list[PageHit]:
        """The pages that best match ``query``: by late interaction (MaxSim) on the page
        images, by BM25 on the pages' text (``mode="text"``), or both fused
        (``mode="hybrid"``); see :mod:`pipeline.retrieve.planning`. Each hit's
        ``lanes`` says which lane found it, at which rank.

        ``options``: a :class:`SearchOptions`, or ``k``; keywords ``k``, ``filter``
        and ``mode`` override it. Defaults come from ``retrieval``.
        """
        return self._search(query, SearchOptions.of(options, **given))

    def _search(self, query: str, options: SearchOptions) -> list[PageHit]:
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the query is empty: pass a question or some words to search for")
        plan = self._planned(options)
        store = self.store
        terms = self._query_terms(query, plan)
        if plan.mode == "text" and terms is not None:
            scored = store.search_text(terms, k=plan.k, filter=plan.filter)
            return _hits(store, scored, "text")
        vectors = _embed_query(self.embedder, query)
        if terms is not None and plan.fusion is not None:
            scored = store.search_hybrid(
                vectors,
                terms,
                k=plan.k,
                fusion=plan.fusion,
                lane_k=plan.lane_k,
                filter=plan.filter,
                prefetch=list(plan.prefetch),
            )
            return _hits(store, scored, None)
        scored = store.search(
            vectors, k=plan.k, filter=plan.filter, using=plan.using, prefetch=list(plan.prefetch)
        )
        return _hits(store, scored, "visual")

    def _query_terms(self, query: str, plan: SearchPlan) -> SparseVector | None:
        """The query's BM25 terms when the plan searches the text lane, else None; a
        query without searchable words is refused (text) or left to the visual lane."""
        if "text" not in plan.lanes:
            return None
        terms = self.text_embedder.embed_query(query)
        if len(terms):
            return terms
        if plan.mode == "text":
            raise QueryError(
                f"the query {query!r} has no searchable words for the text lane (only "
                "stopwords or punctuation): use other words, or --mode visual / hybrid"
            )
        log.warning("the query has no searchable words: searching the visual lane alone")
        return None

    def plan(
        self, options: SearchOptions | int | None = None, **given: Unpack[SearchArgs]
    ) -> SearchPlan:
        """How :meth:`search` with these options would search the collection: the mode
        ``auto`` resolves to, the prefetch, ``k`` and the filter (nothing is embedded)."""
        return self._planned(SearchOptions.of(options, **given))

    def _planned(self, options: SearchOptions) -> SearchPlan:
        # Opened without the weights first: a text search (and a text-only collection)
        # never needs the visual model's files; a visual lane search checks them.
        spec = self._open(create=False)
        plan = plan_search(options, spec, self.config.retrieval, self.store.count_pages)
        if plan.visual is not None:
            self._open(create=False, weights=True)
        return plan

    def ask(
        self, question: str, options: SearchOptions | int | None = None, **given: Unpack[SearchArgs]
    ) -> Answer:
        """Retrieve pages (as :meth:`search`) and have the VLM answer from them, citing pages.

        Without a VLM configured, the answer lists the retrieved pages and
        says how to configure one (``answered`` is False).
        """
        opts = SearchOptions.of(options, **given)
        hits = self._search(question, opts)
        return self.answerer.answer(question, hits) if hits else _nothing_found(self.config, opts)

    def ask_stream(
        self, question: str, options: SearchOptions | int | None = None, **given: Unpack[SearchArgs]
    ) -> StreamingAnswer:
        """Like :meth:`ask`, but iterate the result for text as the VLM writes it;
        ``.answer`` then gives the final :class:`Answer`."""
        from pipeline.answer.answerer import StreamingAnswer

        opts = SearchOptions.of(options, **given)
        hits = self._search(question, opts)
        if not hits:
            return StreamingAnswer.completed(_nothing_found(self.config, opts))
        return self.answerer.stream(question, hits)

    async def asearch(
        self, query: str, options: SearchOptions | int | None = None, **given: Unpack[SearchArgs]
    ) -> list[PageHit]:
        """Async :meth:`search` (runs in a worker thread)."""
        return await asyncio.to_thread(self._search, query, SearchOptions.of(options, **given))

    async def aask(
        self, question: str, options: SearchOptions | int | None = None, **given: Unpack[SearchArgs]
    ) -> Answer:
        """Async :meth:`ask`: retrieval in a worker thread, then the VLM's async client."""
        opts = SearchOptions.of(options, **given)
        hits = await asyncio.to_thread(self._search, question, opts)
        if not hits:
            return _nothing_found(self.config, opts)
        return await self.answerer.aanswer(question, hits)

    # -- explain and upgrade -------------------------------------------------------

    def explain(
        self,
        query: str,
        hit: PageHit | str,
        *,
        kind: MapKind = "contributions",
        alpha: float = 0.6,
        smooth: bool = False,
    ) -> Explanation:
        """Why ``hit`` (or a page point id) matched ``query``: per-patch MaxSim maps and a
        heatmap over the stored page image. See :mod:`pipeline.evaluate.explain`."""
        from pipeline.evaluate.explain import check_explain_request, explain_stored

        check_explain_request(self.embedder.spec, query, hit, kind)  # before opening anything
        if not self._open(create=False).has_visual:  # before the weights are asked for
            raise QueryError(
                f"collection {self.config.store.collection!r} has no visual lane (it was "
                "ingested with --lanes text): explain maps show which image patches matched, "
                "so they need the pages' vectors; add them with `pagerag reindex --visual`"
            )
        self._open(create=False, weights=True)
        return explain_stored(
            self.store, self.embedder, query, hit, kind=kind, alpha=alpha, smooth=smooth
        )

    def explain_page(
        self,
        query: str,
        path: str | Path,
        page: int,
        *,
        kind: MapKind = "contributions",
        alpha: float = 0.6,
        smooth: bool = False,
    ) -> Explanation:
        """:meth:`explain` for page ``page`` (1-based) of the file ingested from ``path``.

        Raises :class:`~pipeline.errors.QueryError` when the file was never
        ingested or the page is out of range (or was not stored).
        """
        from pipeline.evaluate.explain import find_document, stored_page_id

        given = Path(path).expanduser()
        try:
            self._open(create=False)
        except CollectionNotFoundError:
            raise QueryError(
                f"{given} was never ingested (collection {self.config.store.collection!r} does "
                f"not exist yet): run `pagerag ingest {given}` first"
            ) from None
        record = find_document(self.store, given)
        point_id = stored_page_id(record, page)
        explanation = self.explain(query, point_id, kind=kind, alpha=alpha, smooth=smooth)
        return dataclasses.replace(
            explanation, document_id=record.document_id, source=record.source, page_number=page
        )

    def reindex_pooled(
        self,
        *,
        batch: int = 64,
        progress: Callable[[ReindexProgress], None] | None = None,
    ) -> ReindexReport:
        """Add the pooled vectors two-stage retrieval needs to the existing collection, in
        place, from its stored vectors (nothing is embedded; see
        :mod:`pipeline.retrieve.reindex`). Never creates the collection."""
        from pipeline.retrieve.reindex import reindex_pooled

        spec = self._open(create=False)
        check_model(spec, self.embedder, weights=False)  # pooling reads stored vectors
        return reindex_pooled(self.store, self.embedder.spec, batch=batch, progress=progress)

    def reindex_token_pooling(
        self,
        factor: int,
        *,
        batch: int = 64,
        progress: Callable[[ReindexProgress], None] | None = None,
    ) -> ReindexReport:
        """Token-pool the stored pages of the existing collection by ``factor``, in place,
        from their stored vectors (nothing is embedded; see
        :func:`pipeline.retrieve.reindex.reindex_token_pooling`)."""
        from pipeline.retrieve.reindex import reindex_token_pooling

        spec = self._open(create=False)
        check_model(spec, self.embedder, weights=False)
        return reindex_token_pooling(
            self.store, self.embedder.spec, factor, batch=batch, progress=progress
        )

    def reindex_text(
        self,
        *,
        password: str | None = None,
        batch: int = 64,
        progress: Callable[[ReindexProgress], None] | None = None,
    ) -> ReindexReport:
        """Add the text lane to the existing collection, in place: each stored document's
        page text read again from its file (pdftotext; nothing rendered, no visual vector
        touched) as BM25 in ``text.language``; when the lane exists in another language,
        its stored texts re-embedded. ``password`` as for :meth:`ingest`. See
        :func:`pipeline.retrieve.reindex.reindex_text`."""
        from pipeline.ingest.relane import reindex_text

        self._open(create=False)
        files, extractor = self._source_files(password), self._text_extractor()
        return reindex_text(
            self.store, files, extractor, self.text_embedder, batch=batch, progress=progress
        )

    def reindex_visual(
        self,
        *,
        password: str | None = None,
        batch: int = 64,
        progress: Callable[[ReindexProgress], None] | None = None,
    ) -> ReindexReport:
        """Add the visual lane to a text-only collection, in place: each stored document's
        pages rendered and embedded by the configured model, as an ingest would (its cost).
        See :func:`pipeline.retrieve.reindex.reindex_visual`."""
        from pipeline.ingest.relane import reindex_visual

        spec = self._open(create=False)
        text = self.text_embedder
        if text.language != spec.text_language:  # the lane's own language: rewritten as is
            language = self.config.text.model_copy(update={"language": spec.text_language})
            text = build_text_embedder(self.config.model_copy(update={"text": language}))
        return reindex_visual(
            self.store,
            self._source_files(password),
            self.embedder,
            text,
            embed_batch=self.config.embedding.batch_size,
            store_images=self.config.ingest.store_images,
            batch=batch,
            progress=progress,
        )

    def _source_files(self, password: str | None) -> SourceFiles:
        """How a lane reindex reopens the documents: the renderer and the passwords."""
        from pipeline.ingest.relane import SourceFiles
        from pipeline.ingest.sources import PasswordBook

        book = PasswordBook(self.config.render, default=password)
        return SourceFiles(self.renderer, book.password_for)


# -- the parts the config names ---------------------------------------------------------


def build_embedder(config: PageRAGConfig) -> PageEmbedder:
    """The embedder ``embedding`` names: fastembed (ONNX) or torch (colpali-engine),
    by ``embedding.backend`` (see :mod:`pipeline.backends`)."""
    from pipeline.backends import build_embedder as build

    return build(config)


def build_store(config: PageRAGConfig) -> PageStore:
    """The store adapter the config names: a server/``:memory:`` URL, else embedded."""
    if config.store.url:
        from connectors.qdrant_client import ClientPageStore

        return ClientPageStore(config.store)
    from connectors.qdrant_edge import EdgePageStore

    return EdgePageStore(config.store.path, config.store.collection)


def build_text_embedder(config: PageRAGConfig) -> TextEmbedder:
    """The text lane's embedder (BM25 in ``text.language``; see :mod:`pipeline.backends`)."""
    from pipeline.backends import build_text_embedder as build

    return build(config)


def build_answerer(config: PageRAGConfig) -> Answerer:
    """An OpenAI-compatible VLM when an endpoint or a key is set, else the no-VLM stand-in."""
    if config.vlm.base_url or config.vlm.api_key:
        from connectors.openai_vlm import OpenAIAnswerer
        from pipeline.answer.answerer import PAGE_TEXT_CHARS

        chars = PAGE_TEXT_CHARS if config.text.answer_with_text else 0
        return OpenAIAnswerer(config.vlm, page_text_chars=chars)
    from pipeline.answer.answerer import NoVLMAnswerer

    return NoVLMAnswerer()


def _same(part: T) -> T:
    """A part passed in, as a factory (pickled to Ray actors with it)."""
    return part


def _build_renderer(config: PageRAGConfig) -> Renderer:
    from pipeline.ingest.render import Renderer

    return Renderer(config.render)


def _hits(store: PageStore, scored: list[ScoredPage], lane: Lane | None) -> list[PageHit]:
    """Search results as hits; ``lane``: the one lane searched (each hit's rank in it),
    None for a fused search (the ranks the store recovered)."""
    return [
        _hit(store, s.point_id, s.score, s.payload, s.lanes or ({lane: rank} if lane else {}))
        for rank, s in enumerate(scored, 1)
    ]


def _hit(
    store: PageStore,
    point_id: str,
    score: float,
    payload: Mapping[str, Any],
    lanes: Mapping[str, int] | None = None,
) -> PageHit:
    """A search result as a :class:`PageHit` whose image is fetched from ``store`` on use."""

    def load() -> bytes:
        data = store.page_image(point_id)
        if data is None:
            raise LookupError(
                f"no image stored for page {payload.get('page')} of {payload.get('source')}: "
                "re-ingest with ingest.store_images: true"
            )
        return data

    return PageHit(
        point_id=point_id,
        document_id=str(payload.get("document_id", "")),
        source=str(payload.get("source", "")),
        page_number=int(payload.get("page", 0)),
        score=float(score),
        payload=dict(payload),
        image_loader=load,
        lanes=dict(lanes or {}),
    )


def _embed_query(embedder: PageEmbedder, query: str) -> Any:
    limit = embedder.query_token_limit()
    vectors = embedder.embed_query(query)
    if vectors.shape[0] >= limit:
        log.warning(
            "the query is longer than the model's limit of %d tokens and was truncated", limit
        )
    return vectors


def _nothing_found(config: PageRAGConfig, options: SearchOptions) -> Answer:
    """The answer when retrieval found no page at all (empty collection or filter)."""
    why = (
        "no page matches the filter"
        if options.filter
        else f"collection {config.store.collection!r} has no pages yet: run `pagerag ingest`"
    )
    return Answer(text=f"No answer: {why}.", sources=(), answered=False)


@contextmanager
def _stop_on_signals(stop: Callable[[], None], *, enabled: bool) -> Iterator[None]:
    """SIGINT/SIGTERM request a clean stop; a second SIGINT aborts at once."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    hits = {"count": 0}

    def handler(signum: int, _frame: object) -> None:
        hits["count"] += 1
        if hits["count"] > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning(
            "stopping after the current batch (signal %d); press Ctrl-C again to abort", signum
        )
        stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
