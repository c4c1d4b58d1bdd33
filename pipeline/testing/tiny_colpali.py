"""An offline, random-weight stand-in for ``Qdrant/colpali-v1.3-fp16``.

Why it exists: the real ColPali is a 6.5 GB download that these machines (and
CI) cannot fetch, yet the code that drives it — fastembed's model loading,
tokenization, image preprocessing, ONNX session, batching and output
reshaping — is exactly the code most likely to break on an upgrade. This
module writes a ~0.4 MB model directory that fastembed 0.9.1 loads through its
*real* path (``specific_model_path=DIR`` or a Hugging Face cache layout) and
runs through its public API, so tests exercise everything except the weights.

It honours the ONNX contract fastembed relies on (see ENVIRONMENT.md):

- inputs ``input_ids`` int64 [B,S], ``attention_mask`` int64 [B,S],
  ``pixel_values`` float32 [B,3,448,448]; first output float16 [B,S,128];
- a page is ``<image>`` (id 257152) ×1024 followed by 6 text tokens, and the
  1024 image positions receive, in order, the 32×32 patch features of a
  14×14 stride-14 convolution over the pixels — so vectors follow page
  content: different pages give different vectors, and a page's own patch
  vectors retrieve it;
- queries are ``"<s>Query: " + q + "<pad>"*10 + "\\n"``, so ``<s>``,
  ``Query`` and ``<pad>`` are single tokens of the byte-level BPE tokenizer;
- every output row is L2-normalised and multiplied by the attention mask, so
  batch padding comes back as zero rows (the real model does not promise
  that: callers must strip padding by the mask, not by value).

Token ids go through ``Mod`` into a 1021-row table instead of a 257153-row
one, which keeps the model tiny. The weights are random: the vectors mean
nothing, and retrieval quality measured with this model is meaningless.
``config.json`` says so (key ``pagerag_stand_in``), and pagerag reports
collections it filled as "stand-in, random weights", never as the real model.
Different seeds give different weights, and collections tell them apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.embed.fingerprint import STAND_IN_KEY
from pipeline.errors import OptionalDependencyError

__all__ = [
    "HIDDEN_DIM",
    "IMAGE_TOKEN_ID",
    "MODEL_MAX_LENGTH",
    "OUTPUT_DIM",
    "build",
    "main",
]

MODEL_NAME = "Qdrant/colpali-v1.3-fp16"
IMAGE_TOKEN_ID = 257152  # what fastembed feeds for every <image> position
IMAGE_SIZE = 448
PATCH = 14
GRID = IMAGE_SIZE // PATCH  # 32 -> 1024 patches
OUTPUT_DIM = 128
HIDDEN_DIM = 32
TABLE_ROWS = 1021  # prime, larger than the tokenizer's vocabulary: query ids never collide
MODEL_MAX_LENGTH = 64
VOCAB_SIZE = 400
OPSET = 17  # ReduceL2 still takes `axes` as an attribute here
IR_VERSION = 8  # old enough for any onnxruntime that supports opset 17

# PaliGemma's layout: pad=0, eos=1, bos=2, unk=3. fastembed overwrites the
# first two query ids with [2, 5098] and never reads our ids for images.
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<s>", "<image>")

# A few lines of the kind of text pagerag queries are made of; the BPE merges
# learnt from it only make tokenization look realistic (words → few tokens).
_CORPUS = (
    "What is the total amount due on the invoice?",
    "Which table lists the quarterly revenue by region and product line?",
    "Show the page with the signature of the contract and the date.",
    "How many pages does the annual report have, and where is the summary?",
    "Find the figure that compares the results of the experiments.",
    "the of and to in is that for on with as by at from this page document",
    "Query: where are the terms and conditions of the agreement described?",
)


def bpe_tokenizer(special_tokens: Sequence[str], corpus: Sequence[str] = _CORPUS) -> Any:
    """A small byte-level BPE ``tokenizers.Tokenizer`` learnt from ``corpus``, with
    ``special_tokens`` first in its vocabulary (the torch stand-ins use it too)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus) * 4, trainer=trainer)
    return tokenizer


