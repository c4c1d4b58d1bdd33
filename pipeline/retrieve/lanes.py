"""What a store offers for filling a lane in place (``pagerag reindex --text / --visual``).

Why this exists: adding the text lane to a collection (or the visual lane to
a text-only one) writes one lane of every stored page and then records the
lane in the manifest, without re-ingesting. :class:`LaneStore` is the part
of a store :mod:`pipeline.retrieve.reindex` needs for that, beside the
:class:`~pipeline.retrieve.store.PageStore` calls; both adapters in
``connectors/`` implement it (through
:class:`~pipeline.retrieve.points.PointStore`).

Resuming: a page's text lane is written with its ``TEXT_FIELD`` payload in
one call, so the pages still to do are those whose payload lacks the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from pipeline.retrieve.store import PageStore
from pipeline.types import CollectionSpec, Float16Array, Lane, ModelIdentity, SparseVector

__all__ = ["LaneStore"]


@runtime_checkable
class LaneStore(PageStore, Protocol):
    """A :class:`~pipeline.retrieve.store.PageStore` whose lanes can be filled in place."""

    def add_text_vector(self) -> None:
        """Create the text lane's sparse vector (``TEXT_VECTOR``, IDF) on the open collection
        if it lacks it. The manifest is unchanged (:meth:`record_lanes` lists the lane once
        its pages are filled); safe to repeat."""
        ...

    def update_page_text(self, pages: Mapping[str, tuple[Mapping[str, Any], SparseVector]]) -> None:
        """Per page point id: set these payload fields and the page's ``TEXT_VECTOR``
        (an empty vector removes the page's text vector). Other vectors and payload
        fields stay as they are."""
        ...

    def update_vectors(self, vectors: Mapping[str, Mapping[str, Float16Array]]) -> None:
        """Set named (visual) vectors of existing points; payloads and other vectors stay."""
        ...

    def record_lanes(
        self,
        lanes: Sequence[Lane],
        *,
        text_language: str | None = None,
        identity: ModelIdentity | None = None,
    ) -> CollectionSpec:
        """Rewrite the manifest with ``lanes`` (and the text lane's language) after a
        reindex filled a lane; ``identity``, when given, becomes the weights (and model)
        of the visual vectors (``reindex --visual`` on a text-only collection).
        Returns the recorded spec."""
        ...

    def count_pages_without_field(self, key: str) -> int:
        """How many pages' payloads lack ``key`` (missing or null; ``""`` is present)."""
        ...

    def page_ids_without_field(self, key: str, *, batch: int = 256) -> Iterable[list[str]]:
        """Ids of the pages whose payload lacks ``key``, ``batch`` at a time."""
        ...

    def count_pages_missing(self, names: Sequence[str]) -> int:
        """How many pages lack at least one of the named vectors."""
        ...

    def page_ids_missing(self, names: Sequence[str], *, batch: int = 256) -> Iterable[list[str]]:
        """Ids of the pages lacking at least one of the named vectors, in batches."""
        ...
