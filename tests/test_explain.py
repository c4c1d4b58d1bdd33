"""Similarity maps line up with the page the model saw, and fail clearly without a grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.errors import QueryError
from pipeline.evaluate.explain import (
    heatmap_layer,
    render_heatmap,
    render_token_maps,
    similarity_maps,
)
from pipeline.models import MODELS
from pipeline.testing.fakes import FAKE_SPEC, FakeEmbedder

WIDTH, HEIGHT = 600, 800  # portrait: a square-grid assumption would misplace the heat
ROWS, COLS = FAKE_SPEC.patch_grid or (0, 0)


def _cell_box(r: int, c: int) -> tuple[int, int, int, int]:
    """Pixel box [x0, x1) x [y0, y1) of grid cell (r, c) on the page."""
    return (
        round(c * WIDTH / COLS),
        round(r * HEIGHT / ROWS),
        round((c + 1) * WIDTH / COLS),
        round((r + 1) * HEIGHT / ROWS),
    )


def _page_with_dark_cell(r: int, c: int) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    x0, y0, x1, y1 = _cell_box(r, c)
    ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), fill="black")
    return image


@pytest.mark.parametrize(("r", "c"), [(5, 20), (27, 3)])
def test_dark_square_lights_up_its_cell(r: int, c: int):
    image = _page_with_dark_cell(r, c)
    page = FakeEmbedder().embed_images([image])[0]
    query = page[r * COLS + c : r * COLS + c + 1]  # the dark patch's own vector

    maps = similarity_maps(query, page, FAKE_SPEC)
    assert maps.per_token.shape == (1, ROWS, COLS)
    for grid_map in (maps.contributions, maps.combined, maps.per_token[0]):
        assert np.unravel_index(grid_map.argmax(), grid_map.shape) == (r, c)
    assert tuple(maps.best_cell[0]) == (r, c)
    assert maps.score == pytest.approx(1.0, abs=1e-2)  # unit vector with itself
    assert maps.patch_share == pytest.approx(1.0)

    # In pixel space the heat sits exactly over the dark square.
    x0, y0, x1, y1 = _cell_box(r, c)
    alpha = np.asarray(heatmap_layer(maps.contributions, image.size))[..., 3]
    hot_y, hot_x = np.nonzero(alpha == alpha.max())
    assert (hot_x.min(), hot_x.max() + 1) == pytest.approx((x0, x1), abs=1)
    assert (hot_y.min(), hot_y.max() + 1) == pytest.approx((y0, y1), abs=1)

    rendered = render_heatmap(image, maps.combined, alpha=0.7)
    assert rendered.size == image.size
    assert rendered.mode == "RGB"
    change = np.abs(np.asarray(rendered, dtype=np.int32) - np.asarray(image, dtype=np.int32)).sum(
        axis=-1
    )
    ys, xs = np.nonzero(change >= 0.9 * change.max())
    assert x0 - 1 <= xs.min() <= xs.max() < x1 + 1
    assert y0 - 1 <= ys.min() <= ys.max() < y1 + 1
    assert change[(y0 + y1) // 2, (x0 + x1) // 2] == change.max()


def test_non_square_grid_with_offset_is_not_transposed():
    # 4x6 grid after 3 prompt tokens: a transposed or offset-blind layout would misplace it.
    spec = dataclasses.replace(
        FAKE_SPEC, name="t", dim=16, tokens_per_page=3 + 24 + 2, patch_grid=(4, 6), patch_offset=3
    )
    rng = np.random.default_rng(0)
    page = rng.standard_normal((29, 16))
    page = (page / np.linalg.norm(page, axis=1, keepdims=True)).astype(np.float16)
    target = 3 + 2 * 6 + 5  # row 2, col 5
    query = np.stack([page[target], page[target]])  # unit vectors: each matches itself best

    maps = similarity_maps(query, page, spec)
    assert maps.per_token.shape == (2, 4, 6)
    assert np.unravel_index(maps.combined.argmax(), (4, 6)) == (2, 5)
    assert tuple(maps.best_cell[0]) == (2, 5)
    # the map is stretched over the page: cell (2, 5) of 4x6 on 600x800
    alpha = np.asarray(heatmap_layer(maps.contributions, (WIDTH, HEIGHT)))[..., 3]
    hot_y, hot_x = np.nonzero(alpha == alpha.max())
    assert (hot_x.min(), hot_x.max()) == (500, 599)
    assert (hot_y.min(), hot_y.max()) == (400, 599)


def test_contributions_sum_to_the_patch_part_of_the_score():
    page = FakeEmbedder().embed_images([_page_with_dark_cell(1, 1)])[0]
    query = FakeEmbedder().embed_query("three word query")
    maps = similarity_maps(query, page, FAKE_SPEC)
    assert maps.per_token.shape == (3, ROWS, COLS)
    sims = query.astype(np.float32) @ page.astype(np.float32).T
    assert maps.score == pytest.approx(float(sims.max(axis=1).sum()), rel=1e-5)
    in_grid = maps.best_cell[:, 0] >= 0
    assert maps.contributions.sum() == pytest.approx(
        float(maps.token_scores[in_grid].sum()), rel=1e-5
    )
    assert (maps.combined >= 0).all()


def test_model_without_grid_is_refused():
    spec = MODELS["Qdrant/colmodernvbert"]
    with pytest.raises(QueryError, match="no fixed patch grid") as info:
        similarity_maps(np.zeros((2, 128)), np.zeros((900, 128)), spec)
    assert "Qdrant/colpali-v1.3-fp16" in str(info.value)  # says which model would work


@pytest.mark.parametrize(
    ("query", "page", "message"),
    [
        (np.zeros((2, 64)), np.zeros((1030, 64)), "dimension mismatch"),
        (np.zeros(128), np.zeros((1030, 128)), "shape"),
        (np.zeros((2, 128)), np.zeros((500, 128)), "500 vectors"),
    ],
)
def test_arrays_that_do_not_fit_the_model(query, page, message):
    with pytest.raises(QueryError, match=message):
        similarity_maps(query, page, FAKE_SPEC)


def test_per_token_sheet_and_options():
    image = _page_with_dark_cell(0, 0)
    per_token = np.random.default_rng(1).random((5, ROWS, COLS)).astype(np.float32)
    sheet = render_token_maps(image, per_token, columns=2, thumb_width=120, labels=list("abcde"))
    # 3 rows x 2 columns of 120x160 thumbnails, each under a 16 px label strip
    assert sheet.size == (240, 3 * (160 + 16))
    with pytest.raises(ValueError, match="labels"):
        render_token_maps(image, per_token, labels=["a"])
    smooth = render_heatmap(image, per_token[0], smooth=True)
    assert smooth.size == image.size
    flat = render_heatmap(image, np.ones((ROWS, COLS)))  # no heat: page unchanged
    assert np.array_equal(np.asarray(flat), np.asarray(image))
    with pytest.raises(ValueError, match="alpha"):
        render_heatmap(image, per_token[0], alpha=2.0)


def test_colour_scale_runs_from_the_cold_to_the_hot_colour_with_its_values():
    from pipeline.evaluate.explain import colorize, colour_scale

    strip = colour_scale(400, low=0.0, high=1.5, caption="score added per patch")
    assert strip.width == 400
    pixels = np.asarray(strip.convert("RGB"), dtype=np.int32)
    ramp_row = pixels[pixels.shape[0] // 2]
    hot = colorize(np.array([1.0]))[0].astype(np.int32)
    # the hot end is the ramp's hot colour as it shows over white paper at full value
    expected = np.rint(255 + 0.6 * (hot - 255))
    distance = np.abs(ramp_row - expected).max(axis=1)
    assert distance.min() <= 3
    assert distance.argmin() > 0.9 * strip.width  # at the right end
    assert (ramp_row[30] >= 235).all()  # the cold end leaves the paper white
    with pytest.raises(ValueError, match="width"):
        colour_scale(0, low=0.0, high=1.0, caption="x")


def test_token_sheet_marks_template_tokens():
    from pipeline.embed.protocol import QueryToken

    image = Image.new("RGB", (200, 100), "white")
    maps = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    labels = ["0 'rev' 0.40", "1 <pad> (padding) 0.10", "2 'enue' 0.30"]
    sheet = render_token_maps(image, maps, labels=labels, dimmed=[False, True, False])
    label_strip = np.asarray(sheet.convert("L"))[:16]
    tile = sheet.width // 3
    darkest = [int(label_strip[:, i * tile : (i + 1) * tile].min()) for i in range(3)]
    assert darkest[0] < 60 and darkest[2] < 60  # black text
    assert darkest[1] > 100  # grey text: a template token, not one of the query's words
    assert QueryToken("<pad>", "padding").kind == "padding"
