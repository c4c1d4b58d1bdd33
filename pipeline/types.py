"""The small typed values that cross between pipeline stages.

Vectors stay numpy ``float16`` end to end (the real ColPali output dtype):
a page is ~1030×128×2 B = 257 KB, and a silent upcast to float64 would
quadruple memory on million-page jobs. Convert only at the edge of a library
that needs another type.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "LANES",
    "LIMIT_KEYS",
    "TEXT_FIELD",
    "TEXT_VECTOR",
    "VISUAL",
    "Answer",
    "CollectionSpec",
    "DocumentRecord",
    "Float16Array",
    "Lane",
    "ModelIdentity",
    "Page",
    "PageFilter",
    "PageHit",
    "PagePoint",
    "PageVectors",
    "PatchGrid",
    "ScoredPage",
    "SparseVector",
    "StoreStats",
    "Usage",
    "document_point_id",
    "page_point_id",
]

Float16Array = NDArray[np.float16]

# The two retrieval lanes a collection may hold. "visual": the page image's
# multivector (and its pooled vectors), scored by MaxSim. "text": the page's
# text layer as a sparse BM25 vector (TEXT_VECTOR) whose IDF the engine
# computes over the live collection (Qdrant's Modifier.IDF).
Lane = Literal["visual", "text"]
VISUAL: tuple[Lane, ...] = ("visual",)
LANES: tuple[Lane, ...] = ("visual", "text")
TEXT_VECTOR = "text-bm25"
# Payload key of a page's extracted text ("" when the page has no text layer).
TEXT_FIELD = "text"

# Fixed namespace so point ids are the same on every machine and every run:
# concurrent or repeated upserts of a page overwrite instead of duplicating.
_POINT_NAMESPACE = uuid.UUID("6f1c1a52-5d1b-4c55-9a43-6a2f3f0c7e11")


def page_point_id(document_id: str, page_number: int) -> str:
    """Deterministic Qdrant point id of one page of a document."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{document_id}:page:{page_number}"))


