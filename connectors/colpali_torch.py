"""The page embedder on torch: colpali-engine's model and processor classes.

colpali-engine is the reference implementation of the ColPali family
(ColQwen2/2.5/3/3.5, ColSmol = ColIdefics3, ColPali, ColGemma3,
ColModernVBert): its processors do all preprocessing — resizing, tiling,
prompts, query prefixes and augmentation tokens — and pagerag re-implements
none of it. What this adapter adds is what pagerag's other embedder offers
(:mod:`connectors.fastembed`): a cheap constructor, one thread-safe lazy load
per process, float16 vectors with batch padding removed, the weights'
fingerprint (:meth:`identity`), and errors that say how to get the extra or
the weights onto the machine. Facts about colpali-engine 0.3.18 it relies on:

- importing any model class imports all of them (``colpali_engine.models``),
  with transformers 5 and torchvision: ~10-20 s, so nothing is imported before
  the first call that needs the model or its processor;
- every model's ``forward`` returns ``(batch, seq, dim)`` vectors, L2-normalised
  and multiplied by the attention mask; processors pad on the *left*, so
  padding rows are found by the attention mask, never by position;
- **patch grids** (:class:`~pipeline.types.PatchGrid`) come from the
  processor's own output, never from a guess: Qwen-family processors return
  ``image_grid_thw`` (patches before the spatial merge; the image tokens are
  its ``h/merge × w/merge`` cells in row-major order); Idefics3-style
  processors (ColSmol, ColModernVBert) cut a page into tiles, announce each
  tile with a ``<row_i_col_j>`` token and add one global tile last, so the
  tile layout is read from those tokens and each tile's ``s × s`` tokens are
  placed on the page grid as colpali-engine's
  ``Idefics3SplitImageInterpretabilityMixin.rearrange_image_embeddings`` does;
  PaliGemma/Gemma3 processors emit a square block of image tokens.
  Each page's output is **reordered** so its grid cells come first, row-major,
  followed by every other token (prompt, global tile) in their original
  order: MaxSim is a set operation, so scores do not change, and pooling and
  similarity maps only need ``(rows, cols)``;
- LoRA checkpoints (``vidore/colqwen2.5-v0.2`` and most ``vidore/col*``) hold
  an adapter whose ``adapter_config.json`` names the base model;
  ``from_pretrained`` on the adapter loads that base (from the Hugging Face
  cache when offline) and applies the adapter with the class's key mapping.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import EmbeddingConfig
from pipeline.embed.fingerprint import fingerprint_files, weights_identity
from pipeline.embed.protocol import checked_vectors, one_per_image
from pipeline.errors import (
    ConfigError,
    ModelError,
    ModelNotAvailableError,
    OptionalDependencyError,
)
from pipeline.models import ModelSpec, get_model_spec
from pipeline.types import Float16Array, ModelIdentity, PageVectors, PatchGrid

__all__ = ["FAMILIES", "QUERY_BATCH_SIZE", "ColPaliTorchEmbedder", "Family", "resolve_device"]

QUERY_BATCH_SIZE = 8

# Files of a model directory that make its weights: hashed by identity().
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")
_ADAPTER_CONFIG = "adapter_config.json"
# The tokenizers' "no limit" sentinel (transformers' VERY_LARGE_INTEGER is ~1e30).
_NO_LIMIT = 10**9


@dataclass(frozen=True)
class Family:
    """The colpali-engine classes of a model family and how its image tokens are laid out.

    ``layout``: ``qwen`` (``image_grid_thw`` after the spatial merge), ``tiles``
    (Idefics3-style tiles + a global tile) or ``square`` (one square block).
    """

    model_class: str
    processor_class: str
    layout: str


FAMILIES: dict[str, Family] = {
    "colqwen2": Family("ColQwen2", "ColQwen2Processor", "qwen"),
    "colqwen2_5": Family("ColQwen2_5", "ColQwen2_5_Processor", "qwen"),
    "colqwen3": Family("ColQwen3", "ColQwen3Processor", "qwen"),
    "colqwen3_5": Family("ColQwen3_5", "ColQwen3_5Processor", "qwen"),
    "colidefics3": Family("ColIdefics3", "ColIdefics3Processor", "tiles"),
    "colmodernvbert": Family("ColModernVBert", "ColModernVBertProcessor", "tiles"),
    "colpali": Family("ColPali", "ColPaliProcessor", "square"),
    "colgemma3": Family("ColGemma3", "ColGemmaProcessor3", "square"),
}


def resolve_device(requested: str, device_ids: Sequence[int] | None = None) -> str:
    """The torch device for ``embedding.device``: ``auto`` picks CUDA, then MPS, then CPU.

    Raises :class:`~pipeline.errors.ModelError` when an explicit GPU is not usable.
    """
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        requested = "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda":
        if not cuda:
            raise ModelError(
                f"embedding.device is 'cuda' but torch {torch.__version__} sees no CUDA device "
                f"(CUDA build: {torch.version.cuda or 'none'}): install a CUDA build of torch "
                "(on Linux the PyPI wheels are), check the driver with nvidia-smi, or set "
                "embedding.device to cpu or auto"
            )
        return f"cuda:{device_ids[0]}" if device_ids else "cuda"
    if requested == "mps" and not mps:
        raise ModelError(
            "embedding.device is 'mps' but torch sees no Apple GPU: set embedding.device to "
            "cpu or auto"
        )
    return requested


class ColPaliTorchEmbedder:
    """A :class:`~pipeline.embed.protocol.PageEmbedder` (and ``GridEmbedder``) on
    colpali-engine.

    Nothing is imported in the constructor. The first call that needs the
    model locates its files (``embedding.model_path``, else the Hugging Face
    cache in ``embedding.cache_dir``, downloading when online), imports
    colpali-engine and loads the processor and the model once, under a lock.
    Forward passes are serialised (one model, one device).
    """

    def __init__(self, config: EmbeddingConfig) -> None:
        spec = get_model_spec(config.model)
        if spec.backend != "torch" or spec.family not in FAMILIES:
            raise ConfigError(
                f"embedding.model {spec.name} is served by {spec.backend}, not by the torch "
                "backend: set embedding.backend to auto or fastembed, or pick a torch model "
                "(`pagerag models`)"
            )
        self._config = config
        self._spec = spec
        self._family = FAMILIES[spec.family]
        self._lock = threading.Lock()  # loading
        self._run_lock = threading.Lock()  # forward passes
        self._model: Any = None
        self._processor: Any = None
        self._device: str | None = None
        self._dtype: Any = None
        self._dirs: tuple[Path, Path | None, str] | None = None  # model dir, base dir, source
        self._identity: ModelIdentity | None = None
        self._query_limit: int | None = None
        self._row_col: dict[int, tuple[int, int]] | None = None

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded (the expensive part is done)."""
        return self._model is not None

    @property
    def device(self) -> str | None:
        """The torch device in use once loaded (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
        return self._device

    def warm_up(self) -> None:
        """Load the model now, e.g. at server start, instead of on first use."""
        self._ready()

    # -- embedding -----------------------------------------------------------

    def embed_images(self, images: Sequence[Image.Image]) -> list[Float16Array]:
        return [page.vectors for page in self.embed_pages(images)]

    def embed_pages(self, images: Sequence[Image.Image]) -> list[PageVectors]:
        """Each page's float16 vectors, patch cells first (row-major), and its grid."""
        if not images:
            return []
        model, processor = self._ready()
        out: list[PageVectors] = []
        size = self._config.batch_size
        for start in range(0, len(images), size):
            chunk = [image.convert("RGB") for image in images[start : start + size]]
            batch = processor.process_images(chunk)
            vectors = self._forward(model, batch)
            ids = batch["input_ids"].cpu().numpy()
            mask = batch["attention_mask"].cpu().numpy().astype(bool)
            thw = batch.get("image_grid_thw")
            thw_rows = None if thw is None else thw.cpu().numpy()
            for i in range(len(chunk)):
                out.append(self._page(vectors[i], ids[i], mask[i], processor, thw_rows, i))
        return one_per_image(out, images, self._spec)

    def embed_query(self, query: str) -> Float16Array:
        return self.embed_queries([query])[0]

    def embed_queries(
        self, queries: Sequence[str], *, batch_size: int = QUERY_BATCH_SIZE
    ) -> list[Float16Array]:
        """One ``(tokens, dim)`` float16 array per query, as the model's processor builds
        it (prefix and augmentation tokens included); batch padding removed."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not queries:
            return []
        model, processor = self._ready()
        out: list[Float16Array] = []
        for start in range(0, len(queries), batch_size):
            chunk = list(queries[start : start + batch_size])
            batch = processor.process_queries(chunk)
            vectors = self._forward(model, batch)
            mask = batch["attention_mask"].cpu().numpy().astype(bool)
            out.extend(self._checked(vectors[i][mask[i]]) for i in range(len(chunk)))
        return out

    def query_token_limit(self) -> int:
        """The longest query (in tokens, prompt included) the model takes: the
        tokenizer's ``model_max_length``, else the text model's position limit.
        Reads the processor only; the model is not loaded."""
        if self._query_limit is not None:
            return self._query_limit
        processor = self._load_processor()
        limit = int(getattr(processor.tokenizer, "model_max_length", 0) or 0)
        if not 0 < limit < _NO_LIMIT:
            limit = self._position_limit()
        self._query_limit = limit
        return limit

    def identity(self) -> ModelIdentity:
        """The weights in use: model name, where the files are, and their fingerprint.

        The files are located as loading would locate them (``embedding.model_path``,
        else the Hugging Face cache, downloading when online) but nothing is
        imported from torch. For a LoRA adapter the base model's files count
        too. Computed once per instance.
        """
        if self._identity is not None:
            return self._identity
        model_dir, base_dir, source = self._locate()

        def fingerprint() -> str:
            adapter = fingerprint_files(model_dir, _weight_names(model_dir))
            if base_dir is None:
                return adapter
            base = fingerprint_files(base_dir, _weight_names(base_dir))
            return fingerprint_files_combined(adapter, base)

        self._identity = weights_identity(self._spec.name, model_dir, source, fingerprint)
        return self._identity

    # -- one page ------------------------------------------------------------

    def _page(
        self,
        vectors: np.ndarray,
        ids: np.ndarray,
        mask: np.ndarray,
        processor: Any,
        thw: np.ndarray | None,
        index: int,
    ) -> PageVectors:
        valid = np.flatnonzero(mask)
        image_token = int(processor.tokenizer.convert_tokens_to_ids(processor.image_token))
        images = valid[ids[valid] == image_token]
        layout = self._family.layout
        if layout == "qwen":
            if thw is None:
                raise ModelError(f"the {self._spec.name} processor returned no image_grid_thw")
            rows, cols, cells = self._qwen_cells(images, thw[index])
        elif layout == "tiles":
            rows, cols, cells = self._tile_cells(images, ids[valid], processor)
        else:
            rows, cols, cells = _square_cells(images, self._spec.name)
        others = valid[~np.isin(valid, cells)]
        ordered = vectors[np.concatenate([cells, others])]
        return PageVectors(self._checked(ordered), PatchGrid(rows, cols, 0))

    def _qwen_cells(self, images: np.ndarray, thw: np.ndarray) -> tuple[int, int, np.ndarray]:
        t, h, w = (int(v) for v in thw)
        merge = self._merge_size()
        rows, cols = h // merge, w // merge
        if t != 1 or rows * cols != len(images):
            raise ModelError(
                f"{self._spec.name}: image_grid_thw {t}x{h}x{w} (merge {merge}) does not match "
                f"the page's {len(images)} image tokens"
            )
        return rows, cols, images

    def _tile_cells(
        self, images: np.ndarray, ids: np.ndarray, processor: Any
    ) -> tuple[int, int, np.ndarray]:
        per_tile = int(processor.image_seq_len)
        side = math.isqrt(per_tile)
        places = [self._row_cols(processor).get(int(t)) for t in ids]
        tiles = [p for p in places if p is not None]
        if not tiles:  # not split: the global tile is the whole page
            if len(images) != per_tile or side * side != per_tile:
                raise ModelError(
                    f"{self._spec.name}: {len(images)} image tokens for one tile of {per_tile}"
                )
            return side, side, images
        n_rows = max(r for r, _ in tiles)
        n_cols = max(c for _, c in tiles)
        local = n_rows * n_cols * per_tile
        if (
            side * side != per_tile
            or len(tiles) != n_rows * n_cols
            or len(images) != local + per_tile
        ):
            raise ModelError(
                f"{self._spec.name}: {len(images)} image tokens do not make {n_rows}x{n_cols} "
                f"tiles of {per_tile} plus a global tile"
            )
        # tile (tr, tc), token (a, b) -> page cell (tr*side + a, tc*side + b)
        order = (
            np.arange(local)
            .reshape(n_rows, n_cols, side, side)
            .transpose(0, 2, 1, 3)
            .reshape(n_rows * side, n_cols * side)
        )
        return n_rows * side, n_cols * side, images[:local][order.ravel()]

    def _row_cols(self, processor: Any) -> dict[int, tuple[int, int]]:
        """Token id of ``<row_i_col_j>`` -> (i, j), for the ids the tokenizer knows."""
        if self._row_col is None:
            tokenizer = processor.tokenizer
            unknown = getattr(tokenizer, "unk_token_id", None)
            found: dict[int, tuple[int, int]] = {}
            for i in range(1, 7):
                for j in range(1, 7):
                    token = tokenizer.convert_tokens_to_ids(f"<row_{i}_col_{j}>")
                    if isinstance(token, int) and token != unknown:
                        found[token] = (i, j)
            self._row_col = found
        return self._row_col

    def _merge_size(self) -> int:
        for holder in (getattr(self._model, "visual", None), self._processor.image_processor):
            config = getattr(holder, "config", holder)
            merge = getattr(config, "spatial_merge_size", None) or getattr(
                config, "merge_size", None
            )
            if merge:
                return int(merge)
        raise ModelError(f"{self._spec.name}: cannot find the model's spatial merge size")

    def _checked(self, vec: Any) -> Float16Array:
        return checked_vectors(vec, self._spec)

    def _forward(self, model: Any, batch: Any) -> np.ndarray:
        import torch

        batch = batch.to(self._device)
        for key, value in batch.items():
            if torch.is_tensor(value) and value.is_floating_point():
                batch[key] = value.to(self._dtype)
        with self._run_lock, torch.inference_mode():
            output = model(**batch)
        vectors: np.ndarray = output.to(torch.float16).cpu().numpy()
        return vectors

    # -- loading -------------------------------------------------------------

    def _ready(self) -> tuple[Any, Any]:
        """The model (on its device, eval mode) and its processor, loaded once."""
        if self._model is not None:
            return self._model, self._processor
        processor = self._load_processor()
        with self._lock:
            if self._model is None:
                self._model = self._load_model()
        return self._model, processor

    def _load_processor(self) -> Any:
        if self._processor is not None:
            return self._processor
        with self._lock:
            if self._processor is None:
                model_dir, _, _ = self._locate()
                processor_class = getattr(_colpali_models(), self._family.processor_class)
                try:
                    self._processor = processor_class.from_pretrained(str(model_dir))
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    raise ModelError(
                        f"cannot load the processor of {self._spec.name} from {model_dir}: {exc}"
                    ) from exc
        return self._processor

    def _load_model(self) -> Any:
        import torch

        config = self._config
        model_dir, _, _ = self._locate()
        self._device = resolve_device(config.device, config.device_ids)
        self._dtype = _dtype(config.dtype, self._device)
        if config.threads:
            torch.set_num_threads(config.threads)
        model_class = getattr(_colpali_models(), self._family.model_class)
        kwargs: dict[str, Any] = {"dtype": self._dtype}
        if config.cache_dir is not None:
            kwargs["cache_dir"] = str(config.cache_dir)
        try:
            with _quiet_transformers():
                model = model_class.from_pretrained(str(model_dir), **kwargs)
        except OSError as exc:  # a base model of an adapter missing offline, a bad file
            raise self._not_available(f"loading it from {model_dir} failed: {exc}") from exc
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise ModelError(f"cannot load {self._spec.name} from {model_dir}: {exc}") from exc
        model = model.to(self._device).eval()
        dim = int(getattr(model, "dim", self._spec.dim))
        if dim != self._spec.dim:
            raise ModelError(
                f"{model_dir} holds a model with {dim}-dimension vectors, but {self._spec.name} "
                f"has {self._spec.dim}: is embedding.model_path the right model?"
            )
        return model

    def _position_limit(self) -> int:
        model_dir, _, _ = self._locate()
        try:
            data = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        text = data.get("text_config") if isinstance(data.get("text_config"), dict) else data
        limit = (text or {}).get("max_position_embeddings")
        return int(limit) if isinstance(limit, int) and limit > 0 else 8192

    def _locate(self) -> tuple[Path, Path | None, str]:
        """(model directory, base-model directory of an adapter or None, source label)."""
        if self._dirs is not None:
            return self._dirs
        config = self._config
        if config.model_path is not None:
            model_dir = Path(config.model_path).expanduser().resolve()
            if not model_dir.is_dir():
                raise self._not_available(
                    f"embedding.model_path {model_dir} does not exist or is not a directory"
                )
            if (
                not (model_dir / "config.json").is_file()
                and not (model_dir / _ADAPTER_CONFIG).is_file()
            ):
                raise self._not_available(
                    f"{model_dir} has neither config.json nor {_ADAPTER_CONFIG}: it is not a "
                    "Hugging Face model directory"
                )
            source = str(model_dir)
        else:
            model_dir, source = self._snapshot(self._spec.name)
        base_dir = self._base_dir(model_dir)
        if base_dir is not None:
            source = f"{source} + base {base_dir}"
        self._dirs = (model_dir, base_dir, source)
        return self._dirs

    def _base_dir(self, model_dir: Path) -> Path | None:
        """The base model of a LoRA adapter directory (None for a complete model)."""
        adapter = model_dir / _ADAPTER_CONFIG
        if not adapter.is_file() or (model_dir / "config.json").is_file():
            return None
        try:
            base = str(json.loads(adapter.read_text(encoding="utf-8"))["base_model_name_or_path"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{adapter} names no base model: {exc}") from exc
        local = Path(base).expanduser()
        if local.is_dir():
            return local.resolve()
        return self._snapshot(base, adapter_of=model_dir)[0]

    def _snapshot(self, repo: str, *, adapter_of: Path | None = None) -> tuple[Path, str]:
        """A hub repo's snapshot directory in the cache, downloading it when online."""
        try:
            from huggingface_hub import snapshot_download
        except ImportError as exc:  # pragma: no cover - transformers depends on it
            raise _missing_torch_extra(exc) from exc
        cache = self._config.cache_dir
        try:
            found = Path(snapshot_download(repo, cache_dir=None if cache is None else str(cache)))
        except Exception as exc:  # offline misses, HTTP and hub errors alike
            where = cache or "the Hugging Face cache ($HF_HOME)"
            what = (
                f"its base model {repo} (named in {adapter_of / _ADAPTER_CONFIG}) "
                if adapter_of is not None
                else ""
            )
            raise self._not_available(
                f"{what}is not in {where} and could not be downloaded ({type(exc).__name__}: "
                f"{exc})",
                base=repo if adapter_of is not None else None,
            ) from exc
        revision = f"@{found.name}" if found.parent.name == "snapshots" else ""
        return found.resolve(), f"hub:{repo}{revision}"

    def _not_available(self, reason: str, *, base: str | None = None) -> ModelNotAvailableError:
        name = self._spec.name
        also = (
            f" It is a LoRA adapter: download its base model too (`hf download {base}`), into "
            "the same cache (embedding.cache_dir / $HF_HOME), or set base_model_name_or_path "
            "in the adapter's adapter_config.json to a local copy of it."
            if base
            else ""
        )
        return ModelNotAvailableError(
            f"the embedding model {name} (~{self._spec.size_gb:g} GB, torch backend) is not "
            f"available: {reason}. On a machine with internet, run "
            f"`hf download {name} --local-dir DIR`, copy DIR here and set "
            "embedding.model_path: DIR in the config (or the environment variable "
            "PAGERAG_EMBEDDING__MODEL_PATH=DIR); or point embedding.cache_dir at a Hugging "
            f"Face cache that holds it. Set HF_HUB_OFFLINE=1 on machines without internet.{also}"
        )


