"""Deterministic stand-ins shipped for users' own tests (no model, no network).

``FakeEmbedder`` follows the ColPali layout (32×32 patch grid + 6 text tokens,
128 dims, float16) and derives each patch vector from that patch's pixels, so
pages that look alike score alike and a page's own patches retrieve it.
Its :meth:`~FakeEmbedder.identity` is a stand-in's when it is given the spec
of a real registered model, so nothing it stores claims to be that model.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from pipeline.models import MODELS, ModelSpec
from pipeline.types import Float16Array, ModelIdentity

__all__ = ["FAKE_SPEC", "FakeEmbedder"]

FAKE_SPEC = ModelSpec(
    name="pagerag/fake-colpali",
    dim=128,
    tokens_per_page=1030,
    patch_grid=(32, 32),
    patch_offset=0,
    size_gb=0.0,
    license="Apache-2.0",
    notes="deterministic test double; meaningless for quality",
)


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-6)


class FakeEmbedder:
    """A :class:`pipeline.embed.protocol.PageEmbedder` without a model.

    ``seconds_per_page`` makes each page cost a fixed wall time (benchmarks
    use it to stand in for a slow real model without burning CPU).
    """

    def __init__(self, spec: ModelSpec = FAKE_SPEC, *, seconds_per_page: float = 0.0) -> None:
        self._spec = spec
        self.seconds_per_page = seconds_per_page
        rng = np.random.default_rng(1234)
        rows, cols = spec.patch_grid or (32, 32)
        self._grid = (rows, cols)
        # 3 colour means + 16 texture cells per patch -> dim
        self._proj = rng.standard_normal((19, spec.dim)).astype(np.float32)
        self._pos = rng.standard_normal((rows * cols, spec.dim)).astype(np.float32) * 0.05
        extra = (spec.tokens_per_page or rows * cols) - rows * cols
        self._text_tokens = _normalize(rng.standard_normal((extra, spec.dim))).astype(np.float32)
        self.pages_embedded = 0

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def _patch_features(self, image: Image.Image) -> np.ndarray:
        rows, cols = self._grid
        small = np.asarray(image.convert("RGB").resize((cols * 4, rows * 4)), dtype=np.float32)
        small = small / 255.0 - 0.5
        cells = small.reshape(rows, 4, cols, 4, 3)
        colour = cells.mean(axis=(1, 3))  # rows, cols, 3
        texture = cells.mean(axis=4).transpose(0, 2, 1, 3).reshape(rows, cols, 16)
        return np.concatenate([colour, texture], axis=-1).reshape(rows * cols, 19)

    def embed_images(self, images: Sequence[Image.Image]) -> list[Float16Array]:
        out = []
        for image in images:
            if self.seconds_per_page:
                time.sleep(self.seconds_per_page)
            patches = _normalize(self._patch_features(image) @ self._proj + self._pos)
            full = np.concatenate([patches, self._text_tokens], axis=0)
            out.append(full.astype(np.float16))
            self.pages_embedded += 1
        return out

    def embed_query(self, query: str) -> Float16Array:
        words = query.split() or [query]
        vecs = []
        for word in words[: self.query_token_limit()]:
            seed = int.from_bytes(hashlib.sha256(word.lower().encode()).digest()[:8], "little")
            vecs.append(np.random.default_rng(seed).standard_normal(self._spec.dim))
        return _normalize(np.asarray(vecs, dtype=np.float32)).astype(np.float16)

    def query_token_limit(self) -> int:
        return 64

    def identity(self) -> ModelIdentity:
        """Fixed per spec: the fake's "weights" are derived from the spec and one seed."""
        spec = self._spec
        layout = f"{spec.name}|{spec.dim}|{spec.tokens_per_page}|{spec.patch_grid}|seed=1234"
        return ModelIdentity(
            name=spec.name,
            source=f"{__name__}.FakeEmbedder",
            fingerprint=hashlib.sha256(layout.encode()).hexdigest()[:16],
            stand_in=spec.name in MODELS,
        )
