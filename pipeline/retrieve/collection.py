"""The collection a config asks for, opened once and checked against the embedder.

A collection's vectors are comparable only with queries embedded by the same
model and the exact weights that filled it. :class:`CollectionGate` opens a
:class:`~pipeline.retrieve.store.PageStore` on the configured collection and
refuses (``CollectionMismatchError``, saying how to fix it) one that another
model or other weights filled; commands that only read (status, delete,
reindex --pooled) open it without the weights, and need no model files;
nor does an ingest into the text lane alone, which names the model by its
registry entry (a :class:`~pipeline.models.ModelSpec`) instead of an embedder.
"""

from __future__ import annotations

import dataclasses

from pipeline.config import StoreConfig
from pipeline.embed.pooling import POOLED_VECTORS, require_token_pooler, supports_pooling
from pipeline.embed.protocol import PageEmbedder, identity_of
from pipeline.errors import CollectionMismatchError, CollectionNotFoundError
from pipeline.models import ModelSpec
from pipeline.retrieve.store import PageStore, weights_problem, weights_remedy
from pipeline.types import VISUAL, CollectionSpec, Lane

__all__ = ["CollectionGate", "check_model", "wanted_spec"]


def wanted_spec(
    config: StoreConfig,
    embedder: PageEmbedder | ModelSpec,
    *,
    weights: bool = True,
    token_pooling: int | None = None,
    lanes: tuple[Lane, ...] = VISUAL,
    text_language: str = "english",
) -> CollectionSpec:
    """The collection ``config`` asks for (pooled vectors when the model has a grid,
    fixed or per page; ``token_pooling`` from ``embedding.token_pooling``), with
    ``lanes`` (and the text lane's ``text_language``).

    With ``weights`` it names the exact weights too (the embedder's identity:
    their files are located and fingerprinted, not loaded), so opening
    refuses a collection filled by other weights. ``embedder`` may be the
    model's registry entry alone (no weights: nothing to fingerprint).
    """
    if isinstance(embedder, ModelSpec):
        model, weights = embedder, False
    else:
        model = embedder.spec
    return CollectionSpec(
        name=config.collection,
        model=model.name,
        dim=model.dim,
        pooled=POOLED_VECTORS if supports_pooling(model) else (),
        datatype=config.datatype,
        quantization=config.quantization,
        on_disk=config.on_disk,
        identity=identity_of(embedder) if weights and not isinstance(embedder, ModelSpec) else None,
        token_pooling=token_pooling,
        lanes=lanes,
        text_language=text_language,
    )


def check_model(
    spec: CollectionSpec, embedder: PageEmbedder | ModelSpec, *, weights: bool = True
) -> None:
    """Refuse a collection another model (or, with ``weights``, other weights) filled.

    The store already refuses on open; this holds for any store adapter.
    """
    configured = embedder if isinstance(embedder, ModelSpec) else embedder.spec
    if spec.model != configured.name or spec.dim != configured.dim:
        raise CollectionMismatchError(
            f"collection {spec.name!r} was built with {spec.model} (dim {spec.dim}) but "
            f"embedding.model is {configured.name} (dim {configured.dim}). Set "
            f"embedding.model back to {spec.model}, or use another store.collection."
        )
    if not weights or isinstance(embedder, ModelSpec):
        return
    wanted = dataclasses.replace(spec, identity=identity_of(embedder))
    problem = weights_problem(spec, wanted)
    if problem:
        raise CollectionMismatchError(
            f"collection {spec.name!r}: {problem}. To fix it: use another "
            "store.collection (a new collection) and re-ingest into it, or delete this "
            "collection and re-ingest to re-embed every page with the configured weights"
            f"{weights_remedy(spec, wanted)}."
        )


