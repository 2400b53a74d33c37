"""Packaging as it would be published: the sdist and wheel, server.json for the MCP registry, one version everywhere.

The sdist and wheel are built once per module with `python -m build` (isolated, as a release would be) from a copy of
the files git tracks, so nothing local (.venv, .cache, build output) can get into them, and `twine check` judges them
as PyPI would. server.json is validated against the registry's schema vendored in tests/distribution/schemas/ (its
README says where it comes from).
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from email import message_from_string
from email.message import Message
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client

from tensorfeed_mcp import __version__
from tensorfeed_mcp.sandbox import RunningSandbox
from tests.support import ROOT
from tests.support.env import settings_for
from tests.support.records import read_recorded, record
from tests.support.servers import stdio_params

PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
DIST_NAME = str(PYPROJECT["project"]["name"]).replace("-", "_")
SCHEMA_FILE = Path(__file__).parent / "schemas" / "server.schema.json"
SCHEMA_SHA256 = "3fba09590c99f61735d234822279f4223fab9e300c0a81e81c91ab62a4114de0"
SECRETS = {
    *("TENSORFEED_TOKEN", "TENSORFEED_MCP_AUTH_TOKEN", "TENSORFEED_ALERT_WEBHOOK_URL", "TENSORFEED_MCP_DATABASE_URL"),
}
COMMAND_SECONDS = 300
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ENV_ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| (.*?) \| (.*) \|$", re.MULTILINE)


@dataclass(frozen=True)
class Dists:
    """The built sdist and wheel, and the tracked files they were built from."""

    sdist: Path
    wheel: Path
    tracked: list[str]

    def wheel_file(self, name: str) -> bytes:
        """A file of the wheel's .dist-info folder."""
        with zipfile.ZipFile(self.wheel) as wheel:
            return wheel.read(f"{DIST_NAME}-{__version__}.dist-info/{name}")

    def sdist_file(self, name: str) -> bytes:
        """A file of the sdist, by its path inside the project."""
        with tarfile.open(self.sdist) as sdist:
            member = sdist.extractfile(f"{DIST_NAME}-{__version__}/{name}")
            assert member is not None, f"{name} is not a file in {self.sdist.name}"
            return member.read()


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command (in the repository unless told), record its output, and fail the test if it fails."""
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},  # twine's rich output: plain, unwrapped
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} took over {COMMAND_SECONDS} s", pytrace=False)
    record(done.stdout + done.stderr)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}", pytrace=False)
    return done


def metadata(raw: bytes) -> Message:
    """Core metadata (a wheel's METADATA, an sdist's PKG-INFO) as a message."""
    return message_from_string(raw.decode())


def server_json() -> dict[str, Any]:
    server: dict[str, Any] = json.loads((ROOT / "server.json").read_text())
    return server


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The sdist and wheel `python -m build` makes from a copy of the tracked files, as from a clean clone."""
    tracked = [name for name in run("git", "ls-files", "-z").stdout.split("\0") if name]
    source = tmp_path_factory.mktemp("source")
    for name in tracked:
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree would not be released either
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", str(out), str(source))
    (sdist,), (wheel,) = list(out.glob("*.tar.gz")), list(out.glob("*.whl"))
    return Dists(sdist=sdist, wheel=wheel, tracked=tracked)


def test_sdist_and_wheel_pass_twine_check(dists: Dists) -> None:
    """twine's strict check (metadata, and the README rendering as PyPI would show it) passes for both files."""
    names = (dists.sdist.name, dists.wheel.name)
    done = run(sys.executable, "-m", "twine", "check", "--strict", *names, cwd=dists.wheel.parent)
    verdicts = dict(re.findall(r"Checking\s+(\S+):\s+(\w+)", ANSI.sub("", done.stdout)))
    assert verdicts == dict.fromkeys(names, "PASSED"), done.stdout


