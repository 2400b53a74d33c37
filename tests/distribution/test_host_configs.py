"""Every host config block in the README, parsed in its own format and started through a real MCP client.

The blocks are found by their section headings (SECTIONS), so a block that disappears or changes format fails
here. Each names `uvx tensorfeed-mcp`, which runs the test environment's installed console script instead; the
placeholder token becomes a demo token and the server is pointed at the sandbox. Claude Code's own CLI (npm
@anthropic-ai/claude-code, pinned, installed into .cache/claude-code/ on first use and later reused offline) runs
the README's `claude mcp add` lines with an isolated HOME, and `claude mcp list` must report the server connected,
over stdio and over HTTP with the bearer header. The CLI is a native binary: Node (the system's) only runs npm.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tensorfeed_mcp.cli import _parser
from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox
from tests.support import ROOT
from tests.support.clients import TOOL_NAMES, Caller
from tests.support.env import replica_env, settings_for
from tests.support.npm import install_pinned, run_or_fail
from tests.support.records import read_recorded, record
from tests.support.servers import ServerProcess, console_script, serving, start_replica, stop

README = (ROOT / "README.md").read_text()
PLACEHOLDER_TOKEN = "tf_live_…"
SECTIONS = {
    "Use it from Claude Desktop": ["json"],
    "Use it from Claude Code": ["sh", "sh"],
    "Use it from VS Code": ["json"],
    "Use it from Cursor": ["json"],
    "Use it from Codex": ["toml"],
    "Try it against the sandbox": ["sh"],
    "Host it for a team": ["sh", "sh", "sh"],
}
"""The README sections holding host configs, with the fence language of each block in them, in order."""
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
INPUT = re.compile(r"^\$\{input:(.+)\}$")
_SANDBOX_ARGS = _parser().parse_args(["sandbox"])
SANDBOX_URL = f"http://{_SANDBOX_ARGS.host}:{_SANDBOX_ARGS.port}/api"
"""What `tensorfeed-mcp sandbox` prints as TENSORFEED_API_URL when started with its defaults."""
_SERVE_ARGS = _parser().parse_args(["serve"])
SERVE_URL = f"http://{_SERVE_ARGS.host}:{_SERVE_ARGS.port}/mcp"

CLAUDE_CODE_VERSION = "2.1.332"
CLAUDE_CODE_DIR = ROOT / ".cache" / "claude-code" / CLAUDE_CODE_VERSION
CLAUDE_CODE_NAME = "@anthropic-ai/claude-code"
CLAUDE_CODE_PACKAGE = f"{CLAUDE_CODE_NAME}@{CLAUDE_CODE_VERSION}"
CLAUDE_SECONDS = 60
CONNECTED = "✔ Connected"

pytestmark = pytest.mark.anyio


def section(heading: str) -> str:
    """The text of the README's `## heading` section, up to the next `## ` heading."""
    parts = re.split(r"^## (.+)\n", README, flags=re.MULTILINE)
    bodies = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert heading in bodies, f"the README has no section '## {heading}'"
    return bodies[heading]


def blocks(heading: str) -> list[str]:
    """The fenced blocks of a host section, after checking their languages are the ones SECTIONS lists."""
    found = FENCE.findall(section(heading))
    assert [language for language, _ in found] == SECTIONS[heading], f"blocks under '## {heading}' changed"
    return [body for _, body in found]


@dataclass(frozen=True)
class ShellCommand:
    """One line of a shell block: the NAME=value words before the command, then the command's words."""

    env: dict[str, str]
    words: list[str]


def shell_commands(block: str) -> list[ShellCommand]:
    """Each line of a shell block split as the shell would, leading NAME=value words taken as its environment."""
    commands = []
    for line in block.replace("\\\n", "").splitlines():  # a line ending in a backslash goes on
        words = shlex.split(line, comments=True)
        env: dict[str, str] = {}
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        commands.append(ShellCommand(env, words))
    return commands


@dataclass(frozen=True)
class ClaudeAdd:
    """A parsed `claude mcp add` line."""

    words: list[str]
    name: str
    transport: str
    env: dict[str, str]
    headers: dict[str, str]
    target: list[str]
    """The command after `--` (stdio), or the URL (http)."""


