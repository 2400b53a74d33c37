"""The single-user runtime: the one account behind TENSORFEED_TOKEN, and the alert watcher when
TENSORFEED_POLL_SECONDS is set."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import anyio
from anyio.abc import TaskGroup

from tensorfeed_mcp.errors import ConfigurationError, TensorFeedError
from tensorfeed_mcp.runtime.base import BaseRuntime
from tensorfeed_mcp.service.account import AccountService
from tensorfeed_mcp.service.webhooks import WebhookSender
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.identity import Tenant, configured_tenant
from tensorfeed_mcp.store import Store
from tensorfeed_mcp.surface.server import INSTRUCTIONS
from tensorfeed_mcp.surface.subscriptions import Subscriptions
from tensorfeed_mcp.upstream.client import TensorFeedClient

logger = logging.getLogger(__name__)


class LocalRuntime(BaseRuntime):
    """One token's account for every request; 2025-era subscriptions served, as sessions live here."""

    instructions = INSTRUCTIONS

    def __init__(self, settings: Settings) -> None:
        try:
            self._tenant: Tenant | ConfigurationError = configured_tenant(settings.token)
        except ConfigurationError as exc:  # served all the same: every call then says what to fix
            self._tenant = exc
        own = self._tenant.fingerprint if isinstance(self._tenant, Tenant) else None
        super().__init__(settings, Subscriptions(own, legacy=True))
        self._service: AccountService | None = None

    def account(self) -> AccountService:
        if isinstance(self._tenant, ConfigurationError):
            raise self._tenant
        if self._service is None:
            raise RuntimeError("The account service is not open yet.")
        return self._service

    async def _open_accounts(
        self, stack: AsyncExitStack, group: TaskGroup, store: Store, webhooks: WebhookSender
    ) -> None:
        if isinstance(self._tenant, ConfigurationError):
            if self.settings.alert_poll_seconds:
                logger.warning("Background alert checks are off: %s", self._tenant)
            return
        client = await stack.enter_async_context(
            TensorFeedClient(self.settings, self._tenant, telemetry=self.telemetry)
        )
        self._service = AccountService(self.settings, self._tenant, client, store, webhooks)
        if self.settings.alert_poll_seconds:
            group.start_soon(self._watch, self._service, self.settings.alert_poll_seconds)

    def _close_accounts(self) -> None:
        self._service = None

    async def _watch(self, service: AccountService, interval: float) -> None:
        """Check the alerts every `interval` seconds for as long as the process serves; nothing stops it but that."""
        while True:
            try:
                await self.subscriptions.observe(await service.check_alerts())
            except TensorFeedError as exc:
                logger.warning("Background alert check failed: %s", exc)
            except Exception:
                logger.exception("Background alert check failed unexpectedly; it will run again in %g s", interval)
            await anyio.sleep(interval)
