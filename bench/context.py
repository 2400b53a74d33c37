"""Context cost: the bytes (and estimated tokens) a model reads from each tool's answer and from tools/list."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.types import CallToolResult, ListToolsResult, TextContent, Tool

from bench.processes import Sandbox, server_env, stdio_server

# Most bytes the compact structured JSON of one answer should take; a tool not named here gets the default.
# get_spend_history: issue 10 allows 3,000 B for 30 days by day; its default answer here covers 7.
TARGET_BYTES: dict[str, int] = {"get_account_usage": 1500, "check_spend_alerts": 1500, "get_spend_history": 3000}
DEFAULT_TARGET_BYTES = 1200
TOOLS_LIST_TARGET_BYTES = 6000  # tools/list as the model sees it
TOKEN_RULE = "tokens ≈ ceil(bytes / 4)"

# The fields of a listed tool that hosts pass to the model (pydantic field names, dumped under their wire names).
MODEL_VISIBLE_TOOL_FIELDS = {"name", "title", "description", "input_schema", "annotations"}
ALERT_RULES: list[dict[str, Any]] = [
    {"kind": "balance_below", "threshold": 2000},
    {"kind": "daily_spend_above", "threshold": 100},
    {"kind": "daily_cap_used_pct_above", "threshold": 80},
    {"kind": "runway_below_hours", "threshold": 48},
]
DISPOSABLE_RULE: dict[str, Any] = {"kind": "balance_below", "threshold": 1, "name": "bench-disposable"}


# How to call the tools that need arguments: given the client and the daily cap found at the start, `prepare`
# whatever the call needs and return its arguments. Every other tool is called with none, if it requires none.
@dataclass(frozen=True)
class Representative:
    why: str
    prepare: Callable[[Client, int | None], Awaitable[dict[str, Any]]]


async def _same_cap(_client: Client, cap: int | None) -> dict[str, Any]:
    return {"daily_cap": cap}


async def _existing_rule(_client: Client, _cap: int | None) -> dict[str, Any]:
    return dict(ALERT_RULES[0])


async def _disposable_rule(client: Client, _cap: int | None) -> dict[str, Any]:
    await call_ok(client, "set_spend_alert", DISPOSABLE_RULE)
    return {"name": DISPOSABLE_RULE["name"]}


ARGUMENTS: dict[str, Representative] = {
    "set_spend_cap": Representative("the current cap, read first, so nothing changes", _same_cap),
    "set_spend_alert": Representative("one of the four rules again", _existing_rule),
    "delete_spend_alert": Representative("a fifth rule, made for the purpose just before", _disposable_rule),
}


def compact_json(value: object) -> bytes:
    """What Claude Code shows the model for structured content: JSON.stringify's compact form, in UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def estimated_tokens(size: int) -> int:
    """A rough token count for `size` bytes of text: ceil(bytes / 4)."""
    return math.ceil(size / 4)


def text_of(result: CallToolResult) -> str:
    """The text blocks of a result, concatenated (what hosts that ignore structured content read)."""
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


