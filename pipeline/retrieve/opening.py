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

Lanes (:attr:`~pipeline.types.CollectionSpec.lanes`): the visual vectors are
declared in every collection, even a text-only one whose pages have none yet
(``pagerag reindex --visual`` fills them without a schema change); the text
lane's sparse vector only when the spec has the text lane. An opening that
writes (``create``) wanting other lanes than recorded adopts them while the
collection holds no pages and refuses otherwise, naming the reindex that adds
the lane (:func:`reconcile_lanes`); readers take the recorded lanes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pipeline.errors import CollectionMismatchError, StoreError
from pipeline.retrieve.store import adopt_identity, weights_problem, weights_remedy
from pipeline.types import TEXT_VECTOR, CollectionSpec

__all__ = [
    "COMPARATOR",
    "DISTANCE",
    "IDF",
    "Evolution",
    "Role",
    "VectorLayout",
    "adopt_unmanifested",
    "plan_evolution",
    "reconcile_lanes",
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
# pooled multivectors, scanned by every two-stage first stage; "sparse": the text
# lane's BM25 vector, its IDF computed by the engine (modifier IDF).
Role = Literal["full", "pooled", "sparse"]
IDF = "idf"


@dataclass(frozen=True)
class VectorLayout:
    """One named vector as the engine reports it; None where it does not say."""

    size: int | None
    distance: str | None
    comparator: str | None  # the multivector comparator; None for single vectors
    datatype: str | None = None
    # A sparse vector (size, distance and comparator None) and its modifier.
    sparse: bool = False
    modifier: str | None = None


@dataclass(frozen=True)
class Evolution:
    """What opening ``recorded`` with a wanted spec changes in place.

    ``spec`` is what the manifest records once the changes are applied;
    ``add`` the pooled vectors to create; ``add_text`` whether to create the
    text lane's sparse vector; ``quantization`` the one to switch to, or None
    to keep the current one.
    """

    recorded: CollectionSpec
    spec: CollectionSpec
    add: tuple[str, ...] = ()
    quantization: str | None = None
    add_text: bool = False

    @property
    def changed(self) -> bool:
        """Whether the manifest must be rewritten."""
        return self.spec != self.recorded


def vector_roles(spec: CollectionSpec) -> dict[str, Role]:
    """Every vector ``spec`` asks for, by name: full vector first, then pooled (the visual
    vectors, declared whatever the lanes), then the text lane's sparse vector."""
    roles: dict[str, Role] = {spec.full_vector: "full"}
    roles.update(dict.fromkeys(spec.pooled, "pooled"))
    if spec.has_text:
        roles[TEXT_VECTOR] = "sparse"
    return roles


def spec_layout(spec: CollectionSpec) -> dict[str, VectorLayout]:
    """The layout a collection created from ``spec`` has (when the engine's own record is lost)."""
    dense = VectorLayout(spec.dim, DISTANCE, COMPARATOR, spec.datatype)
    sparse = VectorLayout(None, None, None, sparse=True, modifier=IDF)
    return {
        name: sparse if role == "sparse" else dense for name, role in vector_roles(spec).items()
    }


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
    # A text-only collection: no page has visual vectors yet, so no model filled it;
    # the recorded model is only what `reindex --visual` will fill in.
    visual = recorded is None or recorded.has_visual
    if visual and recorded is not None and recorded.model != spec.model:
        problems.append(
            f"it was filled by model {recorded.model!r}, but embedding.model is {spec.model!r} "
            "(vectors of different models cannot be compared)"
        )
    weights = weights_problem(recorded, spec) if visual else None
    if weights:
        problems.append(weights)
    if spec.full_vector not in layout:
        problems.append(
            f"it has no vector named {spec.full_vector!r} (it has: "
            f"{', '.join(sorted(layout)) or 'none'})"
        )
    for vector_name, role in vector_roles(spec).items():
        params = layout.get(vector_name)
        if params is None:  # missing pooled and text vectors are added (plan_evolution)
            continue
        if role == "sparse":
            problems.extend(_sparse_problems(vector_name, params))
        else:
            problems.extend(_vector_problems(vector_name, params, spec.dim))
    if not visual and any("dimensions" in problem for problem in problems):
        problems.append(
            "it holds no visual vectors yet (a text-only collection), but its visual vectors "
            "were declared for another model's size, so this model's pages cannot be added"
        )
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


def _sparse_problems(name: str, params: VectorLayout) -> list[str]:
    if not params.sparse:
        return [f"its vector {name!r} is a dense vector, not the text lane's sparse vector"]
    if params.modifier != IDF:
        return [f"its sparse vector {name!r} has modifier {params.modifier!r}, not {IDF!r}"]
    return []


def _vector_problems(name: str, params: VectorLayout, dim: int) -> list[str]:
    if params.sparse:
        return [f"its vector {name!r} is a sparse vector, not a page multivector"]
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
        pooled=tuple(n for n, v in layout.items() if n != spec.full_vector and not v.sparse),
        datatype=datatype,
    )


