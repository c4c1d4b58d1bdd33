"""Evaluation: how well retrieval and answers do on a QA set, and why.

* :mod:`~pipeline.evaluate.metrics` — the QA-set format, recall@k, hit@k,
  nDCG, MRR, answer accuracy, tables (pure functions, no I/O).
* :mod:`~pipeline.evaluate.explain` — similarity maps: which image patches
  matched which query tokens (from stored vectors; no ``PageRAG``).
* :mod:`~pipeline.evaluate.runner` — ``pagerag eval``: drives a ``PageRAG``
  (ingest, search, ask) like the CLI does, so it sits *above*
  :mod:`pipeline.api`; import it directly, not from here.
"""
