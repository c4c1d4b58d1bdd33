"""Fewer vectors per page: pooled row/column vectors for two-stage retrieval, and
index-time token pooling.

**Row/column pooling.** Exact MaxSim reads every page's ~1030 token vectors
per query. A cheap first stage compares the query with a few dozen *pooled*
vectors per page instead: the mean of each row and of each column of the
page's image-patch grid (32 + 32 for ColPali), each set followed by the
page's non-image tokens. The candidates it finds are then reranked with full
MaxSim (Qdrant's published ColPali recipe). The grid is the model's fixed
one from the registry (ColPali's 32×32), or — for models with dynamic
resolution (ColQwen, ColSmol) — the page's own, as the model's processor
reported it (:class:`~pipeline.types.PatchGrid`, kept in the page payload
under :data:`GRID_FIELD`). Nothing here guesses a grid from a vector count.

**Token pooling** (``embedding.token_pooling: FACTOR``): each page's full
vectors are merged into about ``1/FACTOR`` as many by colpali-engine's
``HierarchicalTokenPooler`` (Ward clustering of the page's tokens, each
cluster replaced by its mean). The ColPali authors report that factor 3
keeps ~97.8% of nDCG@5 with 66.7% fewer vectors. It needs colpali-engine
(the ``pagerag[torch]`` extra) whichever backend embedded the page. Pooled
tokens no longer sit on the patch grid, so row/column vectors are computed
*before* token pooling, and similarity maps are unavailable afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.errors import ModelError, OptionalDependencyError
from pipeline.models import ModelSpec
from pipeline.types import Float16Array, PageVectors, PatchGrid

__all__ = [
    "GRID_FIELD",
    "POOLED_VECTORS",
    "page_grid",
    "pool_page",
    "pool_tokens",
    "require_token_pooler",
    "stored_vectors",
    "supports_pooling",
]

# Named vectors a pooled collection carries besides the full multivector.
POOLED_VECTORS: tuple[str, ...] = ("rows", "cols")
# Page payload key of the page's own patch grid ([rows, cols, offset]), for models
# whose grid varies by page.
GRID_FIELD = "patch_grid"


def supports_pooling(spec: ModelSpec) -> bool:
    """Whether the model's pages have a patch grid to pool (fixed or per page)."""
    return spec.has_grid


def page_grid(spec: ModelSpec, payload: Mapping[str, Any] | None = None) -> PatchGrid | None:
    """The patch grid of one stored page: its recorded one, else the model's fixed one."""
    if payload is not None:
        recorded = PatchGrid.from_payload(payload.get(GRID_FIELD))
        if recorded is not None:
            return recorded
    if spec.patch_grid is None:
        return None
    return PatchGrid(*spec.patch_grid, offset=spec.patch_offset)


def pool_page(
    vectors: Float16Array, spec: ModelSpec, grid: PatchGrid | None = None
) -> dict[str, Float16Array]:
    """Row- and column-mean pooled multivectors of one page's output.

    ``grid`` is the page's own patch grid; None means the model's fixed one.
    Means are taken in float32 (summing 32 float16 values loses precision)
    and stored back as float16. Raises ``ValueError`` for a page without a
    grid or an output shorter than the grid.
    """
    grid = grid or page_grid(spec)
    if grid is None:
        raise ValueError(
            f"{spec.name} has no patch grid for this page: pooled two-stage retrieval is "
            "unavailable; use retrieval.mode: exact"
        )
    if vectors.shape[0] < grid.stop:
        raise ValueError(
            f"page output has {vectors.shape[0]} tokens, fewer than the {grid.rows}x{grid.cols} "
            f"patch grid at row {grid.offset}"
        )
    start, stop = grid.offset, grid.stop
    cells = vectors[start:stop].astype(np.float32).reshape(grid.rows, grid.cols, -1)
    others = np.concatenate([vectors[:start], vectors[stop:]]).astype(np.float32)
    row_means = cells.mean(axis=1)
    col_means = cells.mean(axis=0)
    return {
        "rows": np.concatenate([row_means, others]).astype(np.float16),
        "cols": np.concatenate([col_means, others]).astype(np.float16),
    }


def pool_tokens(vectors: Float16Array, factor: int) -> Float16Array:
    """One page's vectors merged into ``max(n // factor, 1)`` cluster means by
    colpali-engine's ``HierarchicalTokenPooler`` (float16 in and out).

    Raises :class:`~pipeline.errors.OptionalDependencyError` without colpali-engine.
    """
    if factor < 1:
        raise ValueError(f"the token pooling factor must be at least 1, got {factor}")
    if factor == 1 or vectors.shape[0] < 2:
        return vectors
    pooler = _pooler()
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    pooled = pooler.pool_embeddings([tensor], pool_factor=factor)[0]
    return np.ascontiguousarray(pooled.numpy(), dtype=np.float16)


def require_token_pooler() -> None:
    """Raise :class:`~pipeline.errors.OptionalDependencyError` now, before any page is
    embedded, when token pooling cannot run (colpali-engine is not installed)."""
    _pooler()


def _pooler() -> Any:
    try:
        from colpali_engine.compression.token_pooling import HierarchicalTokenPooler
    except ImportError as exc:
        error = OptionalDependencyError(
            "Token pooling (embedding.token_pooling)", "torch", "colpali_engine"
        )
        text = f"{error}, or set embedding.token_pooling: null [{exc}]"
        error.msg = text
        error.args = (text,)
        raise error from exc
    return HierarchicalTokenPooler()


def stored_vectors(
    page: PageVectors,
    spec: ModelSpec,
    *,
    pooled: tuple[str, ...] = (),
    token_pooling: int | None = None,
    full_vector: str = "full",
) -> tuple[dict[str, Float16Array], dict[str, Any]]:
    """What the store keeps for one embedded page: its named vectors, and the payload
    fields that describe them.

    ``pooled`` names the row/column vectors the collection carries (computed
    from the page's grid, before any token pooling); ``token_pooling`` the
    factor the full vectors are merged by. A page's own grid is recorded in
    the payload (:data:`GRID_FIELD`) when its full vectors are stored unmerged
    and the model has no fixed grid, so pooling and similarity maps can be
    redone from what is stored.
    """
    grid = page.grid or page_grid(spec)
    named: dict[str, Float16Array] = {}
    if pooled:
        if grid is None:
            raise ModelError(
                f"{spec.name} reported no patch grid for a page, so its pooled vectors "
                "cannot be computed: use a collection without pooled vectors"
            )
        by_name = pool_page(page.vectors, spec, grid)
        named.update({name: by_name[name] for name in pooled})
    full = page.vectors
    fields: dict[str, Any] = {}
    if token_pooling and token_pooling > 1:
        full = pool_tokens(full, token_pooling)
    elif page.grid is not None and spec.patch_grid is None:
        fields[GRID_FIELD] = page.grid.to_payload()
    named[full_vector] = full
    return named, fields
