"""Tenants: in hosted mode each request's bearer token is its tenant. Here the token is checked (its format, before
anything is sent upstream) and each tenant gets its own AccountService (its own cache, request coalescing, rules
and ledger, keyed by fingerprint) over one shared connection pool and one shared store."""

from __future__ import annotations

import time
from collections import OrderedDict

import httpx2
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken

from tensorfeed_mcp.account import AccountService
from tensorfeed_mcp.client import TensorFeedClient
from tensorfeed_mcp.config import TOKEN_PATTERN, Settings, token_fingerprint
from tensorfeed_mcp.store import Store
from tensorfeed_mcp.telemetry import Telemetry

MAX_TENANTS_KEPT = 1000  # services beyond this, least recently used first, are dropped (they hold only caches)
ACTIVE_SECONDS = 300.0  # a tenant with a request in the last five minutes counts as active


class TensorFeedTokenVerifier:
    """The SDK's TokenVerifier for TensorFeed tokens: the format is all that can be checked locally (the service
    alone knows whether a token is live), so a malformed bearer is refused before any upstream request."""

    async def verify_token(self, token: str) -> AccessToken | None:
        if not TOKEN_PATTERN.fullmatch(token):
            return None
        return AccessToken(token=token, client_id=token_fingerprint(token), scopes=[])


def current_tenant() -> str | None:
    """The fingerprint of the token this HTTP request was authenticated with; None outside hosted requests."""
    access = get_access_token()
    return None if access is None else access.client_id


def request_token() -> str | None:
    """The token this HTTP request was authenticated with; None outside hosted requests."""
    access = get_access_token()
    return None if access is None else access.token


class TenantAccounts:
    """One AccountService per tenant, made on first use and kept while recently used."""

    def __init__(self, settings: Settings, http: httpx2.AsyncClient, store: Store, telemetry: Telemetry) -> None:
        self._settings = settings
        self._http = http
        self._store = store
        self._telemetry = telemetry
        self._services: OrderedDict[str, tuple[AccountService, float]] = OrderedDict()

    def for_token(self, token: str) -> AccountService:
        """The tenant's service; the token must already have passed TensorFeedTokenVerifier."""
        fingerprint = token_fingerprint(token)
        kept = self._services.pop(fingerprint, None)
        if kept is None:
            settings = self._settings.with_token(token)
            client = TensorFeedClient(settings, self._http, self._telemetry)
            service = AccountService(settings, client, self._store)
        else:
            service = kept[0]
        self._services[fingerprint] = (service, time.monotonic())
        while len(self._services) > MAX_TENANTS_KEPT:
            self._services.popitem(last=False)
        return service

    def active(self) -> int:
        """How many tenants made a request in the last ACTIVE_SECONDS."""
        horizon = time.monotonic() - ACTIVE_SECONDS
        return sum(1 for _, last in self._services.values() if last >= horizon)