def plan_evolution(
    name: str,
    spec: CollectionSpec,
    recorded: CollectionSpec,
    existing: Collection[str],
    *,
    lanes: CollectionSpec | None = None,
) -> Evolution:
    """What an existing collection (``recorded``, vectors ``existing``) takes from ``spec``.

    Pooled vectors it lacks are added and the quantization is switched;
    datatype and on-disk placement are fixed at creation (a different request
    is logged and the recorded value kept). A manifest that predates weight
    fingerprints adopts ``spec``'s weights (:func:`~pipeline.retrieve.store.adopt_identity`).
    ``lanes``: ``recorded`` with the lanes it holds from now on
    (:func:`reconcile_lanes`; None: the recorded ones); a text lane it gains
    without its sparse vector gets one.
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
    updated = adopt_identity(lanes or recorded, spec)
    add = tuple(n for n in spec.pooled if n not in existing)
    if add:
        updated = replace(updated, pooled=tuple(dict.fromkeys((*updated.pooled, *add))))
    quantization = spec.quantization if spec.quantization != recorded.quantization else None
    if quantization is not None:
        updated = replace(updated, quantization=spec.quantization)
    add_text = updated.has_text and TEXT_VECTOR not in existing
    return Evolution(recorded, updated, add, quantization, add_text)


def reconcile_lanes(
    name: str,
    spec: CollectionSpec,
    recorded: CollectionSpec,
    pages: Callable[[], int],
    *,
    writing: bool,
    where: str,
) -> CollectionSpec:
    """``recorded`` with the lanes it holds from now on, or a refusal naming the fix.

    Readers (``writing`` false) take the recorded lanes. A writer wanting other
    lanes (or another text language) adopts them while the collection holds no
    pages (``pages()``, called only then); a collection without visual pages then
    takes the wanted model too. With pages, ``CollectionMismatchError``: new
    pages would lack a lane the old ones have, or the other way round.
    """
    same_text = not spec.has_text or spec.text_language == recorded.text_language
    if not writing or (spec.lanes == recorded.lanes and same_text):
        return recorded
    held = pages()
    if not held:
        adopted = replace(recorded, lanes=spec.lanes, text_language=spec.text_language)
        if not recorded.has_visual:
            adopted = replace(adopted, model=spec.model, identity=spec.identity)
        log.info("collection %r holds no pages: it takes lanes %s", name, list(spec.lanes))
        return adopted
    raise CollectionMismatchError(
        _lanes_problem(name, spec, recorded, held, where=where, same_text=same_text)
    )


def _lanes_problem(
    name: str,
    spec: CollectionSpec,
    recorded: CollectionSpec,
    pages: int,
    *,
    where: str,
    same_text: bool,
) -> str:
    said = f"collection {name!r} in {where} holds {pages} pages with lanes {list(recorded.lanes)}"
    if not same_text and recorded.has_text:
        return (
            f"{said} and its text lane tokenized in {recorded.text_language!r}, but "
            f"text.language is {spec.text_language!r}. To fix it: set text.language back to "
            f"{recorded.text_language!r}, or run `pagerag reindex --text` to rebuild its text "
            "lane in the new language (no re-embedding)."
        )
    lacking = [lane for lane in spec.lanes if lane not in recorded.lanes]
    if lacking == ["text"]:
        return (
            f"{said}, but these pages would get the text lane too. To fix it: run "
            "`pagerag reindex --text` to add the text lane (no re-embedding), then ingest."
        )
    if lacking:
        return (
            f"{said}, but these pages would get the visual lane too. To fix it: run "
            "`pagerag reindex --visual` to embed its pages' images, then ingest."
        )
    missing = [lane for lane in recorded.lanes if lane not in spec.lanes]
    return (
        f"{said}, but new pages would lack lanes {missing}"
        " that its pages have. To fix it: ingest with `--lanes auto` (the default: the "
        "collection's lanes), or use another collection (store.collection)."
    )


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
