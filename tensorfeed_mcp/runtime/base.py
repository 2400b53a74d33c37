"""What both runtimes share: the store, the webhook sender and the alert changes it hears of, held open for as long
as the process serves."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup
from mcp.server import MCPServer
from mcp.server.auth.provider import TokenVerifier

from tensorfeed_mcp.observability.telemetry import NO_TELEMETRY, Telemetry
from tensorfeed_mcp.service.account import AccountService
from tensorfeed_mcp.service.webhooks import WebhookSender
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.store import Store, open_store
from tensorfeed_mcp.surface.server import build_server
from tensorfeed_mcp.surface.subscriptions import Subscriptions


class BaseRuntime(ABC):
    """Opens what every mode needs; a mode's runtime adds its accounts in `_open_accounts`."""

    instructions: str
    token_verifier: TokenVerifier | None = None

    def __init__(self, settings: Settings, subscriptions: Subscriptions) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self.telemetry: Telemetry = NO_TELEMETRY
        self.store: Store | None = None

    def server(self) -> MCPServer[Any]:
        """The MCP server over this runtime."""
        return build_server(self)

    @abstractmethod
    def account(self) -> AccountService:
        """The account the current request is about."""

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """Open the store, the webhook sender and the mode's accounts, until the process stops serving."""
        async with open_store(self.settings) as store, AsyncExitStack() as stack, anyio.create_task_group() as group:
            webhooks = WebhookSender(store, self.settings)
            webhooks.send_in_background(group)
            await self._open_accounts(stack, group, store, webhooks)
            stack.callback(store.watch(self.subscriptions.alerts_changed))
            self.store = store
            try:
                yield
            finally:
                self.store = None
                self._close_accounts()
                group.cancel_scope.cancel()

    @abstractmethod
    async def _open_accounts(
        self, stack: AsyncExitStack, group: TaskGroup, store: Store, webhooks: WebhookSender
    ) -> None:
        """Open the mode's accounts, their clients closed by `stack`, their background tasks in `group`."""

    @abstractmethod
    def _close_accounts(self) -> None:
        """Let go of the accounts: the runtime is no longer open."""

    @asynccontextmanager
    async def lifespan(self, _server: MCPServer[Any]) -> AsyncIterator[None]:
        """Share the runtime when a transport runner already opened it (HTTP), else open it (stdio)."""
        if self.store is not None:
            yield
            return
        async with self.open():
            yield
