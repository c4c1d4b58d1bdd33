"""What every ingestion engine shares: :class:`IngestSettings`, one run's parts and settings.

:meth:`pipeline.PageRAG.ingest` builds it once and hands it to the engine it
runs (:class:`~pipeline.ingest.job.IngestJob`,
:class:`~pipeline.ingest.ray_engine.RayIngestJob`), which add only their own
(threads and queues; the cluster and the embedder factories). The stages both
engines build the same way are built here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.ingest.completer import Completer
from pipeline.ingest.planner import Planner
from pipeline.ingest.stages import DocumentRenderer, RenderStage
from pipeline.ingest.text import TextExtractor, extractor_for
from pipeline.retrieve.store import PageStore
from pipeline.types import CollectionSpec

__all__ = ["IngestSettings"]


def no_password(_path: Path) -> str | None:
    """The default ``password_for``: no file has one (a function, so it pickles to Ray)."""
    return None


@dataclass(frozen=True, eq=False)
class IngestSettings:
    """One ingestion run's parts and settings, the same whichever engine runs it.

    ``limits`` are the render settings in force (``LIMIT_KEYS``): recorded in
    completion marks; a document stored incomplete under other values is
    redone, as is any with ``retry_incomplete``. ``text_extractor`` reads page
    texts for the text lane (when ``spec`` has it; default: through the
    renderer's poppler driver). Batch sizes below 1 count as 1.
    """

    store: PageStore
    renderer: DocumentRenderer
    spec: CollectionSpec
    hash_file: Callable[[Path], str]
    password_for: Callable[[Path], str | None] = no_password
    embed_batch: int = 2
    upsert_batch: int = 8
    store_images: bool = True
    metadata: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, Any] = field(default_factory=dict)
    retry_incomplete: bool = False
    text_extractor: TextExtractor | None = None

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalised once, here
        fix(self, "embed_batch", max(1, self.embed_batch))
        fix(self, "upsert_batch", max(1, self.upsert_batch))
        fix(self, "metadata", dict(self.metadata or {}))
        fix(self, "limits", dict(self.limits or {}))
        if self.spec.has_text and self.text_extractor is None:
            fix(self, "text_extractor", extractor_for(self.renderer))

    def planner(
        self, hash_file: Callable[[Path], str], aliases: Mapping[Path, str] | None
    ) -> Planner:
        """The run's planner; ``hash_file``: the engine's (memoised, or computed remotely)."""
        return Planner(
            self.store,
            hash_file,
            metadata=self.metadata,
            limits=self.limits,
            retry_incomplete=self.retry_incomplete,
            aliases=aliases,
        )

    def render_stage(self) -> RenderStage:
        """The render stage: page texts beside the images when the collection has the
        text lane; no decoding without the visual lane."""
        return RenderStage(
            self.renderer,
            self.password_for,
            text=self.text_extractor if self.spec.has_text else None,
            text_beside=True,
            decode=self.spec.has_visual,
        )

    def completer(self, aliases: Mapping[Path, str] | None) -> Completer:
        return Completer(
            self.store, self.spec, metadata=self.metadata, limits=self.limits, aliases=aliases
        )
