"""Qdrant's own BM25 tokeniser and weighting, through qdrant-edge-py's ``Bm25``.

Why this library: the text lane's token ids must be the ones every Qdrant
engine uses. qdrant-edge-py's built-in ``Bm25`` needs no downloaded files and
gives the same murmur3 ids and weights as fastembed's ``Qdrant/bm25`` and a
server's ``qdrant/bm25`` inference, so vectors made here are scored correctly
by the embedded engine, qdrant-client's local mode and a server alike. No
tokenizer or stemmer is written here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from pipeline.errors import ConfigError
from pipeline.types import SparseVector

__all__ = ["QdrantBm25"]

# Snowball stemmers Qdrant's BM25 accepts (qdrant-edge-py 0.9.0, Bm25Config.language).
_LANGUAGES = (
    "arabic", "armenian", "basque", "catalan", "danish", "dutch", "english", "finnish",
    "french", "german", "greek", "hindi", "hungarian", "indonesian", "irish", "italian",
    "lithuanian", "nepali", "norwegian", "portuguese", "romanian", "russian", "serbian",
    "spanish", "swedish", "tamil", "turkish", "yiddish",
)  # fmt: skip


class QdrantBm25:
    """A :class:`~pipeline.embed.text.TextEmbedder` of one language; cheap to construct,
    the tokenizer is built on first use (thread-safe)."""

    def __init__(self, language: str = "english") -> None:
        self._language = language.strip().lower()
        self._model: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"QdrantBm25(language={self._language!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (Ray embed actors get a copy): the language travels, the tokenizer
        # is built again on first use.
        return {"language": self._language}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["language"])  # type: ignore[misc]

    @property
    def language(self) -> str:
        return self._language

    def embed_texts(self, texts: Sequence[str]) -> list[SparseVector]:
        model = self._loaded()
        return [_sparse(model.embed_document(text)) if text.strip() else _EMPTY for text in texts]

    def embed_query(self, query: str) -> SparseVector:
        return _sparse(self._loaded().embed_query(query)) if query.strip() else _EMPTY

    def _loaded(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = _build(self._language)
            return self._model


def _build(language: str) -> Any:
    import qdrant_edge as qe

    try:
        return qe.Bm25(qe.Bm25Config(language=language))
    except Exception as exc:  # the binding raises ValueError/RuntimeError for a bad language
        raise ConfigError(
            f"text.language {language!r} is not a language Qdrant's BM25 knows ({exc}); "
            f"use one of: {', '.join(_LANGUAGES)}"
        ) from None


def _sparse(vector: Any) -> SparseVector:
    return SparseVector.of(vector.indices, vector.values)


_EMPTY = SparseVector.of([], [])
