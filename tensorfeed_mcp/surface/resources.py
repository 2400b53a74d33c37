"""The resources (the account's headline and its alert verdicts, as JSON) and the spend review prompt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server import MCPServer

from tensorfeed_mcp.models import AccountSummary
from tensorfeed_mcp.service.account import AccountService
from tensorfeed_mcp.surface.arguments import resource_errors
from tensorfeed_mcp.surface.subscriptions import ALERTS_URI, SUMMARY_URI


def add_resources(server: MCPServer[Any], account: Callable[[], AccountService]) -> None:
    """Register the account_summary and account_alerts resources on `server`."""

    @server.resource(
        SUMMARY_URI,
        name="account_summary",
        title="Account summary",
        description="Balance and usage headline for the token, as JSON.",
        mime_type="application/json",
    )
    @resource_errors
    async def account_summary() -> str:
        service = account()
        balance, usage = await service.balance(), await service.usage()
        return AccountSummary(
            token=balance.token,
            as_of=balance.as_of,
            balance=balance.balance,
            usd_estimate=balance.usd_estimate,
            total_purchased=balance.total_purchased,
            recent_calls=usage.total_calls,
            recent_credits_spent=usage.total_credits_spent,
            top_endpoints=usage.by_endpoint[:3],
            window_start=usage.window_start,
        ).model_dump_json()

    @server.resource(
        ALERTS_URI,
        name="account_alerts",
        title="Spend alerts",
        description="The current verdict of every alert rule (as check_spend_alerts returns it), as JSON.",
        mime_type="application/json",
    )
    @resource_errors
    async def account_alerts() -> str:
        return (await account().check_alerts()).model_dump_json()


def add_prompts(server: MCPServer[Any]) -> None:
    """Register the spend_review prompt on `server`."""

    @server.prompt(
        name="spend_review",
        title="Review spending",
        description="Review usage, the daily cap and alerts, and propose a daily spend cap.",
    )
    def spend_review() -> str:
        return (
            "Review my TensorFeed spending. Call get_account_balance, get_account_usage, get_spend_cap and "
            "check_spend_alerts. Then tell me, briefly: how many credits are left and the runway at the current "
            "burn rate; which endpoints spend the most; how today's spend compares with the daily cap (or that no "
            "cap is set); which alerts are triggered. Finally propose a daily spend cap in credits, with the "
            "reasoning (typical daily spend plus headroom), and ask me before calling set_spend_cap."
        )
