"""MCP clients as the tests drive them: in memory, over stdio or HTTP for one tenant, and the Caller that records and
checks every result; the protocol eras and the raw HTTP request a handshake starts with."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx2
import jsonschema
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from tensorfeed_mcp.runtime.local import LocalRuntime
from tensorfeed_mcp.settings.environment import Settings
from tests.support.records import record

MODES = ["legacy", "2026-07-28"]
Era = Literal["legacy", "2026-07-28"]
TOOL_NAMES = {
    *("get_account_balance", "get_account_usage", "get_payment_history", "get_spend_history"),
    *("get_spend_cap", "set_spend_cap", "clear_spend_cap"),
    *("set_spend_alert", "delete_spend_alert", "check_spend_alerts"),
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}
_TLS = ssl.create_default_context()
"""One TLS context for every tenant client: each new one would cost tens of milliseconds (the URLs are plain http)."""


@asynccontextmanager
async def in_memory(settings: Settings, mode: str = "auto", **options: Any) -> AsyncIterator[Client]:
    """A Client connected in memory to a server built from `settings`; `options` go to the Client."""
    async with Client(LocalRuntime(settings).server(), mode=mode, **options) as client:
        yield client


@asynccontextmanager
async def tenant_client(
    url: str, token: str, mode: str, *, new_connection_each_request: bool = False
) -> AsyncIterator[Client]:
    """An MCP client that sends `token` as its bearer and caches no response, so every answer comes from a server.
    With `new_connection_each_request`, no connection is kept alive: behind the proxy, requests alternate replicas."""
    limits = httpx2.Limits(max_keepalive_connections=0) if new_connection_each_request else httpx2.Limits()
    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx2.Timeout(30, read=300)
    async with (
        httpx2.AsyncClient(headers=headers, limits=limits, timeout=timeout, verify=_TLS) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client,
    ):
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