def _tokenizer_json() -> str:
    """A small byte-level BPE tokenizer, serialized as ``tokenizer.json``."""
    from tokenizers import AddedToken

    tokenizer = bpe_tokenizer(SPECIAL_TOKENS)
    # fastembed overwrites the first two query ids, so "Query" must be exactly
    # one token however the merges came out.
    tokenizer.add_tokens([AddedToken("Query", normalized=False)])
    return str(tokenizer.to_str(pretty=True))


def _graph(seed: int) -> Any:
    """The ONNX model: token lookup, patch conv on image positions, projection."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weights(name: str, shape: tuple[int, ...], scale: float) -> Any:
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        return numpy_helper.from_array(values, name)

    def ints(name: str, values: Sequence[int]) -> Any:
        return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)

    fan_in = 3 * PATCH * PATCH
    initializers = [
        weights("token_table", (TABLE_ROWS, HIDDEN_DIM), 1.0),
        weights("patch_conv_w", (HIDDEN_DIM, 3, PATCH, PATCH), fan_in**-0.5),
        weights("patch_conv_b", (HIDDEN_DIM,), 0.1),
        weights("patch_pos", (GRID * GRID, HIDDEN_DIM), 0.2),
        weights("proj_w", (HIDDEN_DIM, OUTPUT_DIM), HIDDEN_DIM**-0.5),
        ints("table_rows", [TABLE_ROWS]),
        ints("image_token", [IMAGE_TOKEN_ID]),
        ints("one", [1]),
        ints("zero", [0]),
        ints("last_patch", [GRID * GRID - 1]),
        ints("patch_shape", [0, HIDDEN_DIM, GRID * GRID]),
        numpy_helper.from_array(np.asarray([1e-6], dtype=np.float32), "eps"),
    ]
    node = helper.make_node
    nodes = [
        # text: every id, folded into the small table
        node("Mod", ["input_ids", "table_rows"], ["ids_mod"]),
        node("Gather", ["token_table", "ids_mod"], ["tok"]),  # B,S,H
        # image: 32x32 patch features (+ a position term, as a ViT would have)
        node(
            "Conv",
            ["pixel_values", "patch_conv_w", "patch_conv_b"],
            ["conv"],
            kernel_shape=[PATCH, PATCH],
            strides=[PATCH, PATCH],
        ),  # B,H,32,32
        node("Reshape", ["conv", "patch_shape"], ["conv_flat"]),  # B,H,1024
        node("Transpose", ["conv_flat"], ["patches_raw"], perm=[0, 2, 1]),  # B,1024,H
        node("Add", ["patches_raw", "patch_pos"], ["patches"]),
        # k-th <image> position of a row takes patch k
        node("Equal", ["input_ids", "image_token"], ["is_image"]),  # B,S
        node("Cast", ["is_image"], ["is_image_i"], to=TensorProto.INT64),
        node("CumSum", ["is_image_i", "one"], ["image_rank"]),
        node("Sub", ["image_rank", "one"], ["patch_index_raw"]),
        node("Max", ["patch_index_raw", "zero"], ["patch_index_lo"]),
        node("Min", ["patch_index_lo", "last_patch"], ["patch_index"]),
        node("Unsqueeze", ["patch_index", "minus_one_axis"], ["patch_index_3d"]),
        node("Shape", ["tok"], ["tok_shape"]),
        node("Expand", ["patch_index_3d", "tok_shape"], ["patch_index_full"]),
        node("GatherElements", ["patches", "patch_index_full"], ["placed"], axis=1),
        node("Unsqueeze", ["is_image", "minus_one_axis"], ["is_image_3d"]),
        node("Where", ["is_image_3d", "placed", "tok"], ["hidden"]),  # B,S,H
        # head: project, L2-normalise, zero the padding, fp16 like the real model
        node("MatMul", ["hidden", "proj_w"], ["projected"]),  # B,S,128
        node("ReduceL2", ["projected"], ["norm_raw"], axes=[-1], keepdims=1),
        node("Max", ["norm_raw", "eps"], ["norm"]),
        node("Div", ["projected", "norm"], ["normed"]),
        node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        node("Unsqueeze", ["mask_f", "minus_one_axis"], ["mask_3d"]),
        node("Mul", ["normed", "mask_3d"], ["masked"]),
        node("Cast", ["masked"], ["last_hidden_state"], to=TensorProto.FLOAT16),
    ]
    initializers.append(ints("minus_one_axis", [-1]))
    graph = helper.make_graph(
        nodes,
        "pagerag_tiny_colpali",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info(
                "pixel_values", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]
            ),
        ],
        outputs=[
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT16, ["batch", "seq", OUTPUT_DIM]
            )
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="pagerag.testing.tiny_colpali",
        doc_string="Random-weight stand-in for Qdrant/colpali-v1.3-fp16; useless for quality.",
    )
    model.ir_version = IR_VERSION
    return model


def _json_files() -> dict[str, dict[str, Any]]:
    """The config files fastembed (and a curious human) read beside the model."""
    return {
        "tokenizer_config.json": {
            # fastembed requires an integer limit; truncation happens at this length
            "model_max_length": MODEL_MAX_LENGTH,
            "pad_token": "<pad>",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "unk_token": "<unk>",
            "padding_side": "right",
            "add_bos_token": False,
            "add_eos_token": False,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
        "special_tokens_map.json": {
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "additional_special_tokens": ["<image>", "<s>"],
        },
        "config.json": {
            "model_type": "pagerag_tiny_colpali",
            # pipeline.embed.fingerprint.is_stand_in looks for this key: collections filled
            # by this model say "stand-in, random weights" instead of the real name.
            STAND_IN_KEY: (
                f"random-weight stand-in for {MODEL_NAME} built by "
                "pipeline.testing.tiny_colpali for offline tests; useless for quality"
            ),
            "hidden_size": HIDDEN_DIM,
            "embedding_dim": OUTPUT_DIM,
            "image_token_index": IMAGE_TOKEN_ID,
            "pad_token_id": SPECIAL_TOKENS.index("<pad>"),
            "bos_token_id": SPECIAL_TOKENS.index("<bos>"),
            "eos_token_id": SPECIAL_TOKENS.index("<eos>"),
        },
        "preprocessor_config.json": {
            # what PaliGemma ships: 448x448 bicubic, x/255, (x-0.5)/0.5
            "image_processor_type": "SiglipImageProcessor",
            "processor_class": "PaliGemmaProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            "resample": 3,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "image_seq_length": GRID * GRID,
        },
    }


def build(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the stand-in model into ``out_dir`` (created if needed) and return it.

    The directory holds ``model.onnx`` + ``model.onnx_data`` (the layout of
    the real model: weights as external data, small shape constants inline so
    onnxruntime can fold them), the tokenizer files and
    ``preprocessor_config.json``. The same ``seed`` always gives the same
    bytes, so tests can compare vectors across runs.
    """
    _require_testing_extra()
    import onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_file = out_dir / "model.onnx_data"
    data_file.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        _graph(seed),
        str(out_dir / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_file.name,
        size_threshold=1024,
    )
    (out_dir / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
    for name, content in _json_files().items():
        (out_dir / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _require_testing_extra() -> None:
    """onnx and tokenizers come with the ``testing`` extra (``scripts/setup.sh --dev``)."""
    import importlib

    for module in ("onnx", "tokenizers"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise OptionalDependencyError(
                "Building the stand-in model", "testing", module
            ) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.testing.tiny_colpali",
        description=(
            f"Write a tiny random-weight stand-in for {MODEL_NAME} (~0.4 MB) that fastembed "
            "loads offline through its real code path. It is for offline tests only: its "
            "vectors are random and useless for retrieval quality. Use the directory as "
            "embedding.model_path (PAGERAG_EMBEDDING__MODEL_PATH)."
        ),
    )
    parser.add_argument("out_dir", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    try:
        path = build(args.out_dir, seed=args.seed)
    except OptionalDependencyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
