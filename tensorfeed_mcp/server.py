"""The MCP surface: tools, resources and a prompt over an AccountService, plus the alert watcher."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.resources import files
from typing import TYPE_CHECKING, Annotated, Any, Literal, ParamSpec, TypeVar, get_args

import anyio
import anyio.lowlevel
from mcp.server import MCPServer
from mcp.server.apps import Apps
from mcp.server.auth.settings import AuthSettings
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import MCPServerError, ResourceError, ResourceNotFoundError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import ListenHandler, ServerEvent
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import SessionMessage
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY, ResourceUpdated
from mcp.types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    CallToolResult,
    EmptyResult,
    ErrorData,
    GetPromptResult,
    InputRequiredResult,
    JSONRPCError,
    LoggingLevel,
    SetLevelRequestParams,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    TextContent,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from pydantic import (
    AnyHttpUrl,
    AnyUrl,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from tensorfeed_mcp import __version__
from tensorfeed_mcp.account import MAX_HISTORY_DAYS, MAX_HOUR_DAYS, AccountService
from tensorfeed_mcp.alerts import KINDS_HELP, MAX_NAME_LENGTH, TRIGGERS_HELP
from tensorfeed_mcp.client import TensorFeedClient, upstream_http_client
from tensorfeed_mcp.config import TOKEN_PATTERN, Settings, hosted_extra_missing, token_fingerprint
from tensorfeed_mcp.errors import TensorFeedError, shown
from tensorfeed_mcp.models import (
    DEFAULT_RECENT_LIMIT,
    MAX_RECENT_LIMIT,
    MAX_UPSTREAM_TEXT,
    AccountBalance,
    AccountSummary,
    AccountUsage,
    AlertCheck,
    AlertRuleDeleted,
    AlertRuleSaved,
    AlertStatus,
    PaymentHistory,
    SpendCap,
    SpendCapChange,
    SpendHistory,
)
from tensorfeed_mcp.store import Store, open_store
from tensorfeed_mcp.telemetry import NO_TELEMETRY, Telemetry
from tensorfeed_mcp.tenants import Admission, TenantAccounts, TensorFeedTokenVerifier, current_tenant, request_token
from tensorfeed_mcp.webhooks import WebhookSender

if TYPE_CHECKING:
    from tensorfeed_mcp.metrics import PrometheusTelemetry  # the hosted extra's library: imported only when hosting

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Reads and guards the TensorFeed API account behind TENSORFEED_TOKEN: credits left, what is spending them, "
    "purchases, the daily spend cap the service enforces, and local spend alerts with a runway forecast. "
    "Use the read tools to answer questions about credits, check_spend_alerts before costly work, and change the "
    "spend cap or alert rules only when the user asks."
)
HOSTED_INSTRUCTIONS = INSTRUCTIONS.replace("behind TENSORFEED_TOKEN", "whose token this request carries")
TENSORFEED_ISSUER = "https://tensorfeed.ai"
MAX_STREAMS_PER_TENANT = 10
MAX_LISTEN_STREAMS = 50  # per process: half the connections it allows, so streams cannot take every slot
SUMMARY_URI = "tensorfeed://account/summary"
DASHBOARD_URI = "ui://tensorfeed/dashboard"
ALERTS_URI = "tensorfeed://account/alerts"

P = ParamSpec("P")
R = TypeVar("R")


def reported_as(error: type[MCPServerError]) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Pass our errors' messages (safe and actionable by design) to the client; the SDK hides anything else."""

    def decorate(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(handler)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await handler(*args, **kwargs)
            except TensorFeedError as exc:
                raise error(str(exc)) from None

        return wrapper

    return decorate


LOG_LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)  # least to most severe
LOG_LEVEL_KEY = "tensorfeed.log_level"


def connection_of(session: ServerSession) -> Connection:
    """The connection a request came on. SDK 2.3 gives handlers its session but no public path to the connection,
    whose state and exit stack outlive the request."""
    return session._connection


