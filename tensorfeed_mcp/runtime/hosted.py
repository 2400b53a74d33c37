"""The hosted runtime (`serve --multi-tenant`): one account per tenant whose token the service accepted, over one
connection pool and one store, with Prometheus metrics."""

from __future__ import annotations

from contextlib import AsyncExitStack

from anyio.abc import TaskGroup

from tensorfeed_mcp.runtime.base import BaseRuntime
from tensorfeed_mcp.runtime.tenants import Admission, TenantAccounts
from tensorfeed_mcp.service.account import AccountService
from tensorfeed_mcp.service.webhooks import WebhookSender
from tensorfeed_mcp.settings.environment import Settings, hosted_extra_missing
from tensorfeed_mcp.store import Store
from tensorfeed_mcp.surface.hosted_auth import TensorFeedTokenVerifier, request_token
from tensorfeed_mcp.surface.server import HOSTED_INSTRUCTIONS
from tensorfeed_mcp.surface.subscriptions import Subscriptions
from tensorfeed_mcp.upstream.client import upstream_http_client


class HostedRuntime(BaseRuntime):
    """Each request's account is its tenant's; a listen stream ends after TENSORFEED_MCP_LISTEN_STREAM_SECONDS, so
    none is held for good, and no 2025-era subscription is served (a replica keeps no sessions)."""

    instructions = HOSTED_INSTRUCTIONS

    def __init__(self, settings: Settings) -> None:
        try:  # only hosting needs the metrics library (the `hosted` extra)
            from tensorfeed_mcp.observability.metrics import PrometheusTelemetry
        except ImportError:
            raise hosted_extra_missing("--multi-tenant") from None
        super().__init__(settings, Subscriptions(None, legacy=False, stream_seconds=settings.listen_stream_seconds))
        self.metrics = PrometheusTelemetry(self.active_tenants)
        self.telemetry = self.metrics
        self.token_verifier = TensorFeedTokenVerifier()
        self._tenants: TenantAccounts | None = None

    def account(self) -> AccountService:
        token = request_token()
        if token is None:  # the SDK's auth layer refuses such a request before any handler runs
            raise RuntimeError("A hosted request reached a handler without a verified token.")
        return self._opened_tenants().for_token(token)

    async def admit(self, token: str) -> Admission:
        """Whether a request's token (well formed) is one the service accepts; see TenantAccounts.admit."""
        return await self._opened_tenants().admit(token)

    def active_tenants(self) -> int:
        """Tenants with a request in the last few minutes."""
        return 0 if self._tenants is None else self._tenants.active()

    def _opened_tenants(self) -> TenantAccounts:
        if self._tenants is None:
            raise RuntimeError("The hosted runtime is not open yet.")
        return self._tenants

    async def _open_accounts(
        self, stack: AsyncExitStack, group: TaskGroup, store: Store, webhooks: WebhookSender
    ) -> None:
        http = await stack.enter_async_context(upstream_http_client(self.settings))
        self._tenants = TenantAccounts(self.settings, http, store, webhooks, self.telemetry)

    def _close_accounts(self) -> None:
        self._tenants = None
