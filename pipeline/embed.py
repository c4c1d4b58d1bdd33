"""The page-embedding stage: what any late-interaction page model must offer.

Implemented by ``connectors.fastembed.FastEmbedColPali`` (real models through
fastembed) and ``pipeline.testing.fakes.FakeEmbedder`` (deterministic, for
unit tests). Constructors are cheap; models load on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from pipeline.models import ModelSpec
from pipeline.types import Float16Array

__all__ = ["PageEmbedder"]


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