async def warn_legacy_client(connection: Connection, message: str) -> None:
    """Send an MCP log warning, a 2025-era feature (deprecated from 2026-07-28), only to connections that speak it
    and have not asked (logging/setLevel) for a level above warning."""
    if connection.protocol_version >= MODERN_PROTOCOL:
        return
    minimum = connection.state.get(LOG_LEVEL_KEY, "debug")
    if LOG_LEVELS.index("warning") < LOG_LEVELS.index(minimum):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await connection.log("warning", message, logger="tensorfeed")


def explained(message: str) -> WrapValidator:
    """Replace pydantic's generic complaint about a tool argument with one that says what is accepted."""

    def validate(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("invalid_argument", message) from None

    return WrapValidator(validate)


def unknown_arguments(owner: str, given: Iterable[str], accepted: list[str]) -> str | None:
    """The refusal of the names in `given` that `owner` (a tool or a prompt) does not take, saying what it accepts;
    None when it takes them all."""
    unknown = [name for name in given if name not in accepted]
    if not unknown:
        return None
    names = ", ".join(shown(name) for name in unknown[:5])
    return f"{owner} does not take {names}. It accepts: {', '.join(accepted) or 'no arguments'}."


def check_arguments(tool: Tool, arguments: dict[str, Any]) -> None:
    """Refuse unknown, missing and invalid arguments in our own words (never pydantic's, nor the value itself)."""
    accepted = list(tool.parameters.get("properties", {}))
    refusal = unknown_arguments(tool.name, arguments, accepted)
    if refusal:
        raise ToolError(refusal)
    try:
        tool.fn_metadata.validate_arguments(arguments)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "arguments"
        if error["type"] == "missing":
            raise ToolError(f"{tool.name} needs the argument {name!r}. It accepts: {', '.join(accepted)}.") from None
        raise ToolError(error["msg"] if error["type"] == "invalid_argument" else f"{name} is not valid.") from None


def compact_json(value: Any) -> str:
    """`value` as JSON without whitespace, non-ASCII characters kept as they are."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


tool_errors = reported_as(ToolError)
resource_errors = reported_as(ResourceError)

MODERN_PROTOCOL = "2026-07-28"
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=True)
LOCAL_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


class TenantBus:
    """The SubscriptionBus: each listen stream belongs to the tenant that opened it, and hears only that tenant's
    alert changes (`tell`). Events published the SDK's way (`publish`) concern the server itself and reach all."""

    def __init__(self, default_tenant: str | None) -> None:
        self._default_tenant = default_tenant
        self._listeners: dict[object, tuple[str | None, Callable[[ServerEvent], None]]] = {}

    async def publish(self, event: ServerEvent) -> None:
        self._deliver(event, lambda tenant: True)
        await anyio.lowlevel.checkpoint()

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Called by the SDK in the listen request, so the request's tenant is known here. A hosted tenant may hold
        MAX_STREAMS_PER_TENANT streams at once, and the process MAX_LISTEN_STREAMS, so streams cannot take every
        connection it allows."""
        tenant = current_tenant()
        if tenant is not None and sum(held == tenant for held, _ in self._listeners.values()) >= MAX_STREAMS_PER_TENANT:
            raise MCPError(
                INVALID_REQUEST,
                f"This token already has {MAX_STREAMS_PER_TENANT} listen streams open here; close one first.",
            )
        if len(self._listeners) >= MAX_LISTEN_STREAMS:
            raise MCPError(
                INVALID_REQUEST,
                f"This server already holds {MAX_LISTEN_STREAMS} listen streams, the most it keeps; listen again "
                "shortly, or call check_spend_alerts to see alerts now.",
            )
        key = object()
        self._listeners[key] = (tenant or self._default_tenant, listener)
        return lambda: self._listeners.pop(key, None) and None

    def tell(self, tenant: str, event: ServerEvent) -> None:
        self._deliver(event, lambda listener_tenant: listener_tenant == tenant)

    def _deliver(self, event: ServerEvent, wanted: Callable[[str | None], bool]) -> None:
        for tenant, listener in list(self._listeners.values()):
            if wanted(tenant):
                try:
                    listener(event)
                except Exception:  # one broken stream must not keep the event from the others
                    logger.exception("A subscription listener failed; the others still hear the event.")


class AccountRuntime:
    """The process's accounts (one token's, or in hosted mode one per tenant), the alert watcher, and who to tell
    when an alert changes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics: PrometheusTelemetry | None = None
        self.telemetry: Telemetry = NO_TELEMETRY
        if settings.multi_tenant:  # only hosting needs the metrics library (the `hosted` extra)
            try:
                from tensorfeed_mcp.metrics import PrometheusTelemetry
            except ImportError:
                raise hosted_extra_missing("--multi-tenant") from None
            self.metrics = self.telemetry = PrometheusTelemetry(self.active_tenants)
        own_token = settings.token if settings.token and TOKEN_PATTERN.fullmatch(settings.token) else None
        self.bus = TenantBus(token_fingerprint(own_token) if own_token else None)
        self._listen = ListenHandler(self.bus)  # serves subscriptions/listen; end_listen_streams closes its streams
        self.store: Store | None = None
        self._service: AccountService | None = None
        self._tenants: TenantAccounts | None = None
        self._legacy_subscribers: dict[str, set[Connection]] = {}
        self._last_statuses: dict[str, AlertStatus] | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[AccountRuntime]:
        """Open the store and the account client(s) for the process, and start the watcher when
        TENSORFEED_POLL_SECONDS is set."""
        settings = self.settings
        async with open_store(settings) as store, AsyncExitStack() as stack, anyio.create_task_group() as group:
            webhooks = WebhookSender(store, settings)
            webhooks.send_in_background(group)
            if settings.multi_tenant:
                http = await stack.enter_async_context(upstream_http_client(settings))
                self._tenants = TenantAccounts(settings, http, store, webhooks, self.telemetry)
            else:
                client = await stack.enter_async_context(TensorFeedClient(settings, telemetry=self.telemetry))
                self._service = AccountService(settings, client, store, webhooks)
                if settings.alert_poll_seconds:
                    group.start_soon(self._watch, self._service, settings.alert_poll_seconds)
            stack.callback(store.watch(self._alerts_changed))
            self.store = store
            try:
                yield self
            finally:
                self.store = self._service = self._tenants = None
                group.cancel_scope.cancel()

    def account(self) -> AccountService:
        """The account the current request is about: its tenant's in hosted mode, else the process's own."""
        if self._tenants is not None:
            token = request_token()
            if token is None:  # the SDK's auth layer refuses such a request before any handler runs
                raise RuntimeError("A hosted request reached a handler without a verified token.")
            return self._tenants.for_token(token)
        if self._service is None:
            raise RuntimeError("The account service is not open yet.")
        return self._service

    async def admit(self, token: str) -> Admission:
        """Whether a hosted request's token (well formed) is one the service accepts; see TenantAccounts.admit."""
        if self._tenants is None:
            raise RuntimeError("Tokens are admitted only by an open hosted runtime.")
        return await self._tenants.admit(token)

    async def listen(
        self, ctx: ServerRequestContext[Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        """subscriptions/listen. Hosted, a stream ends gracefully after TENSORFEED_MCP_LISTEN_STREAM_SECONDS (its
        final result sent, so its client listens again, perhaps on another replica): none is held for good."""
        if not self.settings.multi_tenant:
            return await self._listen(ctx, params)
        with anyio.move_on_after(self.settings.listen_stream_seconds):
            return await self._listen(ctx, params)
        return SubscriptionsListenResult(_meta={SUBSCRIPTION_ID_META_KEY: ctx.request_id})

    def end_listen_streams(self) -> None:
        """End every open listen stream gracefully (each gets its final result, so its client listens again
        elsewhere), so that a stopping server need not wait for them."""
        self._listen.close()

    def active_tenants(self) -> int:
        """Tenants with a request in the last few minutes (hosted mode), else 0."""
        return 0 if self._tenants is None else self._tenants.active()

    @asynccontextmanager
    async def lifespan(self, _server: MCPServer[AccountRuntime]) -> AsyncIterator[AccountRuntime]:
        """Share the process's runtime when a transport runner already opened it (HTTP), else open it (stdio)."""
        if self.store is not None:
            yield self
            return
        async with self.open():
            yield self

    def _alerts_changed(self, fingerprint: str) -> None:
        """A stored alert status changed, on this process or (with PostgreSQL) any other: tell that tenant's
        listen streams."""
        self.bus.tell(fingerprint, ResourceUpdated(uri=ALERTS_URI))

    async def _watch(self, service: AccountService, interval: float) -> None:
        """Check the alerts every `interval` seconds for as long as the process serves; nothing stops it but that."""
        while True:
            try:
                await self.observe(await service.check_alerts())
            except TensorFeedError as exc:
                logger.warning("Background alert check failed: %s", exc)
            except Exception:
                logger.exception("Background alert check failed unexpectedly; it will run again in %g s", interval)
            await anyio.sleep(interval)

    async def observe(self, check: AlertCheck) -> None:
        """Log newly triggered rules and tell 2025-era subscribers when any rule's status differs from the previous
        check in this process. Only for the one-token process: a hosted replica keeps no sessions to tell, and
        listen streams hear of changes from the store."""
        if self._tenants is not None:
            return
        statuses = {alert.name: alert.status for alert in check.alerts}
        previous, self._last_statuses = self._last_statuses, statuses
        if previous is None or statuses == previous:
            return
        newly_triggered = [
            alert for alert in check.alerts if alert.status == "triggered" and previous.get(alert.name) != "triggered"
        ]
        for alert in newly_triggered:
            logger.warning("Alert %s triggered: %s", alert.name, alert.message)
        for connection in list(self._legacy_subscribers.get(ALERTS_URI, ())):
            for alert in newly_triggered:
                await warn_legacy_client(connection, f"Alert {alert.name} triggered: {alert.message}")
            await connection.send_resource_updated(ALERTS_URI)  # best effort: never raises

    def legacy_subscriber_count(self) -> int:
        """Connections holding a 2025-era subscription (they are dropped when their connection closes)."""
        return len(set().union(*self._legacy_subscribers.values()))

    async def subscribe(self, ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
        """Legacy resources/subscribe: remember the connection, until it closes, so the watcher can tell it."""
        uri = str(params.uri)
        if uri not in (SUMMARY_URI, ALERTS_URI):
            raise MCPError(INVALID_PARAMS, f"Unknown resource {shown(uri)}; subscribable: {SUMMARY_URI}, {ALERTS_URI}.")
        connection = connection_of(ctx.session)
        if not any(connection in subscribers for subscribers in self._legacy_subscribers.values()):
            connection.exit_stack.push_async_callback(self._forget, connection)
        self._legacy_subscribers.setdefault(uri, set()).add(connection)
        return EmptyResult()

    async def unsubscribe(self, ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> EmptyResult:
        self._legacy_subscribers.get(str(params.uri), set()).discard(connection_of(ctx.session))
        return EmptyResult()

    async def _forget(self, connection: Connection) -> None:
        for subscribers in self._legacy_subscribers.values():
            subscribers.discard(connection)

    async def set_log_level(self, ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
        """logging/setLevel (2025-era): the least severe level this connection wants to hear."""
        connection_of(ctx.session).state[LOG_LEVEL_KEY] = params.level
        return EmptyResult()


class AccountServer(MCPServer[AccountRuntime]):
    """MCPServer that checks a call's arguments itself first, so the caller reads what is accepted, whose text
    block is the structured result as compact JSON (the SDK indents it, which costs a model's context), that
    reports each call to the runtime's telemetry, and that refuses an unknown resource, prompt or prompt argument
    itself, in its own words."""

    telemetry: Telemetry = NO_TELEMETRY

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[AccountRuntime, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        tool = self._tool_manager.get_tool(name)
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
        self, uri: AnyUrl | str, context: Context[AccountRuntime, Any] | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        """An unknown URI is refused (invalid params) showing at most its first characters, and what can be read;
        the SDK would echo the whole URI, in the message and again in the error's data."""
        try:
            return await super().read_resource(uri, context)
        except ResourceNotFoundError:
            readable = ", ".join(str(resource.uri) for resource in await self.list_resources())
            raise MCPError(INVALID_PARAMS, f"Unknown resource {shown(str(uri))}; readable: {readable}.") from None

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[AccountRuntime, Any] | None = None
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


def account_of(ctx: Context[AccountRuntime]) -> AccountService:
    return ctx.request_context.lifespan_context.account()


def dashboard_app() -> Apps:
    """The MCP Apps extension: get_spend_history, which hosts that render apps show with the dashboard page.

    Hosts without the extension get the same complete answer and never read the page.
    """
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
            "snapshots, beyond the service's 100-call memory: exact where snapshots allow, else a bound "
            "(credits to credits_max); per-endpoint detail from the calls seen; purchases; gaps; the trailing "
            "median day and a month-end projection."
        ),
    )
    @tool_errors
    async def get_spend_history(
        ctx: Context[AccountRuntime],
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
        return await account_of(ctx).spend_history(days, group_by)

    return apps


def build_server(runtime: AccountRuntime) -> MCPServer[AccountRuntime]:
    """The MCP server: every tool returns a pydantic model, so each has an output schema."""
    hosted = runtime.settings.multi_tenant
    server = AccountServer(
        "tensorfeed",
        title="TensorFeed account",
        instructions=HOSTED_INSTRUCTIONS if hosted else INSTRUCTIONS,
        version=__version__,
        website_url="https://tensorfeed.ai",
        lifespan=runtime.lifespan,
        subscriptions=False,  # served below by the runtime's own ListenHandler, which it can close
        log_level="WARNING",
        extensions=[dashboard_app()],
        # Hosted: each request's bearer is the tenant's own TensorFeed token, issued by the service itself; there
        # is no OAuth flow to advertise, so no protected-resource metadata (clients are told to send the header).
        auth=AuthSettings(issuer_url=AnyHttpUrl(TENSORFEED_ISSUER), resource_server_url=None) if hosted else None,
        token_verifier=TensorFeedTokenVerifier() if hosted else None,
    )
    server.telemetry = runtime.telemetry
    # MCPServer has no public seam for the 2025-era resources/subscribe; its low-level server does. A hosted replica
    # keeps no sessions to hold a subscription in, so it serves (and so advertises) none.
    lowlevel = server._lowlevel_server
    if not hosted:
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, runtime.subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, runtime.unsubscribe)
    # Registering the handler is what declares the logging capability, which a server that sends logs must.
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, runtime.set_log_level)
    lowlevel.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, runtime.listen)

    @server.tool(
        title="Account usage",
        annotations=READ_ONLY,
        description=(
            "What is spending the token's credits, per endpoint (most credits first), over the service's memory "
            "of the last 100 premium calls, plus the newest calls. buffer_full: older calls rolled off and are "
            "not counted."
        ),
    )
    @tool_errors
    async def get_account_usage(
        ctx: Context[AccountRuntime],
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
        return await account_of(ctx).usage(endpoint, recent_limit)

    @server.tool(
        title="Account balance",
        annotations=READ_ONLY,
        description=(
            "Credits left on the token, credits bought and spent over its life, when it was created and last used, "
            "and a US dollar estimate of the balance at the base rate (an estimate: volume purchases cost less)."
        ),
    )
    @tool_errors
    async def get_account_balance(ctx: Context[AccountRuntime]) -> AccountBalance:
        return await account_of(ctx).balance()

    @server.tool(
        title="Payment history",
        annotations=READ_ONLY,
        description="Credit purchases (top-ups) for the token, newest first, with dollar and credit totals.",
    )
    @tool_errors
    async def get_payment_history(ctx: Context[AccountRuntime]) -> PaymentHistory:
        return await account_of(ctx).history()

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
    async def get_spend_cap(ctx: Context[AccountRuntime]) -> SpendCap:
        return await account_of(ctx).spend_cap()

    @server.tool(
        title="Set daily spend cap",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True
        ),
        description=(
            "Set the daily credit cap TensorFeed enforces on the token (clear_spend_cap removes it). Only when the "
            "user asks to limit spending."
        ),
    )
    @tool_errors
    async def set_spend_cap(
        ctx: Context[AccountRuntime],
        daily_cap: Annotated[
            StrictInt,
            Field(ge=1, le=1_000_000),
            explained(
                "daily_cap must be a whole number of credits from 1 to 1,000,000; to remove the cap, use "
                "clear_spend_cap."
            ),
            Field(description="Credits per UTC day."),
        ],
    ) -> SpendCapChange:
        return await account_of(ctx).set_spend_cap(daily_cap)

    @server.tool(
        title="Clear daily spend cap",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True
        ),
        description=(
            "Remove the daily credit cap, so TensorFeed no longer limits the token's daily spend. Only when the "
            "user explicitly asks to lift the limit."
        ),
    )
    @tool_errors
    async def clear_spend_cap(ctx: Context[AccountRuntime]) -> SpendCapChange:
        return await account_of(ctx).clear_spend_cap()

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
        ctx: Context[AccountRuntime],
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
        return await account_of(ctx).set_alert(kind, threshold, name)

    @server.tool(
        title="Delete spend alert",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        ),
        description="Delete a local alert rule by name. Rules from the environment (env:...) cannot be deleted here.",
    )
    @tool_errors
    async def delete_spend_alert(
        ctx: Context[AccountRuntime],
        name: Annotated[
            str,
            Field(max_length=MAX_NAME_LENGTH),
            explained(f"name must be a rule's name: text of at most {MAX_NAME_LENGTH} characters."),
            Field(description="The rule's name."),
        ],
    ) -> AlertRuleDeleted:
        return await account_of(ctx).delete_alert(name)

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
    async def check_spend_alerts(ctx: Context[AccountRuntime]) -> AlertCheck:
        check = await account_of(ctx).check_alerts()
        await runtime.observe(check)
        for alert in check.alerts:
            if alert.status == "triggered":
                await warn_legacy_client(connection_of(ctx.session), f"Alert {alert.name} triggered: {alert.message}")
        return check

    @server.resource(
        SUMMARY_URI,
        name="account_summary",
        title="Account summary",
        description="Balance and usage headline for the token, as JSON.",
        mime_type="application/json",
    )
    @resource_errors
    async def account_summary() -> str:
        account = runtime.account()
        balance, usage = await account.balance(), await account.usage()
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
        return (await runtime.account().check_alerts()).model_dump_json()

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

    return server