async def call_ok(client: Client, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    """Call a tool the measurement depends on; a tool error stops the benchmark."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(f"{tool} {arguments} failed during the context benchmark: {text_of(result)}")
    return result


async def daily_cap(client: Client) -> int | None:
    """The daily cap, as get_spend_cap reports it in `daily_cap`."""
    structured = (await call_ok(client, "get_spend_cap", {})).structured_content
    if structured is None or "daily_cap" not in structured:
        raise RuntimeError("get_spend_cap returned no daily_cap: the context benchmark cannot restore the cap")
    cap: int | None = structured["daily_cap"]
    return cap


def destructive(tool: Tool) -> bool:
    """Whether the tool may destroy state, by its annotations and the MCP defaults (not read-only: destructive)."""
    hints = tool.annotations
    if hints is None:
        return True
    if hints.read_only_hint:
        return False
    return hints.destructive_hint is not False


async def list_all_tools(client: Client) -> list[ListToolsResult]:
    """Every page of tools/list."""
    pages = [await client.list_tools()]
    while (cursor := pages[-1].next_cursor) is not None:
        pages.append(await client.list_tools(cursor=cursor))
    return pages


def sized(content: bytes | None) -> tuple[int | None, int | None]:
    """Bytes and estimated tokens, or None for both when there is no content."""
    return (None, None) if content is None else (len(content), estimated_tokens(len(content)))


async def measure_tool(client: Client, tool: Tool, cap: int | None) -> dict[str, Any]:
    """Call `tool` once with its representative arguments and size the answer; tools needing unknown ones are skipped.

    The target applies to the compact structured JSON, or to the text when an answer has no structured content.
    """
    record: dict[str, Any] = {
        "tool": tool.name,
        "arguments": None,
        "arguments_why": None,
        "measured": False,
        "note": None,
        "structured_bytes": None,
        "structured_tokens": None,
        "text_bytes": None,
        "text_tokens": None,
        "target_bytes": TARGET_BYTES.get(tool.name, DEFAULT_TARGET_BYTES),
        "met": None,
        "structured_json": None,
        "text": None,
    }
    representative = ARGUMENTS.get(tool.name)
    if representative is None and tool.input_schema.get("required"):
        return record | {"note": "needs arguments"}
    arguments = await representative.prepare(client, cap) if representative else {}
    result = await client.call_tool(tool.name, arguments)
    text = text_of(result)
    structured = None if result.structured_content is None else compact_json(result.structured_content)
    structured_bytes, structured_tokens = sized(structured)
    text_bytes, text_tokens = sized(text.encode("utf-8"))
    record |= {
        "arguments": arguments,
        "arguments_why": representative.why if representative else None,
        "structured_bytes": structured_bytes,
        "structured_tokens": structured_tokens,
        "text_bytes": text_bytes,
        "text_tokens": text_tokens,
        "structured_json": None if structured is None else structured.decode("utf-8"),
        "text": text,
    }
    if result.is_error:
        return record | {"note": "error: " + text}
    shown = structured_bytes if structured_bytes is not None else text_bytes
    note = None if structured is not None else "no structured content: target applied to the text"
    return record | {"measured": True, "note": note, "met": shown is not None and shown <= record["target_bytes"]}


def tools_list_cost(pages: list[ListToolsResult]) -> dict[str, Any]:
    """tools/list as the model sees it (the visible fields of each tool) and the whole result as sent, compact."""
    visible = [
        tool.model_dump(mode="json", by_alias=True, exclude_none=True, include=MODEL_VISIBLE_TOOL_FIELDS)
        for page in pages
        for tool in page.tools
    ]
    visible_bytes = len(compact_json(visible))
    wire_bytes = sum(
        len(compact_json(page.model_dump(mode="json", by_alias=True, exclude_none=True))) for page in pages
    )
    return {
        "tools": len(visible),
        "pages": len(pages),
        "model_visible": {
            "bytes": visible_bytes,
            "tokens": estimated_tokens(visible_bytes),
            "target_bytes": TOOLS_LIST_TARGET_BYTES,
            "met": visible_bytes <= TOOLS_LIST_TARGET_BYTES,
        },
        "wire": {"bytes": wire_bytes, "tokens": estimated_tokens(wire_bytes)},
    }


async def measure_all(client: Client) -> dict[str, Any]:
    """Add four alert rules, then call every listed tool once and size the answers, and size tools/list.

    Destructive tools are called last, each followed by set_spend_cap with the cap read at the start; the cap
    must be unchanged at the end.
    """
    pages = await list_all_tools(client)
    tools = [tool for page in pages for tool in page.tools]
    for rule in ALERT_RULES:
        await call_ok(client, "set_spend_alert", rule)
    cap = await daily_cap(client)
    by_name: dict[str, dict[str, Any]] = {}
    for tool in sorted(tools, key=destructive):  # stable: listed order, destructive ones last
        by_name[tool.name] = await measure_tool(client, tool, cap)
        if destructive(tool):
            await call_ok(client, "set_spend_cap", {"daily_cap": cap})
    if (final_cap := await daily_cap(client)) != cap:
        raise RuntimeError(f"the context benchmark left the daily cap at {final_cap}, not {cap}")
    return {
        "protocol_version": client.session.protocol_version,
        "alert_rules": ALERT_RULES,
        "token_rule": TOKEN_RULE,
        "tools": [by_name[tool.name] for tool in tools],
        "tools_list": tools_list_cost(pages),
    }


async def context_cost(sb: Sandbox) -> dict[str, Any]:
    """`measure_all` on tensorfeed-mcp over stdio for the busy account, with a fresh state directory and no cache."""
    with tempfile.TemporaryDirectory(prefix="tensorfeed-bench-context-") as state:
        async with stdio_server(server_env(sb, Path(state), cache_seconds=0)) as client:
            return {"account": "busy"} | await measure_all(client)
