"""The MCP Bundle: `make bundle` validates manifest.json and packs tensorfeed-mcp.mcpb with the official CLI, and the
server that the packed manifest describes starts from the unpacked bundle and answers a real MCP client over stdio.

The manifest's server type is `uv`: a host runs `uv run --directory <bundle> tensorfeed-mcp`, which installs the
bundled pyproject.toml's dependencies into a fresh environment and starts its console script. uv is not in the test
environment, whose Python already holds those dependencies from the same pyproject.toml, so the test maps that one
step onto it: the console script named in the bundle's [project.scripts], run by this Python from the unpacked folder.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox
from tensorfeed_mcp.settings.environment import Settings
from tests.support import ROOT
from tests.support.clients import TOOL_NAMES, Caller, in_memory
from tests.support.records import read_recorded, record

REPO = ROOT
BUNDLE = REPO / "tensorfeed-mcp.mcpb"
MAKE_SECONDS = 600  # the first run npm-installs the CLI
BUNDLED = {"manifest.json", "icon.png", "pyproject.toml", "README.md", "LICENSE", "tensorfeed_mcp"}
"""What `uv run` needs to install and start the server from the bundle, and nothing else."""
USER_CONFIG_VALUE = re.compile(r"\$\{user_config\.(\w+)\}")


def repo_manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((REPO / "manifest.json").read_text())
    return manifest


@pytest.fixture(scope="module")
def make_output() -> str:
    """What `make bundle` printed; it must exit 0 within MAKE_SECONDS."""
    command = ["make", "--no-print-directory", "bundle"]
    try:
        done = subprocess.run(
            command, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=MAKE_SECONDS
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"make bundle took over {MAKE_SECONDS} s: {exc.stdout!r} {exc.stderr!r}", pytrace=False)
    output = done.stdout + done.stderr
    record(output)
    assert done.returncode == 0, f"make bundle exited {done.returncode}:\n{output}"
    return output


@pytest.fixture(scope="module")
def unpacked(make_output: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The freshly built bundle, unzipped."""
    folder = tmp_path_factory.mktemp("bundle")
    with zipfile.ZipFile(BUNDLE) as archive:
        archive.extractall(folder)
    return folder


@pytest.mark.npm
def test_make_bundle_validates_and_packs_only_what_the_server_needs(make_output: str, unpacked: Path) -> None:
    """The CLI validated the manifest; the bundle holds the manifest, a 512x512 PNG icon and the package's sources
    (every module and page of the repository's package, no caches), and no tests, venvs, caches or VCS data."""
    assert "Manifest schema validation passes!" in make_output
    assert {path.name for path in unpacked.iterdir()} == BUNDLED
    assert json.loads((unpacked / "manifest.json").read_text()) == repo_manifest()
    bundled = sorted(path.relative_to(unpacked) for path in (unpacked / "tensorfeed_mcp").rglob("*") if path.is_file())
    sources = sorted(
        path.relative_to(REPO) for pattern in ("*.py", "*.html") for path in (REPO / "tensorfeed_mcp").rglob(pattern)
    )
    assert bundled == sources
    icon = (unpacked / repo_manifest()["icon"]).read_bytes()
    assert icon[:8] == b"\x89PNG\r\n\x1a\n" and icon[12:16] == b"IHDR"
    assert struct.unpack(">II", icon[16:24]) == (512, 512)


@pytest.mark.anyio
async def test_manifest_lists_exactly_the_servers_tools() -> None:
    """The manifest's tools are the server's tools/list, names and descriptions, in the same order."""
    async with in_memory(Settings()) as client:
        tools = (await client.list_tools()).tools
    listed = [{"name": tool.name, "description": tool.description} for tool in tools]
    assert repo_manifest()["tools"] == listed


def test_user_config_is_what_the_server_reads() -> None:
    """The token is a required secret string; every option is used in the server's env and every env value is one."""
    manifest = repo_manifest()
    options: dict[str, dict[str, Any]] = manifest["user_config"]
    token = options["token"]
    assert (token["type"], token["sensitive"], token["required"]) == ("string", True, True)
    assert not any(option.get("required") for name, option in options.items() if name != "token")
    env: dict[str, str] = manifest["server"]["mcp_config"]["env"]
    used = {name: USER_CONFIG_VALUE.fullmatch(value) for name, value in env.items()}
    assert all(used.values()), env
    assert sorted(match.group(1) for match in used.values() if match) == sorted(options)
    assert env["TENSORFEED_TOKEN"] == "${user_config.token}"


def substituted(value: str, dirname: Path, user_config: dict[str, str]) -> str:
    """`value` with ${__dirname} and ${user_config.KEY} replaced, as a host does when it installs the bundle."""
    value = value.replace("${__dirname}", str(dirname))
    return USER_CONFIG_VALUE.sub(lambda match: user_config[match.group(1)], value)


def uv_run_here(args: list[str], home: Path, env: dict[str, str]) -> StdioServerParameters:
    """`uv run --directory DIR SCRIPT` as this Python running SCRIPT's entry point from DIR's [project.scripts]."""
    assert args[:2] == ["run", "--directory"] and len(args) == 4, args
    project, script = Path(args[2]), args[3]
    entry = tomllib.loads((project / "pyproject.toml").read_text())["project"]["scripts"][script]
    module, function = entry.split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    # A fresh HOME keeps the server's state (alert rules, ledger) out of the user's; PYTHONPATH puts the bundle first.
    full_env = {**env, "HOME": str(home), "PYTHONPATH": str(project)}
    return StdioServerParameters(command=sys.executable, args=["-c", code], env=full_env, cwd=project)


@pytest.mark.npm
@pytest.mark.anyio
async def test_unpacked_bundle_starts_and_answers(unpacked: Path, sandbox: RunningSandbox, tmp_path: Path) -> None:
    """The manifest's mcp_config, with a demo token, the sandbox's URL and a balance alert as the user's settings,
    starts the bundle's own code; it lists the 10 tools, reports the sandbox's balance and applies the alert."""
    manifest = json.loads((unpacked / "manifest.json").read_text())
    config = manifest["server"]["mcp_config"]
    assert manifest["server"]["type"] == "uv" and config["command"] == "uv"
    balance = sandbox.control.account("busy")["balance"]
    user_config = {
        "token": DEMO_TOKENS["busy"],
        "api_url": sandbox.api_url,
        "alert_balance_below": str(balance + 1),
        "poll_seconds": "",  # an optional setting left empty
    }
    args = [substituted(arg, unpacked, user_config) for arg in config["args"]]
    env = {name: substituted(value, unpacked, user_config) for name, value in config["env"].items()}
    params = uv_run_here(args, tmp_path / "home", env)

    where = subprocess.run(
        [params.command, "-c", "import tensorfeed_mcp; print(tensorfeed_mcp.__file__)"],
        cwd=params.cwd,
        env=params.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()).resolve().is_relative_to(unpacked.resolve()), where.stdout + where.stderr

    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            caller = Caller(client)
            names = [tool.name for tool in (await client.list_tools()).tools]
            assert len(names) == 10 and set(names) == TOOL_NAMES
            assert (await caller.ok("get_account_balance"))["balance"] == balance
            alerts = (await caller.ok("check_spend_alerts"))["alerts"]
    read_recorded(stderr)
    assert [(alert["kind"], alert["threshold"], alert["status"]) for alert in alerts] == [
        ("balance_below", balance + 1, "triggered")
    ]
