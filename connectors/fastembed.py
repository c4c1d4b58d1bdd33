"""The page embedder for real models: fastembed's late-interaction multimodal API.

Why an adapter rather than calling fastembed directly: pagerag wants a cheap
constructor (the CLI builds one for every command, most never embed), one
thread-safe lazy load, float16 all the way, padding-free query vectors, and
errors that say how to get a 6.5 GB model onto a machine that cannot
download it. fastembed 0.9.1 gives none of these by itself:

- its constructor resolves (and, online, downloads) the model eagerly, and a
  failed download is retried 3 times with 3/9/27 s sleeps before a bare
  ``ValueError("Could not load model … from any source.")``; with
  ``HF_HUB_OFFLINE=1`` it fails at once;
- ``specific_model_path`` is used unchecked: a wrong path only fails when
  onnxruntime opens ``model.onnx``;
- dtypes: ``embed_image`` and ``embed_text`` return the ONNX output as is —
  float16 for ColPali (``(1030, 128)`` per page) — with no upcast;
- ``embed_text`` for ColPali returns each query padded to the longest query
  of its batch (ColModernVBERT strips them itself), and this class has no
  ``query_embed``: queries go through ``embed_text``;
- ``cuda`` defaults to AUTO (the GPU is used silently when onnxruntime-gpu is
  installed); ``threads`` sets both intra- and inter-op threads of the
  session; ``parallel=N`` would start N forkserver workers each loading its
  own copy of the model, which pagerag does not use (one session, batches);
- nothing tells which weights a model name stands for: :meth:`identity`
  fingerprints the files of the resolved model directory
  (:mod:`pipeline.embed.fingerprint`) so collections can refuse other weights.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import EmbeddingConfig
from pipeline.embed.fingerprint import CONFIG_FILES, fingerprint_files, weights_identity
from pipeline.embed.protocol import QueryToken, checked_vectors, one_per_image
from pipeline.errors import (
    ModelError,
    ModelNotAvailableError,
    OptionalDependencyError,
    install_command,
)
from pipeline.models import ModelSpec, get_model_spec
from pipeline.types import Float16Array, ModelIdentity

__all__ = ["QUERY_BATCH_SIZE", "FastEmbedColPali"]

# Each query in a ColPali text batch carries a zeroed 448×448 image (2.4 MB),
# so query batches are kept small whatever embedding.batch_size says.
QUERY_BATCH_SIZE = 4

# Files fastembed opens from a model directory besides the ONNX ones.
_CONFIG_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")


class FastEmbedColPali:
    """A :class:`pipeline.embed.protocol.PageEmbedder` backed by fastembed (ColPali & co).

    Nothing is imported or loaded in the constructor. The first call that
    needs the model resolves its files (``embedding.model_path``, else the
    fastembed/Hugging Face cache in ``embedding.cache_dir``, else a download)
    and opens one onnxruntime session, under a lock, so concurrent first
    calls load it once. ``query_token_limit`` reads only the tokenizer.
    """

    def __init__(self, config: EmbeddingConfig) -> None:
        self._config = config
        self._spec = get_model_spec(config.model)
        self._lock = threading.Lock()
        self._embedding: Any = None  # fastembed.LateInteractionMultimodalEmbedding
        self._session_ready = False
        self._query_limit: int | None = None  # asked on every search: read once
        self._identity: ModelIdentity | None = None  # asked on every open: hashed once
        self._weight_files: tuple[str, ...] = ()  # the ONNX files, set when resolved
        self._hub_repo = self._spec.name

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def loaded(self) -> bool:
        """Whether the ONNX session is open (the expensive part is done)."""
        return self._session_ready

    def warm_up(self) -> None:
        """Load the model now, e.g. at server start, instead of on first use."""
        self._ready()

    # -- embedding -----------------------------------------------------------

    def embed_images(self, images: Sequence[Image.Image]) -> list[Float16Array]:
        if not images:
            return []
        embedding = self._ready()
        vectors = embedding.embed_image(list(images), batch_size=self._config.batch_size)
        out = [self._checked(vec) for vec in vectors]
        return one_per_image(out, images, self._spec)

    def embed_query(self, query: str) -> Float16Array:
        return self.embed_queries([query])[0]

    def embed_queries(
        self, queries: Sequence[str], *, batch_size: int = QUERY_BATCH_SIZE
    ) -> list[Float16Array]:
        """One ``(tokens, dim)`` float16 array per query, batch padding removed.

        The model sees each query as fastembed builds it (for ColPali:
        ``<s>Query: q`` + 10 ``<pad>`` augmentation tokens + newline); those
        augmentation rows are part of the query and are kept. Only the rows
        added to pad a query to the longest of its batch are dropped, using
        the attention mask of the very batch that was embedded.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not queries:
            return []
        embedding = self._ready()
        inner = embedding.model
        out: list[Float16Array] = []
        for start in range(0, len(queries), batch_size):
            chunk = list(queries[start : start + batch_size])
            encodings = inner.tokenize(chunk)
            vectors = list(embedding.embed_text(chunk, batch_size=len(chunk)))
            for encoding, vec in zip(encodings, vectors, strict=True):
                out.append(self._checked(_strip_padding(vec, encoding.attention_mask)))
        return out

    def query_token_limit(self) -> int:
        """The most rows :meth:`embed_query` returns: the tokenizer's truncation length.

        It counts the whole prompt fastembed builds (for ColPali ``<s>Query: ``,
        the query, 10 ``<pad>`` augmentation tokens and a newline), the way the
        output rows do, so a query whose vectors reach this many rows was
        truncated. Only the tokenizer is read; the ONNX session is not opened.
        """
        if self._query_limit is not None:
            return self._query_limit
        embedding = self._resolve()
        try:
            embedding.token_count("")  # public way to make fastembed load its tokenizer
            truncation = embedding.model.tokenizer.truncation or {}
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the tokenizer of {self._spec.name}: {exc}") from exc
        max_length = truncation.get("max_length")
        if not isinstance(max_length, int) or max_length < 1:
            raise ModelError(f"the tokenizer of {self._spec.name} sets no truncation length")
        self._query_limit = max_length
        return max_length

    def query_tokens(self, query: str) -> list[QueryToken]:
        """What each row of :meth:`embed_query` stands for, read from the tokenizer alone.

        Tokens that overlap the query's characters are its words (``query``);
        the model's template around them (ColPali: ``<s>``, ``Query``, ``:``,
        the closing newline) is ``prompt``, and its augmentation tokens
        (``<pad>`` ×10) are ``padding``.
        """
        self.query_token_limit()  # makes fastembed load its tokenizer, once
        model = self._resolve().model
        (encoding,) = model.tokenize([query])
        prefix = getattr(model, "BOS_TOKEN", "") + getattr(model, "QUERY_PREFIX", "")
        padding = {
            str(getattr(model, name))
            for name in ("PAD_TOKEN", "QUERY_AUGMENTATION_TOKEN")
            if getattr(model, name, None)
        }
        start, end = len(prefix), len(prefix) + len(query)
        tokens = []
        for token, token_id, (first, last), mask in zip(
            encoding.tokens, encoding.ids, encoding.offsets, encoding.attention_mask, strict=True
        ):
            if not mask:
                continue
            if first < end and last > start and last > first:
                text = query[max(first, start) - start : min(last, end) - start]
                tokens.append(QueryToken(text, "query"))
            elif token in padding:
                tokens.append(QueryToken(token, "padding"))
            else:
                text = token if token.startswith("<") else model.tokenizer.decode([token_id])
                tokens.append(QueryToken(text, "prompt"))
        return tokens

    def identity(self) -> ModelIdentity:
        """The weights in use: model name, where the files are, and their fingerprint.

        The files are located as the first embedding would locate them
        (``embedding.model_path``, else the fastembed cache, downloading when
        online) but no ONNX session is opened; the large weight file is only
        sampled (:mod:`pipeline.embed.fingerprint`). For ``embedding.model_path``
        and a registered model not even fastembed is imported. Computed once
        per instance. ``source`` is the resolved ``embedding.model_path``, or
        ``hub:<repo>@<revision>`` for a cached hub snapshot; ``stand_in`` is
        true for pagerag's random-weight test model.
        """
        if self._identity is not None:
            return self._identity
        files = self._spec.weight_files
        if self._config.model_path is not None and files:
            model_dir = Path(self._config.model_path).expanduser().resolve()
            self._check_files(model_dir, [*files, *_CONFIG_FILES])
            source = str(model_dir)
        else:
            embedding = self._resolve()
            files = files or self._weight_files
            found = self._config.model_path or getattr(embedding.model, "_model_dir", None)
            if found is None:
                raise ModelError(
                    f"fastembed did not say where it found {self._spec.name}, so its weights "
                    "cannot be fingerprinted: set embedding.model_path to the model directory"
                )
            model_dir = Path(found).expanduser().resolve()
            if self._config.model_path is not None:
                source = str(model_dir)
            else:
                revision = f"@{model_dir.name}" if model_dir.parent.name == "snapshots" else ""
                source = f"hub:{self._hub_repo}{revision}"
        self._identity = weights_identity(
            self._spec.name,
            model_dir,
            source,
            lambda: fingerprint_files(model_dir, (*files, *CONFIG_FILES)),
        )
        return self._identity

    # -- loading -------------------------------------------------------------

    def _ready(self) -> Any:
        """The fastembed model with its ONNX session open."""
        if self._session_ready:
            return self._embedding
        embedding = self._resolve()
        with self._lock:
            if not self._session_ready:
                try:
                    embedding.model.load_onnx_model()
                except Exception as exc:  # onnxruntime raises its own non-OSError types
                    raise ModelError(
                        f"cannot load {self._spec.name} from {self._model_dir_label()}: {exc}"
                    ) from exc
                self._session_ready = True
        return embedding

    def _resolve(self) -> Any:
        """The fastembed model object, its files located but no session open."""
        if self._embedding is not None:
            return self._embedding
        with self._lock:
            if self._embedding is None:
                self._embedding = self._construct()
        return self._embedding

    def _construct(self) -> Any:
        try:
            from fastembed import LateInteractionMultimodalEmbedding
        except ImportError as exc:
            raise _missing_fastembed(exc) from exc

        description = self._description(LateInteractionMultimodalEmbedding)
        self._weight_files = (description["model_file"], *description["additional_files"])
        self._hub_repo = str((description.get("sources") or {}).get("hf") or self._spec.name)
        required = [*self._weight_files, *_CONFIG_FILES]
        config = self._config
        if config.model_path is not None:
            self._check_files(Path(config.model_path), required)
        kwargs: dict[str, Any] = {
            "model_name": self._spec.name,
            "cache_dir": None if config.cache_dir is None else str(config.cache_dir),
            "threads": config.threads,
            "lazy_load": True,
            **self._device_kwargs(),
        }
        if config.model_path is not None:
            kwargs["specific_model_path"] = str(config.model_path)
        where = config.cache_dir or "fastembed's default cache"
        embedding = None
        if config.model_path is None and not _hub_offline():
            # The cache first: only a model that is not there needs the hub, and when the
            # hub cannot be reached, say so at once instead of after fastembed's ~40 s of
            # download retries (3, 9 and 27 s apart, each logged).
            with contextlib.suppress(Exception), _quiet_fastembed():
                embedding = LateInteractionMultimodalEmbedding(**kwargs, local_files_only=True)
            unreachable = None if embedding is not None else _hub_unreachable()
            if unreachable:
                raise self._not_available(
                    f"it is not in {where}, and the Hugging Face hub to download it from "
                    f"cannot be reached ({unreachable})",
                    offline_hint=True,
                )
        if embedding is None:
            try:
                with _quiet_fastembed():
                    embedding = LateInteractionMultimodalEmbedding(**kwargs)
            except Exception as exc:  # ValueError, OSError, hub and HTTP errors alike
                raise self._not_available(
                    f"it is not in {where} and could not be downloaded (fastembed: {exc})",
                    offline_hint=True,
                ) from exc
        if config.model_path is None:
            # fastembed checked the ONNX files of a cached snapshot, not the tokenizer ones
            model_dir = getattr(embedding.model, "_model_dir", None)
            if model_dir is not None:
                self._check_files(Path(model_dir), required)
        return embedding

    def _description(self, cls: Any) -> dict[str, Any]:
        for description in cls.list_supported_models():
            if str(description["model"]).lower() == self._spec.name.lower():
                return dict(description)
        import fastembed

        raise ModelError(
            f"the installed fastembed {getattr(fastembed, '__version__', '?')} does not "
            f"support {self._spec.name}: install the version pagerag pins "
            f"({install_command('cpu')}, or the gpu extra on a CUDA machine)"
        )

    def _device_kwargs(self) -> dict[str, Any]:
        config = self._config
        if config.device == "cpu":
            # explicit providers: a GPU build of onnxruntime must not grab the GPU
            return {"providers": ["CPUExecutionProvider"], "cuda": False}
        if config.device == "cuda":
            import onnxruntime

            available = onnxruntime.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise ModelError(
                    "embedding.device is 'cuda' but onnxruntime offers only "
                    f"{', '.join(available)}: install 'pagerag[gpu]' (fastembed-gpu, "
                    "onnxruntime-gpu) in place of 'pagerag[cpu]', or set "
                    "embedding.device to cpu or auto"
                )
            return {"cuda": True, "device_ids": config.device_ids}
        # auto: fastembed's default, the GPU when onnxruntime-gpu can use one
        return {"device_ids": config.device_ids}

    def _check_files(self, model_dir: Path, required: Iterable[str]) -> None:
        if not model_dir.is_dir():
            raise self._not_available(
                f"embedding.model_path {model_dir} does not exist or is not a directory"
            )
        missing = [name for name in required if not (model_dir / name).is_file()]
        if missing:
            raise self._not_available(f"{model_dir} lacks {', '.join(missing)}")

    def _not_available(self, reason: str, *, offline_hint: bool = False) -> ModelNotAvailableError:
        name = self._spec.name
        hint = (
            " On machines without internet set HF_HUB_OFFLINE=1: nothing is then downloaded "
            "or looked up."
            if offline_hint
            else ""
        )
        return ModelNotAvailableError(
            f"the embedding model {name} (~{self._spec.size_gb:g} GB) is not available: "
            f"{reason}. On a machine with internet, run "
            f"`hf download {name} --local-dir DIR`, copy DIR here and set "
            "embedding.model_path: DIR in the config (or the environment variable "
            "PAGERAG_EMBEDDING__MODEL_PATH=DIR); or point embedding.cache_dir at a "
            f"fastembed cache that holds it.{hint}"
        )

    def _model_dir_label(self) -> str:
        if self._config.model_path is not None:
            return str(self._config.model_path)
        model = getattr(self._embedding, "model", None)
        return str(getattr(model, "_model_dir", "the fastembed cache"))

    def _checked(self, vec: Any) -> Float16Array:
        """Check the shape, and keep float16 (only ever cast *down* to it)."""
        return checked_vectors(vec, self._spec)


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as fastembed reads it: local files only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "TRUE", "YES", "ON"}


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub (``$HF_ENDPOINT``) does not answer; None when it does.

    One request with a 10 s timeout, through the proxies the environment names
    (as the download would go).
    """
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        httpx.head(endpoint, timeout=10.0)
    except (httpx.HTTPError, OSError) as exc:
        return f"{endpoint}: {exc or type(exc).__name__}"
    return None


@contextlib.contextmanager
def _quiet_fastembed() -> Iterator[None]:
    """Silence fastembed's own log lines (loguru): its failures reach the user as
    pagerag's one error; download progress bars are not log lines and stay."""
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover - a fastembed dependency
        yield
        return
    logger.disable("fastembed")
    try:
        yield
    finally:
        logger.enable("fastembed")


def _missing_fastembed(cause: ImportError) -> OptionalDependencyError:
    """The error for a missing fastembed, naming both extras that provide it."""
    error = OptionalDependencyError("Page embedding", "cpu", "fastembed")
    # OptionalDependencyError names one extra; fastembed comes from either of two.
    # ImportError.__str__ prints .msg, so both it and .args carry the full text.
    text = f"{error} (or the gpu extra on a CUDA machine, never both; {cause})"
    error.msg = text
    error.args = (text,)
    return error


def _strip_padding(vec: Any, attention_mask: Sequence[int]) -> Any:
    """Drop the batch-padding rows of one query's output, by its attention mask."""
    mask = np.asarray(attention_mask, dtype=bool)
    if vec.shape[0] == mask.shape[0]:
        return vec[mask]
    if vec.shape[0] == int(mask.sum()):
        return vec  # the model class stripped the padding already (ColModernVBERT)
    raise ModelError(
        f"query output has {vec.shape[0]} rows for {mask.shape[0]} tokens "
        f"({int(mask.sum())} unpadded)"
    )