def document_point_id(document_id: str) -> str:
    """Deterministic id of the vectorless point that marks a document complete."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{document_id}:document"))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Page:
    """One rendered page, as it leaves the renderer.

    ``jpeg`` holds the compressed image (what gets stored for the answering
    stage); it is decoded only where the embedder needs pixels.
    """

    document_id: str
    source: str
    page_number: int  # 1-based, as readers count
    page_count: int
    jpeg: bytes
    width: int  # pixels, as rendered
    height: int
    dpi: int


@dataclass(frozen=True)
class PatchGrid:
    """Where one page's image-patch vectors sit in its output: ``rows × cols`` cells,
    row-major, from output row ``offset`` on (the other rows are prompt/special tokens).

    Fixed for ColPali (32×32 at 0, from the model registry); per page for models
    with dynamic resolution (ColQwen, ColSmol), as their processor reports it.
    Stored in a page's payload (``patch_grid: [rows, cols, offset]``) so pooling
    and similarity maps can be redone from stored vectors.
    """

    rows: int
    cols: int
    offset: int = 0

    def __post_init__(self) -> None:
        if self.rows <= 0 or self.cols <= 0 or self.offset < 0:
            raise ValueError(f"bad patch grid {self.rows}x{self.cols} at offset {self.offset}")

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def stop(self) -> int:
        """The output row after the last patch."""
        return self.offset + self.count

    def to_payload(self) -> list[int]:
        return [self.rows, self.cols, self.offset]

    @classmethod
    def from_payload(cls, value: Any) -> PatchGrid | None:
        """The grid a payload recorded, or None when it recorded none (or garbage)."""
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            return None
        try:
            return cls(*(int(v) for v in value))
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class PageVectors:
    """One embedded page: its float16 ``(tokens, dim)`` vectors and, when the
    model lays its patches on a grid, where they are (``grid``)."""

    vectors: Float16Array
    grid: PatchGrid | None = None


@dataclass(frozen=True, eq=False)
class SparseVector:
    """A sparse vector: token ids (uint32, unique) and their weights (float32).

    The text lane's BM25 vector: ids are Qdrant's murmur3 token hashes, so the
    embedded engine, qdrant-client and a server agree on them. Empty (no
    indices) for a page without text: such a page is not stored in the lane.
    """

    indices: NDArray[np.uint32]
    values: NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.indices.shape != self.values.shape or self.indices.ndim != 1:
            raise ValueError(
                f"sparse vector indices {self.indices.shape} and values {self.values.shape} "
                "must be 1-D and of one length"
            )

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @classmethod
    def of(cls, indices: Any, values: Any) -> SparseVector:
        return cls(np.asarray(indices, dtype=np.uint32), np.asarray(values, dtype=np.float32))


@dataclass(frozen=True)
class PagePoint:
    """What the store persists for one page: id, vectors and payload.

    ``vectors`` are the visual lane's multivectors (empty for a text-only
    collection); ``sparse`` the text lane's vector by name (empty, or an
    empty vector, for a page without text).
    """

    point_id: str
    vectors: Mapping[str, Float16Array]  # vector name -> (n, dim) float16
    payload: Mapping[str, Any]
    sparse: Mapping[str, SparseVector] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelIdentity:
    """The exact weights behind a model name: what vectors are comparable with.

    ``source`` says where the files came from (``hub:<repo>@<revision>`` for
    the fastembed/Hugging Face cache, else the local directory);
    ``fingerprint`` is a short hash of the files (:mod:`pipeline.embed.fingerprint`):
    vectors made by different fingerprints must never share a collection.
    ``stand_in`` marks random test weights, which ``label`` then says.
    """

    name: str
    source: str
    fingerprint: str
    stand_in: bool = False

    @property
    def label(self) -> str:
        """The model as shown to people: the name, unless these are stand-in weights."""
        return f"{self.name} (stand-in, random weights)" if self.stand_in else self.name

    def describe(self) -> str:
        """The label, fingerprint and source, for messages."""
        return f"{self.label} [weights {self.fingerprint} from {self.source}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "stand_in": self.stand_in,
        }


@dataclass(frozen=True)
class CollectionSpec:
    """How a collection must look; checked against an existing one on open.

    ``pooled`` maps pooled vector names to their count per page (e.g. rows
    and columns of the patch grid) and is empty for exact-only collections.
    ``token_pooling`` is the factor by which each page's full vectors were
    merged at ingest (or by ``pagerag reindex --token-pooling``), None when
    every vector the model produced is stored.
    ``identity`` is the weights that fill it; ``None`` in a spec to open with
    means "do not check the weights" (reading commands), and in a recorded
    spec that the collection predates weight fingerprints.
    """

    name: str
    model: str
    dim: int
    full_vector: str = "full"
    pooled: tuple[str, ...] = ()
    datatype: Literal["float16", "float32"] = "float16"
    quantization: Literal["none", "scalar", "binary"] = "none"
    on_disk: bool = False
    identity: ModelIdentity | None = None
    # Index-time token pooling factor of the stored full vectors (None: every vector kept).
    token_pooling: int | None = None
    # The retrieval lanes every page of the collection has (manifests written before
    # lanes existed: visual only). A text-only collection declares the visual vectors
    # (so `reindex --visual` can fill them) but no page has them yet.
    lanes: tuple[Lane, ...] = VISUAL
    # The BM25 tokenizer language of the text lane (stemmer and stopwords).
    text_language: str = "english"

    @property
    def has_visual(self) -> bool:
        return "visual" in self.lanes

    @property
    def has_text(self) -> bool:
        return "text" in self.lanes

    @property
    def model_label(self) -> str:
        """The model as shown to people (says so when the weights are a stand-in)."""
        return self.identity.label if self.identity is not None else self.model


# Settings that can cut a document short. Recorded in its completion mark so a
# rerun knows when a document stored incomplete would now come out differently.
LIMIT_KEYS = ("max_pages", "timeout_s", "max_page_pixels", "max_poppler_mb", "dpi")


@dataclass(frozen=True)
class DocumentRecord:
    """The completion mark: the job is done with this document's pages.

    "Done" is not always "whole": ``incomplete`` names why pages are missing
    (``truncated`` by render.max_pages, a ``timeout``, ``page_errors``) and
    ``limits`` the render settings in force, so a rerun with other settings
    (or ``--retry-incomplete``) redoes it instead of skipping it.
    """

    document_id: str
    source: str  # the resolved absolute path
    file_name: str
    page_count: int  # pages stored
    total_pages: int  # pages the file has (greater when truncated by render.max_pages)
    ingested_at: str  # ISO-8601 UTC
    model: str
    bytes: int  # file size
    failed_pages: tuple[int, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    incomplete: str | None = None  # truncated, timeout, page_errors, …; None when whole
    limits: Mapping[str, Any] = field(default_factory=dict)  # LIMIT_KEYS -> value in force
    source_alias: str | None = None  # the path as given when it differs (a symlink)

    @property
    def is_complete(self) -> bool:
        return (
            self.incomplete is None
            and not self.failed_pages
            and self.page_count >= self.total_pages
        )

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path the document answers to (resolved, and as given)."""
        return (self.source,) if not self.source_alias else (self.source, self.source_alias)


