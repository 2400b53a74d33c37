"""The package's layering holds (CONTRIBUTING.md draws it): no module imports a layer above its own, and none imports
another that (directly or through others) imports it back, at module level or inside a function."""

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


# Each layer's modules by name prefix, lowest first; a module may import its own layer and those below it.
LAYERS: list[tuple[str, ...]] = [
    ("tensorfeed_mcp", "tensorfeed_mcp.models", "tensorfeed_mcp.errors", "tensorfeed_mcp.limits"),
    ("tensorfeed_mcp.core",),
    ("tensorfeed_mcp.settings", "tensorfeed_mcp.observability"),
    ("tensorfeed_mcp.store", "tensorfeed_mcp.upstream"),
    ("tensorfeed_mcp.service",),
    ("tensorfeed_mcp.surface",),
    ("tensorfeed_mcp.runtime",),
    ("tensorfeed_mcp.transports",),
    ("tensorfeed_mcp.cli", "tensorfeed_mcp.__main__", "tensorfeed_mcp.demo", "tensorfeed_mcp.report"),
]


def layer_of(module: str) -> int | None:
    """The layer of a package module (its longest matching prefix), None for the sandbox, which stands apart."""
    if module.startswith("tensorfeed_mcp.sandbox"):
        return None
    matches = [
        (len(prefix), rank)
        for rank, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} belongs to no layer: add it to LAYERS (and to CONTRIBUTING.md)"
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import in `graph` of a module from a higher layer than the importer's."""
    return [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if (own := layer_of(module)) is not None and (theirs := layer_of(target)) is not None and theirs > own
    ]


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward_imports(module_imports()) == []


def test_the_sandbox_shares_no_code_with_the_server() -> None:
    graph = module_imports()
    crossings = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if (layer_of(module) is None) != (layer_of(target) is None)
        and module not in ("tensorfeed_mcp.cli", "tensorfeed_mcp.demo")  # the commands that start a sandbox
    ]
    assert crossings == []


def test_the_layer_check_sees_an_upward_import() -> None:
    graph = {
        "tensorfeed_mcp.core.alerts": {"tensorfeed_mcp.service.account", "tensorfeed_mcp.limits"},
        "tensorfeed_mcp.service.account": {"tensorfeed_mcp.core.alerts"},
        "tensorfeed_mcp.sandbox.api": {"tensorfeed_mcp.cli"},
    }
    assert upward_imports(graph) == ["tensorfeed_mcp.core.alerts -> tensorfeed_mcp.service.account"]


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
