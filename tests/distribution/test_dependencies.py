"""Packaging truths: every third-party module the package imports is a declared dependency, and the LICENSE the
metadata names is there."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from tests.support import ROOT

PACKAGE = ROOT / "tensorfeed_mcp"


HOSTED_ONLY = {PACKAGE / "observability" / "metrics.py", PACKAGE / "store" / "postgres.py"}
"""Modules only the hosted mode imports (lazily), which may use the `hosted` extra."""


def imported_modules(sources: set[Path]) -> set[str]:
    """The top-level names of every module these sources import (deferred imports included)."""
    names: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def declared_distributions(extra: str | None = None) -> set[str]:
    """The distributions pyproject.toml requires, with those of `extra` when given."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return {_normalised(re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]) for requirement in requirements}


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed_distributions(sources: set[Path]) -> tuple[set[str], set[str]]:
    """The third-party modules these sources import, and the distributions that provide them."""
    third_party = imported_modules(sources) - set(sys.stdlib_module_names) - {"tensorfeed_mcp", "__future__"}
    distributions = packages_distributions()
    return third_party, {_normalised(dist) for module in third_party for dist in distributions[module]}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    core, needed = needed_distributions(set(PACKAGE.rglob("*.py")) - HOSTED_ONLY)
    assert core >= {"mcp", "httpx2", "pydantic", "anyio", "starlette", "uvicorn"}  # the scan sees imports
    assert needed <= declared_distributions(), needed - declared_distributions()


def test_what_only_hosting_imports_is_in_the_hosted_extra() -> None:
    hosted, needed = needed_distributions(HOSTED_ONLY)
    assert hosted >= {"psycopg", "psycopg_pool", "prometheus_client"}  # the scan sees imports
    assert needed <= declared_distributions("hosted"), needed - declared_distributions("hosted")


def test_the_license_the_metadata_names_is_in_the_repository() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
