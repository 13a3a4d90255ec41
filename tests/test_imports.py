"""The helpers package has no import circle: each module can be read, and imported, on its own terms.

Every import of one helper module by another counts, also one inside a function (a late import hides a
circle from Python, not from a reader).
"""

import ast
from pathlib import Path

import helpers

PACKAGE = Path(helpers.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The helper modules that ``path`` imports, by name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:  # from . import x / from .x import y
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "helpers":
            found.update(a.name for a in node.names)
    return found - {"__init__"}


def graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``edges`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_finder_finds_a_planted_circle():
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b"}, "b": set()}) is None


def test_helpers_have_no_import_circle():
    edges = graph()
    assert {"bench", "device", "timing", "results", "readme", "ladder"} <= set(edges)
    found = circle(edges)
    assert found is None, "import circle: " + " -> ".join(found)
