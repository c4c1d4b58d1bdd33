"""Why a page matched: patch-level similarity maps and heatmaps over the page.

A late-interaction score is ``MaxSim(q, d) = Σ_i max_j q_i · d_j``: each
query token picks the one page token it resembles most. The page tokens
``[offset, offset + rows*cols)`` of the page's patch grid
(:class:`~pipeline.types.PatchGrid`) are image patches in row-major order,
so every similarity can be placed on the page. The grid is the model's fixed
one (ColPali: 32×32 at 0) or, for models with dynamic resolution (ColQwen,
ColSmol), the page's own, recorded with its vectors at ingest: its shape
follows the page's. Three views are computed, all on the ``(rows, cols)`` grid:

``per_token``
    ``(q, rows, cols)``: each query token's similarity with every patch —
    where that token "looks" on the page (``explain --per-token``).
``contributions``
    The MaxSim attribution (the default ``explain`` map): each query token
    adds its maximum similarity to the one patch it matched best, so the map
    shows exactly which patches the score was made of. It sums to ``score``
    minus what went to the non-patch (text-prompt) tokens — see
    ``patch_share``. It is sparse: at most ``q`` cells are lit.
``combined``
    ``Σ_i max(q_i · d_j, 0)``: every positive similarity summed — a dense
    picture of where the query as a whole resembles the page; useful when
    the sparse contribution map is too terse. Negative similarities are
    clipped because "unlike" carries no evidence in MaxSim.

Alignment: the model resizes the whole page onto its grid (ColPali squashes
it to a square; dynamic-resolution models keep roughly its aspect ratio), so
grid cell ``(r, c)`` covers rows ``r/rows .. (r+1)/rows`` of the page height
and columns ``c/cols .. (c+1)/cols`` of its width, whatever the page shape.
:func:`render_heatmap` maps the grid that way onto the page.

:func:`explain_stored` applies all this to a stored page: its vectors and
JPEG come from the store, the query is embedded by the collection's model.
``PageRAG.explain`` / ``PageRAG.explain_page`` (``pagerag explain``) open the
collection and check the model first.

Only Pillow and numpy are used (no matplotlib): the colour map is a small
hand-made jet-like ramp, and opacity grows with the value so cold regions
leave the page readable.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image, ImageDraw, ImageFont

from pipeline.embed.pooling import page_grid
from pipeline.errors import QueryError
from pipeline.models import MODELS, ModelSpec
from pipeline.types import DocumentRecord, PageHit, PatchGrid, page_point_id

if TYPE_CHECKING:
    from pipeline.embed.protocol import PageEmbedder, QueryToken
    from pipeline.retrieve.store import PageStore

__all__ = [
    "Explanation",
    "MapKind",
    "SimilarityMaps",
    "check_explain_request",
    "colorize",
    "colour_scale",
    "explain_stored",
    "find_document",
    "heatmap_layer",
    "render_heatmap",
    "render_token_maps",
    "similarity_maps",
    "stored_page_id",
]

MapKind = Literal["contributions", "combined"]

# Anchor colours of a jet-like ramp: blue -> cyan -> green -> yellow -> orange -> red.
# The hot end is a saturated red, visible over white paper and over text alike
# (a ramp ending in pale yellow vanishes on a white page).
_ANCHORS = np.array(
    [
        [0.00, 30, 60, 200],
        [0.35, 0, 190, 220],
        [0.55, 80, 220, 80],
        [0.75, 250, 210, 30],
        [0.90, 245, 110, 20],
        [1.00, 215, 25, 25],
    ],
    dtype=np.float32,
)
_LUT = np.stack(
    [np.interp(np.linspace(0.0, 1.0, 256), _ANCHORS[:, 0], _ANCHORS[:, i]) for i in (1, 2, 3)],
    axis=-1,
).astype(np.float32)  # (256, 3)


@dataclass(frozen=True)
class SimilarityMaps:
    """Similarities of one query with one page, laid out on the patch grid.

    ``best_cell[i]`` is the ``(row, col)`` of the patch query token ``i``
    matched best, or ``(-1, -1)`` when its best match was a non-patch token;
    ``token_scores[i]`` is that token's maximum similarity, and ``score``
    their sum (the page's MaxSim score). ``patch_share`` is the part of the
    score the patch tokens earned (``contributions.sum() / score``).
    """

    per_token: NDArray[np.float32]
    contributions: NDArray[np.float32]
    combined: NDArray[np.float32]
    best_cell: NDArray[np.int64]
    token_scores: NDArray[np.float32]
    score: float
    grid: tuple[int, int]

    @property
    def patch_share(self) -> float:
        return float(self.contributions.sum() / self.score) if self.score else 0.0

    def map(self, kind: MapKind = "contributions") -> NDArray[np.float32]:
        """The ``(rows, cols)`` map of the given kind (see the module docstring)."""
        if kind == "contributions":
            return self.contributions
        if kind == "combined":
            return self.combined
        raise ValueError(f"unknown map kind {kind!r}; choose 'contributions' or 'combined'")


def _grid_models() -> str:
    names = sorted(name for name, spec in MODELS.items() if spec.has_grid)
    return ", ".join(names) or "none registered"


def similarity_maps(
    query: ArrayLike, page: ArrayLike, spec: ModelSpec, grid: PatchGrid | None = None
) -> SimilarityMaps:
    """Per-token, contribution and combined maps of ``query`` ``(q, dim)`` on ``page``.

    ``page`` is the page's full multivector ``(tokens, dim)`` as stored
    (patch tokens at the grid's offset, plus any prompt tokens); ``grid`` the
    page's own patch grid, None for the model's fixed one. Work is done in
    float32 whatever the input dtype. Raises
    :class:`~pipeline.errors.QueryError` when there is no grid or the arrays
    do not fit the model.
    """
    grid = grid or page_grid(spec)
    if grid is None:
        raise QueryError(
            f"similarity maps are unavailable for {spec.name} on this page: the model has no "
            "fixed patch grid and none was recorded with the page. Use a model with one "
            f"({_grid_models()})."
        )
    rows, cols = grid.rows, grid.cols
    q = np.asarray(query, dtype=np.float32)
    d = np.asarray(page, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] == 0:
        raise QueryError(f"query vectors must have shape (tokens, dim), got {q.shape}")
    if d.ndim != 2:
        raise QueryError(f"page vectors must have shape (tokens, dim), got {d.shape}")
    if q.shape[1] != d.shape[1] or d.shape[1] != spec.dim:
        raise QueryError(
            f"dimension mismatch: query {q.shape[1]}, page {d.shape[1]}, "
            f"model {spec.name} {spec.dim}; were both embedded with this model?"
        )
    first, last = grid.offset, grid.stop
    if d.shape[0] < last:
        raise QueryError(
            f"the page has {d.shape[0]} vectors but {spec.name} puts {rows}x{cols} patch "
            f"tokens at rows {first}..{last - 1}; was it embedded with this model?"
        )

    sims = q @ d.T  # (q, tokens)
    best = sims.argmax(axis=1)
    token_scores = sims[np.arange(q.shape[0]), best]
    patch_sims = sims[:, first:last]  # (q, rows*cols), row-major patch order

    contributions = np.zeros(rows * cols, dtype=np.float32)
    in_grid = (best >= first) & (best < last)
    np.add.at(contributions, best[in_grid] - first, token_scores[in_grid])
    best_cell = np.full((q.shape[0], 2), -1, dtype=np.int64)
    best_cell[in_grid, 0] = (best[in_grid] - first) // cols
    best_cell[in_grid, 1] = (best[in_grid] - first) % cols

    return SimilarityMaps(
        per_token=patch_sims.reshape(q.shape[0], rows, cols),
        contributions=contributions.reshape(rows, cols),
        combined=np.clip(patch_sims, 0.0, None).sum(axis=0).reshape(rows, cols),
        best_cell=best_cell,
        token_scores=token_scores.astype(np.float32),
        score=float(token_scores.sum()),
        grid=(rows, cols),
    )


def _normalise(
    grid_map: NDArray[np.floating], vmin: float | None, vmax: float | None
) -> NDArray[np.float32]:
    values = np.asarray(grid_map, dtype=np.float32)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"a grid map must be a non-empty 2-D array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("the grid map contains NaN or infinite values")
    lo = float(values.min()) if vmin is None else vmin
    hi = float(values.max()) if vmax is None else vmax
    if hi <= lo:  # a flat map carries no heat
        return np.zeros_like(values)
    scaled: NDArray[np.float32] = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    return scaled


def colorize(values: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Map values in ``[0, 1]`` to RGB with the module's colour ramp (``(..., 3)`` uint8)."""
    index = np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255), 0, 255).astype(np.intp)
    return _LUT[index].astype(np.uint8)


