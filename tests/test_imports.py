"""The helpers package has no import circle: each module can be read, and imported, on its own terms.

Every import of one helper module by another counts, also one inside a function (a late import hides a
circle from Python, not from a reader).
"""

import ast
from pathlib import Path

import helpers

PACKAGE = Path(helpers.__file__).parent


def module_name(path: Path) -> str:
    """A helper module's dotted name inside the package: ``bench``, ``fastgen`` (a package), ``fastgen.model``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The helper modules that ``path`` imports, by dotted name."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]  # what a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:  # from . import x / from .x import y / from .. import z
            base = package[: len(package) - (node.level - 1)]
            module = node.module.split(".") if node.module else []
        elif node.module == "helpers" or (node.module or "").startswith("helpers."):
            base, module = [], node.module.split(".")[1:]
        else:
            continue
        if module:  # from .x import y: x (a package's __init__, if x is a package)
            found.add(".".join(base + module))
        found.update(".".join(base + module + [a.name]) for a in node.names)  # names that are modules themselves
    return found  # graph() keeps the names that are helper modules


def graph() -> dict[str, set[str]]:
    nodes = {module_name(p): p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"}
    return {name: imports_of(path) & set(nodes) for name, path in nodes.items()}


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
    assert {"bench", "device", "timing", "results", "readme", "ladder", "fastgen", "fastgen.triton_step"} <= set(edges)
    assert {"fastgen.policy", "fastgen.triton_step", "fastgen.model", "quant"} <= edges["fastgen.generator"]
    found = circle(edges)
    assert found is None, "import circle: " + " -> ".join(found)
