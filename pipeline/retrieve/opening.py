"""Opening an existing collection: what it holds against what is wanted, decided once.

Why this exists: on every open both adapters compare the collection's vector
layout and manifest with the wanted :class:`~pipeline.types.CollectionSpec`,
refuse what cannot be mixed (another model, other weights, another
dimension, distance or comparator) with one message that says how to fix it,
adopt a collection whose creation was interrupted before its manifest, and
decide what an existing collection accepts in place (new pooled vectors, a
new quantization; datatype and on-disk placement stay as created). Only
reading the layout and applying the decisions are engine calls: adapters
describe their layout as :class:`VectorLayout` values and act on an
:class:`Evolution`.

Where a new named vector plugs in: :func:`vector_roles` lists every vector a
spec asks for with its role; each adapter turns a role into its library's
vector parameters in one function.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pipeline.errors import CollectionMismatchError, StoreError
from pipeline.retrieve.store import adopt_identity, weights_problem, weights_remedy
from pipeline.types import CollectionSpec

__all__ = [
    "COMPARATOR",
    "DISTANCE",
    "Evolution",
    "Role",
    "VectorLayout",
    "adopt_unmanifested",
    "plan_evolution",
    "refuse_mismatch",
    "spec_layout",
    "vector_roles",
    "vectors_to_drop",
    "warn_vectors_added",
    "with_pooled",
]

log = logging.getLogger(__name__)

# Every page multivector is scored by late interaction: dot products, MaxSim.
DISTANCE = "Dot"
COMPARATOR = "max_sim"

# "full": the page's multivector (follows store.on_disk); "pooled": its small
# pooled multivectors, scanned by every two-stage first stage.
Role = Literal["full", "pooled"]


@dataclass(frozen=True)
class VectorLayout:
    """One named vector as the engine reports it; None where it does not say."""

    size: int | None
    distance: str | None
    comparator: str | None  # the multivector comparator; None for single vectors
    datatype: str | None = None


@dataclass(frozen=True)
class Evolution:
    """What opening ``recorded`` with a wanted spec changes in place.

    ``spec`` is what the manifest records once the changes are applied;
    ``add`` the pooled vectors to create; ``quantization`` the one to switch
    to, or None to keep the current one.
    """

    recorded: CollectionSpec
    spec: CollectionSpec
    add: tuple[str, ...] = ()
    quantization: str | None = None

    @property
    def changed(self) -> bool:
        """Whether the manifest must be rewritten."""
        return self.spec != self.recorded


def vector_roles(spec: CollectionSpec) -> dict[str, Role]:
    """Every vector ``spec`` asks for, by name, full vector first."""
    roles: dict[str, Role] = {spec.full_vector: "full"}
    roles.update(dict.fromkeys(spec.pooled, "pooled"))
    return roles


def spec_layout(spec: CollectionSpec) -> dict[str, VectorLayout]:
    """The layout a collection created from ``spec`` has (when the engine's own record is lost)."""
    params = VectorLayout(spec.dim, DISTANCE, COMPARATOR, spec.datatype)
    return dict.fromkeys(vector_roles(spec), params)


def refuse_mismatch(
    name: str,
    spec: CollectionSpec,
    recorded: CollectionSpec | None,
    layout: Mapping[str, VectorLayout],
    *,
    where: str,
    delete: str,
) -> None:
    """Raise ``CollectionMismatchError`` naming every difference and the fix, if any.

    ``recorded`` is the manifest's spec (None without a manifest), ``layout``
    the vectors the engine has. ``where`` names the engine or directory and
    ``delete`` what to delete to start over, for the message.
    """
    problems: list[str] = []
    if recorded is not None and recorded.model != spec.model:
        problems.append(
            f"it was filled by model {recorded.model!r}, but embedding.model is {spec.model!r} "
            "(vectors of different models cannot be compared)"
        )
    weights = weights_problem(recorded, spec)
    if weights:
        problems.append(weights)
    if spec.full_vector not in layout:
        problems.append(
            f"it has no vector named {spec.full_vector!r} (it has: "
            f"{', '.join(sorted(layout)) or 'none'})"
        )
    for vector_name in vector_roles(spec):
        params = layout.get(vector_name)
        if params is not None:  # missing pooled vectors are added (plan_evolution)
            problems.extend(_vector_problems(vector_name, params, spec.dim))
    if not problems:
        return
    back = (
        f", or set embedding.model back to {recorded.model!r}"
        if recorded is not None and recorded.model != spec.model
        else ""
    )
    raise CollectionMismatchError(
        f"collection {name!r} in {where} was built differently: "
        + "; ".join(problems)
        + ". To fix it: use another collection (store.collection) and re-ingest into it, "
        + f"or delete {delete} and re-ingest to re-embed every page with the configured model "
        + f"and weights{back}{weights_remedy(recorded, spec)}."
    )


def _vector_problems(name: str, params: VectorLayout, dim: int) -> list[str]:
    problems = []
    if params.size != dim:
        problems.append(
            f"its vector {name!r} has {params.size} dimensions, but the model produces {dim}"
        )
    if params.distance != DISTANCE:
        problems.append(f"its vector {name!r} uses distance {params.distance!r}, not {DISTANCE!r}")
    if params.comparator != COMPARATOR:
        found = params.comparator or "none (single vectors)"
        problems.append(
            f"its vector {name!r} has multivector comparator {found!r}, not {COMPARATOR!r}"
        )
    return problems


def adopt_unmanifested(
    name: str,
    spec: CollectionSpec,
    layout: Mapping[str, VectorLayout],
    pages: int,
    *,
    where: str,
    delete: str,
) -> CollectionSpec:
    """The spec to record for a collection without a manifest, or a refusal.

    Empty, it was created and then interrupted before its manifest was
    written: it is adopted with the vectors and datatype it has. With pages,
    nobody can say which model filled it.
    """
    if pages:
        raise CollectionMismatchError(
            f"collection {name!r} in {where} holds {pages} pages but no pagerag manifest, so "
            "the model that filled it is unknown (it was not created by pagerag, or its "
            f"manifest was removed). Use another collection (store.collection), or delete "
            f"{delete} and re-ingest."
        )
    full = layout.get(spec.full_vector)
    datatype: Any = full.datatype if full is not None and full.datatype else spec.datatype
    return replace(
        spec,
        name=name,
        pooled=tuple(n for n in layout if n != spec.full_vector),
        datatype=datatype,
    )


def plan_evolution(
    name: str, spec: CollectionSpec, recorded: CollectionSpec, existing: Collection[str]
) -> Evolution:
    """What an existing collection (``recorded``, vectors ``existing``) takes from ``spec``.

    Pooled vectors it lacks are added and the quantization is switched;
    datatype and on-disk placement are fixed at creation (a different request
    is logged and the recorded value kept). A manifest that predates weight
    fingerprints adopts ``spec``'s weights (:func:`~pipeline.retrieve.store.adopt_identity`).
    """
    for field in ("datatype", "on_disk"):
        if getattr(spec, field) != getattr(recorded, field):
            log.warning(
                "collection %r keeps %s=%r (fixed at creation); store.%s=%r applies to new "
                "collections only",
                name,
                field,
                getattr(recorded, field),
                field,
                getattr(spec, field),
            )
    updated = adopt_identity(recorded, spec)
    add = tuple(n for n in spec.pooled if n not in existing)
    if add:
        updated = replace(updated, pooled=tuple(dict.fromkeys((*updated.pooled, *add))))
    quantization = spec.quantization if spec.quantization != recorded.quantization else None
    if quantization is not None:
        updated = replace(updated, quantization=spec.quantization)
    return Evolution(recorded, updated, add, quantization)


def warn_vectors_added(name: str, added: Sequence[str], pages: int) -> None:
    """Say that pages stored before pooled vectors were added lack them."""
    if pages:
        log.warning(
            "adding pooled vectors %s to collection %r: its %d existing pages lack them "
            "and two-stage search will miss those pages until they are reindexed",
            list(added),
            name,
            pages,
        )


def vectors_to_drop(
    spec: CollectionSpec, names: Sequence[str], existing: Collection[str]
) -> list[str]:
    """Which of ``names`` to delete: those among ``existing``. Refuses, before any is
    deleted, a vector the manifest (``spec``) still uses."""
    in_use = set(vector_roles(spec))
    for name in names:
        if name in in_use:
            raise StoreError(f"vector {name!r} of {spec.name!r} is in use")
    return [name for name in names if name in existing]


def with_pooled(spec: CollectionSpec, names: Sequence[str]) -> CollectionSpec:
    """``spec`` listing the pooled vectors ``names`` too (after a reindex filled them)."""
    return replace(spec, pooled=tuple(dict.fromkeys((*spec.pooled, *names))))
