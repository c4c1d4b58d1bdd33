"""Retrieval: where pages live and how they are found.

* :mod:`~pipeline.retrieve.store` — the ``PageStore`` protocol (one Qdrant
  collection: page points, completion marks, the manifest) that
  ``connectors.qdrant_edge`` and ``connectors.qdrant_client`` implement.
* :mod:`~pipeline.retrieve.reindex` — in-place upgrades of a stored
  collection from its stored vectors (no re-embedding).
"""

from pipeline.retrieve.store import PageStore

__all__ = ["PageStore"]
