"""Embedding: page images and queries → float16 multivectors.

* :mod:`~pipeline.embed.protocol` — the ``PageEmbedder`` protocol every
  backend implements (``connectors.fastembed`` today).
* :mod:`~pipeline.embed.pooling` — pooled row/column vectors for two-stage
  retrieval, derived from a page's full multivector.
* :mod:`~pipeline.embed.fingerprint` — which exact weights made a vector.
"""

from pipeline.embed.protocol import PageEmbedder, identity_of

__all__ = ["PageEmbedder", "identity_of"]
