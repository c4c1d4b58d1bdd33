"""The embedded page store: Qdrant's own Rust core, in-process (qdrant-edge-py).

Why this engine is the default: it is the real Qdrant segment/shard code, so
MaxSim, prefetch + rerank, float16/uint8 storage, quantization and payload
indexes behave as on a server, with no server to run. qdrant-client's
``:memory:``/``path=`` mode re-implements search in numpy, ignores those
settings and reloads a 1000-page store in ~36 s; this engine reopens it in
under a second (see /work/shared/ENVIRONMENT.md, "Qdrant engines").

Layout on disk: one shard per collection under ``path / collection``, plus a
lock file ``path / f"{collection}.lock"``. The shard holds the three kinds of
points described in :mod:`pipeline.retrieve.store` (pages, document marks, and the
collection manifest).

Design decisions, each forced by how qdrant-edge-py 0.9.0 behaves:

* **One process at a time.** The engine takes an exclusive lock on the shard's
  WAL; a second open fails with an opaque ``WouldBlock`` error. We take a
  ``filelock`` lock first so the conflict is detected before the WAL is
  touched and reported as :class:`~pipeline.errors.StoreInUseError` with what
  to do. The raw WAL error is still mapped, for holders that bypass the lock.
* **Validation on open** reads the vector layout from the shard's persisted
  ``edge_config.json`` (the engine has no accessor for it; the file is the
  engine's own record and wins over ours) and the model from the manifest
  point; anything missing falls back to the manifest.
* **No HNSW, ever.** ``m=0`` on every vector *and* globally: after
  ``optimize()`` a vector without it gets an HNSW graph and MaxSim results
  become approximate. Vectors added later (pooled vectors on an existing
  collection) inherit the global setting.
* **Quantization is global** (``EdgeConfig.quantization_config``) so pooled
  vectors added later are covered too. Binary quantization applies at once;
  scalar only to segments rebuilt by the optimizer, hence :meth:`optimize`,
  run by :meth:`close` after writes to a quantized collection. Queries on a
  quantized collection always rescore with the original vectors and
  oversample, so scores stay exact MaxSim scores.
* **One re-entrant lock** around every shard call: the ingestion job upserts
  from a background thread while the main thread reads, and close() must not
  race an in-flight call. The engine keeps the GIL for most of a call anyway
  (measured: a Python thread gets ~1/10 of its normal progress during a
  query), so the lock costs little parallelism.

The modules, one concern each:

* ``collection`` — the shard directory: its lock, creating, loading,
  validating and evolving the shard, its manifest point
  (:class:`~connectors.qdrant_edge.collection.ShardDirectory`);
* ``store`` — :class:`EdgePageStore`: the open shard, its lock, the engine
  calls behind :class:`~pipeline.retrieve.points.PointStore`, upserts,
  vectors, stats;
* ``translate`` — pagerag's engine-neutral conditions, vector roles and query
  kinds as qdrant-edge-py objects.
"""

from connectors.qdrant_edge.store import EdgePageStore

__all__ = ["EdgePageStore"]
