"""Registry of the page-embedding models pagerag knows how to use.

A model's *layout* (where its image-patch tokens sit in the output and what
grid they form) is what pooling and similarity maps need; keeping it here
means the store and the retriever never hard-code ColPali's 32×32 grid.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError

__all__ = ["MODELS", "ModelSpec", "get_model_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """What pagerag must know about a late-interaction page model.

    ``patch_grid`` is ``(rows, cols)`` of the image-patch tokens, which occupy
    output rows ``[patch_offset, patch_offset + rows*cols)``; ``None`` when the
    model tiles images adaptively and has no fixed grid (no pooling then).
    ``weight_files`` are the model files fastembed loads besides the
    tokenizer/config JSON (its ``model_file`` and ``additional_files``): what
    :mod:`pipeline.embed.fingerprint` hashes, so the weights of an
    ``embedding.model_path`` are identified without importing fastembed.
    """

    name: str
    dim: int
    tokens_per_page: int | None
    patch_grid: tuple[int, int] | None
    patch_offset: int
    size_gb: float
    license: str
    notes: str
    weight_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"{self.name}: dim must be positive, got {self.dim}")
        if self.patch_grid is not None:
            rows, cols = self.patch_grid
            if rows <= 0 or cols <= 0:
                raise ValueError(f"{self.name}: bad patch grid {self.patch_grid}")
            if self.tokens_per_page is not None and (
                self.patch_offset + rows * cols > self.tokens_per_page
            ):
                raise ValueError(f"{self.name}: patch grid does not fit in the page tokens")

    @property
    def patch_count(self) -> int | None:
        return None if self.patch_grid is None else self.patch_grid[0] * self.patch_grid[1]


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="Qdrant/colpali-v1.3-fp16",
            dim=128,
            # fastembed feeds <image>x1024 then "<bos>Describe the image.\n" (6 tokens).
            tokens_per_page=1030,
            patch_grid=(32, 32),
            patch_offset=0,
            size_gb=6.5,
            license="Gemma",
            weight_files=("model.onnx", "model.onnx_data"),
            notes="PaliGemma-3B based; ~6 TFLOP per page: tens of seconds per page on CPU, "
            "0.08-0.4 s on a GPU.",
        ),
        ModelSpec(
            name="Qdrant/colmodernvbert",
            dim=128,
            tokens_per_page=None,  # adaptive image tiling: varies with page shape
            patch_grid=None,
            patch_offset=0,
            size_gb=1.0,
            license="MIT",
            weight_files=("model_v2.onnx", "processor_config.json"),
            notes="ModernVBERT based, smaller and faster than ColPali; no fixed patch grid, "
            "so pooled two-stage retrieval and similarity maps are unavailable.",
        ),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; an unknown name lists the valid ones."""
    try:
        return MODELS[name]
    except KeyError:
        valid = ", ".join(sorted(MODELS))
        raise ConfigError(f"unknown embedding.model {name!r}. Supported models: {valid}") from None
