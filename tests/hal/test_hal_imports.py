"""The HAL's modules import each other without a cycle (checked on the source, so a cycle that
only shows under TYPE_CHECKING counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import hadmc.hal

HAL = Path(hadmc.hal.__file__).parent


def _module_level_imports(path: Path) -> set[str]:
    """Sibling modules imported at module level (function-local imports are lazy on purpose)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks count
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("hadmc.hal."):
                found.add(node.module.split(".")[2])
    return found


def _graph() -> dict[str, set[str]]:
    return {p.stem: _module_level_imports(p) for p in HAL.glob("*.py") if p.stem != "__init__"}


def test_hal_has_no_import_cycle():
    graph = _graph()
    state: dict[str, str] = {}

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = "open"
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path, mod, dep]))
            if dep not in state:
                visit(dep, [*path, mod])
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [])


def test_latency_does_not_import_the_cache():
    graph = _graph()
    assert "cache" not in graph["latency"] and "latency" in graph["cache"]