def claude_add(command: ShellCommand) -> ClaudeAdd:
    words = command.words
    assert not command.env and words[:3] == ["claude", "mcp", "add"], words
    options: dict[str, list[str]] = {"--transport": [], "-e": [], "--header": []}
    positional: list[str] = []
    rest = words[3:]
    while rest:
        word = rest.pop(0)
        if word == "--":
            positional.extend(rest)
            break
        if word in options:
            options[word].append(rest.pop(0))
        else:
            positional.append(word)
    env = dict(pair.split("=", 1) for pair in options["-e"])
    headers = dict(header.split(": ", 1) for header in options["--header"])
    transport = options["--transport"][0] if options["--transport"] else "stdio"
    return ClaudeAdd(list(words), positional[0], transport, env, headers, positional[1:])


def local_command(command: list[str]) -> list[str]:
    """`uvx tensorfeed-mcp ...` as the installed script of the environment running the tests."""
    assert command[:2] == ["uvx", "tensorfeed-mcp"], f"the README runs {command}, not uvx tensorfeed-mcp"
    return [console_script(), *command[2:]]


@dataclass(frozen=True)
class StdioConfig:
    command: list[str]
    env: dict[str, str]


def json_server(block: str, key: str) -> StdioConfig:
    """The `tensorfeed` entry under `key` of a JSON config; VS Code's password inputs stand for the token."""
    document = json.loads(block)
    server = document[key]["tensorfeed"]
    inputs = {entry["id"]: entry for entry in document.get("inputs", [])}
    env = {}
    for name, value in server.get("env", {}).items():
        reference = INPUT.match(value)
        if reference:
            prompt = inputs[reference.group(1)]
            assert (prompt["type"], prompt["password"]) == ("promptString", True), prompt
            value = PLACEHOLDER_TOKEN  # what the user types when VS Code prompts
        env[name] = value
    if key == "servers":  # VS Code's format names the transport
        assert server["type"] == "stdio"
    return StdioConfig([server["command"], *server["args"]], env)


def stdio_config(host: str) -> StdioConfig:
    """The stdio server a host's README block describes."""
    if host == "claude-desktop":
        return json_server(blocks("Use it from Claude Desktop")[0], "mcpServers")
    if host == "vscode":
        return json_server(blocks("Use it from VS Code")[0], "servers")
    if host == "cursor":
        return json_server(blocks("Use it from Cursor")[0], "mcpServers")
    if host == "codex":
        server = tomllib.loads(blocks("Use it from Codex")[0])["mcp_servers"]["tensorfeed"]
        return StdioConfig([server["command"], *server["args"]], server["env"])
    added = claude_stdio_line(host)
    assert added.transport == "stdio"
    return StdioConfig(added.target, added.env)


def claude_stdio_line(host: str) -> ClaudeAdd:
    """The `claude mcp add` line of the Claude Code section, or of the sandbox section after its `sandbox` line."""
    if host == "claude-code":
        (command,) = shell_commands(blocks("Use it from Claude Code")[0])
        return claude_add(command)
    assert host == "sandbox", host
    start, add = shell_commands(blocks("Try it against the sandbox")[0])
    assert local_command(start.words)[1:] == ["sandbox"] and not start.env
    return claude_add(add)


def local_env(config: StdioConfig, host: str, sandbox: RunningSandbox, state_dir: Path) -> dict[str, str]:
    """The block's env with a demo token for the placeholder, the sandbox for the API and a private state dir."""
    assert config.env["TENSORFEED_TOKEN"] == PLACEHOLDER_TOKEN
    # Only the sandbox block names an API URL, and it is the one the sandbox command prints by default.
    assert config.env.get("TENSORFEED_API_URL") == (SANDBOX_URL if host == "sandbox" else None)
    return config.env | {
        "TENSORFEED_TOKEN": DEMO_TOKENS["busy"],
        "TENSORFEED_API_URL": sandbox.api_url,
        "TENSORFEED_MCP_STATE_DIR": str(state_dir),
    }


def test_the_readme_holds_every_host_block_and_its_first_screen_the_one_line() -> None:
    """SECTIONS matches the README; before the first section come `make demo`, `make test`, then Claude Code's line.

    claude_desktop_config.example.json is the README's Claude Desktop block.
    """
    (_, make), one_line = FENCE.findall(README.split("\n## ", 1)[0])
    assert [command.words for command in shell_commands(make)] == [["make", "demo"], ["make", "test"]]
    assert one_line == ("sh", blocks("Use it from Claude Code")[0])
    for heading in SECTIONS:
        blocks(heading)
    example = json.loads((ROOT / "claude_desktop_config.example.json").read_text())
    assert json.loads(blocks("Use it from Claude Desktop")[0]) == example
    assert CONNECTED in section("Use it from Claude Code")


