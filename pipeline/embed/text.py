"""The text lane's embedding stage: page text and queries as BM25 sparse vectors.

Why a protocol and not a function: the vectors must be tokenised exactly as
the engine that scores them expects (Qdrant's BM25: murmur3 token ids, the
Snowball stemmer and stopwords of one language), so the one implementation,
``connectors.bm25.QdrantBm25``, lives with the outside library that provides
that tokeniser; stages and tests depend only on this shape.

A document vector carries BM25's term-frequency part; the IDF part is
computed by the engine over the live collection (``Modifier.IDF``), so a
vector never goes stale when pages are added or removed. Query vectors weigh
each distinct term 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pipeline.types import SparseVector

__all__ = ["TextEmbedder"]


@runtime_checkable
class TextEmbedder(Protocol):
    """Turns page texts and queries into sparse BM25 vectors of one language."""

    @property
    def language(self) -> str:
        """The tokenizer language (recorded in the collection's manifest)."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> list[SparseVector]:
        """One vector per text, in input order; an empty vector for a text without terms."""
        ...

    def embed_query(self, query: str) -> SparseVector:
        """The query's terms (empty when it has none: all stopwords or punctuation)."""
        ...