class CollectionGate:
    """Opens a store on the configured collection once, and checks what filled it.

    Holds whether the store is open and whether the weights were checked;
    the caller serialises :meth:`open` (``PageRAG`` holds its lock).
    """

    def __init__(self, config: StoreConfig, *, token_pooling: int | None = None) -> None:
        self._config = config
        self._token_pooling = token_pooling
        self._opened = False
        self._weights_checked = False

    def open(
        self,
        store: PageStore,
        embedder: PageEmbedder | ModelSpec,
        *,
        create: bool,
        weights: bool,
        lanes: tuple[Lane, ...] | None = None,
        text_language: str = "english",
    ) -> CollectionSpec:
        """Open (or create) the collection and return the spec recorded in it.

        ``weights``: for commands that embed (ingest, search): the model and the
        configured weights must be the ones that filled the collection (a
        collection that predates weight fingerprints records them). Reading
        commands leave it off. ``lanes`` (an ingest): the lanes its pages get;
        the store adopts them in a collection without pages and refuses other
        lanes than recorded otherwise. None: the recorded lanes (visual for a
        new collection). ``embedder`` may be a :class:`ModelSpec` when no
        weights are checked (a text-only ingest loads no model).
        """
        if create and self._token_pooling:
            require_token_pooler()  # before a collection is created that needs it
        if not self._opened or _other_lanes(store, lanes, text_language):
            recorded = store.spec()
            # Nothing to check (or record) without a collection, unless creating one:
            # a search before any ingest says "nothing ingested", not "model missing".
            check = weights and (create or recorded is not None)
            wanted = self._wanted(embedder, weights=check)
            if lanes is not None:
                wanted = dataclasses.replace(wanted, lanes=lanes, text_language=text_language)
            elif recorded is not None:
                wanted = dataclasses.replace(
                    wanted, lanes=recorded.lanes, text_language=recorded.text_language
                )
            if recorded is not None:
                # Keep an existing collection's pooled vectors and token pooling as
                # they are: changing them here would leave older pages unlike newer
                # ones. Upgrading is `pagerag reindex --pooled / --token-pooling N`.
                wanted = dataclasses.replace(
                    wanted,
                    full_vector=recorded.full_vector,
                    pooled=recorded.pooled,
                    token_pooling=recorded.token_pooling,
                )
            store.open(wanted, create=create)
            self._opened = True
            self._weights_checked = check
        recorded = store.spec()
        if recorded is None:  # pragma: no cover - adapters record on create
            raise CollectionNotFoundError(f"collection {self._config.collection!r} has no manifest")
        if weights and not self._weights_checked and not isinstance(embedder, ModelSpec):
            recorded = self._check_late(store, embedder, recorded)
        if weights:
            check_model(recorded, embedder)
        if create:
            self._check_token_pooling(recorded)
        return recorded

    def _wanted(self, embedder: PageEmbedder | ModelSpec, *, weights: bool) -> CollectionSpec:
        return wanted_spec(
            self._config, embedder, weights=weights, token_pooling=self._token_pooling
        )

    def _check_token_pooling(self, recorded: CollectionSpec) -> None:
        """Refuse to write pages pooled otherwise than the collection's (ingest)."""
        if recorded.token_pooling == self._token_pooling:
            return

        def said(factor: int | None) -> str:
            return f"token_pooling {factor}" if factor else "no token pooling"

        fix = (
            f"`pagerag reindex --token-pooling {self._token_pooling}` pools its stored pages "
            "in place (no re-embedding)"
            if self._token_pooling and not recorded.token_pooling
            else "use another store.collection for the new setting"
        )
        raise CollectionMismatchError(
            f"collection {recorded.name!r} stores pages with {said(recorded.token_pooling)}, "
            f"but embedding.token_pooling asks for {said(self._token_pooling)}: set "
            f"embedding.token_pooling to {recorded.token_pooling or 'null'}, or {fix}"
        )

    def _check_late(
        self, store: PageStore, embedder: PageEmbedder, recorded: CollectionSpec
    ) -> CollectionSpec:
        """Weights for a collection a reading command opened earlier without them."""
        if recorded.identity is None and recorded.model == embedder.spec.name:
            # Predates fingerprints: reopen with them, so the store adopts them.
            wanted = dataclasses.replace(
                self._wanted(embedder, weights=True),
                full_vector=recorded.full_vector,
                pooled=recorded.pooled,
                token_pooling=recorded.token_pooling,
            )
            store.open(wanted, create=False)
            recorded = store.spec() or recorded
        self._weights_checked = True
        return recorded

    def reset(self) -> None:
        """The store was closed: the next :meth:`open` opens it again."""
        self._opened = False
        self._weights_checked = False


def _other_lanes(store: PageStore, lanes: tuple[Lane, ...] | None, language: str) -> bool:
    """Whether an opened collection records other lanes than an ingest wants (the store
    decides, on a new open, whether to adopt them or refuse)."""
    if lanes is None:
        return False
    recorded = store.spec()
    if recorded is None:
        return True
    return recorded.lanes != lanes or ("text" in lanes and recorded.text_language != language)