async def serve_stdio(server: MCPServer[AccountRuntime]) -> None:
    """Serve over stdin/stdout, answering a line that is not JSON-RPC with a JSON-RPC error (the SDK drops it)."""
    async with stdio_server() as (read_stream, write_stream):
        send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def answer_malformed_lines() -> None:
            async with send, read_stream:
                async for item in read_stream:
                    if isinstance(item, Exception):
                        await write_stream.send(SessionMessage(_malformed_line_error(item)))
                    else:
                        await send.send(item)

        async with anyio.create_task_group() as group:
            group.start_soon(answer_malformed_lines)
            await server._lowlevel_server.run(
                receive, write_stream, server._lowlevel_server.create_initialization_options()
            )


def _malformed_line_error(exc: Exception) -> JSONRPCError:
    """The answer to a line the SDK could not read as a message: a parse error, else an invalid request (invalid
    params when a request's params are not an object), with the request's id when the line holds a readable one."""
    not_json = isinstance(exc, ValidationError) and any(error["type"] == "json_invalid" for error in exc.errors())
    line = _rejected_object(exc)
    request_id = line.get("id") if "method" in line else None  # a broken response is no request to answer
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        request_id = None
    if not_json:
        code, message = PARSE_ERROR, "Parse error: the line is not valid JSON."
    elif request_id is not None and not isinstance(line.get("params", {}), dict):
        code, message = INVALID_PARAMS, "Invalid params: a request's params must be a JSON object."
    else:
        code, message = INVALID_REQUEST, "Invalid request: the line is JSON but not a JSON-RPC 2.0 message MCP accepts."
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))


def _rejected_object(exc: Exception) -> dict[str, Any]:
    """The JSON object a line held, read back from the SDK's validation error (pydantic gives the whole object as
    the input of a missing field, and a request lacks the result of a response); empty when there is none."""
    if isinstance(exc, ValidationError):
        for error in exc.errors():
            line = error.get("input")
            if error["type"] == "missing" and len(error["loc"]) == 2 and isinstance(line, dict):
                return line
    return {}