def test_wheel_holds_every_module_the_license_and_the_console_script(dists: Dists) -> None:
    """The wheel holds exactly the package's tracked modules and pages (the sandbox's modules and the dashboard
    too), LICENSE, and the entry point."""
    with zipfile.ZipFile(dists.wheel) as wheel:
        packaged = {name for name in wheel.namelist() if name.endswith((".py", ".html"))}
    tracked = {name for name in dists.tracked if name.startswith("tensorfeed_mcp/") and name.endswith((".py", ".html"))}
    assert packaged == tracked
    assert {"tensorfeed_mcp/sandbox/__init__.py", "tensorfeed_mcp/ui/dashboard.html"} <= packaged
    assert dists.wheel_file("licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dists.wheel_file("entry_points.txt").decode())
    assert (
        dict(entry_points["console_scripts"])
        == PYPROJECT["project"]["scripts"]
        == {"tensorfeed-mcp": "tensorfeed_mcp.cli:main"}
    )
    core = metadata(dists.wheel_file("METADATA"))
    assert (core["License-Expression"], core["License-File"]) == ("MIT", "LICENSE")
    assert dict(url.split(", ", 1) for url in core.get_all("Project-URL", [])) == PYPROJECT["project"]["urls"]
    assert core.get_all("Classifier") == PYPROJECT["project"]["classifiers"]


def test_sdist_holds_the_readme_and_license_and_nothing_local(dists: Dists) -> None:
    """The sdist carries README.md (also as its long description) and LICENSE, and no .venv, .cache or .git."""
    readme = (ROOT / "README.md").read_bytes()
    assert dists.sdist_file("README.md") == readme
    assert dists.sdist_file("LICENSE") == (ROOT / "LICENSE").read_bytes()
    core = metadata(dists.sdist_file("PKG-INFO"))
    assert core["Description-Content-Type"] == "text/markdown"
    assert str(core.get_payload()).strip() == readme.decode().strip()
    with tarfile.open(dists.sdist) as sdist:
        local = [name for name in sdist.getnames() if {".venv", ".cache", ".git", "dist"} & set(Path(name).parts)]
    assert local == []


def test_vendored_schema_is_the_published_release() -> None:
    """schemas/server.schema.json (beside this file) is the registry's published file byte for byte; server.json
    names it."""
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert json.loads(SCHEMA_FILE.read_text())["$id"] == server_json()["$schema"]


def test_server_json_is_valid_for_the_registry() -> None:
    """server.json passes the registry's schema (formats too) and describes the PyPI package run with uvx over stdio."""
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(server_json())
    ]
    assert errors == []
    (package,) = server_json()["packages"]
    assert (package["registryType"], package["identifier"]) == ("pypi", PYPROJECT["project"]["name"])
    assert (package["runtimeHint"], package["transport"]) == ("uvx", {"type": "stdio"})
    assert server_json()["repository"]["url"] == PYPROJECT["project"]["urls"]["Repository"]


def readme_environment_table() -> dict[str, str]:
    """The README's "Environment variables" table: each variable and its default cell."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Environment variables\n", 1)[1].split("\n## ", 1)[0]
    rows = {name: default for name, default, _ in ENV_ROW.findall(section)}
    assert len(rows) == len(ENV_ROW.findall(section)), "a variable is listed twice"
    return rows


def test_server_json_environment_is_the_readme_table() -> None:
    """Exactly the README's variables, each described; the token alone required; secrets marked; defaults as listed."""
    table = readme_environment_table()
    (package,) = server_json()["packages"]
    variables = {variable["name"]: variable for variable in package["environmentVariables"]}
    assert len(variables) == len(package["environmentVariables"]), "a variable is listed twice"
    assert sorted(variables) == sorted(table)
    assert all(variable["description"].strip() for variable in variables.values())
    assert {name for name, variable in variables.items() if variable.get("isRequired")} == {"TENSORFEED_TOKEN"}
    assert {name for name, variable in variables.items() if variable.get("isSecret")} == SECRETS
    # A default cell that is one literal in backticks is a value; "(none)", "off" and prose are not.
    literal_defaults = {name: match[1] for name, cell in table.items() if (match := re.fullmatch(r"`([^`]+)`", cell))}
    assert {name: variable["default"] for name, variable in variables.items() if "default" in variable} == (
        literal_defaults
    )


@pytest.mark.anyio
async def test_one_version_everywhere(dists: Dists, sandbox: RunningSandbox, tmp_path: Path) -> None:
    """__version__ is what the wheel, the sdist, server.json, manifest.json and a running server all say."""
    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as errlog:
        params = stdio_params(settings_for(sandbox, tmp_path / "state"))
        async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
            server_info = client.server_info
    read_recorded(stderr)
    assert server_info is not None
    record(server_info.model_dump_json())
    (package,) = server_json()["packages"]
    versions = {
        "wheel": metadata(dists.wheel_file("METADATA"))["Version"],
        "sdist": metadata(dists.sdist_file("PKG-INFO"))["Version"],
        "server.json": server_json()["version"],
        "server.json package": package["version"],
        "manifest.json": json.loads((ROOT / "manifest.json").read_text())["version"],
        "serverInfo": server_info.version,
    }
    assert versions == dict.fromkeys(versions, __version__)