@pytest.mark.parametrize("host", ["claude-desktop", "claude-code", "vscode", "cursor", "codex", "sandbox"])
async def test_the_host_block_starts_a_server_that_lists_the_tools_and_reads_the_account(
    host: str, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    config = stdio_config(host)
    command = local_command(config.command)
    env = local_env(config, host, sandbox, tmp_path / "state")
    with (tmp_path / "stderr.log").open("w") as errlog:
        params = StdioServerParameters(command=command[0], args=command[1:], env=env)
        async with Client(stdio_client(params, errlog=errlog)) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == TOOL_NAMES
            balance = await Caller(client).ok("get_account_balance")
    assert balance["balance"] == sandbox.control.account("busy")["balance"]
    read_recorded(tmp_path / "stderr.log")


@dataclass(frozen=True)
class HttpSetup:
    served: ServerProcess
    add: ClaudeAdd


@pytest.fixture(scope="module")
def http_setup(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpSetup]:
    """The README's `serve` line running on a free port, with the `claude mcp add --transport http` line after it."""
    serve, add_line = shell_commands(blocks("Use it from Claude Code")[1])
    add = claude_add(add_line)
    serve_args = local_command(serve.words)[1:]
    assert serve_args == ["serve", "--transport", "streamable-http"]
    assert serve.env["TENSORFEED_TOKEN"] == PLACEHOLDER_TOKEN
    secret = serve.env["TENSORFEED_MCP_AUTH_TOKEN"]
    assert (add.transport, add.target, add.headers) == ("http", [SERVE_URL], {"Authorization": f"Bearer {secret}"})
    settings = settings_for(sandbox, tmp_path_factory.mktemp("http-state"))
    with serving(settings, serve_args[2], env={"TENSORFEED_MCP_AUTH_TOKEN": secret}) as served:
        yield HttpSetup(served, add)


async def test_the_http_block_serves_the_tools_to_a_client_sending_its_header(http_setup: HttpSetup) -> None:
    async with (
        httpx2.AsyncClient(headers=http_setup.add.headers, timeout=30) as http,
        Client(streamable_http_client(http_setup.served.url, http_client=http)) as client,
    ):
        assert {tool.name for tool in (await client.list_tools()).tools} == TOOL_NAMES


@dataclass(frozen=True)
class ClaudeCode:
    """Claude Code's CLI, installed with npm in `folder`."""

    folder: Path

    @property
    def binary(self) -> Path:
        return self.folder / "node_modules" / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"

    def run(self, args: list[str], home: Path) -> str:
        """Run `claude args` with HOME (and the working directory) in `home`; its output, which must exit 0."""
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no update checks or telemetry from a test
        }
        home.mkdir(parents=True, exist_ok=True)
        done = run_or_fail([str(self.binary), *args], cwd=home, env=env, timeout=CLAUDE_SECONDS)
        output = done.stdout + done.stderr
        record(output)
        assert done.returncode == 0, f"claude {' '.join(args[:3])} exited {done.returncode}:\n{output}"
        return output

    def version(self) -> str | None:
        """The installed version, or None when the install is missing or broken."""
        with tempfile.TemporaryDirectory() as home:
            try:
                return self.run(["--version"], Path(home)).split()[0]
            except (OSError, AssertionError):
                return None


def claude_code_problem(folder: Path) -> str | None:
    version = ClaudeCode(folder).version()
    return None if version == CLAUDE_CODE_VERSION else f"{folder} holds Claude Code {version}"


@pytest.fixture(scope="module")
def claude() -> ClaudeCode:
    # Its postinstall puts the platform's native binary in place; newer npm runs it only when allowed.
    package = {
        "private": True,
        "dependencies": {CLAUDE_CODE_NAME: CLAUDE_CODE_VERSION},
        "allowScripts": {CLAUDE_CODE_PACKAGE: True},
    }
    install_pinned(CLAUDE_CODE_DIR, package, claude_code_problem)
    return ClaudeCode(CLAUDE_CODE_DIR)


