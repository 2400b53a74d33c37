"""The package's layering holds: no module imports another that (directly or through others) imports it back, at
module level or inside a function."""

from __future__ import annotations

import ast

from tests.support import ROOT

PACKAGE = ROOT / "tensorfeed_mcp"


def module_imports() -> dict[str, set[str]]:
    """Each package module's name, and the package modules it imports anywhere in its text."""
    names = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }
    imports: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
            imports[name].update(target for target in targets if target in names)
    return imports


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every path that leads from a module back to itself, each found once, as the modules along it."""
    found: list[list[str]] = []

    def walk(path: list[str]) -> None:
        for follower in sorted(graph[path[-1]]):
            if follower == path[0]:
                found.append(path)
            elif follower not in path and follower > path[0]:  # each circle is found from its least module only
                walk([*path, follower])

    for start in sorted(graph):
        walk([start])
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = module_imports()
    assert {"tensorfeed_mcp.surface.server", "tensorfeed_mcp.store.base"} <= graph.keys()
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
