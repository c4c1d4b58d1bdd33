"""Typed configuration: ``configs/*.yaml`` + ``PAGERAG_<SECTION>__<KEY>`` env overrides.

Resolution order (later wins): built-in defaults (identical to
``configs/default.yaml``) → the YAML file (``--config FILE`` or
``$PAGERAG_CONFIG``) → environment overrides such as
``PAGERAG_EMBEDDING__DEVICE=cuda`` or ``PAGERAG_STORE__URL=http://qdrant:6333``.
Values in env overrides are parsed as YAML scalars (``8``, ``true``, ``null``).

Unknown keys are errors that name the key, so a typo never silently falls
back to a default. Secrets (``store.api_key``, ``vlm.api_key``) are
``SecretStr``: they print as ``**********``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from pipeline.errors import ConfigError

__all__ = [
    "EmbeddingConfig",
    "IngestConfig",
    "PageRAGConfig",
    "RenderConfig",
    "RetrievalConfig",
    "StoreConfig",
    "VLMConfig",
    "default_data_dir",
    "load_config",
]

ENV_PREFIX = "PAGERAG_"
CONFIG_ENV = "PAGERAG_CONFIG"


def default_data_dir() -> Path:
    """Where the embedded engine keeps its data: ``$XDG_DATA_HOME/pagerag``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pagerag"


def _expand(value: Path | None) -> Path | None:
    """``~`` in configured paths means the user's home, as in a shell."""
    return None if value is None else value.expanduser()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class EmbeddingConfig(_Section):
    model: str = "Qdrant/colpali-v1.3-fp16"
    # A local model directory (model.onnx + tokenizer files): used as-is, no download.
    model_path: Path | None = None
    # fastembed/huggingface cache; None = $FASTEMBED_CACHE_PATH or fastembed's default.
    cache_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    device_ids: list[int] | None = None

    _expand_paths = field_validator("model_path", "cache_dir")(_expand)
    threads: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=2, ge=1, le=256)


class RenderConfig(_Section):
    dpi: int = Field(default=150, ge=36, le=600)
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    # Concurrent poppler processes rendering ahead of the embedder.
    workers: int = Field(default=2, ge=1, le=64)
    # Pages per poppler run: each run reopens the document, so larger is faster
    # (8: 0.95x raw pdftoppm vs 0.89x at 4); memory does not grow with it.
    pages_per_chunk: int = Field(default=8, ge=1, le=64)
    timeout_s: float = Field(default=300.0, gt=0)
    # Pages larger than this are rendered at a lower DPI so they fit.
    max_page_pixels: int = Field(default=25_000_000, ge=100_000)
    max_pages: int | None = Field(default=10_000, ge=1)
    on_too_many_pages: Literal["truncate", "refuse"] = "truncate"
    max_file_mb: float = Field(default=1024.0, gt=0)
    # Address-space cap of each poppler process (prlimit --as): a resource bomb fails its
    # allocation instead of taking the machine's memory. null: no cap.
    max_poppler_mb: int | None = Field(default=1024, ge=256)
    # glob (matched against the absolute path or the file name) -> password
    passwords: dict[str, SecretStr] = Field(default_factory=dict)
    # A file of "glob<TAB or space>password" lines, for many passwords.
    password_file: Path | None = None

    _expand_paths = field_validator("password_file")(_expand)


class StoreConfig(_Section):
    # Embedded engine data directory (used when url is unset).
    path: Path = Field(default_factory=default_data_dir)
    # http(s)://host:6333 for a server, or ":memory:" for a throwaway in-process store.
    url: str | None = None
    api_key: SecretStr | None = None
    prefer_grpc: bool = True
    grpc_port: int = 6334
    timeout_s: float = Field(default=60.0, gt=0)
    collection: str = "pagerag"
    # Storage of vectors. int8 storage is `quantization: scalar` (rescored), not a datatype:
    # a uint8 datatype would truncate ColPali's float vectors.
    datatype: Literal["float16", "float32"] = "float16"
    quantization: Literal["none", "scalar", "binary"] = "none"
    on_disk: bool = False
    shard_number: int | None = Field(default=None, ge=1)
    replication_factor: int | None = Field(default=None, ge=1)
    write_consistency_factor: int | None = Field(default=None, ge=1)
    upsert_batch: int = Field(default=8, ge=1, le=256)
    upsert_retries: int = Field(default=5, ge=0)

    _expand_paths = field_validator("path")(_expand)

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\ "):
            raise ValueError("collection must be a non-empty name without slashes or spaces")
        return value


