"""Typed configuration: ``configs/*.yaml`` + ``PAGERAG_<SECTION>__<KEY>`` env overrides.

Resolution order (later wins): built-in defaults (identical to
``configs/default.yaml``) → the YAML file (``--config FILE`` or
``$PAGERAG_CONFIG``) → environment overrides such as
``PAGERAG_EMBEDDING__DEVICE=cuda`` or ``PAGERAG_STORE__URL=http://qdrant:6333``.
Values in env overrides are parsed as YAML scalars (``8``, ``true``, ``null``).

Unknown keys are errors that name the key, so a typo never silently falls
back to a default. Secrets (``store.api_key``, ``vlm.api_key``,
``serve.api_key``) are ``SecretStr``: they print as ``**********``. They
default to their usual variables: ``OPENAI_API_KEY``, ``QDRANT_API_KEY`` and
``PAGERAG_API_KEY``.

Every ``PAGERAG_*`` variable is a ``<SECTION>__<KEY>`` override except the
names in :data:`NOT_SETTINGS` (the config file, the serve key, the set-up
switch, the tests' corpus folder): exporting one of those never breaks a
command, and any other ``PAGERAG_*`` name that is not a setting is an error.
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
    "RayConfig",
    "RenderConfig",
    "RetrievalConfig",
    "ServeConfig",
    "StoreConfig",
    "TextConfig",
    "VLMConfig",
    "default_data_dir",
    "load_config",
]

ENV_PREFIX = "PAGERAG_"
CONFIG_ENV = "PAGERAG_CONFIG"
# The key clients of `pagerag serve` must send (serve.api_key), by its usual name.
API_KEY_ENV = "PAGERAG_API_KEY"
# PAGERAG_* variables that are not settings, and who reads them.
NOT_SETTINGS = {
    CONFIG_ENV: "the config file",
    API_KEY_ENV: "serve.api_key",
    "PAGERAG_EXTRA": "scripts/setup.sh: which embedder extra to install (cpu, gpu)",
    "PAGERAG_TEST_CORPUS": "the test suite: where the shared test corpus is",
}


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
    # Which library runs the model: fastembed (ONNX), torch (colpali-engine, the
    # pagerag[torch] extra), or auto: the backend the model registry names for the model.
    backend: Literal["auto", "fastembed", "torch"] = "auto"
    # A local model directory (model.onnx + tokenizer files, or a Hugging Face
    # snapshot for torch): used as-is, no download.
    model_path: Path | None = None
    # fastembed/huggingface cache; None = $FASTEMBED_CACHE_PATH or fastembed's default
    # (torch: the Hugging Face cache, $HF_HOME).
    cache_dir: Path | None = None
    # mps (Apple GPUs) only with the torch backend.
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    device_ids: list[int] | None = None
    # torch backend: weights and activations; auto = bfloat16 on a GPU, float32 on the CPU.
    # Vectors are stored as float16 whatever this is.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Index-time token pooling: each page's vectors are merged into ~1/FACTOR as many
    # (colpali-engine's hierarchical pooler); null (or 1) keeps every vector.
    token_pooling: int | None = Field(default=None, ge=1, le=64)

    _expand_paths = field_validator("model_path", "cache_dir")(_expand)
    threads: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=2, ge=1, le=256)

    @property
    def pooling_factor(self) -> int | None:
        """``token_pooling`` as a factor that changes something (None for null or 1)."""
        return self.token_pooling if self.token_pooling and self.token_pooling > 1 else None


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
    # Which engine runs an ingest: local (threads on this machine) or ray (Ray Data over a
    # Ray cluster, the pagerag[ray] extra; settings in the ray section).
    engine: Literal["local", "ray"] = "local"
    # Keep the JPEG of every page in the payload so answering works in every deployment.
    store_images: bool = True
    # Pages rendered ahead of the embedder (bounds memory).
    queue_pages: int = Field(default=16, ge=1, le=4096)
    extensions: list[str] = Field(
        default_factory=lambda: [".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff"]
    )
    # Which retrieval lanes pages get (docs/retrieval.md, "Lanes"): visual (the page
    # image through the embedding model), text (the page's text layer as a BM25 sparse
    # vector: no model, milliseconds a page), or visual+text. auto: the lanes of the
    # existing collection, visual+text for a new one. A lane is added to an existing
    # collection with `pagerag reindex --text` / `--visual`, never by an ingest.
    lanes: Literal["auto", "visual", "text", "visual+text"] = "auto"


class RayConfig(_Section):
    """``ingest.engine: ray`` (pipeline/ingest/ray_engine.py; docs/deployment.md)."""

    # A running cluster ("auto", "ray://head:10001"); null: start a local Ray on this machine.
    address: str | None = None
    # A local Ray only: the logical CPUs it schedules (null: this machine's cores, or, if
    # more, the local engine's concurrency: render.workers rendering tasks beside the
    # embed and writer actors, so one embed actor does not halve the rendering on a small
    # machine).
    num_cpus: int | None = Field(default=None, ge=1)
    # Embed actors (each loads the model once): the pool starts at embed_actors and may grow
    # to max_embed_actors (null: a fixed pool).
    embed_actors: int = Field(default=1, ge=1, le=4096)
    max_embed_actors: int | None = Field(default=None, ge=1, le=4096)
    gpus_per_actor: float = Field(default=0.0, ge=0)
    cpus_per_actor: float = Field(default=1.0, gt=0)
    # CPUs per rendering task; a document is rendered in ranges of this many pages, so one
    # long file does not serialize the job.
    render_cpus: float = Field(default=1.0, gt=0)
    pages_per_task: int = Field(default=64, ge=1, le=100_000)
    # Files hashed (and probed) per task: hashing runs on the cluster, not on the driver.
    files_per_task: int = Field(default=16, ge=1, le=10_000)
    # Ray's own fault tolerance: a task whose worker died is retried max_retries times, a
    # dead embed (or writer) actor restarted max_restarts times; beyond that its pages are
    # lost and their files reported failed (never marked complete).
    max_retries: int = Field(default=3, ge=0)
    max_restarts: int = Field(default=3, ge=0)
    # A Qdrant server (store.url) only: writer actors upserting in parallel. The embedded
    # engine admits one process: the driver writes then.
    writers: int = Field(default=2, ge=1, le=1024)
    # Refuse a job the cluster's resources can never run (GPUs it lacks, no CPU left to
    # render beside the actors) instead of letting Ray wait forever. false: an autoscaling
    # cluster (KubeRay, `ray up`) that adds the nodes on demand.
    check_resources: bool = True

    @property
    def pool(self) -> tuple[int, int]:
        """(min, max) embed actors."""
        return self.embed_actors, max(self.embed_actors, self.max_embed_actors or 0)


class RetrievalConfig(_Section):
    k: int = Field(default=5, ge=1, le=1000)
    # visual lane: exact | two_stage | auto (= visual: two_stage from two_stage_min_pages
    # pages on); text: the text lane alone; hybrid: both lanes fused in one Qdrant query.
    # auto on a text-only collection searches the text lane.
    mode: Literal["auto", "visual", "exact", "two_stage", "text", "hybrid"] = "auto"
    # hybrid: how the lanes' rankings are fused (rrf: weighted reciprocal rank fusion;
    # dbsf: distribution-based score fusion), the RRF constant, each lane's weight, and
    # how many candidates each lane hands to the fusion.
    fusion: Literal["rrf", "dbsf"] = "rrf"
    rrf_k: int = Field(default=60, ge=1)
    visual_weight: float = Field(default=1.0, gt=0)
    text_weight: float = Field(default=1.0, gt=0)
    lane_k: int = Field(default=100, ge=1, le=10_000)
    # Two-stage: candidates per pooled vector, and which pooled vectors the first stage
    # scans. Measured by bench/retrieval.py on its synthetic 10k-page workload (stand-in
    # model, queries made from one page's patches; docs/retrieval.md): rows only at 400 was
    # 12.9x faster than exact, with recall@10 0.978 against exact; adding cols doubled the
    # first stage for ~no recall there. Not yet measured with the real model.
    prefetch_k: int = Field(default=400, ge=1, le=10_000)
    prefetch_vectors: list[Literal["rows", "cols"]] = Field(default=["rows"], min_length=1)
    # In auto mode, collections with at least this many pages use two_stage.
    two_stage_min_pages: int = Field(default=2_000, ge=0)


class TextConfig(_Section):
    """The text lane: each page's text layer (pdftotext) as a BM25 sparse vector."""

    # Tokenizer language (stemmer and stopwords) of Qdrant's BM25: english, german,
    # french, spanish, ... (the Snowball languages). Fixed when a collection's text
    # lane is created; changing it needs `pagerag reindex --text`.
    language: str = "english"
    # Characters of a page's text kept in the payload (the rest is cut, and the page
    # recorded as cut): bounds payload size on pages that are walls of text.
    max_page_chars: int = Field(default=100_000, ge=1_000)
    # Also give the VLM each page's extracted text beside its image (off: costs prompt
    # tokens on every question; docs/retrieval.md has the measurement).
    answer_with_text: bool = False


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


