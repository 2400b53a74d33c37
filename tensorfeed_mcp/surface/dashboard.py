"""The MCP Apps extension: get_spend_history, which hosts that render apps show with the dashboard page.

Hosts without the extension get the same complete answer and never read the page."""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from typing import Annotated, Literal

from mcp.server.apps import Apps
from pydantic import Field, StrictInt

from tensorfeed_mcp.limits import MAX_HISTORY_DAYS, MAX_HOUR_DAYS, SERVICE_CALL_MEMORY
from tensorfeed_mcp.models import SpendHistory
from tensorfeed_mcp.service.account import AccountService
from tensorfeed_mcp.surface.annotations import READ_ONLY
from tensorfeed_mcp.surface.arguments import explained, tool_errors

DASHBOARD_URI = "ui://tensorfeed/dashboard"


def dashboard_app(account: Callable[[], AccountService]) -> Apps:
    """The dashboard page and get_spend_history, the tool it is drawn from."""
    apps = Apps()
    apps.add_html_resource(
        DASHBOARD_URI,
        (files("tensorfeed_mcp") / "ui" / "dashboard.html").read_text(encoding="utf-8"),
        name="spend_dashboard",
        title="Spend dashboard",
        description="Balance, runway, today's spend against the cap, daily spend bars, top endpoints and alerts.",
    )

    @apps.tool(
        resource_uri=DASHBOARD_URI,
        title="Spend history",
        annotations=READ_ONLY,
        description=(
            "Credits spent per UTC day, hour or endpoint over past days, from this machine's ledger of account "
            f"snapshots, beyond the service's {SERVICE_CALL_MEMORY}-call memory: exact where snapshots allow, else "
            "a bound (credits to credits_max); per-endpoint detail from the calls seen; purchases; gaps; the "
            "trailing median day and a month-end projection."
        ),
    )
    @tool_errors
    async def get_spend_history(
        days: Annotated[
            StrictInt,
            Field(ge=1, le=MAX_HISTORY_DAYS),
            explained(f"days must be a whole number from 1 to {MAX_HISTORY_DAYS} (at most {MAX_HOUR_DAYS} by hour)."),
            Field(description="UTC days back, today included."),
        ] = 7,
        group_by: Annotated[
            Literal["day", "hour", "endpoint"],
            explained("group_by must be 'day', 'hour' (days up to 7) or 'endpoint'."),
        ] = "day",
    ) -> SpendHistory:
        return await account().spend_history(days, group_by)

    return apps
