"""Offline, random-weight stand-ins for the torch backend's model families.

Why they exist: the real checkpoints (ColQwen2.5 7.5 GB, ColSmol 0.5 GB …)
cannot be downloaded here or in CI, yet the code that drives them —
colpali-engine's processors (resizing, tiling, prompts, query augmentation),
``from_pretrained``, the forward pass, the patch-grid bookkeeping of
``connectors.colpali_torch`` — is what breaks on an upgrade. Each builder
makes a model of the *real* colpali-engine class from a tiny config (two
layers, hidden size 64, a 32-wide vision tower) with random weights, and a
processor of the real class around a small byte-level BPE tokenizer and the
family's real image processor, and saves both with ``save_pretrained``: the
directory loads through the same ``from_pretrained`` path as a hub snapshot.

Sizes are kept small so tests stay fast on two CPU cores: a page becomes at
most 64 merged patches for ColQwen2.5 (``max_pixels`` = 64 × 28²) and
128-pixel tiles of 4×4 vectors (plus a global tile) for ColSmol. The
weights are random: the vectors mean nothing, and retrieval quality
measured with them is meaningless. ``config.json`` says so (key
``pagerag_stand_in``), and pagerag reports collections they filled as
"stand-in, random weights", never as the real model.

    python -m pipeline.testing.tiny_torch colqwen2_5 /tmp/tiny-colqwen
    PAGERAG_EMBEDDING__MODEL=vidore/colqwen2.5-v0.2 \\
    PAGERAG_EMBEDDING__MODEL_PATH=/tmp/tiny-colqwen pagerag ingest some.pdf

Needs the ``pagerag[torch]`` extra (and ``tokenizers``, which it brings).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.embed.fingerprint import STAND_IN_KEY

__all__ = ["BUILDERS", "MODEL_NAMES", "build", "build_colqwen2_5", "build_colsmol", "main"]

# The registered model each stand-in stands in for (pipeline.models).
MODEL_NAMES = {
    "colqwen2_5": "vidore/colqwen2.5-v0.2",
    "colidefics3": "vidore/colSmol-256M",
}
HIDDEN = 64
VISION_HIDDEN = 32
MODEL_MAX_LENGTH = 512

_CORPUS = (
    "Describe the image. What is the total amount due on the invoice?",
    "Which table lists the quarterly revenue by region and product line?",
    "user assistant Query: where are the terms and conditions described?",
    "the of and to in is that for on with as by at from this page document",
)


def _tokenizer(special: Sequence[str], *, eos: str, pad: str) -> Any:
    """A byte-level BPE tokenizer with the family's special tokens, as transformers'
    ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    from pipeline.testing.tiny_colpali import bpe_tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer(special, _CORPUS),
        eos_token=eos,
        pad_token=pad,
        model_max_length=MODEL_MAX_LENGTH,
    )


def _text_config(vocab_size: int, **extra: Any) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        **extra,
    }


def build_colqwen2_5(out_dir: Path, *, seed: int = 0) -> Path:
    """A ColQwen2.5 (Qwen2.5-VL) stand-in for ``vidore/colqwen2.5-v0.2``: dynamic
    resolution, 4 to 64 merged 28-pixel patches per page."""
    import torch
    from colpali_engine.models import ColQwen2_5, ColQwen2_5_Processor
    from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    special = (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    )
    tokenizer = _tokenizer(special, eos="<|endoftext|>", pad="<|endoftext|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    processor = ColQwen2_5_Processor(
        image_processor=Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )
    head_half = HIDDEN // 4 // 2  # rotary half of one attention head
    config = Qwen2_5_VLConfig(
        text_config=_text_config(
            len(tokenizer),
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, (head_half - 2) // 2, head_half - 2 - (head_half - 2) // 2],
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|endoftext|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config={
            "depth": 2,
            "hidden_size": VISION_HIDDEN,
            "intermediate_size": 2 * VISION_HIDDEN,
            "num_heads": 2,
            "out_hidden_size": HIDDEN,
            "fullatt_block_indexes": [1],
            "window_size": 56,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = ColQwen2_5(config).eval()
    return _save(model, processor, Path(out_dir), "colqwen2_5", seed)


def build_colsmol(out_dir: Path, *, seed: int = 0) -> Path:
    """A ColIdefics3 (ColSmol) stand-in for ``vidore/colSmol-256M``: pages resized to a
    512-pixel longest edge, cut into 128-pixel tiles of 4×4 vectors plus a global tile."""
    import torch
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from transformers.models.idefics3 import Idefics3Config, Idefics3ImageProcessor

    special = (
        "<|endoftext|>",
        "<|im_start|>",
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
        *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
    )
    tokenizer = _tokenizer(special, eos="<end_of_utterance>", pad="<|endoftext|>")
    tile, patch = 128, 16
    image_seq_len = ((tile // patch) ** 2) // 4  # scale_factor 2: 2x2 patches per vector
    processor = ColIdefics3Processor(
        image_processor=Idefics3ImageProcessor(
            size={"longest_edge": 4 * tile},
            max_image_size={"longest_edge": tile},
            do_image_splitting=True,
        ),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
    )
    config = Idefics3Config(
        text_config=_text_config(
            len(tokenizer),
            model_type="llama",
            pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        ),
        vision_config={
            "hidden_size": VISION_HIDDEN,
            "intermediate_size": 2 * VISION_HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": tile,
            "patch_size": patch,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    torch.manual_seed(seed)
    model = ColIdefics3(config).eval()
    return _save(model, processor, Path(out_dir), "colidefics3", seed)


BUILDERS: dict[str, Callable[..., Path]] = {
    "colqwen2_5": build_colqwen2_5,
    "colidefics3": build_colsmol,
}


def build(family: str, out_dir: Path, *, seed: int = 0) -> Path:
    """Write the stand-in of ``family`` (a key of :data:`BUILDERS`) into ``out_dir``."""
    try:
        builder = BUILDERS[family]
    except KeyError:
        raise ValueError(f"no stand-in for {family!r}; choose one of {sorted(BUILDERS)}") from None
    return builder(out_dir, seed=seed)


def _save(model: Any, processor: Any, out_dir: Path, family: str, seed: int) -> Path:
    from transformers.utils import logging as hf_logging

    out_dir.mkdir(parents=True, exist_ok=True)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # pipeline.embed.fingerprint.is_stand_in looks for this key.
    config[STAND_IN_KEY] = (
        f"random-weight stand-in for {MODEL_NAMES[family]} (seed {seed}) built by "
        "pipeline.testing.tiny_torch for offline tests; useless for quality"
    )
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.testing.tiny_torch",
        description=(
            "Write a tiny random-weight stand-in of a torch-backend model family that "
            "colpali-engine loads offline through its real from_pretrained path. For offline "
            "tests only: its vectors are random and useless for retrieval quality. Use the "
            "directory as embedding.model_path with embedding.model set to the model it "
            f"stands in for ({', '.join(f'{k}: {v}' for k, v in MODEL_NAMES.items())})."
        ),
    )
    parser.add_argument("family", choices=sorted(BUILDERS), help="model family")
    parser.add_argument("out_dir", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    print(build(args.family, args.out_dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
