"""The page-embedding stage: what any late-interaction page model must offer.

Implemented by ``connectors.fastembed.FastEmbedColPali`` (ONNX models through
fastembed), ``connectors.colpali_torch.ColPaliTorchEmbedder`` (colpali-engine
models through torch) and ``pipeline.testing.fakes.FakeEmbedder``
(deterministic, for unit tests). Constructors are cheap; models load on
first use.

A model with dynamic resolution gives each page its own patch grid. Such an
embedder also offers ``embed_pages`` (:class:`GridEmbedder`), which returns
each page's vectors with its grid; :func:`embed_pages` calls it when present
and otherwise pairs ``embed_images`` with the model's fixed grid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
from PIL import Image

from pipeline.errors import ModelError
from pipeline.models import ModelSpec
from pipeline.types import Float16Array, ModelIdentity, PageVectors, PatchGrid

__all__ = [
    "GridEmbedder",
    "PageEmbedder",
    "QueryToken",
    "embed_pages",
    "identity_of",
    "one_per_image",
    "query_tokens_of",
]

T = TypeVar("T")


@runtime_checkable
class PageEmbedder(Protocol):
    """Turns page images and text queries into float16 multivectors."""

    @property
    def spec(self) -> ModelSpec:
        """The registry entry of the model (name, dim, patch layout)."""
        ...

    def embed_images(self, images: Sequence[Image.Image]) -> list[Float16Array]:
        """One ``(tokens, dim)`` float16 array per image, in input order."""
        ...

    def embed_query(self, query: str) -> Float16Array:
        """A ``(query_tokens, dim)`` float16 array (padding rows stripped)."""
        ...

    def query_token_limit(self) -> int:
        """Longest query, in tokens, the model accepts before truncation."""
        ...

    def identity(self) -> ModelIdentity:
        """The exact weights in use: name, source and fingerprint (see pipeline.embed.fingerprint).

        Collections record it and refuse other weights. Cheap after the first
        call (cached); needs the model's files, not a loaded model.
        """
        ...


def identity_of(embedder: PageEmbedder) -> ModelIdentity:
    """``embedder.identity()``; for an embedder written before that method existed,
    an identity derived from its model name and class.

    Such an embedder can only be told apart by its class (the fingerprint
    hashes the model name and the class name), so a change of its weights
    goes unnoticed: implement ``identity()`` to have it checked.
    """
    method = getattr(embedder, "identity", None)
    if callable(method):
        identity = method()
        if isinstance(identity, ModelIdentity):
            return identity
    kind = type(embedder)
    source = f"python:{kind.__module__}.{kind.__qualname__}"
    name = embedder.spec.name
    digest = hashlib.sha256(f"{name}\n{source}".encode()).hexdigest()[:16]
    return ModelIdentity(name=name, source=source, fingerprint=digest)


@runtime_checkable
class GridEmbedder(Protocol):
    """An embedder that says where each page's patch vectors are (dynamic resolution)."""

    def embed_pages(self, images: Sequence[Image.Image]) -> list[PageVectors]:
        """One :class:`~pipeline.types.PageVectors` per image, in input order: the
        ``(tokens, dim)`` float16 vectors and the page's patch grid as the model's
        processor reported it (None when the model has none)."""
        ...


def embed_pages(embedder: PageEmbedder, images: Sequence[Image.Image]) -> list[PageVectors]:
    """Each page's vectors and patch grid: ``embedder.embed_pages`` when it has it,
    else ``embed_images`` with the model's fixed grid (None without one)."""
    if isinstance(embedder, GridEmbedder):
        return list(embedder.embed_pages(images))
    spec = embedder.spec
    grid = None if spec.patch_grid is None else PatchGrid(*spec.patch_grid, spec.patch_offset)
    return [PageVectors(vectors, grid) for vectors in embedder.embed_images(images)]


@dataclass(frozen=True)
class QueryToken:
    """What one row of a query's vectors stands for.

    ``text`` is the token as written (a slice of the query, or the template's
    own text such as ``Query`` or ``<pad>``); ``kind`` says whether it comes
    from the user's words (``query``), the model's query template (``prompt``)
    or its augmentation padding (``padding``).
    """

    text: str
    kind: Literal["query", "prompt", "padding"]


def query_tokens_of(embedder: PageEmbedder, query: str) -> list[QueryToken] | None:
    """``embedder.query_tokens(query)`` for embedders that offer it (optional), else None.

    One :class:`QueryToken` per row of ``embed_query(query)``, in order.
    """
    method = getattr(embedder, "query_tokens", None)
    if not callable(method):
        return None
    tokens = list(method(query))
    return tokens if all(isinstance(t, QueryToken) for t in tokens) else None


def checked_vectors(vec: object, spec: ModelSpec) -> Float16Array:
    """One embedding as an adapter returns it: ``(tokens, spec.dim)`` float16 (only ever
    cast *down* to it); another shape is a :class:`~pipeline.errors.ModelError` that
    suspects ``embedding.model_path``."""
    array = np.asarray(vec)
    if array.ndim != 2 or array.shape[1] != spec.dim:
        raise ModelError(
            f"{spec.name} returned vectors of shape {array.shape}, expected "
            f"(tokens, {spec.dim}): is embedding.model_path the right model?"
        )
    return array if array.dtype == np.float16 else array.astype(np.float16)


def one_per_image(out: list[T], images: Sequence[object], spec: ModelSpec) -> list[T]:
    """``out`` when the model gave one embedding per input image, else a ``ModelError``
    (a broken model file or adapter must not shift pages onto each other's vectors)."""
    if len(out) != len(images):
        raise ModelError(f"{spec.name} returned {len(out)} embeddings for {len(images)} images")
    return out
