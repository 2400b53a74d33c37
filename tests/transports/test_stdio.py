"""The installed console script as a real stdio subprocess, driven by the SDK's Client in both protocol eras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox
from tests.support.clients import MODES, TOOL_NAMES, Caller
from tests.support.env import settings_for
from tests.support.records import read_recorded
from tests.support.servers import stdio_params

INITIALIZE_PARAMS = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "test", "version": "1"},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.anyio
async def test_every_tool_over_stdio(fresh_sandbox: RunningSandbox, tmp_path: Path, mode: str) -> None:
    account = fresh_sandbox.control.account("busy")
    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as errlog:
        params = stdio_params(settings_for(fresh_sandbox, tmp_path / "state"))
        async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
            assert (client.protocol_version == "2026-07-28") == (mode != "legacy")
            caller = Caller(client)
            assert (await caller.ok("get_account_balance"))["balance"] == account["balance"]
            usage = await caller.ok("get_account_usage", endpoint="directory")
            assert [row["endpoint"] for row in usage["by_endpoint"]] == ["/api/premium/agents/directory"]
            history = await caller.ok("get_payment_history")
            assert [p["tx_hash"] for p in history["purchases"]] == [p["tx_hash"] for p in account["purchases"]]
            assert (await caller.ok("get_spend_cap"))["daily_spent"] == account["spent_today"]
            changed = await caller.ok("set_spend_cap", daily_cap=999)
            assert (changed["previous_cap"], changed["daily_cap"]) == (200, 999)
            saved = await caller.ok("set_spend_alert", kind="balance_below", threshold=account["balance"] + 1)
            assert saved["action"] == "created"
            check = await caller.ok("check_spend_alerts")
            assert [(a["name"], a["status"]) for a in check["alerts"]] == [("balance_below", "triggered")]
            assert (await caller.ok("delete_spend_alert", name="balance_below"))["rule_count"] == 0
            assert "No alert named 'balance_below'" in await caller.error("delete_spend_alert", name="balance_below")
    assert fresh_sandbox.control.account("busy")["daily_cap"] == 999
    log = read_recorded(stderr)
    assert DEMO_TOKENS["busy"] not in log


@pytest.mark.anyio
async def test_serve_stdio_and_python_m_are_the_same_server(sandbox: RunningSandbox, tmp_path: Path) -> None:
    settings = settings_for(sandbox, tmp_path)
    base = stdio_params(settings)
    variants = [
        StdioServerParameters(command=base.command, args=["serve", "--transport", "stdio"], env=base.env),
        StdioServerParameters(command=sys.executable, args=["-m", "tensorfeed_mcp"], env=base.env),
    ]
    for params in variants:
        with (tmp_path / "stderr.log").open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
                balance = await Caller(client).ok("get_account_balance")
        assert balance["balance"] == sandbox.control.account("busy")["balance"]
        read_recorded(tmp_path / "stderr.log")


@pytest.mark.anyio
async def test_a_bad_token_over_stdio_is_an_error_result_and_the_server_keeps_serving(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    params = stdio_params(settings_for(sandbox, tmp_path, token="sk_live_notatensorfeedtoken"))
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            caller = Caller(client)
            message = await caller.error("get_account_balance")
            assert "'tf_live_' followed by 64" in message and "No request was sent" in message
            assert "sk_live_notatensorfeedtoken" not in message
            assert len((await client.list_tools()).tools) == len(TOOL_NAMES)
    assert "sk_live_notatensorfeedtoken" not in read_recorded(tmp_path / "stderr.log")


@pytest.mark.anyio
async def test_the_text_block_is_the_structured_result_as_compact_json(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Hosts that read the text block get the same facts as structuredContent, without indentation."""
    with (tmp_path / "stderr.log").open("w") as errlog:
        params = stdio_params(settings_for(sandbox, tmp_path / "state"))
        async with Client(stdio_client(params, errlog=errlog)) as client:
            caller = Caller(client)
            for tool in ("get_account_balance", "get_account_usage", "get_payment_history", "check_spend_alerts"):
                result = await caller.raw(tool)
                assert [block.type for block in result.content] == ["text"]
                text = result.content[0].text  # type: ignore[union-attr]
                assert json.loads(text) == result.structured_content
                assert text == json.dumps(result.structured_content, separators=(",", ":"), ensure_ascii=False)
    read_recorded(tmp_path / "stderr.log")


def test_the_server_exits_0_and_quietly_when_its_client_closes_stdin(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """A client that hangs up (closes stdin) after a call gets a server that ends by itself, exit code 0 and no
    traceback: the runtime's background tasks (webhook sender, watcher) stop in order."""
    params = stdio_params(settings_for(sandbox, tmp_path), TENSORFEED_POLL_SECONDS="30")
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE_PARAMS},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "check_spend_alerts", "arguments": {}}},
    ]
    with subprocess.Popen(
        [params.command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(params.env or {})},
        text=True,
    ) as server:
        assert server.stdin is not None and server.stdout is not None and server.stderr is not None
        server.stdin.write("".join(json.dumps(line) + "\n" for line in lines))
        server.stdin.flush()
        answer: dict[str, Any] = {}
        while answer.get("id") != 2 and (line := server.stdout.readline()):  # until the call's answer or an exit
            answer = json.loads(line)
        server.stdin.close()
        code = server.wait(timeout=30)
        stderr = server.stderr.read()
    assert answer["result"]["structuredContent"]["balance"] == sandbox.control.account("busy")["balance"], answer
    assert (code, "Traceback" in stderr) == (0, False), stderr[-2000:]
