"""``ClientPageStore``: the :class:`~pipeline.retrieve.store.PageStore` on a Qdrant server.

It talks to Qdrant through ``qdrant_client.QdrantClient``: a server or cluster
at ``store.url`` (gRPC preferred), or the client's in-process ``:memory:``
mode for throwaway stores and tests. The collection layout is the one the
``pipeline.retrieve.store`` docstring describes (page points, vectorless document and
collection points in one collection).

Why it looks the way it does:

* **Exact MaxSim.** Every multivector is ``DOT`` + ``MAX_SIM`` with HNSW
  disabled (``m=0``): an HNSW graph over late-interaction vectors costs a lot
  to build and would make results approximate; ColPali pages are scored
  exactly, and speed comes from two-stage retrieval over pooled vectors.
* **Durability before completion marks.** Every write waits (``wait=True``),
  so when ``upsert_pages`` returns the pages are applied; ``flush`` is then a
  no-op and ``mark_complete`` can safely follow.
* **Transient failures are retried, the rest fail fast.** Writes and the
  reads a batch job makes (document lookups, scrolls, counts, vectors) retry
  with exponential backoff (``store.upsert_retries``) on connection errors,
  timeouts, 5xx and 429; re-sending is safe because point ids are
  deterministic. ``open``, ``search`` and ``page_image`` do not retry: a
  person is waiting, and an unreachable server should say so at once.
* **No library tracebacks, no secrets.** Every qdrant-client, httpx and gRPC
  exception is turned into a :class:`~pipeline.errors.StoreError` whose
  message names the server URL (without credentials) and says what to check.
  The API key is never put in a message.
* **Local mode quirks.** ``:memory:`` ignores datatypes, quantization and
  payload indexes and returns float64 vectors: indexes are skipped there and
  vectors are converted back to float16 on the way out.

The modules, one concern each:

* ``connection`` — the lazily made client, retries, error classification and
  messages (:class:`~connectors.qdrant_client.connection.Connection`);
* ``collection`` — create, or open, validate and evolve a collection; payload
  indexes; the manifest point;
* ``store`` — :class:`ClientPageStore`: the engine calls behind
  :class:`~pipeline.retrieve.points.PointStore`, upserts, vectors, stats;
* ``translate`` — pagerag's engine-neutral conditions, vector roles and query
  kinds as ``qdrant_client.models``.
"""

# The error classification and the filter translation stay importable from here
# under their old private names: tests/test_store_client.py pins both.
from connectors.qdrant_client.connection import classify as _classify  # noqa: F401
from connectors.qdrant_client.store import ClientPageStore
from connectors.qdrant_client.translate import page_filter as _page_filter  # noqa: F401

__all__ = ["ClientPageStore"]
