"""Which library runs the embedding model: ``embedding.backend`` made concrete.

``auto`` takes the backend the model registry names for ``embedding.model``
(FastEmbed/ONNX for ``Qdrant/colpali-v1.3-fp16`` and ``Qdrant/colmodernvbert``,
torch/colpali-engine for the ColQwen, ColSmol, ColPali-torch and ColGemma3
checkpoints); an explicit backend must be one that serves the model. Like
``pipeline.api`` this module names connectors (lazily), so only entry points
and the composition root import it.
"""

from __future__ import annotations

from pipeline.config import EmbeddingConfig, PageRAGConfig
from pipeline.embed.protocol import PageEmbedder
from pipeline.embed.text import TextEmbedder
from pipeline.errors import ConfigError
from pipeline.models import Backend, get_model_spec

__all__ = ["backend_for", "build_embedder", "build_text_embedder"]


def backend_for(config: EmbeddingConfig) -> Backend:
    """The backend that will run ``config.model`` (``ConfigError`` when the one asked
    for cannot)."""
    spec = get_model_spec(config.model)
    wanted = config.backend
    if wanted not in ("auto", spec.backend):
        other = [name for name, s in _served() if s == wanted]
        raise ConfigError(
            f"embedding.backend is {wanted!r} but {spec.name} is served by {spec.backend}: "
            f"set embedding.backend to auto or {spec.backend}, or pick a {wanted} model "
            f"({', '.join(other) or 'none registered'}; `pagerag models` lists them all)"
        )
    return spec.backend


def build_embedder(config: PageRAGConfig | EmbeddingConfig) -> PageEmbedder:
    """The page embedder the configuration names; nothing is loaded yet."""
    embedding = config.embedding if isinstance(config, PageRAGConfig) else config
    if backend_for(embedding) == "torch":
        from connectors.colpali_torch import ColPaliTorchEmbedder

        return ColPaliTorchEmbedder(embedding)
    if embedding.device == "mps":
        raise ConfigError(
            f"embedding.device 'mps' (Apple GPUs) needs the torch backend, which does not serve "
            f"{embedding.model}: set embedding.device to cpu or auto"
        )
    from connectors.fastembed import FastEmbedColPali

    return FastEmbedColPali(embedding)


def build_text_embedder(config: PageRAGConfig) -> TextEmbedder:
    from connectors.bm25 import QdrantBm25

    return QdrantBm25(config.text.language)


def _served() -> list[tuple[str, str]]:
    from pipeline.models import MODELS

    return [(name, spec.backend) for name, spec in MODELS.items()]