def substituted(words: list[str], replacements: dict[str, str]) -> list[str]:
    return [replacements.get(word, word) for word in words]


def listed_status(listing: str, name: str, target: str) -> str:
    """What `claude mcp list` says about server `name` running `target`."""
    match = re.search(rf"^{re.escape(name)}: {re.escape(target)}.*? - (.+)$", listing, re.MULTILINE)
    assert match, f"claude mcp list does not show {name}:\n{listing}"
    return match.group(1)


@pytest.mark.npm
def test_claude_code_connects_with_the_readme_stdio_line(
    claude: ClaudeCode, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    add = claude_stdio_line("claude-code")
    split = add.words.index("--")
    token = {f"TENSORFEED_TOKEN={PLACEHOLDER_TOKEN}": f"TENSORFEED_TOKEN={DEMO_TOKENS['busy']}"}
    api_url = ["-e", f"TENSORFEED_API_URL={sandbox.api_url}"]
    args = [*substituted(add.words[1:split], token), *api_url, "--", *local_command(add.target)]
    home = tmp_path / "home"
    claude.run(args, home)
    assert listed_status(claude.run(["mcp", "list"], home), add.name, console_script()) == CONNECTED


@pytest.mark.npm
def test_claude_code_connects_with_the_readme_http_line_and_not_without_its_secret(
    claude: ClaudeCode, http_setup: HttpSetup, tmp_path: Path
) -> None:
    add = http_setup.add
    url = http_setup.served.url
    home = tmp_path / "home"
    claude.run(substituted(add.words[1:], {SERVE_URL: url}), home)
    header = f"Authorization: {add.headers['Authorization']}"
    wrong = {SERVE_URL: url, add.name: f"{add.name}-wrong", header: f"{header}-wrong"}
    claude.run(substituted(add.words[1:], wrong), home)
    listing = claude.run(["mcp", "list"], home)
    assert listed_status(listing, add.name, url) == CONNECTED
    refused = listed_status(listing, f"{add.name}-wrong", url)
    assert refused.startswith("✘ Failed to connect") and "HTTP 401" in refused, refused


@pytest.mark.npm
def test_claude_code_connects_to_the_readme_hosted_server_with_the_users_token_and_not_without(
    claude: ClaudeCode, sandbox: RunningSandbox, database_url: str, tmp_path: Path
) -> None:
    """The team section's serve line (on a free loopback port, its database a real PostgreSQL) and its
    `claude mcp add` line with a demo token for the placeholder: connected; the same line without the header is
    refused with a 401."""
    install, serve = shell_commands(blocks("Host it for a team")[0])
    assert install.words == ["pip", "install", "tensorfeed-mcp[hosted]"]
    assert list(serve.env) == ["TENSORFEED_MCP_DATABASE_URL"]
    assert serve.env["TENSORFEED_MCP_DATABASE_URL"].startswith("postgresql://")
    args = serve.words[1:]
    assert args[:4] == ["serve", "--transport", "streamable-http", "--multi-tenant"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    allowed = args[args.index("--allow-host") + 1]
    (add_line,) = shell_commands(blocks("Host it for a team")[2])
    add = claude_add(add_line)
    assert (add.transport, add.headers) == ("http", {"Authorization": f"Bearer {PLACEHOLDER_TOKEN}"})
    replica = start_replica(
        replica_env(sandbox.api_url, database_url), tmp_path / "replica.log", "--allow-host", allowed
    )
    try:
        home = tmp_path / "home"
        header = f"Authorization: Bearer {PLACEHOLDER_TOKEN}"
        with_token = {add.target[0]: replica.url, header: f"Authorization: Bearer {DEMO_TOKENS['busy']}"}
        claude.run(substituted(add.words[1:], with_token), home)
        bare = [word for word in add.words[1:] if word not in ("--header", header)]
        claude.run(substituted(bare, {add.target[0]: replica.url, add.name: f"{add.name}-bare"}), home)
        listing = claude.run(["mcp", "list"], home)
    finally:
        stop(replica)
        read_recorded(replica.log)
    assert listed_status(listing, add.name, replica.url) == CONNECTED
    # Without the header Claude Code tries OAuth discovery on the server, finds none, and gives up.
    refused = listed_status(listing, f"{add.name}-bare", replica.url)
    assert refused.startswith("✘ Failed to connect"), refused