def _square_cells(images: np.ndarray, name: str) -> tuple[int, int, np.ndarray]:
    side = math.isqrt(len(images))
    if side == 0 or side * side != len(images):
        raise ModelError(f"{name}: {len(images)} image tokens do not form a square grid")
    return side, side, images


def _weight_names(model_dir: Path) -> list[str]:
    return sorted(
        path.name
        for path in model_dir.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix in _WEIGHT_SUFFIXES
    )


def fingerprint_files_combined(adapter: str, base: str) -> str:
    """One fingerprint for an adapter and its base model."""
    return hashlib.sha256(f"{adapter}+{base}".encode()).hexdigest()[: len(adapter)]


def _dtype(requested: str, device: str) -> Any:
    import torch

    if requested == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        requested
    ]


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' weight-loading progress bar off while a model loads."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _colpali_models() -> Any:
    """``colpali_engine.models``, or the error that says how to install it."""
    try:
        import colpali_engine.models as models
    except ImportError as exc:
        raise _missing_torch_extra(exc) from exc
    except RuntimeError as exc:  # torchvision built for another torch: its C ops fail to load
        raise _missing_torch_extra(exc, mismatch=True) from exc
    return models


def _missing_torch_extra(
    cause: BaseException, *, mismatch: bool = False
) -> OptionalDependencyError:
    error = OptionalDependencyError("The torch embedding backend", "torch", "colpali_engine")
    text = str(error)
    if mismatch or "torchvision" in str(cause):
        text = (
            "The torch embedding backend cannot import colpali-engine: torch and torchvision "
            "are from different builds (a CPU-only torch beside PyPI's CUDA torchvision, for "
            "one). Reinstall both from PyPI: pip install 'torch===2.13.0' "
            "'torchvision===0.28.0' (scripts/setup.sh --dev does this)"
        )
    text = f"{text}; or use the fastembed backend (embedding.backend: fastembed) [{cause}]"
    error.msg = text
    error.args = (text,)
    return error
