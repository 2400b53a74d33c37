"""Shared fixtures: a sandbox over real HTTP, settings pointing at it, MCP clients, and a record of all output.

Everything a test sees from the server (tool results, errors, resources, stderr, HTTP bodies, log records)
goes through `record`, and at the end of the session every process checks that no token appeared in any of it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import jsonschema
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult
from postgres import PostgresServer, running_postgres

from tensorfeed_mcp.config import Settings
from tensorfeed_mcp.runtime.local import LocalRuntime
from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox, running_sandbox

CAPTURED: list[str] = []
WATCHED_TOKENS: list[str] = list(DEMO_TOKENS.values())
"""Tokens that must appear nowhere in CAPTURED; test modules add the ones they make up."""
MODES = ["legacy", "2026-07-28"]
TOOL_NAMES = {
    *("get_account_balance", "get_account_usage", "get_payment_history", "get_spend_history"),
    *("get_spend_cap", "set_spend_cap", "clear_spend_cap"),
    *("set_spend_alert", "delete_spend_alert", "check_spend_alerts"),
}


def masked(token: str) -> str:
    """A token as the server may show it: its first 12 and last 4 characters (worked out here, not by the code
    under test)."""
    return f"{token[:12]}…{token[-4:]}"


async def eventually(condition: Callable[[], bool], within: float) -> None:
    """Wait until `condition` holds, checking often; fail after `within` seconds."""
    with anyio.fail_after(within):
        while not condition():
            await anyio.sleep(0.01)


def record(text: object) -> None:
    """Keep text the server produced, for the token scan at the end of the run."""
    CAPTURED.append(str(text))


class _RecordLogs(logging.Handler):
    def emit(self, log_record: logging.LogRecord) -> None:
        record(self.format(log_record))


_handler = _RecordLogs(level=logging.DEBUG)
_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s %(exc_text)s"))
logging.getLogger().addHandler(_handler)
logging.getLogger("tensorfeed_mcp").setLevel(logging.INFO)


@pytest.fixture(scope="session", autouse=True)
def no_token_in_anything_captured() -> Iterator[None]:
    """After the last test of this process (each xdist worker is one), scan all it captured for a token."""
    yield
    for number, text in enumerate(CAPTURED):
        for token in WATCHED_TOKENS:
            if token[8:] in text:  # not even without its prefix; the token itself is not printed here either
                pytest.fail(f"captured output no. {number} contains the token {token[:10]}…", pytrace=False)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


SANDBOX_START = datetime(2026, 5, 12, 12, 0, tzinfo=UTC)
"""Where every test's sandbox clock starts: a fixed instant (noon UTC on a Tuesday in mid-May), so no test depends on
the hour, the day or the month it runs in, and a test about 'today' cannot straddle a midnight. A test that needs a
midnight, a month end or a week moves the sandbox's clock there itself."""


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    """A sandbox shared by a module's tests; tests that change accounts use `fresh_sandbox`."""
    with running_sandbox(start=SANDBOX_START) as running:
        yield running
        running.control.clear_fault()


@pytest.fixture
def fresh_sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(start=SANDBOX_START) as running:
        yield running


def settings_for(sandbox: RunningSandbox, state_dir: Path, account: str = "busy", **overrides: Any) -> Settings:
    """Settings for one demo account on `sandbox`; tests that change upstream state turn the cache off."""
    base = Settings(
        token=DEMO_TOKENS[account],
        api_url=sandbox.api_url,
        timeout_seconds=2.0,
        cache_seconds=0.0,
        state_dir=state_dir,
    )
    return replace(base, **overrides)


def server_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a server subprocess use `settings`."""
    env = {
        "TENSORFEED_API_URL": settings.api_url,
        "TENSORFEED_TIMEOUT_SECONDS": str(settings.timeout_seconds),
        "TENSORFEED_CACHE_SECONDS": str(settings.cache_seconds),
        "TENSORFEED_MCP_STATE_DIR": str(settings.state_dir),
    }
    if settings.token:
        env["TENSORFEED_TOKEN"] = settings.token
    return env


def console_script() -> str:
    """The installed `tensorfeed-mcp` entry point of the environment running the tests."""
    script = Path(sys.executable).parent / "tensorfeed-mcp"
    assert script.exists(), f"console script missing at {script}: install the package (make test does)"
    return str(script)


def stdio_params(settings: Settings, **extra_env: str) -> StdioServerParameters:
    return StdioServerParameters(command=console_script(), args=[], env={**server_env(settings), **extra_env})


@asynccontextmanager
async def in_memory(settings: Settings, mode: str = "auto", **options: Any) -> AsyncIterator[Client]:
    """A Client connected in memory to a server built from `settings`; `options` go to the Client."""
    async with Client(LocalRuntime(settings).server(), mode=mode, **options) as client:
        yield client


class Caller:
    """Calls tools on a connected client, records what came back, and checks it against the output schema."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._schemas: dict[str, dict[str, Any]] | None = None

    async def schemas(self) -> dict[str, dict[str, Any]]:
        if self._schemas is None:
            tools = (await self.client.list_tools()).tools
            self._schemas = {tool.name: tool.output_schema or {} for tool in tools}
        return self._schemas

    async def raw(self, tool: str, **arguments: Any) -> CallToolResult:
        result = await self.client.call_tool(tool, arguments)
        record(result.model_dump_json())
        return result

    async def ok(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """The structured result of a successful call, validated against the tool's published outputSchema."""
        result = await self.raw(tool, **arguments)
        assert not result.is_error, f"{tool} failed: {error_text(result)}"
        assert result.structured_content is not None
        schema = (await self.schemas())[tool]
        assert schema, f"{tool} publishes no outputSchema"
        structured: dict[str, Any] = result.structured_content
        jsonschema.validate(structured, schema)
        return structured

    async def error(self, tool: str, **arguments: Any) -> str:
        """The message of a call that must fail as a tool error (isError), not a protocol error."""
        result = await self.raw(tool, **arguments)
        assert result.is_error, f"{tool} unexpectedly succeeded: {result.structured_content}"
        assert result.structured_content is None
        return error_text(result)


def error_text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def read_recorded(path: Path) -> str:
    """Read a captured stream (a subprocess's stderr) and record it for the token scan."""
    text = path.read_text(errors="replace") if path.exists() else ""
    record(text)
    return text


Era = Literal["legacy", "2026-07-28"]
os.environ.pop("TENSORFEED_TOKEN", None)  # the suite must not depend on (or leak) a real token in the environment


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for this process (each xdist worker has its own), started on first use."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new empty database on the private server, dropped after the test."""
    with postgres_server.database() as url:
        yield url