class IngestConfig(_Section):
    # Keep the JPEG of every page in the payload so answering works in every deployment.
    store_images: bool = True
    # Pages rendered ahead of the embedder (bounds memory).
    queue_pages: int = Field(default=16, ge=1, le=4096)
    extensions: list[str] = Field(
        default_factory=lambda: [".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff"]
    )


class RetrievalConfig(_Section):
    k: int = Field(default=5, ge=1, le=1000)
    mode: Literal["exact", "two_stage", "auto"] = "auto"
    # Two-stage: candidates per pooled vector, and which pooled vectors the first stage
    # scans. Measured by bench/retrieval.py on its synthetic 10k-page workload (stand-in
    # model, queries made from one page's patches; docs/retrieval.md): rows only at 400 was
    # 12.9x faster than exact, with recall@10 0.978 against exact; adding cols doubled the
    # first stage for ~no recall there. Not yet measured with the real model.
    prefetch_k: int = Field(default=400, ge=1, le=10_000)
    prefetch_vectors: list[Literal["rows", "cols"]] = Field(default=["rows"], min_length=1)
    # In auto mode, collections with at least this many pages use two_stage.
    two_stage_min_pages: int = Field(default=2_000, ge=0)


class VLMConfig(_Section):
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    # Defaults to $OPENAI_API_KEY at load time; never logged.
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=20)
    max_image_side: int = Field(default=1536, ge=64)
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    max_tokens: int = Field(default=1024, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


class PageRAGConfig(_Section):
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    vlm: VLMConfig = Field(default_factory=VLMConfig)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    sections = PageRAGConfig.model_fields
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) != 2 or path[0] not in sections:
            raise ConfigError(
                f"environment variable {name} does not name a setting: use "
                f"{ENV_PREFIX}<SECTION>__<KEY> with SECTION one of "
                f"{', '.join(s.upper() for s in sections)}"
            )
        section, key = path
        overrides.setdefault(section, {})[key] = _env_value(raw)
    return overrides


def _env_value(raw: str) -> Any:
    """Env values stay strings (pydantic coerces ``"8"``/``"true"``), so an API
    key that looks like a number is not mangled; ``null`` or empty clears a
    setting, and YAML flow syntax (``[a, b]``, ``{k: v}``) gives lists/maps."""
    text = raw.strip()
    if text.lower() in ("", "null", "~", "none"):
        return None
    if text[0] in "[{":
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"cannot parse environment value {text!r} as YAML") from None
    return raw


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, origin: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        else:
            lines.append(f"{key}: {item['msg']}")
    return f"invalid configuration ({origin}): " + "; ".join(lines)


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> PageRAGConfig:
    """Load the effective configuration.

    ``path`` None means ``$PAGERAG_CONFIG`` if set, else the built-in defaults.
    ``overrides`` (``{"store": {"url": ...}}``) win over everything; the CLI
    uses them for flags.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    data: dict[str, Any] = {}
    origin = "built-in defaults"
    if path is not None:
        data = _read_yaml(Path(path).expanduser())
        origin = str(path)
    from_env = _env_overrides(env)
    if from_env:
        origin += " + PAGERAG_* environment"
    data = _merge(data, from_env)
    if overrides:
        data = _merge(data, {k: dict(v) for k, v in overrides.items()})
    try:
        config = PageRAGConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
    if config.vlm.api_key is None and env.get("OPENAI_API_KEY"):
        config.vlm.api_key = SecretStr(env["OPENAI_API_KEY"])
    if config.store.api_key is None and env.get("QDRANT_API_KEY"):
        config.store.api_key = SecretStr(env["QDRANT_API_KEY"])
    return config
