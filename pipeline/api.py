"""``PageRAG``: the one object users hold — ingest, search, ask.

This is the composition root: it picks the adapters named by the config
(embedded Qdrant or a server, fastembed, an OpenAI-compatible VLM) and wires
them into the pipeline stages. Everything is built lazily, so constructing a
``PageRAG`` is cheap and ``search`` never needs a VLM.

Async methods run the same sync code in a worker thread (the work is CPU-
bound embedding and a blocking store call), so there is one body per
operation, not a sync/async pair of copies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.config import PageRAGConfig, load_config
from pipeline.embed.pooling import POOLED_VECTORS, supports_pooling
from pipeline.embed.protocol import PageEmbedder, identity_of
from pipeline.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    QueryError,
)
from pipeline.ingest.job import FileOutcome, IngestJob, IngestProgress, IngestReport
from pipeline.retrieve.store import PageStore, weights_problem, weights_remedy
from pipeline.types import (
    LIMIT_KEYS,
    Answer,
    CollectionSpec,
    DocumentRecord,
    PageFilter,
    PageHit,
    StoreStats,
)

if TYPE_CHECKING:
    from pipeline.answer.answerer import Answerer, StreamingAnswer
    from pipeline.evaluate.explain import Explanation, MapKind
    from pipeline.ingest.render import Renderer
    from pipeline.retrieve.reindex import ReindexProgress, ReindexReport

__all__ = ["PageRAG", "Status", "parse_filter"]

log = logging.getLogger("pagerag")

Mode = Literal["exact", "two_stage", "auto"]
MAX_K = 1000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHORT_ID = re.compile(r"^[0-9a-f]{4,63}$")


@dataclass(frozen=True)
class Status:
    """What ``pagerag status`` shows."""

    stats: StoreStats
    spec: CollectionSpec | None
    configured_model: str
    documents: tuple[DocumentRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        # The weights that made the vectors, as the manifest records them (None
        # for a collection written before pagerag fingerprinted weights).
        identity = None if spec is None else spec.identity
        return {
            "collection": self.stats.collection,
            "engine": self.stats.engine,
            "location": self.stats.location,
            "model": self.stats.model if identity is None else identity.label,
            "model_source": None if identity is None else identity.source,
            "model_fingerprint": None if identity is None else identity.fingerprint,
            "model_stand_in": None if identity is None else identity.stand_in,
            "configured_model": self.configured_model,
            "documents": self.stats.documents,
            "pages": self.stats.pages,
            "bytes_on_disk": self.stats.bytes_on_disk,
            "bytes_per_page": (
                round(self.stats.bytes_on_disk / self.stats.pages)
                if self.stats.bytes_on_disk and self.stats.pages
                else None
            ),
            "vector_bytes_per_page": None if spec is None else vector_bytes_per_page(spec),
            "vectors": None
            if spec is None
            else {
                "full": spec.full_vector,
                "pooled": list(spec.pooled),
                "dim": spec.dim,
                "datatype": spec.datatype,
                "quantization": spec.quantization,
            },
        }


_WIDTH = {"float16": 2, "float32": 4}
_CODE = {"none": 0.0, "scalar": 1.0, "binary": 1 / 8}


def vector_bytes_per_page(spec: CollectionSpec) -> dict[str, Any] | None:
    """Vector bytes per page in this collection, and under every storage option.

    Computed from the model's layout (tokens per page, patch grid) and the pooled
    vectors stored; matches measured on-disk sizes within ~1.5% (docs/retrieval.md).
    None for models without a fixed token count.
    """
    from pipeline.models import MODELS

    model = MODELS.get(spec.model)
    if model is None or model.tokens_per_page is None:
        return None
    rows, cols = model.patch_grid or (0, 0)
    extra = model.tokens_per_page - rows * cols
    per_name = {"rows": rows + extra, "cols": cols + extra}
    pooled_tokens = sum(per_name.get(name, 0) for name in spec.pooled)
    tokens = model.tokens_per_page + pooled_tokens

    def total(datatype: str, quantization: str) -> int:
        return round(tokens * spec.dim * (_WIDTH[datatype] + _CODE[quantization]))

    width = _WIDTH[spec.datatype]
    return {
        "full": model.tokens_per_page * spec.dim * width,
        "pooled": pooled_tokens * spec.dim * width,
        "quantized": round(tokens * spec.dim * _CODE[spec.quantization]),
        "total": total(spec.datatype, spec.quantization),
        "options": {
            "float16": total("float16", "none"),
            "float32": total("float32", "none"),
            "scalar": total("float16", "scalar"),
            "binary": total("float16", "binary"),
        },
    }


def parse_filter(value: PageFilter | Mapping[str, Any] | None) -> PageFilter | None:
    """Build a :class:`PageFilter` from a user's dict.

    Keys: ``document_id`` (str or list), ``source`` (a file or folder path;
    relative paths are resolved against the current directory, like at
    ingest), anything else is user metadata from ``ingest --meta``.
    """
    if value is None or isinstance(value, PageFilter):
        return value
    if not isinstance(value, Mapping):
        raise QueryError(f"filter must be a mapping or PageFilter, got {type(value).__name__}")
    document_ids: tuple[str, ...] = ()
    source = None
    metadata: dict[str, str] = {}
    for key, item in value.items():
        if key in ("document_id", "document_ids"):
            document_ids = (item,) if isinstance(item, str) else tuple(item)
        elif key in ("source", "source_prefix"):
            source = _absolute(str(item))
        else:
            metadata[str(key)] = str(item)
    return PageFilter(document_ids=document_ids, source_prefix=source, metadata=metadata)


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


class PageRAG:
    """Ingest PDFs and images, search their pages, ask questions about them.

    >>> rag = PageRAG.from_config()            # defaults + PAGERAG_* env
    >>> rag.ingest(["reports/"]).exit_code     # doctest: +SKIP
    >>> rag.ask("What was the FY2018 capex?")  # doctest: +SKIP

    Pass ready-made parts (``embedder=``, ``store=`` …) to replace the ones
    the config would build, e.g. the fakes in ``pipeline.testing``.
    """

    def __init__(
        self,
        config: PageRAGConfig | None = None,
        *,
        embedder: PageEmbedder | None = None,
        store: PageStore | None = None,
        renderer: Renderer | None = None,
        answerer: Answerer | None = None,
    ) -> None:
        self.config = config or PageRAGConfig()
        self._embedder = embedder
        self._store = store
        self._renderer = renderer
        self._answerer = answerer
        self._opened = False
        self._weights_checked = False  # opened with the embedder's identity
        self._lock = threading.RLock()

    @classmethod
    def from_config(cls, path: str | Path | None = None, **overrides: Mapping[str, Any]) -> PageRAG:
        """Load ``path`` (None: ``$PAGERAG_CONFIG`` or defaults) plus env overrides."""
        return cls(load_config(path, overrides=overrides or None))

    # -- parts, built on first use ------------------------------------------------

    @property
    def embedder(self) -> PageEmbedder:
        with self._lock:
            if self._embedder is None:
                from connectors.fastembed import FastEmbedColPali

                self._embedder = FastEmbedColPali(self.config.embedding)
            return self._embedder

    @property
    def store(self) -> PageStore:
        """The page store, not yet opened on the collection."""
        with self._lock:
            if self._store is None:
                self._store = build_store(self.config)
            return self._store

    @property
    def renderer(self) -> Renderer:
        with self._lock:
            if self._renderer is None:
                from pipeline.ingest.render import Renderer

                self._renderer = Renderer(self.config.render)
            return self._renderer

    @property
    def answerer(self) -> Answerer:
        """The VLM; a stand-in that explains how to configure one when none is set."""
        with self._lock:
            if self._answerer is None:
                if self.config.vlm.base_url or self.config.vlm.api_key:
                    from connectors.openai_vlm import OpenAIAnswerer

                    self._answerer = OpenAIAnswerer(self.config.vlm)
                else:
                    from pipeline.answer.answerer import NoVLMAnswerer

                    self._answerer = NoVLMAnswerer()
            return self._answerer

    def wanted_spec(self, *, weights: bool = True) -> CollectionSpec:
        """The collection the config asks for (pooled vectors when the model has a grid).

        With ``weights`` it names the exact weights too (the embedder's
        identity: their files are located and fingerprinted, not loaded), so
        opening refuses a collection filled by other weights.
        """
        model = self.embedder.spec
        store = self.config.store
        return CollectionSpec(
            name=store.collection,
            model=model.name,
            dim=model.dim,
            pooled=POOLED_VECTORS if supports_pooling(model) else (),
            datatype=store.datatype,
            quantization=store.quantization,
            on_disk=store.on_disk,
            identity=identity_of(self.embedder) if weights else None,
        )

    def _open(self, *, create: bool, weights: bool = False) -> CollectionSpec:
        """Open (or create) the collection and return the spec recorded in it.

        ``weights``: for commands that embed (ingest, search): the store
        checks the configured weights against the ones that filled the
        collection (and records them in a collection that predates weight
        fingerprints). Reading commands (status, delete, reindex --pooled)
        leave it off and need no model files.
        """
        with self._lock:
            store = self.store
            if not self._opened:
                recorded = store.spec()
                # Nothing to check (or record) without a collection, unless creating one:
                # a search before any ingest says "nothing ingested", not "model missing".
                check = weights and (create or recorded is not None)
                wanted = self.wanted_spec(weights=check)
                if recorded is not None:
                    # Keep an existing collection's pooled vectors as they are: adding
                    # them here would leave older pages without them. Upgrading is
                    # `pagerag reindex --pooled`.
                    wanted = dataclasses.replace(wanted, pooled=recorded.pooled)
                store.open(wanted, create=create)
                self._opened = True
                self._weights_checked = check
            recorded = store.spec()
            if recorded is None:  # pragma: no cover - adapters record on create
                raise CollectionNotFoundError(
                    f"collection {self.config.store.collection!r} has no manifest"
                )
            if weights and not self._weights_checked:
                # Opened earlier by a reading command, without the weights.
                if recorded.identity is None and recorded.model == self.embedder.spec.name:
                    # Predates fingerprints: reopen with them, so the store adopts them.
                    wanted = self.wanted_spec(weights=True)
                    store.open(dataclasses.replace(wanted, pooled=recorded.pooled), create=False)
                    recorded = store.spec() or recorded
                else:
                    self._check_weights(recorded)
                self._weights_checked = True
            return recorded

    def close(self) -> None:
        """Release the store (the embedded engine's directory lock)."""
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._opened = False
            self._weights_checked = False

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
    ) -> IngestReport:
        """Ingest files, folders (recursively) and globs; see :mod:`pipeline.ingest.job`.

        With ``handle_signals`` (the CLI sets it) SIGINT/SIGTERM stop the job
        after the batch in flight and the report so far is returned.
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
        spec = self._open(create=True, weights=True)
        self._check_model(spec)
        book = PasswordBook(self.config.render, default=password)
        job = IngestJob(
            store=self.store,
            embedder=self.embedder,
            renderer=self.renderer,
            spec=spec,
            hash_file=hash_file,
            password_for=book.password_for,
            render_workers=self.config.render.workers,
            embed_batch=self.config.embedding.batch_size,
            upsert_batch=self.config.store.upsert_batch,
            queue_pages=self.config.ingest.queue_pages,
            store_images=self.config.ingest.store_images,
            metadata=dict(metadata or {}),
            progress=progress,
            limits={key: getattr(self.config.render, key) for key in LIMIT_KEYS},
            retry_incomplete=retry_incomplete,
        )
        aliases = {f.path: f.given for f in discovery.files if f.given}
        with _stop_on_signals(job.request_stop, enabled=handle_signals):
            return job.run([f.path for f in discovery.files], failed=missing, aliases=aliases)

    def _check_model(self, spec: CollectionSpec, *, weights: bool = True) -> None:
        """Refuse a collection another model (or, with ``weights``, other weights) filled.

        The store already refused on open; this holds for any store adapter.
        """
        configured = self.embedder.spec
        if spec.model != configured.name or spec.dim != configured.dim:
            raise CollectionMismatchError(
                f"collection {spec.name!r} was built with {spec.model} (dim {spec.dim}) but "
                f"embedding.model is {configured.name} (dim {configured.dim}). Set "
                f"embedding.model back to {spec.model}, or use another store.collection."
            )
        if weights:
            self._check_weights(spec)

    def _check_weights(self, spec: CollectionSpec) -> None:
        """Refuse a collection filled by other weights than the embedder's."""
        wanted = dataclasses.replace(spec, identity=identity_of(self.embedder))
        problem = weights_problem(spec, wanted)
        if problem:
            raise CollectionMismatchError(
                f"collection {spec.name!r}: {problem}. To fix it: use another "
                "store.collection (a new collection) and re-ingest into it, or delete this "
                "collection and re-ingest to re-embed every page with the configured weights"
                f"{weights_remedy(spec, wanted)}."
            )

    # -- manage ------------------------------------------------------------------

    def status(self) -> Status:
        store = self.store
        spec: CollectionSpec | None
        try:
            spec = self._open(create=False)
        except CollectionNotFoundError:
            spec = None
        if spec is None:
            stats = StoreStats(
                collection=self.config.store.collection,
                model=None,
                documents=0,
                pages=0,
                bytes_on_disk=None,
                engine="qdrant-server" if self.config.store.url else "qdrant-edge",
                location=self.config.store.url or str(self.config.store.path),
            )
            return Status(stats, None, self.config.embedding.model, ())
        return Status(store.stats(), spec, self.config.embedding.model, tuple(store.documents()))

    def documents(self) -> list[DocumentRecord]:
        self._open(create=False)
        return self.store.documents()

    def find_documents(self, target: str | Path) -> list[DocumentRecord]:
        """The documents ``delete(target)`` would remove, without removing them.

        ``target`` is a document id, a unique prefix of one (the short id
        ``status --documents`` shows), a file path (resolved, or as given when
        it was a symlink) or a folder (every document under it). Documents a
        killed job left without a completion mark are found too: they come
        back as records with ``page_count`` 0 and ``incomplete="unfinished"``.
        Raises ``QueryError`` listing the matches when a prefix is ambiguous.
        """
        self._open(create=False)
        store = self.store
        text = str(target)
        ids: set[str] = set()
        if _SHA256.match(text):
            ids = store.document_ids(PageFilter(document_ids=(text,)))
        elif _SHORT_ID.match(text) and not os.path.exists(text):
            ids = self._by_prefix(text)
        if not ids:
            path = _absolute(text)
            for name in {path, os.path.realpath(path)}:
                ids |= store.document_ids(PageFilter(source_prefix=name))
        return [self._record_or_leftover(i) for i in sorted(ids)]

    def _by_prefix(self, prefix: str) -> set[str]:
        matches = [r for r in self.store.documents() if r.document_id.startswith(prefix)]
        if len(matches) > 1:
            listed = "; ".join(f"{r.document_id[:16]} {r.source}" for r in matches[:10])
            more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
            raise QueryError(
                f"document id prefix {prefix!r} is ambiguous: it matches {len(matches)} "
                f"documents ({listed}{more}); give more characters"
            )
        return {r.document_id for r in matches}

    def _record_or_leftover(self, document_id: str) -> DocumentRecord:
        record = self.store.get_document(document_id)
        if record is not None:
            return record
        pages = self.store.count_pages(PageFilter(document_ids=(document_id,)))
        return DocumentRecord(
            document_id=document_id,
            source="",
            file_name="",
            page_count=0,
            total_pages=pages,
            ingested_at="",
            model="",
            bytes=0,
            incomplete="unfinished",
        )

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
        self,
        query: str,
        k: int | None = None,
        *,
        filter: PageFilter | Mapping[str, Any] | None = None,
        mode: Mode | None = None,
    ) -> list[PageHit]:
        """The ``k`` pages that best match ``query`` by late interaction (MaxSim)."""
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the query is empty: pass a question or some words to search for")
        k = self.config.retrieval.k if k is None else k
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise QueryError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        flt = parse_filter(filter)
        spec = self._open(create=False, weights=True)
        self._check_model(spec)
        vectors = self._embed_query(query)
        store = self.store
        using, prefetch = self._plan(spec, mode, k)
        scored = store.search(
            vectors,
            k=k,
            filter=flt if flt is not None and not flt.is_empty() else None,
            using=using,
            prefetch=prefetch,
        )
        return [self._hit(s.point_id, s.score, s.payload) for s in scored]

    def _embed_query(self, query: str) -> Any:
        embedder = self.embedder
        limit = embedder.query_token_limit()
        vectors = embedder.embed_query(query)
        if vectors.shape[0] >= limit:
            log.warning(
                "the query is longer than the model's limit of %d tokens and was truncated", limit
            )
        return vectors

    def _plan(
        self, spec: CollectionSpec, mode: Mode | None, k: int
    ) -> tuple[str | None, list[tuple[str, int]]]:
        """Exact MaxSim over every page, or pooled prefetch + exact rerank."""
        retrieval = self.config.retrieval
        chosen = mode or retrieval.mode
        if chosen not in ("exact", "two_stage", "auto"):
            raise QueryError(f"mode must be exact, two_stage or auto, got {chosen!r}")
        if chosen == "two_stage" and not spec.pooled:
            raise QueryError(
                f"collection {spec.name!r} has no pooled vectors, so two_stage retrieval is "
                "unavailable: run `pagerag reindex --pooled` or search with --mode exact"
            )
        if chosen == "auto":
            chosen = (
                "two_stage"
                if spec.pooled and self.store.count_pages() >= retrieval.two_stage_min_pages
                else "exact"
            )
        if chosen == "exact":
            return None, []
        limit = max(retrieval.prefetch_k, k)
        names = [name for name in retrieval.prefetch_vectors if name in spec.pooled]
        return None, [(name, limit) for name in names or spec.pooled]

    def _hit(self, point_id: str, score: float, payload: Mapping[str, Any]) -> PageHit:
        store = self.store

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
        )

    def ask(
        self,
        question: str,
        k: int | None = None,
        *,
        filter: PageFilter | Mapping[str, Any] | None = None,
        mode: Mode | None = None,
    ) -> Answer:
        """Retrieve ``k`` pages and have the VLM answer from them, citing pages.

        Without a VLM configured, the answer lists the retrieved pages and
        says how to configure one (``answered`` is False).
        """
        hits = self.search(question, k, filter=filter, mode=mode)
        return _nothing_found(self, filter) if not hits else self.answerer.answer(question, hits)

    def ask_stream(
        self,
        question: str,
        k: int | None = None,
        *,
        filter: PageFilter | Mapping[str, Any] | None = None,
        mode: Mode | None = None,
    ) -> StreamingAnswer:
        """Like :meth:`ask`, but iterate the result for text as the VLM writes it;
        ``.answer`` then gives the final :class:`Answer`."""
        from pipeline.answer.answerer import StreamingAnswer

        hits = self.search(question, k, filter=filter, mode=mode)
        if not hits:
            return StreamingAnswer.completed(_nothing_found(self, filter))
        return self.answerer.stream(question, hits)

    async def asearch(
        self,
        query: str,
        k: int | None = None,
        *,
        filter: PageFilter | Mapping[str, Any] | None = None,
        mode: Mode | None = None,
    ) -> list[PageHit]:
        """Async :meth:`search` (runs in a worker thread)."""
        return await asyncio.to_thread(self.search, query, k, filter=filter, mode=mode)

    async def aask(
        self,
        question: str,
        k: int | None = None,
        *,
        filter: PageFilter | Mapping[str, Any] | None = None,
        mode: Mode | None = None,
    ) -> Answer:
        """Async :meth:`ask`: retrieval in a worker thread, then the VLM's async client."""
        hits = await self.asearch(question, k, filter=filter, mode=mode)
        if not hits:
            return _nothing_found(self, filter)
        return await self.answerer.aanswer(question, hits)

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
        collection = self._open(create=False, weights=True)
        self._check_model(collection)
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
        self._check_model(spec, weights=False)  # pooling reads stored vectors: no weights needed
        return reindex_pooled(self.store, self.embedder.spec, batch=batch, progress=progress)


def _nothing_found(rag: PageRAG, filter: object) -> Answer:
    """The answer when retrieval found no page at all (empty collection or filter)."""
    why = (
        "no page matches the filter"
        if filter
        else f"collection {rag.config.store.collection!r} has no pages yet: run `pagerag ingest`"
    )
    return Answer(text=f"No answer: {why}.", sources=(), answered=False)


def build_store(config: PageRAGConfig) -> PageStore:
    """The store adapter the config names: a server/``:memory:`` URL, else embedded."""
    if config.store.url:
        from connectors.qdrant_client import ClientPageStore

        return ClientPageStore(config.store)
    from connectors.qdrant_edge import EdgePageStore

    return EdgePageStore(config.store.path, config.store.collection)


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
