"""Registry of the page-embedding models pagerag knows how to use.

A model's *layout* (where its image-patch tokens sit in the output and what
grid they form) is what pooling and similarity maps need; keeping it here
means the store and the retriever never hard-code ColPali's 32×32 grid.
Models with dynamic resolution (ColQwen, ColSmol) have no fixed grid: their
processor reports each page's grid (``per_page_grid``), which travels with
the page's vectors (:class:`pipeline.types.PatchGrid`).

Each entry also says which backend runs it (``fastembed``: ONNX through
FastEmbed; ``torch``: colpali-engine's model and processor classes, the
``pagerag[torch]`` extra), its licence and download size, and — where
published — its ViDoRe v1 score, so ``pagerag models`` can help choose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.errors import ConfigError

__all__ = ["BACKENDS", "MODELS", "VIDORE_SOURCE", "Backend", "ModelSpec", "get_model_spec"]

Backend = Literal["fastembed", "torch"]
BACKENDS: tuple[Backend, ...] = ("fastembed", "torch")

# Where the published scores below come from. Download sizes of the torch models are
# estimates (parameters x 2 bytes, bfloat16 safetensors), not measured downloads.
VIDORE_SOURCE = "ViDoRe v1 nDCG@5 as listed in the colpali-engine 0.3.18 README model table"


@dataclass(frozen=True)
class ModelSpec:
    """What pagerag must know about a late-interaction page model.

    ``patch_grid`` is ``(rows, cols)`` of the image-patch tokens, which occupy
    output rows ``[patch_offset, patch_offset + rows*cols)``; ``None`` when the
    grid is not fixed: either the processor reports one per page
    (``per_page_grid``: dynamic resolution, pooling and maps still work) or
    the model has none pagerag can place (no pooling then).
    ``tokens_per_page`` is None when it varies with the page's shape
    (``tokens_note`` then says by how much).
    ``weight_files`` are the model files fastembed loads besides the
    tokenizer/config JSON (its ``model_file`` and ``additional_files``): what
    :mod:`pipeline.embed.fingerprint` hashes, so the weights of an
    ``embedding.model_path`` are identified without importing fastembed.
    ``family`` names the colpali-engine model/processor classes of a torch
    model (see ``connectors.colpali_torch``); ``query_processing`` what the
    model's processor does to a query (prefix, augmentation tokens), which
    pagerag leaves to it.
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
    backend: Backend = "fastembed"
    family: str | None = None
    per_page_grid: bool = False
    tokens_note: str = ""
    query_processing: str = ""
    vidore_v1: float | None = None
    fits: str = ""

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"{self.name}: dim must be positive, got {self.dim}")
        if self.backend == "torch" and not self.family:
            raise ValueError(f"{self.name}: a torch model needs its colpali-engine family")
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

    @property
    def has_grid(self) -> bool:
        """Whether page vectors can be placed on a patch grid (fixed or per page)."""
        return self.patch_grid is not None or self.per_page_grid

    @property
    def vectors_per_page(self) -> str:
        """Tokens per page as people read it: a number, or what it varies with."""
        if self.tokens_per_page is not None:
            return str(self.tokens_per_page)
        return self.tokens_note or "varies"