def _upscale(
    values: NDArray[np.float32], size: tuple[int, int], *, smooth: bool
) -> NDArray[np.float32]:
    """Stretch a ``(rows, cols)`` grid over ``size = (width, height)`` pixels.

    Pixel ``(y, x)`` belongs to cell ``(floor((y + .5) * rows / height),
    floor((x + .5) * cols / width))``: the cell's share of the page is the
    same on both axes whatever the aspect ratio. ``smooth`` interpolates
    bilinearly between cell centres instead (same alignment).
    """
    width, height = size
    rows, cols = values.shape
    if smooth:
        resized = Image.fromarray(values).resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.float32)
    row_of = np.minimum(((np.arange(height) + 0.5) * rows / height).astype(np.intp), rows - 1)
    col_of = np.minimum(((np.arange(width) + 0.5) * cols / width).astype(np.intp), cols - 1)
    stretched: NDArray[np.float32] = values[row_of[:, None], col_of[None, :]]
    return stretched


def heatmap_layer(
    grid_map: NDArray[np.floating],
    size: tuple[int, int],
    *,
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    smooth: bool = False,
) -> Image.Image:
    """The coloured RGBA overlay for a page of ``size = (width, height)``.

    The map is scaled to ``[0, 1]`` (between ``vmin`` and ``vmax``, by
    default its own minimum and maximum; pass both to share a scale between
    maps), coloured, and given an opacity of ``alpha × value``: cold cells
    stay transparent so the page remains readable under them.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"bad image size {size}")
    values = _upscale(_normalise(grid_map, vmin, vmax), (width, height), smooth=smooth)
    rgba = np.empty((height, width, 4), dtype=np.uint8)
    rgba[..., :3] = colorize(values)
    rgba[..., 3] = np.clip(np.rint(values * alpha * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(rgba)


def render_heatmap(
    image: Image.Image,
    grid_map: NDArray[np.floating],
    *,
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    smooth: bool = False,
) -> Image.Image:
    """``image`` (RGB, same size) with ``grid_map`` blended over it.

    Any grid shape works; the grid is stretched over the whole page exactly
    as the model squashed the page into its square input.
    """
    base = image.convert("RGBA")
    layer = heatmap_layer(grid_map, base.size, alpha=alpha, vmin=vmin, vmax=vmax, smooth=smooth)
    return Image.alpha_composite(base, layer).convert("RGB")


def render_token_maps(
    image: Image.Image,
    per_token: NDArray[np.floating],
    *,
    labels: Sequence[str] | None = None,
    columns: int = 4,
    thumb_width: int = 320,
    alpha: float = 0.6,
    shared_scale: bool = False,
    dimmed: Sequence[bool] | None = None,
) -> Image.Image:
    """One heatmap per query token, tiled into a single labelled image.

    Each map is scaled on its own (where does *this* token look) unless
    ``shared_scale``, which puts all on one scale (which tokens matter).
    ``labels`` default to ``token 0``, ``token 1`` …; labels whose ``dimmed``
    entry is true are grey (tokens of the model's query template, not the query).
    """
    maps = np.asarray(per_token, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"per-token maps must have shape (tokens, rows, cols), got {maps.shape}")
    if columns < 1 or thumb_width < 1:
        raise ValueError("columns and thumb_width must be positive")
    count = maps.shape[0]
    if labels is None:
        labels = [f"token {i}" for i in range(count)]
    elif len(labels) != count:
        raise ValueError(f"{len(labels)} labels for {count} token maps")
    vmin = float(maps.min()) if shared_scale else None
    vmax = float(maps.max()) if shared_scale else None

    thumb_height = max(1, round(image.height * thumb_width / image.width))
    thumb = image.convert("RGB").resize((thumb_width, thumb_height), Image.Resampling.LANCZOS)
    font = ImageFont.load_default()
    label_height = 16
    cols = min(columns, count)
    rows = -(-count // cols)
    sheet = Image.new("RGB", (cols * thumb_width, rows * (thumb_height + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(count):
        x = (i % cols) * thumb_width
        y = (i // cols) * (thumb_height + label_height)
        grey = dimmed is not None and dimmed[i]
        draw.text((x + 4, y + 2), str(labels[i]), fill="#909090" if grey else "black", font=font)
        tile = render_heatmap(thumb, maps[i], alpha=alpha, vmin=vmin, vmax=vmax)
        sheet.paste(tile, (x, y + label_height))
    return sheet


def colour_scale(
    width: int, *, low: float | None, high: float | None, caption: str, alpha: float = 0.6
) -> Image.Image:
    """A legend strip ``width`` pixels wide: the colour ramp as it shows over white paper.

    Left is the coldest value (``low``, fully transparent), right the hottest
    (``high``); the values are printed at the ends (omitted when None, e.g. for
    maps each scaled on its own) and ``caption`` says what they measure.
    """
    if width < 1:
        raise ValueError(f"the colour scale needs a positive width, got {width}")
    font = ImageFont.load_default()
    ramp_height, text_height, margin = 14, 14, 8
    strip = Image.new("RGB", (width, ramp_height + 2 * text_height + margin), "white")
    values = np.linspace(0.0, 1.0, max(1, width - 2 * margin), dtype=np.float32)
    colours = colorize(values).astype(np.float32)
    over_white = 255.0 + (values * alpha)[:, None] * (colours - 255.0)
    ramp = np.broadcast_to(np.rint(over_white).astype(np.uint8), (ramp_height, *over_white.shape))
    strip.paste(Image.fromarray(np.ascontiguousarray(ramp)), (margin, text_height))
    draw = ImageDraw.Draw(strip)
    draw.rectangle(
        (margin - 1, text_height - 1, width - margin, text_height + ramp_height), outline="#c0c0c0"
    )
    draw.text((margin, 1), caption, fill="black", font=font)
    bottom = text_height + ramp_height + 2
    if low is not None:
        draw.text((margin, bottom), f"{low:.3g}", fill="black", font=font)
    if high is not None:
        text = f"{high:.3g}"
        right = width - margin - draw.textlength(text, font=font)
        draw.text((right, bottom), text, fill="black", font=font)
    return strip


def _stacked(image: Image.Image, strip: Image.Image) -> Image.Image:
    figure = Image.new("RGB", (image.width, image.height + strip.height), "white")
    figure.paste(image.convert("RGB"), (0, 0))
    figure.paste(strip, (0, image.height))
    return figure


# ------------------------------------------------ explaining a stored page


@dataclass(frozen=True)
class Explanation:
    """Why one stored page matched a query: the maps, the page, and the heatmap.

    ``image`` is ``page`` with the ``kind`` map blended over it (same size as
    the stored page image); :meth:`token_sheet` draws the per-token maps.
    ``maps.score`` is the page's MaxSim score recomputed in float32 (it can
    differ from a search score in the last digits, or more with a quantized
    collection); ``hit_score`` is the search's own score when a hit was given.
    """

    query: str
    point_id: str
    document_id: str | None
    source: str | None
    page_number: int | None
    kind: MapKind
    maps: SimilarityMaps
    page: Image.Image
    image: Image.Image
    hit_score: float | None = None
    # What each query row stands for (its text, and whether it is one of the query's
    # words or the model's template); empty when the embedder cannot say.
    tokens: tuple[QueryToken, ...] = ()
    alpha: float = 0.6  # the heatmap's opacity at the hottest value

    @property
    def map(self) -> NDArray[np.float32]:
        """The ``(rows, cols)`` map the heatmap shows."""
        return self.maps.map(self.kind)

    def figure(self) -> Image.Image:
        """``image`` with its colour scale below it (what ``pagerag explain`` writes)."""
        values = self.map
        caption = (
            f"score each patch added (sum {float(values.sum()):.3g} of MaxSim "
            f"{self.maps.score:.3g})"
            if self.kind == "contributions"
            else "summed positive similarity of the query's tokens with each patch"
        )
        scale = colour_scale(
            self.image.width,
            low=float(values.min()),
            high=float(values.max()),
            caption=caption,
            alpha=self.alpha,
        )
        return _stacked(self.image, scale)

    def token_labels(self) -> tuple[list[str], list[bool]]:
        """One label per query token (its text, marked when it is the template's) and
        whether it is the template's (``prompt`` or ``padding``)."""
        scores = self.maps.token_scores.tolist()
        if len(self.tokens) != len(scores):  # the embedder cannot say what the rows are
            return [f"token {i}: {score:.2f}" for i, score in enumerate(scores)], [False] * len(
                scores
            )
        labels: list[str] = []
        template: list[bool] = []
        for i, (token, score) in enumerate(zip(self.tokens, scores, strict=True)):
            if token.kind == "query":
                labels.append(f"{i} {token.text!r} {score:.2f}")
            else:
                labels.append(f"{i} {token.text!r} ({token.kind}) {score:.2f}")
            template.append(token.kind != "query")
        return labels, template

    def token_sheet(self, *, columns: int = 4, shared_scale: bool = False) -> Image.Image:
        """One heatmap per query token, labelled with the token, over a colour scale
        (``explain --per-token``). Template tokens (prompt, padding) have grey labels."""
        labels, template = self.token_labels()
        sheet = render_token_maps(
            self.page,
            self.maps.per_token,
            labels=labels,
            columns=columns,
            shared_scale=shared_scale,
            alpha=self.alpha,
            dimmed=template,
        )
        values = self.maps.per_token
        scale = colour_scale(
            sheet.width,
            low=float(values.min()) if shared_scale else None,
            high=float(values.max()) if shared_scale else None,
            caption="similarity of the token with each patch"
            + ("" if shared_scale else ": each map from its own lowest to its highest")
            + "; grey labels: the model's query template, not your words",
            alpha=self.alpha,
        )
        return _stacked(sheet, scale)

    def to_dict(self) -> dict[str, object]:
        """JSON-safe summary (no arrays beyond the per-token best cells and scores)."""
        rows, cols = self.maps.grid
        return {
            "query": self.query,
            "point_id": self.point_id,
            "document_id": self.document_id,
            "source": self.source,
            "page": self.page_number,
            "kind": self.kind,
            "score": round(self.maps.score, 6),
            "hit_score": None if self.hit_score is None else round(self.hit_score, 6),
            "patch_share": round(self.maps.patch_share, 6),
            "grid": [rows, cols],
            "image_size": list(self.page.size),
            "query_tokens": len(self.maps.token_scores),
            "token_scores": [round(float(s), 6) for s in self.maps.token_scores],
            "best_cells": [[int(r), int(c)] for r, c in self.maps.best_cell],
            "tokens": [{"text": t.text, "kind": t.kind} for t in self.tokens],
        }


def explain_stored(
    store: PageStore,
    embedder: PageEmbedder,
    query: str,
    hit_or_point_id: PageHit | str,
    *,
    kind: MapKind = "contributions",
    alpha: float = 0.6,
    smooth: bool = False,
) -> Explanation:
    """Similarity maps of ``query`` on one stored page, and its heatmap image.

    The page is a :class:`~pipeline.types.PageHit` from a search or a page
    point id (``page_point_id(document_id, n)``). Its stored vectors and
    image are read from ``store`` (opened on the collection, whose model the
    caller checked) and the query is embedded by ``embedder``, so the map
    shows the very comparison search made. Raises
    :class:`~pipeline.errors.QueryError` when the model has no patch grid,
    the page is not in the collection, or its image was not stored.
    """
    point_id = check_explain_request(embedder.spec, query, hit_or_point_id, kind)
    hit = hit_or_point_id if isinstance(hit_or_point_id, PageHit) else None
    vectors = store.page_vectors([point_id]).get(point_id)
    if vectors is None:
        spec = store.spec()
        where = f"collection {spec.name!r}" if spec is not None else "the collection"
        raise QueryError(
            f"page {point_id} is not in {where}: pass a hit from search, or "
            "page_point_id(document_id, page) of an ingested page"
        )
    collection = store.spec()
    if collection is not None and collection.token_pooling:
        raise QueryError(
            f"similarity maps are unavailable in collection {collection.name!r}: its pages' "
            f"vectors were merged by token pooling (factor {collection.token_pooling}), so they "
            "no longer sit on the patch grid. Explain pages of a collection ingested with "
            "embedding.token_pooling: null"
        )
    from pipeline.retrieve.store import stored_grids

    grid = stored_grids(store, embedder.spec, [point_id])[point_id]
    jpeg = _page_jpeg(store, point_id, hit)
    maps = similarity_maps(embedder.embed_query(query), vectors, embedder.spec, grid)
    page = Image.open(io.BytesIO(jpeg)).convert("RGB")
    return Explanation(
        query=query,
        point_id=point_id,
        document_id=hit.document_id if hit is not None else None,
        source=hit.source if hit is not None else None,
        page_number=hit.page_number if hit is not None else None,
        kind=kind,
        maps=maps,
        page=page,
        image=render_heatmap(page, maps.map(kind), alpha=alpha, smooth=smooth),
        hit_score=hit.score if hit is not None else None,
        tokens=_tokens(embedder, query, len(maps.token_scores)),
        alpha=alpha,
    )


def _tokens(embedder: PageEmbedder, query: str, rows: int) -> tuple[QueryToken, ...]:
    """The query's tokens when the embedder can say, one per vector row; else ()."""
    from pipeline.embed.protocol import query_tokens_of

    tokens = query_tokens_of(embedder, query)
    return tuple(tokens) if tokens is not None and len(tokens) == rows else ()


def check_explain_request(
    spec: ModelSpec, query: str, hit_or_point_id: PageHit | str, kind: str
) -> str:
    """The point id to explain; ``QueryError`` before any store read or embedding."""
    if kind not in ("contributions", "combined"):
        raise QueryError(f"kind must be 'contributions' or 'combined', got {kind!r}")
    if not isinstance(query, str) or not query.strip():
        raise QueryError("the query is empty: pass the question or words to explain")
    if not spec.has_grid:
        raise QueryError(
            f"similarity maps are unavailable for {spec.name}: it has no patch grid to "
            f"draw on. Use a model with one ({_grid_models()})."
        )
    if isinstance(hit_or_point_id, PageHit):
        return hit_or_point_id.point_id
    return str(hit_or_point_id)


def _page_jpeg(store: PageStore, point_id: str, hit: PageHit | None) -> bytes:
    try:
        data = hit.load_jpeg() if hit is not None else store.page_image(point_id)
    except LookupError:
        data = None
    if not data:
        raise QueryError(
            f"no image is stored for page {point_id}, so there is nothing to draw the map on: "
            "re-ingest with ingest.store_images: true"
        )
    return data


def find_document(store: PageStore, path: str | os.PathLike[str]) -> DocumentRecord:
    """The stored document ingested from ``path``: by its path, else by its content hash.

    ``store`` is opened on the collection. Raises
    :class:`~pipeline.errors.QueryError` saying to ingest it first.
    """
    from pipeline.ingest.sources import hash_file

    given = Path(path).expanduser()
    for candidate in dict.fromkeys((str(given.resolve()), os.path.abspath(given))):
        records = store.documents(source=candidate)
        if records:
            return max(records, key=lambda r: r.ingested_at)
    if given.is_file():
        record = store.get_document(hash_file(given))
        if record is not None:
            return record
    elif not given.exists():
        raise QueryError(f"no such file {given}, and no document was ingested from that path")
    raise QueryError(
        f"{given} is not in the collection (never ingested, or changed since): "
        f"run `pagerag ingest {given}` first"
    )


def stored_page_id(record: DocumentRecord, page: int) -> str:
    """The point id of page ``page`` (1-based) of ``record``; ``QueryError`` when not stored."""
    if isinstance(page, bool) or not isinstance(page, int) or not 1 <= page <= record.total_pages:
        raise QueryError(
            f"page {page} is out of range: {record.file_name} has {record.total_pages} "
            f"page(s), 1 to {record.total_pages}"
        )
    if page in record.failed_pages:
        raise QueryError(f"page {page} of {record.file_name} failed to ingest: nothing is stored")
    if page > record.page_count + len(record.failed_pages):  # the tail cut by max_pages
        raise QueryError(
            f"page {page} of {record.file_name} is not stored: only its first "
            f"{record.page_count + len(record.failed_pages)} of {record.total_pages} pages were "
            "ingested (render.max_pages)"
        )
    return page_point_id(record.document_id, page)
