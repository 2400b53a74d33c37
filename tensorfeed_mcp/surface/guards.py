"""The guard tools: the daily cap the service enforces and the local alert rules, and the alert check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import Field, StrictFloat, StrictInt

from tensorfeed_mcp.core.alerts import KINDS_HELP, TRIGGERS_HELP
from tensorfeed_mcp.limits import DAILY_CAP_RANGE, MAX_DAILY_CAP, MAX_NAME_LENGTH, MIN_DAILY_CAP
from tensorfeed_mcp.models import AlertCheck, AlertRuleDeleted, AlertRuleSaved, SpendCapChange
from tensorfeed_mcp.service.account import AccountService
from tensorfeed_mcp.surface.annotations import LOCAL_DELETE, LOCAL_WRITE, READ_ONLY, SERVICE_DELETE, SERVICE_WRITE
from tensorfeed_mcp.surface.arguments import explained, tool_errors
from tensorfeed_mcp.surface.sdk_private import connection_of
from tensorfeed_mcp.surface.subscriptions import Subscriptions, warn_legacy_client


def add_cap_tools(server: MCPServer[Any], account: Callable[[], AccountService]) -> None:
    """Register set_spend_cap and clear_spend_cap on `server`."""

    @server.tool(
        title="Set daily spend cap",
        annotations=SERVICE_WRITE,
        description=(
            "Set the daily credit cap TensorFeed enforces on the token (clear_spend_cap removes it). Only when the "
            "user asks to limit spending."
        ),
    )
    @tool_errors
    async def set_spend_cap(
        daily_cap: Annotated[
            StrictInt,
            Field(ge=MIN_DAILY_CAP, le=MAX_DAILY_CAP),
            explained(f"daily_cap must be {DAILY_CAP_RANGE}; to remove the cap, use clear_spend_cap."),
            Field(description="Credits per UTC day."),
        ],
    ) -> SpendCapChange:
        return await account().set_spend_cap(daily_cap)

    @server.tool(
        title="Clear daily spend cap",
        annotations=SERVICE_DELETE,
        description=(
            "Remove the daily credit cap, so TensorFeed no longer limits the token's daily spend. Only when the "
            "user explicitly asks to lift the limit."
        ),
    )
    @tool_errors
    async def clear_spend_cap() -> SpendCapChange:
        return await account().clear_spend_cap()


def add_alert_tools(
    server: MCPServer[Any], account: Callable[[], AccountService], subscriptions: Subscriptions
) -> None:
    """Register set_spend_alert, delete_spend_alert and check_spend_alerts on `server`."""

    @server.tool(
        title="Set spend alert",
        annotations=LOCAL_WRITE,
        description=(
            "Create a local alert rule, or update the rule with that name; kept on this machine for this token. It "
            f"triggers when, by kind, {TRIGGERS_HELP}."
        ),
    )
    @tool_errors
    async def set_spend_alert(
        kind: Annotated[
            str,
            Field(max_length=MAX_NAME_LENGTH),
            explained(f"kind must be one of: {KINDS_HELP}."),
            Field(description=f"One of: {KINDS_HELP}."),
        ],
        threshold: Annotated[
            StrictFloat,
            Field(allow_inf_nan=False),
            explained(f"threshold must be a finite number in the kind's unit; kinds: {KINDS_HELP}."),
            Field(description="In the kind's unit: credits, percent or hours."),
        ],
        name: Annotated[
            str | None,
            Field(max_length=MAX_NAME_LENGTH),
            explained(f"name must be text of at most {MAX_NAME_LENGTH} characters, or null for the kind."),
            Field(description="Defaults to the kind."),
        ] = None,
    ) -> AlertRuleSaved:
        return await account().set_alert(kind, threshold, name)

    @server.tool(
        title="Delete spend alert",
        annotations=LOCAL_DELETE,
        description="Delete a local alert rule by name. Rules from the environment (env:...) cannot be deleted here.",
    )
    @tool_errors
    async def delete_spend_alert(
        name: Annotated[
            str,
            Field(max_length=MAX_NAME_LENGTH),
            explained(f"name must be a rule's name: text of at most {MAX_NAME_LENGTH} characters."),
            Field(description="The rule's name."),
        ],
    ) -> AlertRuleDeleted:
        return await account().delete_alert(name)

    @server.tool(
        title="Check spend alerts",
        annotations=READ_ONLY,
        description=(
            "Evaluate every alert rule now against fresh balance, usage and spend cap: each rule's status "
            "(not_applicable: needs a cap and none is set; unknown: data missing) and since when it is triggered, "
            "today's spend, the burn rate and the runway."
        ),
    )
    @tool_errors
    async def check_spend_alerts(ctx: Context[Any, Any]) -> AlertCheck:
        check = await account().check_alerts()
        await subscriptions.observe(check)
        for alert in check.alerts:
            if alert.status == "triggered":
                await warn_legacy_client(connection_of(ctx.session), f"Alert {alert.name} triggered: {alert.message}")
        return check
