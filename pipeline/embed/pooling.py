"""Pooled page vectors for two-stage retrieval.

Exact MaxSim reads every page's ~1030 token vectors per query. A cheap first
stage compares the query with a few dozen *pooled* vectors per page instead:
the mean of each row and of each column of the model's image-patch grid
(32 + 32 for ColPali), each set followed by the page's non-image tokens. The
candidates it finds are then reranked with full MaxSim (Qdrant's published
ColPali recipe). The grid comes from the model's registry entry, so the store
never hard-codes ColPali's 32×32.
"""

from __future__ import annotations

import numpy as np

from pipeline.models import ModelSpec
from pipeline.types import Float16Array

__all__ = ["POOLED_VECTORS", "pool_page", "supports_pooling"]

# Named vectors a pooled collection carries besides the full multivector.
POOLED_VECTORS: tuple[str, ...] = ("rows", "cols")


def supports_pooling(spec: ModelSpec) -> bool:
    return spec.patch_grid is not None


def pool_page(vectors: Float16Array, spec: ModelSpec) -> dict[str, Float16Array]:
    """Row- and column-mean pooled multivectors of one page's output.

    Means are taken in float32 (summing 32 float16 values loses precision)
    and stored back as float16. Raises ``ValueError`` for a model without a
    fixed grid or an output shorter than the grid.
    """
    if spec.patch_grid is None:
        raise ValueError(
            f"{spec.name} has no fixed patch grid: pooled two-stage retrieval is unavailable; "
            "use retrieval.mode: exact"
        )
    rows, cols = spec.patch_grid
    start, stop = spec.patch_offset, spec.patch_offset + rows * cols
    if vectors.shape[0] < stop:
        raise ValueError(
            f"page output has {vectors.shape[0]} tokens, fewer than the {rows}x{cols} patch grid"
        )
    grid = vectors[start:stop].astype(np.float32).reshape(rows, cols, -1)
    others = np.concatenate([vectors[:start], vectors[stop:]]).astype(np.float32)
    row_means = grid.mean(axis=1)
    col_means = grid.mean(axis=0)
    return {
        "rows": np.concatenate([row_means, others]).astype(np.float16),
        "cols": np.concatenate([col_means, others]).astype(np.float16),
    }
