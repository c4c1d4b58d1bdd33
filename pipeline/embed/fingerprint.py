"""A cheap fingerprint of a model's weights, so a collection knows what made its vectors.

Vectors of two sets of weights cannot be compared, even under one model name
(the random-weight stand-in, a fine-tune, a corrupted copy in
``embedding.model_path``). The collection manifest therefore records this
fingerprint, and opening the collection with other weights is refused.

What is hashed: the files fastembed reads from the model directory — the ONNX
graph and its external weights, and the tokenizer/preprocessor/config JSON —
each by name, size and content. Files up to :data:`SMALL_FILE` bytes are
hashed whole; larger ones (``model.onnx_data`` is 6.5 GB for ColPali) by a
sample: the first and last MiB and :data:`SAMPLES` MiB at fixed fractions of
the size, ~10 MiB read in all. Any retraining or fine-tune changes every
sampled chunk; two files of equal size that differ only between samples would
collide, which is the price of not reading 6.5 GB on every command.

Other files in the directory (a README, ``huggingface-cli``'s ``.cache``) do
not count, so the same weights give the same fingerprint from the hub cache
and from a copied directory. The scheme must stay stable: changing it would
make every existing collection look filled by other weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import ModelError
from pipeline.types import ModelIdentity

__all__ = [
    "CONFIG_FILES",
    "SAMPLES",
    "SMALL_FILE",
    "STAND_IN_KEY",
    "file_digest",
    "fingerprint_files",
    "is_stand_in",
    "weights_identity",
]

# The JSON files fastembed downloads beside the model and reads when present.
CONFIG_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)
# Key in config.json by which pagerag's random-weight stand-in
# (pipeline.testing.tiny_colpali) says what it is.
STAND_IN_KEY = "pagerag_stand_in"

SMALL_FILE = 8 * 2**20  # hashed whole up to this size
CHUNK = 2**20
SAMPLES = 8  # interior chunks sampled from a large file, besides its first and last
FINGERPRINT_HEX = 16


def file_digest(path: Path) -> str:
    """sha256 of a file: of all of it when small, else of its sampled chunks and size."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= SMALL_FILE:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
            return f"sha256:{digest.hexdigest()}"
        digest.update(f"size={size};chunk={CHUNK}".encode())
        last = size - CHUNK
        offsets = sorted({0, last, *(last * i // (SAMPLES + 1) for i in range(1, SAMPLES + 1))})
        for offset in offsets:
            handle.seek(offset)
            digest.update(handle.read(CHUNK))
    return f"sampled-sha256:{digest.hexdigest()}"


def fingerprint_files(model_dir: Path, names: Iterable[str]) -> str:
    """A short hex fingerprint of the named files of ``model_dir`` (absent ones count too)."""
    entries: list[list[Any]] = []
    for name in sorted(set(names)):
        path = Path(model_dir) / name
        if path.is_file():
            entries.append([name, path.stat().st_size, file_digest(path)])
        else:
            entries.append([name, None, None])
    blob = json.dumps(entries, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:FINGERPRINT_HEX]


def is_stand_in(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds pagerag's random-weight stand-in (marked in config.json)."""
    config = Path(model_dir) / "config.json"
    try:
        if config.stat().st_size > SMALL_FILE:
            return False
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and STAND_IN_KEY in data


def weights_identity(
    name: str, model_dir: Path, source: str, fingerprint: Callable[[], str]
) -> ModelIdentity:
    """The identity a collection records for the weights in ``model_dir``: ``fingerprint()``
    of its files (each backend knows which files), or a ``ModelError`` naming the
    directory when one cannot be read."""
    try:
        value = fingerprint()
    except OSError as exc:
        raise ModelError(
            f"cannot read the files of {name} in {model_dir} to fingerprint its weights: {exc}"
        ) from exc
    return ModelIdentity(
        name=name, source=source, fingerprint=value, stand_in=is_stand_in(model_dir)
    )
