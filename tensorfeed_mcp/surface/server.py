"""The MCP server: tools grouped by job, resources, the prompt, the dashboard app and subscriptions, over whatever
runtime the mode chose."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from mcp.server import MCPServer
from mcp.server.auth.provider import TokenVerifier
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, GetPromptResult, InputRequiredResult, TextContent
from pydantic import AnyUrl

from tensorfeed_mcp import __version__
from tensorfeed_mcp.errors import shown
from tensorfeed_mcp.observability.telemetry import NO_TELEMETRY, Telemetry
from tensorfeed_mcp.service.account import AccountService
from tensorfeed_mcp.surface.arguments import check_arguments, compact_json, unknown_arguments
from tensorfeed_mcp.surface.dashboard import dashboard_app
from tensorfeed_mcp.surface.guards import add_alert_tools, add_cap_tools
from tensorfeed_mcp.surface.hosted_auth import hosted_auth_settings
from tensorfeed_mcp.surface.reads import add_read_tools
from tensorfeed_mcp.surface.resources import add_prompts, add_resources
from tensorfeed_mcp.surface.sdk_private import tool_named
from tensorfeed_mcp.surface.subscriptions import Subscriptions

INSTRUCTIONS = (
    "Reads and guards the TensorFeed API account behind TENSORFEED_TOKEN: credits left, what is spending them, "
    "purchases, the daily spend cap the service enforces, and local spend alerts with a runway forecast. "
    "Use the read tools to answer questions about credits, check_spend_alerts before costly work, and change the "
    "spend cap or alert rules only when the user asks."
)
HOSTED_INSTRUCTIONS = INSTRUCTIONS.replace("behind TENSORFEED_TOKEN", "whose token this request carries")


class Runtime(Protocol):
    """What the surface needs from the mode's runtime: the account a request is about, who hears of alert changes,
    and, hosted, how a request's bearer is verified."""

    instructions: str
    telemetry: Telemetry
    subscriptions: Subscriptions
    token_verifier: TokenVerifier | None

    def account(self) -> AccountService: ...

    def lifespan(self, server: MCPServer[Any]) -> AbstractAsyncContextManager[Any]: ...


class AccountServer(MCPServer[Any]):
    """MCPServer that checks a call's arguments itself first, so the caller reads what is accepted, whose text
    block is the structured result as compact JSON (the SDK indents it, which costs a model's context), that
    reports each call to the runtime's telemetry, and that refuses an unknown resource, prompt or prompt argument
    itself, in its own words."""

    telemetry: Telemetry = NO_TELEMETRY

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        tool = tool_named(self, name)
        label = name if tool is not None else "unknown"  # a client's made-up names must not become metric labels
        try:
            if tool is not None:
                check_arguments(tool, arguments)
            result = await super().call_tool(name, arguments, context)
        except Exception:
            self.telemetry.tool_call(label, "error")
            raise
        is_error = isinstance(result, CallToolResult) and result.is_error
        self.telemetry.tool_call(label, "error" if is_error else "ok")
        if isinstance(result, CallToolResult) and result.structured_content is not None:
            result.content = [TextContent(text=compact_json(result.structured_content))]
        return result

    async def read_resource(
        self, uri: AnyUrl | str, context: Context[Any, Any] | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        """An unknown URI is refused (invalid params) showing at most its first characters, and what can be read;
        the SDK would echo the whole URI, in the message and again in the error's data."""
        try:
            return await super().read_resource(uri, context)
        except ResourceNotFoundError:
            readable = ", ".join(str(resource.uri) for resource in await self.list_resources())
            raise MCPError(INVALID_PARAMS, f"Unknown resource {shown(str(uri))}; readable: {readable}.") from None

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[Any, Any] | None = None
    ) -> GetPromptResult | InputRequiredResult:
        """An unknown prompt or argument is refused as invalid params, naming what is accepted; the SDK would answer
        code 0 with "Error rendering prompt" and log a traceback."""
        prompts = {prompt.name: prompt for prompt in await self.list_prompts()}
        prompt = prompts.get(name)
        if prompt is None:
            raise MCPError(INVALID_PARAMS, f"Unknown prompt {shown(name)}; prompts: {', '.join(prompts)}.")
        refusal = unknown_arguments(name, arguments or {}, [argument.name for argument in prompt.arguments or []])
        if refusal:
            raise MCPError(INVALID_PARAMS, refusal)
        return await super().get_prompt(name, arguments, context)


def build_server(runtime: Runtime) -> MCPServer[Any]:
    """The MCP server: every tool returns a pydantic model, so each has an output schema."""
    account = runtime.account
    server = AccountServer(
        "tensorfeed",
        title="TensorFeed account",
        instructions=runtime.instructions,
        version=__version__,
        website_url="https://tensorfeed.ai",
        lifespan=runtime.lifespan,
        subscriptions=False,  # served by the runtime's Subscriptions, whose listen streams it can close
        log_level="WARNING",
        extensions=[dashboard_app(account)],
        auth=hosted_auth_settings() if runtime.token_verifier else None,
        token_verifier=runtime.token_verifier,
    )
    server.telemetry = runtime.telemetry
    runtime.subscriptions.register(server)
    add_read_tools(server, account)
    add_cap_tools(server, account)
    add_alert_tools(server, account, runtime.subscriptions)
    add_resources(server, account)
    add_prompts(server)
    return server
