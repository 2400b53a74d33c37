"""The official MCP conformance suite (npm @modelcontextprotocol/conformance) against the server over streamable HTTP.

The suite needs Node 22 or later, so a Node 22 binary (the npm package `node`) is installed beside it; both are
pinned and go to .cache/conformance/ in the repository the first time (npm install), and later runs reuse that folder
without the network. One server on the sandbox serves every scenario (each opens its own session). Every server
scenario the suite lists is either run here and must pass, or is in NOT_APPLICABLE with the reason.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tensorfeed_mcp.sandbox import RunningSandbox
from tests.support import ROOT
from tests.support.env import settings_for
from tests.support.npm import install_pinned, run_or_fail
from tests.support.records import record
from tests.support.servers import ServerProcess, serving

pytestmark = pytest.mark.npm

SUITE_VERSION = "0.1.16"
NODE_VERSION = "22.23.3"
INSTALL_DIR = ROOT / ".cache" / "conformance" / f"{SUITE_VERSION}-node-{NODE_VERSION}"
PACKAGE_JSON = {
    "private": True,
    "dependencies": {"@modelcontextprotocol/conformance": SUITE_VERSION, "node": NODE_VERSION},
    "allowScripts": {f"node@{NODE_VERSION}": True},  # its preinstall fetches the platform's binary; newer npm asks
}
NODE_SECONDS = 60
ANSI = re.compile(r"\x1b\[[0-9;]*m")

SCENARIOS = (
    "server-initialize",
    "ping",
    "logging-set-level",
    "tools-list",
    "resources-list",
    "prompts-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
)
"""The scenarios that check the server itself; each must pass."""

_FIXTURE = "needs the suite's reference fixture "
NOT_APPLICABLE: dict[str, str] = {
    "completion-complete": (
        _FIXTURE + "prompt test_prompt_with_arguments; completion is optional and the server declares no "
        "`completions` capability (its one prompt takes no arguments), so 'method not found' is the right answer"
    ),
    "tools-call-simple-text": (
        _FIXTURE + "tool test_simple_text; it 'passes' only because an unknown tool comes back as an isError "
        "result with text, which says nothing about the server's tools"
    ),
    "tools-call-image": _FIXTURE + "tool test_image_content; the server's tools return JSON, never images",
    "tools-call-audio": _FIXTURE + "tool test_audio_content; the server's tools return JSON, never audio",
    "tools-call-embedded-resource": _FIXTURE + "tool test_embedded_resource; no tool embeds a resource",
    "tools-call-mixed-content": _FIXTURE + "tool test_multiple_content_types (text, image and resource at once)",
    "tools-call-with-logging": _FIXTURE + "tool test_tool_with_logging, which sends three info log notifications",
    "tools-call-error": (
        _FIXTURE + "tool test_error_handling; it 'passes' only because an unknown tool comes back as an isError "
        "result (the server's own tool errors are checked in test_tools.py)"
    ),
    "tools-call-with-progress": _FIXTURE + "tool test_tool_with_progress; no tool sends progress notifications",
    "tools-call-sampling": _FIXTURE + "tool test_sampling; the server never asks the client to sample",
    "tools-call-elicitation": _FIXTURE + "tool test_elicitation; the server never elicits input from the client",
    "json-schema-2020-12": (
        _FIXTURE + "tool json_schema_2020_12_tool (with $schema, $defs, additionalProperties); pending in the suite"
    ),
    "elicitation-sep1034-defaults": _FIXTURE + "tool test_elicitation_sep1034_defaults; the server never elicits",
    "elicitation-sep1330-enums": _FIXTURE + "tool test_elicitation_sep1330_enums; the server never elicits",
    "server-sse-polling": (
        _FIXTURE + "tool test_reconnection, which closes its SSE stream mid-call (SEP-1699); pending in the suite"
    ),
    "resources-read-text": _FIXTURE + "resource test://static-text",
    "resources-read-binary": _FIXTURE + "resource test://static-binary; the server has no binary resources",
    "resources-templates-read": _FIXTURE + "template test://template/{id}/data; the server has no resource templates",
    "resources-subscribe": (
        _FIXTURE + "resource test://watched-resource, which the server rightly refuses as unknown (-32602); "
        "its own subscriptions are checked in test_alert_tools.py"
    ),
    "resources-unsubscribe": _FIXTURE + "resource test://watched-resource (it subscribes to it first)",
    "prompts-get-simple": _FIXTURE + "prompt test_simple_prompt",
    "prompts-get-with-args": _FIXTURE + "prompt test_prompt_with_arguments",
    "prompts-get-embedded-resource": _FIXTURE + "prompt test_prompt_with_embedded_resource",
    "prompts-get-with-image": _FIXTURE + "prompt test_prompt_with_image",
}
"""Server scenarios not run here, with the reason: they exercise fixtures or optional features the server lacks."""


@dataclass(frozen=True)
class Suite:
    """An install of the pinned suite and Node binary in `folder`."""

    folder: Path

    @property
    def node(self) -> Path:
        return self.folder / "node_modules" / "node" / "bin" / "node"

    @property
    def package(self) -> Path:
        return self.folder / "node_modules" / "@modelcontextprotocol" / "conformance"

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the suite's CLI with the pinned Node (its shebang would pick the system's); fail on a time-out."""
        command = [str(self.node), str(self.package / "dist" / "index.js"), *args]
        done = run_or_fail(command, cwd=cwd, timeout=NODE_SECONDS)
        record(done.stdout + done.stderr)
        return done

    def problem(self) -> str | None:
        """Why this install is unusable (missing, or other versions), or None when it works."""
        try:
            version = json.loads((self.package / "package.json").read_text())["version"]
            node = subprocess.run(
                [str(self.node), "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
            )
        except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            return f"not installed in {self.folder}: {exc}"
        if version != SUITE_VERSION or node.stdout.strip() != f"v{NODE_VERSION}":
            return f"{self.folder} has suite {version} and node {node.stdout.strip() or node.stderr.strip()}"
        return None


def problem_of(folder: Path) -> str | None:
    return Suite(folder).problem()


@pytest.fixture(scope="session")
def suite() -> Suite:
    """The pinned suite and Node 22, installed into .cache/conformance/ on first use."""
    install_pinned(INSTALL_DIR, PACKAGE_JSON, problem_of)
    return Suite(INSTALL_DIR)


@pytest.fixture(scope="module")
def conformance_server(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `tensorfeed-mcp serve --transport streamable-http` on the sandbox's busy account, for every scenario."""
    with serving(settings_for(sandbox, tmp_path_factory.mktemp("conformance-state"))) as served:
        yield served


def test_every_server_scenario_is_run_or_explained(suite: Suite) -> None:
    """The suite's scenario list matches SCENARIOS plus NOT_APPLICABLE, so a new pinned version shows what it adds."""
    listed = suite.run("list", "--server")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    names = re.findall(r"^\s+- (\S+)", listed.stdout, re.MULTILINE)
    assert not set(SCENARIOS) & set(NOT_APPLICABLE)
    assert sorted(names) == sorted([*SCENARIOS, *NOT_APPLICABLE]), listed.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_passes(suite: Suite, conformance_server: ServerProcess, scenario: str, tmp_path: Path) -> None:
    """The suite exits 0 for the scenario and its checks.json holds at least one success and no failure."""
    already = len(conformance_server.output())
    url = conformance_server.url
    done = suite.run("server", "--url", url, "--scenario", scenario, "--output-dir", str(tmp_path), cwd=tmp_path)
    results = sorted(tmp_path.glob("*/checks.json"))
    checks: list[dict[str, Any]] = json.loads(results[0].read_text()) if results else []
    statuses = Counter(check.get("status") for check in checks)
    server_output = conformance_server.output()[already:]
    report = ANSI.sub("", f"{done.stdout}{done.stderr}\n--- server output meanwhile ---\n{server_output}")
    exit_code = done.returncode
    assert exit_code == 0, f"the suite exited {exit_code} for {scenario}:\n{report}"
    assert statuses["SUCCESS"] > 0 and statuses["FAILURE"] == 0, f"{scenario}: checks {dict(statuses)}:\n{report}"