class ServeConfig(_Section):
    # Where `pagerag serve` listens. Any address but loopback needs an API key.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # The bearer token clients must send; defaults to $PAGERAG_API_KEY; never logged.
    api_key: SecretStr | None = None
    # Folders POST /v1/ingest may read by path; empty: ingest by path is off (uploads only).
    roots: list[Path] = Field(default_factory=list)
    # Where uploaded files are kept (their recorded source); null = $XDG_DATA_HOME/pagerag-uploads.
    upload_dir: Path | None = None
    # Limits of one upload request: total megabytes and number of files.
    max_upload_mb: float = Field(default=200.0, gt=0)
    max_upload_files: int = Field(default=20, ge=1)
    # Ingest jobs that may wait behind the running one; beyond that a job is refused.
    max_queued_jobs: int = Field(default=4, ge=0)
    # Finished jobs remembered for GET /v1/jobs (oldest forgotten first).
    job_history: int = Field(default=100, ge=1)

    @field_validator("roots")
    @classmethod
    def _expand_roots(cls, value: list[Path]) -> list[Path]:
        return [path.expanduser() for path in value]

    _expand_paths = field_validator("upload_dir")(_expand)


class PageRAGConfig(_Section):
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    vlm: VLMConfig = Field(default_factory=VLMConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


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
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) != 2 or path[0] not in sections:
            raise ConfigError(
                f"environment variable {name} does not name a setting: use "
                f"{ENV_PREFIX}<SECTION>__<KEY> with SECTION one of "
                f"{', '.join(s.upper() for s in sections)} (other PAGERAG_ names: "
                f"{', '.join(NOT_SETTINGS)})"
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
    if config.serve.api_key is None and env.get(API_KEY_ENV):
        config.serve.api_key = SecretStr(env[API_KEY_ENV])
    return config
