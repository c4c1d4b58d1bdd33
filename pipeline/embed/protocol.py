"""The page-embedding stage: what any late-interaction page model must offer.

Implemented by ``connectors.fastembed.FastEmbedColPali`` (real models through
fastembed) and ``pipeline.testing.fakes.FakeEmbedder`` (deterministic, for
unit tests). Constructors are cheap; models load on first use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from pipeline.models import ModelSpec
from pipeline.types import Float16Array, ModelIdentity

__all__ = ["PageEmbedder", "identity_of"]


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
