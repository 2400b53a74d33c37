"""A sentinel token pushed through every surface; conftest's end-of-session scan then looks for it (and the
demo tokens) in everything every test recorded: tool results, errors, resources, HTTP bodies, stderr, logs.

The sentinel is one of tests.support.records.WATCHED_TOKENS from the start, and the debug logging this test turns on
ends with it, so this module may run in any order with the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import stdio_client

from tensorfeed_mcp.sandbox import RunningSandbox
from tensorfeed_mcp.settings.identity import token_fingerprint
from tests.support.clients import MODES, Caller, in_memory
from tests.support.env import settings_for
from tests.support.records import SENTINEL, read_recorded, record
from tests.support.servers import stdio_params


@pytest.mark.anyio
async def test_a_sentinel_token_through_every_surface(
    sandbox: RunningSandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown token makes every tool, resource and check fail upstream; a real one exercises the rest."""
    caplog.set_level(logging.DEBUG, logger="tensorfeed_mcp")  # restored after the test
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
