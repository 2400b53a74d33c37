"""The read tools: what the account holds and what is spending it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from mcp.server import MCPServer
from pydantic import Field, StrictInt

from tensorfeed_mcp.limits import DEFAULT_RECENT_LIMIT, MAX_RECENT_LIMIT, MAX_UPSTREAM_TEXT, SERVICE_CALL_MEMORY
from tensorfeed_mcp.models import AccountBalance, AccountUsage, PaymentHistory, SpendCap
from tensorfeed_mcp.service.account import AccountService
from tensorfeed_mcp.surface.annotations import READ_ONLY
from tensorfeed_mcp.surface.arguments import explained, tool_errors


def add_read_tools(server: MCPServer[Any], account: Callable[[], AccountService]) -> None:
    """Register get_account_usage, get_account_balance, get_payment_history and get_spend_cap on `server`."""

    @server.tool(
        title="Account usage",
        annotations=READ_ONLY,
        description=(
            "What is spending the token's credits, per endpoint (most credits first), over the service's memory "
            f"of the last {SERVICE_CALL_MEMORY} premium calls, plus the newest calls. buffer_full: older calls "
            "rolled off and are not counted."
        ),
    )
    @tool_errors
    async def get_account_usage(
        endpoint: Annotated[
            str | None,
            Field(max_length=MAX_UPSTREAM_TEXT),
            explained(f"endpoint must be text of at most {MAX_UPSTREAM_TEXT} characters (e.g. 'routing'), or null."),
            Field(description="Only endpoints whose path contains this text, e.g. 'routing'."),
        ] = None,
        recent_limit: Annotated[
            StrictInt,
            Field(ge=0, le=MAX_RECENT_LIMIT),
            explained(f"recent_limit must be a whole number from 0 to {MAX_RECENT_LIMIT}."),
            Field(description=f"How many of the newest calls to list, 0 to {MAX_RECENT_LIMIT}."),
        ] = DEFAULT_RECENT_LIMIT,
    ) -> AccountUsage:
        return await account().usage(endpoint, recent_limit)

    @server.tool(
        title="Account balance",
        annotations=READ_ONLY,
        description=(
            "Credits left on the token, credits bought and spent over its life, when it was created and last used, "
            "and a US dollar estimate of the balance at the base rate (an estimate: volume purchases cost less)."
        ),
    )
    @tool_errors
    async def get_account_balance() -> AccountBalance:
        return await account().balance()

    @server.tool(
        title="Payment history",
        annotations=READ_ONLY,
        description="Credit purchases (top-ups) for the token, newest first, with dollar and credit totals.",
    )
    @tool_errors
    async def get_payment_history() -> PaymentHistory:
        return await account().history()

    @server.tool(
        title="Daily spend cap",
        annotations=READ_ONLY,
        description=(
            "The daily credit cap TensorFeed enforces on the token (calls that would exceed it are refused), "
            "today's spend against it, what remains, and when it resets (UTC midnight). daily_cap is null when "
            "no cap is set; then the service reports daily_spent as 0."
        ),
    )
    @tool_errors
    async def get_spend_cap() -> SpendCap:
        return await account().spend_cap()
