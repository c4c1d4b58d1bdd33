"""Retrieval: where pages live and how they are found.

* :mod:`~pipeline.retrieve.store` — the ``PageStore`` protocol (one Qdrant
  collection: page points, completion marks, the manifest) that
  ``connectors.qdrant_edge`` and ``connectors.qdrant_client`` implement.
* :mod:`~pipeline.retrieve.collection` — opening the configured collection and
  refusing one another model or other weights filled.
* :mod:`~pipeline.retrieve.planning` — ``SearchOptions`` (k, filter, mode) and
  the search plan: exact MaxSim, or a pooled first stage and an exact rerank.
* :mod:`~pipeline.retrieve.inventory` — documents by id, prefix, path or folder;
  the collection's status and its bytes per page.
* :mod:`~pipeline.retrieve.reindex` — in-place upgrades of a stored
  collection from its stored vectors (no re-embedding).

What both store adapters compute alike, engine-neutral (each adapter only
translates these values into its library's calls):

* :mod:`~pipeline.retrieve.conditions` — which points a call touches, as a
  condition tree (page filters, a document's points, stale pages, missing vectors);
* :mod:`~pipeline.retrieve.queries` — a search checked and planned: first
  stages, then a MaxSim ranking (where new query kinds plug in);
* :mod:`~pipeline.retrieve.opening` — opening an existing collection: what to
  refuse (with the fix), adopt, or change in place;
* :mod:`~pipeline.retrieve.points` — ``PointStore``: the PageStore bookkeeping
  (documents, marks, deletes, prunes, counts, search) over a few engine calls.
"""

from pipeline.retrieve.store import PageStore

__all__ = ["PageStore"]