_QWEN_QUERY = "the processor adds its query augmentation (10 × <|endoftext|>)"
_QWEN_TOKENS = "varies, <=~780"

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
            query_processing="fastembed builds '<s>Query: q' + 10 <pad> + newline",
            vidore_v1=84.8,
            fits="GPU; CPU: slow",
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
            tokens_note="varies",
            query_processing="fastembed's own query template",
            fits="CPU, GPU",
        ),
        # -- torch: colpali-engine's reference classes (pip install 'pagerag[torch]') --
        ModelSpec(
            name="vidore/colqwen2.5-v0.2",
            dim=128,
            tokens_per_page=None,
            patch_grid=None,
            patch_offset=0,
            size_gb=7.5,
            license="Apache 2.0",
            notes="Qwen2.5-VL-3B based (LoRA adapter on vidore/colqwen2.5-base: download "
            "both for offline use); dynamic resolution.",
            backend="torch",
            family="colqwen2_5",
            per_page_grid=True,
            tokens_note=_QWEN_TOKENS,
            query_processing=_QWEN_QUERY,
            vidore_v1=89.4,
            fits="GPU 8 GB+",
        ),
        ModelSpec(
            name="vidore/colqwen2-v1.0",
            dim=128,
            tokens_per_page=None,
            patch_grid=None,
            patch_offset=0,
            size_gb=4.4,
            license="Apache 2.0",
            notes="Qwen2-VL-2B based (LoRA adapter on vidore/colqwen2-base); dynamic resolution.",
            backend="torch",
            family="colqwen2",
            per_page_grid=True,
            tokens_note=_QWEN_TOKENS,
            query_processing=_QWEN_QUERY,
            vidore_v1=89.3,
            fits="GPU 6 GB+",
        ),
        ModelSpec(
            name="TomoroAI/tomoro-colqwen3-embed-4b",
            dim=320,
            tokens_per_page=None,
            patch_grid=None,
            patch_offset=0,
            size_gb=8.9,
            license="Apache 2.0",
            notes="Qwen3-VL-4B based; 320-dimension vectors; dynamic resolution.",
            backend="torch",
            family="colqwen3",
            per_page_grid=True,
            tokens_note="varies",
            query_processing="the processor adds its query augmentation tokens",
            vidore_v1=90.6,
            fits="GPU 12 GB+",
        ),
        ModelSpec(
            name="athrael-soju/colqwen3.5-4.5B-v3",
            dim=320,
            tokens_per_page=None,
            patch_grid=None,
            patch_offset=0,
            size_gb=9.0,
            license="Apache 2.0",
            notes="Qwen3.5-4B based (LoRA); 320-dimension vectors; dynamic resolution.",
            backend="torch",
            family="colqwen3_5",
            per_page_grid=True,
            tokens_note="varies",
            query_processing="the processor adds its query augmentation tokens",
            vidore_v1=90.9,
            fits="GPU 12 GB+",
        ),
        ModelSpec(
            name="vidore/colSmol-256M",
            dim=128,
            tokens_per_page=None,
            patch_grid=None,
            patch_offset=0,
            size_gb=0.5,
            license="Apache 2.0",
            notes="SmolVLM-256M (Idefics3) based: ~1/10 of ColPali's compute; pages are cut "
            "into 512 px tiles of 8x8 vectors plus one global tile.",
            backend="torch",
            family="colidefics3",
            per_page_grid=True,
            tokens_note="varies, ~600-1100",
            query_processing="the processor adds its query augmentation (<end_of_utterance>)",
            vidore_v1=80.1,
            fits="CPU, GPU",
        ),
        ModelSpec(
            name="vidore/colSmol-500M",
            dim=128,
            tokens_per_page=None,
            patch_grid=None,
            patch_offset=0,
            size_gb=1.0,
            license="Apache 2.0",
            notes="SmolVLM-500M (Idefics3) based; same tiling as colSmol-256M.",
            backend="torch",
            family="colidefics3",
            per_page_grid=True,
            tokens_note="varies, ~600-1100",
            query_processing="the processor adds its query augmentation (<end_of_utterance>)",
            vidore_v1=82.3,
            fits="GPU; CPU: small sets",
        ),
        ModelSpec(
            name="vidore/colpali-v1.3",
            dim=128,
            tokens_per_page=None,
            patch_grid=None,
            patch_offset=0,
            size_gb=5.9,
            license="Gemma",
            notes="ColPali v1.3 through torch (LoRA adapter on "
            "vidore/colpaligemma-3b-pt-448-base); the fastembed build Qdrant/colpali-v1.3-fp16 "
            "is the default.",
            backend="torch",
            family="colpali",
            per_page_grid=True,
            tokens_note="~1030",
            query_processing="the processor adds 'Query: ' and its augmentation tokens",
            vidore_v1=84.8,
            fits="GPU",
        ),
        ModelSpec(
            name="Cognitive-Lab/ColNetraEmbed",
            dim=128,
            tokens_per_page=None,
            patch_grid=None,
            patch_offset=0,
            size_gb=8.6,
            license="Gemma",
            notes="Gemma3-4B based (ColGemma3); 256 image vectors per page; 22 languages.",
            backend="torch",
            family="colgemma3",
            per_page_grid=True,
            tokens_note="~265",
            query_processing="the processor adds its query prefix and augmentation tokens",
            vidore_v1=86.4,
            fits="GPU 12 GB+",
        ),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name`` (hub names are case-insensitive); an unknown
    name lists the valid ones."""
    spec = MODELS.get(name)
    if spec is None:
        spec = next((s for key, s in MODELS.items() if key.lower() == name.lower()), None)
    if spec is None:
        valid = ", ".join(sorted(MODELS))
        raise ConfigError(
            f"unknown embedding.model {name!r}. Supported models: {valid} "
            "(`pagerag models` describes each)"
        )
    return spec
