"""How a hybrid search fuses its lanes, and which lane found each fused page.

Why this exists: the fusion itself runs inside Qdrant (one query, both
lanes as prefetches), but a user reading a result wants to know whether the
visual lane, the text lane or both found the page, and where. Qdrant returns
only the fused score; this module holds the fusion's definition (the exact
formula Qdrant uses, so tests can check the engine against it) and recovers
each page's lane ranks from the fused score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Fuse", "rrf_contribution", "rrf_rank"]


@dataclass(frozen=True)
class Fuse:
    """The union of a request's stages, ranked by fusing their rankings.

    ``method`` "rrf": weighted reciprocal rank fusion, a page scoring
    ``sum(1 / (rank / weight + k - 1))`` over the stages that found it (rank
    1-based; Qdrant's formula, which is the textbook ``1 / (k + rank)`` with
    weight 1 and 0-based rank); "dbsf": each stage's scores normalised by
    their mean ± 3 standard deviations, then summed (``k`` and ``weights``
    unused). ``weights`` are per stage, in stage order.
    """

    method: Literal["rrf", "dbsf"]
    weights: tuple[float, ...]
    k: int = 60


def rrf_contribution(rank: int, weight: float, k: int) -> float:
    """What one stage adds to a page's RRF score for finding it at 1-based ``rank``."""
    return 1.0 / (rank / weight + k - 1.0)


def rrf_rank(contribution: float, weight: float, k: int, *, tolerance: float = 1e-7) -> int | None:
    """The 1-based rank at which a stage contributed ``contribution`` to a page's RRF
    score (the inverse of :func:`rrf_contribution`, rounded), or None when the
    contribution is ~0 (``tolerance``): the stage did not find the page.

    Exact while the engine's score precision separates neighbouring ranks: float32
    scores (the embedded engine) resolve ranks to about 1e-4 at rank 100 and 0.2 at
    rank 10 000 (k=60, weight 1).
    """
    if contribution <= tolerance:
        return None
    return max(1, round(weight * (1.0 / contribution - k + 1.0)))
