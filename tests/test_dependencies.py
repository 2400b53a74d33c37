"""Packaging truths: every third-party module the package imports is a declared dependency, and the LICENSE the
metadata names is there."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tensorfeed_mcp"


def imported_modules() -> set[str]:
    """The top-level names of every module the package's source imports (deferred imports included)."""
    names: set[str] = set()
    for source in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        _normalised(re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]) for requirement in project["dependencies"]
    }


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency() -> None:
    third_party = imported_modules() - set(sys.stdlib_module_names) - {"tensorfeed_mcp", "__future__"}
    distributions = packages_distributions()
    needed = {_normalised(dist) for module in third_party for dist in distributions[module]}
    assert third_party >= {"mcp", "httpx2", "pydantic", "anyio", "starlette", "uvicorn"}  # the scan sees imports
    assert needed <= declared_distributions(), needed - declared_distributions()


def test_the_license_the_metadata_names_is_in_the_repository() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