@dataclass(frozen=True)
class PageFilter:
    """Restricts a search. All given conditions must hold.

    ``source_prefix`` matches a whole source path or any folder above it;
    ``source`` only that exact file (by its resolved path or the path given
    at ingest). ``metadata`` matches user metadata from ``ingest --meta k=v``.
    """

    document_ids: tuple[str, ...] = ()
    source_prefix: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: str | None = None

    def is_empty(self) -> bool:
        return (
            not self.document_ids
            and self.source_prefix is None
            and self.source is None
            and not self.metadata
        )


@dataclass(frozen=True)
class ScoredPage:
    """A store search result, before the API layer turns it into a PageHit.

    ``lanes`` (fused searches only): the page's 1-based rank in each lane that
    found it, e.g. ``{"visual": 3, "text": 1}``; a lane that did not find it
    is absent. Single-lane searches leave it empty.
    """

    point_id: str
    score: float
    payload: Mapping[str, Any]
    lanes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreStats:
    collection: str
    model: str | None
    documents: int
    pages: int
    bytes_on_disk: int | None  # None when the engine cannot tell (server)
    engine: str
    location: str


@dataclass(frozen=True)
class PageHit:
    """A retrieved page: where it comes from, how well it matched, its image.

    ``lanes``: after a hybrid search, the page's 1-based rank in each lane that
    found it (``{"visual": 2, "text": 1}``); after a one-lane search, that
    lane and the page's rank in it.
    """

    point_id: str
    document_id: str
    source: str
    page_number: int
    score: float
    payload: Mapping[str, Any]
    image_loader: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)
    lanes: Mapping[str, int] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The page's extracted text layer ("" without a text lane or without text)."""
        return str(self.payload.get(TEXT_FIELD) or "")

    @property
    def file_name(self) -> str:
        return str(self.payload.get("file_name", self.source.rsplit("/", 1)[-1]))

    @property
    def label(self) -> str:
        """How the page is named to a VLM and in citations: ``[file p.N]``."""
        return f"{self.file_name} p.{self.page_number}"

    def load_jpeg(self) -> bytes:
        """The stored JPEG bytes of the page (fetched lazily from the store)."""
        if self.image_loader is None:
            raise LookupError(
                f"no image stored for {self.label}: re-ingest with ingest.store_images: true"
            )
        return self.image_loader()

    def load_image(self) -> Any:
        """The page as a PIL image."""
        import io

        from PIL import Image

        return Image.open(io.BytesIO(self.load_jpeg()))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


@dataclass(frozen=True)
class Answer:
    """A VLM answer, the pages it was shown, and the pages it cited."""

    text: str
    sources: tuple[PageHit, ...]
    cited: tuple[PageHit, ...] = ()
    usage: Usage | None = None
    model: str | None = None
    answered: bool = True  # False when no VLM is configured: text explains why
