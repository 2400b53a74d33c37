"""Who hears of alert changes: 2026-era listen streams, each its tenant's own, and 2025-era resource subscriptions
and log warnings for the connections that hold them."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, get_args

import anyio
import anyio.lowlevel
from mcp.server import MCPServer
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import ListenHandler, ServerEvent
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY, ResourceUpdated
from mcp.types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    EmptyResult,
    LoggingLevel,
    SetLevelRequestParams,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    UnsubscribeRequestParams,
)

from tensorfeed_mcp.errors import shown
from tensorfeed_mcp.models import AlertCheck, AlertStatus
from tensorfeed_mcp.surface.hosted_auth import current_tenant
from tensorfeed_mcp.surface.sdk_private import connection_of, lowlevel_of

logger = logging.getLogger(__name__)

MODERN_PROTOCOL = "2026-07-28"
MAX_STREAMS_PER_TENANT = 10
MAX_LISTEN_STREAMS = 50  # per process: half the connections it allows, so streams cannot take every slot
SUMMARY_URI = "tensorfeed://account/summary"
ALERTS_URI = "tensorfeed://account/alerts"
LOG_LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)  # least to most severe
LOG_LEVEL_KEY = "tensorfeed.log_level"


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


class Subscriptions:
    """The process's listeners. `default_tenant` owns the listen streams of requests that carry no tenant (the
    one-token process); `legacy` serves 2025-era resources/subscribe, which needs a session to hold it (so not on a
    hosted replica); `stream_seconds`, when set, ends each listen stream gracefully after that long (its final
    result sent, so its client listens again, perhaps on another replica)."""

    def __init__(self, default_tenant: str | None, *, legacy: bool, stream_seconds: float | None = None) -> None:
        self.bus = TenantBus(default_tenant)
        self._listen = ListenHandler(self.bus)  # serves subscriptions/listen; end_listen_streams closes its streams
        self._legacy = legacy
        self._stream_seconds = stream_seconds
        self._legacy_subscribers: dict[str, set[Connection]] = {}
        self._last_statuses: dict[str, AlertStatus] | None = None

    def register(self, server: MCPServer[Any]) -> None:
        """Serve listen, logging/setLevel and (legacy) resources/subscribe on `server`."""
        lowlevel = lowlevel_of(server)
        if self._legacy:
            lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, self.subscribe)
            lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self.unsubscribe)
        # Registering the handler is what declares the logging capability, which a server that sends logs must.
        lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, self.set_log_level)
        lowlevel.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, self.listen)

    async def listen(
        self, ctx: ServerRequestContext[Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        """subscriptions/listen, for at most `stream_seconds` when that is set."""
        if self._stream_seconds is None:
            return await self._listen(ctx, params)
        with anyio.move_on_after(self._stream_seconds):
            return await self._listen(ctx, params)
        return SubscriptionsListenResult(_meta={SUBSCRIPTION_ID_META_KEY: ctx.request_id})

    def end_listen_streams(self) -> None:
        """End every open listen stream gracefully (each gets its final result, so its client listens again
        elsewhere), so that a stopping server need not wait for them."""
        self._listen.close()

    def alerts_changed(self, fingerprint: str) -> None:
        """A stored alert status changed, on this process or (with PostgreSQL) any other: tell that tenant's
        listen streams."""
        self.bus.tell(fingerprint, ResourceUpdated(uri=ALERTS_URI))

    async def observe(self, check: AlertCheck) -> None:
        """Log newly triggered rules and tell 2025-era subscribers when any rule's status differs from the previous
        check in this process. Only where legacy subscriptions are served: a hosted replica keeps no sessions to
        tell, and listen streams hear of changes from the store."""
        if not self._legacy:
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
