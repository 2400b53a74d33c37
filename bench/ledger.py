"""The ledger at scale: a year of a busy account in the state file, then get_spend_history over stdio and the
dashboard drawing its 90 days."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.dashboard import dashboard_render
from bench.processes import TOKEN, Sandbox, server_env, stdio_server
from tensorfeed_mcp.core.ledger import DAY_MS, Reading, SeenCall, to_ms
from tensorfeed_mcp.sandbox.traffic import DEFAULT_ENDPOINTS, DEFAULT_WEIGHTS
from tensorfeed_mcp.settings.identity import token_fingerprint
from tensorfeed_mcp.store.sqlite import SqliteStore

YEAR_CALLS = 100_000
SNAPSHOT_MS = 10 * 60_000
HISTORY_RUNS = 30


async def fill_year(store: SqliteStore, end: int, lifetime_spent: int) -> dict[str, int]:
    """A year up to `end` of YEAR_CALLS calls, every one seen, and a reading every 10 minutes, written a day per
    transaction; the spend is laid out so that the last reading meets the account's real lifetime spend."""
    pattern = [tier for tier, weight in zip(DEFAULT_ENDPOINTS, DEFAULT_WEIGHTS, strict=True) for _ in range(weight)]
    start = end - 365 * DAY_MS
    calls = [
        SeenCall(start + (index + 1) * (end - start) // YEAR_CALLS, *pattern[index % len(pattern)])
        for index in range(YEAR_CALLS)
    ]
    spent = lifetime_spent - sum(call.credits for call in calls)
    fingerprint = token_fingerprint(TOKEN)
    next_call = 0
    for day in range(start, end, DAY_MS):
        readings, day_calls = [], []
        for moment in range(day, min(day + DAY_MS, end + 1), SNAPSHOT_MS):
            while next_call < len(calls) and calls[next_call].at <= moment:
                spent += calls[next_call].credits
                day_calls.append(calls[next_call])
                next_call += 1
            readings.append(Reading(moment, spent, 4800))
        await store.record_snapshot(fingerprint, readings, day_calls, [])
    return {"calls": len(calls), "readings": (end - start) // SNAPSHOT_MS + 1}


async def ledger_at_scale(sb: Sandbox, state_dir: Path) -> dict[str, Any]:
    """File size, get_spend_history(days=90) latency with the upstream reads cached, and answer sizes."""
    store = SqliteStore(state_dir / "alerts.sqlite3")
    lifetime_spent = sb.control.account("busy")["total_purchased"] - sb.control.account("busy")["balance"]
    filled = await fill_year(store, to_ms(sb.control.now()) - 60_000, lifetime_spent)
    file_bytes = sum(path.stat().st_size for path in state_dir.glob("alerts.sqlite3*"))
    # A long cache: after the first call every read is served from it, so the timings leave the upstream out.
    async with stdio_server(server_env(sb, state_dir, cache_seconds=3600)) as client:
        await client.call_tool("get_spend_history", {"days": 90})
        samples = []
        for _ in range(HISTORY_RUNS):
            started = time.perf_counter()
            result = await client.call_tool("get_spend_history", {"days": 90})
            samples.append(time.perf_counter() - started)
            if result.is_error:
                raise RuntimeError("get_spend_history failed during the benchmark")
        sizes = {}
        for days in (7, 30, 90):
            answer = await client.call_tool("get_spend_history", {"days": days})
            sizes[days] = len(json.dumps(answer.structured_content, separators=(",", ":"), ensure_ascii=False).encode())
        dashboard = await dashboard_render(client)
    return {
        **filled,
        "file_mib": file_bytes / 2**20,
        "history_90_days_p50_ms": 1000 * statistics.median(samples),
        "history_runs": HISTORY_RUNS,
        "answer_bytes_by_days": sizes,
        "dashboard": dashboard,
    }
