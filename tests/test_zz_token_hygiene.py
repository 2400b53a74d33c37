"""A sentinel token pushed through every surface; conftest's end-of-session scan then looks for it (and the
demo tokens) in everything every test recorded: tool results, errors, resources, HTTP bodies, stderr, logs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import MODES, WATCHED_TOKENS, Caller, in_memory, read_recorded, record, settings_for, stdio_params
from mcp import Client
from mcp.client.stdio import stdio_client

from tensorfeed_mcp.identity import token_fingerprint
from tensorfeed_mcp.sandbox import RunningSandbox

SENTINEL = "tf_live_5e171e1" + "0123456789abcdef" * 3 + "5e171e1ab"
WATCHED_TOKENS.append(SENTINEL)


@pytest.mark.anyio
async def test_a_sentinel_token_through_every_surface(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """An unknown token makes every tool, resource and check fail upstream; a real one exercises the rest."""
    logging.getLogger("tensorfeed_mcp").setLevel(logging.DEBUG)
    settings = settings_for(sandbox, tmp_path, token=SENTINEL)
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(stdio_params(settings), errlog=errlog)) as client:
            caller = Caller(client)
            for tool in ("get_account_balance", "get_account_usage", "get_payment_history", "get_spend_cap"):
                assert "token not recognised" in await caller.error(tool)
            await caller.error("set_spend_cap", daily_cap=10)
            await caller.ok("set_spend_alert", kind="balance_below", threshold=10)
            await caller.error("check_spend_alerts")
    read_recorded(tmp_path / "stderr.log")
    for mode in MODES:
        async with in_memory(settings, mode) as client:
            for uri in ("tensorfeed://account/summary", "tensorfeed://account/alerts"):
                with pytest.raises(Exception) as raised:
                    await client.read_resource(uri)
                record(raised.value)
    state = b"".join(path.read_bytes() for path in tmp_path.glob("alerts.sqlite3*"))
    assert SENTINEL.encode() not in state
    assert token_fingerprint(SENTINEL).encode() in state  # rules are keyed by the hash, not the token
    sandbox.control.set_fault("slow", delay_seconds=5)  # retries and a timeout, logged at debug level
    async with in_memory(settings_for(sandbox, tmp_path, timeout_seconds=0.3)) as client:
        await Caller(client).error("get_account_balance")
    sandbox.control.clear_fault()
