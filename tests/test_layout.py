"""The house keeps its shape: imports flow one way, with no circles.

    cli, serve, client, evaluate.runner, connectors.langchain   (entry points)
        → api                                     (the PageRAG composition root)
        → stages: ingest, embed, retrieve, answer, evaluate.{metrics,explain}
        → foundation: types, errors, models, config
    connectors (one module or subpackage per outside system) → stages' protocols and the
        foundation; a connector's own modules may import each other, never another connector's

Every import counts — module level, inside functions, under TYPE_CHECKING —
because a lazy import that closes a circle is still a circle a reader has
to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "connectors")

FOUNDATION = {"pipeline.types", "pipeline.errors", "pipeline.models", "pipeline.config"}
STAGES = (
    "pipeline.ingest",
    "pipeline.embed",
    "pipeline.retrieve",
    "pipeline.answer",
    "pipeline.evaluate.metrics",
    "pipeline.evaluate.explain",
)
ABOVE_STAGES = (
    "pipeline.api",
    "pipeline.backends",
    "pipeline.cli",
    "pipeline.serve",
    "pipeline.client",
    "pipeline.evaluate.runner",
    "connectors.langchain",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if "testing" not in p.relative_to(ROOT).parts  # test doubles may use anything
    }


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (``from a import b`` → ``a.b`` if a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in known)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def within(name: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_stages_never_import_connectors_or_what_sits_above_them() -> None:
    bad = {
        (module, target)
        for module, targets in graph().items()
        if within(module, STAGES)
        for target in targets
        if within(target, ("connectors",)) or within(target, ABOVE_STAGES)
    }
    assert bad == set()


def test_retrieve_never_imports_ingest() -> None:
    """Ingest writes into the store (ingest -> retrieve); the store stage never reaches
    back into ingestion: what needs both (adding a lane from the files) lives in ingest."""
    bad = {
        (module, target)
        for module, targets in graph().items()
        if within(module, ("pipeline.retrieve",))
        for target in targets
        if within(target, ("pipeline.ingest",))
    }
    assert bad == set()


def test_the_foundation_imports_only_the_foundation() -> None:
    edges = graph()
    bad = {(m, t) for m in FOUNDATION for t in edges[m] if t not in FOUNDATION}
    assert bad == set()


def connector_of(name: str) -> str:
    """``connectors.<system>``: one outside system's module, or its subpackage."""
    return ".".join(name.split(".")[:2])


def test_a_connector_is_its_module_or_subpackage() -> None:
    assert connector_of("connectors.qdrant_edge.store") == connector_of("connectors.qdrant_edge")
    assert connector_of("connectors.qdrant_edge.store") != connector_of("connectors.qdrant_client")


def test_connectors_implement_stages_and_do_not_reach_above_them() -> None:
    bad = {
        (module, target)
        for module, targets in graph().items()
        if within(module, ("connectors",)) and module != "connectors.langchain"
        for target in targets
        if within(target, ABOVE_STAGES)
        or (within(target, ("connectors",)) and connector_of(target) != connector_of(module))
    }
    assert bad == set()


@pytest.mark.parametrize("stage", ["ingest", "embed", "retrieve", "answer", "evaluate", "cli"])
def test_every_stage_has_a_room(stage: str) -> None:
    init = ROOT / "pipeline" / stage / "__init__.py"
    assert init.is_file()
    assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
