"""`tensorfeed-mcp demo`: the whole path end to end against a local sandbox, as an MCP host would drive it."""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
from mcp import Client, StdioServerParameters
from pydantic import BaseModel

from tensorfeed_mcp.models import (
    AccountBalance,
    AccountUsage,
    AlertCheck,
    AlertRuleSaved,
    PaymentHistory,
    SpendCap,
    SpendCapChange,
    SpendHistory,
)
from tensorfeed_mcp.report import (
    format_alert_check,
    format_balance,
    format_history,
    format_spend_cap,
    format_usage,
    table,
)
from tensorfeed_mcp.sandbox import DEMO_TOKENS, SandboxControl, running_sandbox

ResultT = TypeVar("ResultT", bound=BaseModel)


class DemoFailed(Exception):
    pass


def server_command() -> tuple[str, list[str]]:
    """The installed console script beside this Python, else `python -m tensorfeed_mcp`."""
    script = shutil.which("tensorfeed-mcp", path=str(Path(sys.executable).parent))
    return (script, []) if script else (sys.executable, ["-m", "tensorfeed_mcp"])


async def _call(client: Client, tool: str, model: type[ResultT], **arguments: Any) -> ResultT:
    result = await client.call_tool(tool, arguments)
    if result.is_error or result.structured_content is None:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise DemoFailed(f"{tool} failed: {text}")
    return model.model_validate(result.structured_content)


WEEK_STEPS = 7 * 12  # a snapshot every two hours for a week
CALLS_PER_STEP = 5
CHEAP_ENDPOINTS = [("/api/premium/routing", 1), ("/api/premium/news/search", 1), ("/api/premium/agents/directory", 5)]


async def _week_of_history(client: Client, control: SandboxControl) -> SpendHistory:
    """A week of generated traffic on the sandbox's clock, a snapshot every two hours, a top-up midweek."""
    for step in range(WEEK_STEPS):
        control.traffic("busy", CALLS_PER_STEP, 2 * 3600, endpoints=CHEAP_ENDPOINTS, seed=step)
        if step == WEEK_STEPS // 2:
            control.add_purchase("busy", 550, 10.0)
        await _call(client, "check_spend_alerts", AlertCheck)  # any read of the account adds to the ledger
    return await _call(client, "get_spend_history", SpendHistory, days=8)


async def _demo(api_url: str, state_dir: str, control: SandboxControl) -> None:
    command, args = server_command()
    params = StdioServerParameters(
        command=command,
        args=args,
        env={
            "TENSORFEED_TOKEN": DEMO_TOKENS["busy"],
            "TENSORFEED_API_URL": api_url,
            "TENSORFEED_MCP_STATE_DIR": state_dir,
            "TENSORFEED_CACHE_SECONDS": "0",  # the sandbox's clock jumps hours between reads: never reuse one
        },
    )
    print(f"Starting {' '.join([Path(command).name, *args])} over stdio against the sandbox at {api_url}\n")
    async with Client(params) as client:
        tools = (await client.list_tools()).tools
        print(f"Connected ({client.protocol_version}). {len(tools)} tools:")
        print(table(["tool", "title"], [(tool.name, tool.title or "") for tool in tools]))

        balance = await _call(client, "get_account_balance", AccountBalance)
        print("\n== get_account_balance\n" + format_balance(balance))

        usage = await _call(client, "get_account_usage", AccountUsage)
        print("\n== get_account_usage: endpoints by spend\n" + format_usage(usage))

        history = await _call(client, "get_payment_history", PaymentHistory)
        rows = [(p.confirmed_at, p.amount_usd, p.credits_added, p.tx_hash[:14] + "…") for p in history.purchases]
        print("\n== get_payment_history\n" + table(["confirmed", "usd", "credits", "tx"], rows))

        cap = await _call(client, "get_spend_cap", SpendCap)
        print("\n== get_spend_cap\n" + format_spend_cap(cap))
        changed = await _call(client, "set_spend_cap", SpendCapChange, daily_cap=cap.daily_spent + 25)
        print(f"\n== set_spend_cap {changed.daily_cap} (was {changed.previous_cap})\n" + format_spend_cap(changed))

        print("\n== set_spend_alert")
        for kind, threshold in (("balance_below", balance.balance + 100), ("daily_cap_used_pct_above", 80)):
            saved = await _call(client, "set_spend_alert", AlertRuleSaved, kind=kind, threshold=threshold)
            print(f"{saved.action} {saved.rule.name}: {saved.rule.kind} {saved.rule.threshold:g} {saved.rule.unit}")
        check = await _call(client, "check_spend_alerts", AlertCheck)
        print("\n== check_spend_alerts\n" + format_alert_check(check))

        restored = await _call(client, "set_spend_cap", SpendCapChange, daily_cap=cap.daily_cap)
        print(f"\nCap restored to {restored.daily_cap}.")

        print(
            f"\n== get_spend_history: a week of generated traffic ({CALLS_PER_STEP} calls every two hours on the "
            "sandbox's clock, a snapshot after each, a top-up midweek)"
        )
        print(format_history(await _week_of_history(client, control)))
        print("\nDemo done: every tool answered with typed results.")


def run_demo() -> int:
    """Start a sandbox, drive the server over stdio with the SDK's Client, print what it said. 0 on success.

    The sandbox's clock starts eight days ago, so the week of traffic it generates ends before this machine's now:
    the server refuses service times from its future."""
    start = datetime.now(UTC) - timedelta(hours=WEEK_STEPS * 2 + 24)
    with running_sandbox(start=start) as sandbox, tempfile.TemporaryDirectory(prefix="tensorfeed-demo-") as state_dir:
        try:
            anyio.run(_demo, sandbox.api_url, state_dir, sandbox.control)
        except DemoFailed as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
    return 0
