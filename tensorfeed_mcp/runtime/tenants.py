"""Tenants: in hosted mode each request's bearer token is its tenant, and a tenant exists only once the service has
accepted its token. A token seen for the first time costs one free upstream read (the balance), within a budget of
new tokens per replica; the service's answer is remembered per fingerprint (a refusal only briefly), so a made-up
token gets nothing stored, no stream held and no cache slot, and asking again costs TensorFeed nothing. Each known
tenant gets its own AccountService (its own cache, request coalescing, rules and ledger, keyed by fingerprint) over
one shared connection pool and one shared store."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import anyio
import httpx2

from tensorfeed_mcp.core.rate_limits import RateLimiter
from tensorfeed_mcp.errors import TokenNotRecognisedError, TokenRequiredError, UpstreamError
from tensorfeed_mcp.observability.telemetry import Telemetry
from tensorfeed_mcp.service.account import AccountService
from tensorfeed_mcp.service.webhooks import WebhookSender
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.identity import Tenant, token_fingerprint
from tensorfeed_mcp.store import Store
from tensorfeed_mcp.upstream.client import TensorFeedClient

MAX_TENANTS_KEPT = 1000  # services beyond this, least recently used first, are dropped (they hold only caches)
ACTIVE_SECONDS = 300.0  # a tenant with a request in the last five minutes counts as active
KNOWN_SECONDS = 3600.0  # a token the service accepted is believed this long without asking it again
REFUSED_SECONDS = 300.0  # a token the service refused is refused this long without asking it again
MAX_REMEMBERED = 100_000  # fingerprints remembered either way, least recently seen dropped first
MAX_CHECKS_IN_FLIGHT = 8  # new tokens asked about upstream at once
MAX_CHECKS_PENDING = 32  # new tokens being checked or waiting to be, so a flood cannot hold many connections
NEW_TOKENS = "new tokens"  # the one key of the budget all tokens not yet known share


@dataclass(frozen=True)
class Admission:
    """Whether a request's token may go on: `known` tenants may; the others get `reason`, and `retry_after`
    seconds for the refusals that pass (the budget, an unreachable service)."""

    verdict: Literal["known", "refused", "busy", "unavailable"]
    reason: str = ""
    retry_after: int = 0


KNOWN = Admission("known")


class TenantAccounts:
    """The tenants the service has vouched for, each with its AccountService (made on first use, kept while
    recently used), and the admission of tokens not yet known."""

    def __init__(
        self,
        settings: Settings,
        http: httpx2.AsyncClient,
        store: Store,
        webhooks: WebhookSender,
        telemetry: Telemetry,
    ) -> None:
        self._settings = settings
        self._http = http
        self._store = store
        self._webhooks = webhooks
        self._telemetry = telemetry
        self._services: OrderedDict[str, tuple[AccountService, float]] = OrderedDict()
        self._known_until: OrderedDict[str, float] = OrderedDict()
        self._refused_until: OrderedDict[str, float] = OrderedDict()
        self._checks: dict[str, anyio.Event] = {}
        self._check_slots = anyio.Semaphore(MAX_CHECKS_IN_FLIGHT)
        self._new_tokens = RateLimiter(settings.new_tokens_per_minute)

    async def admit(self, token: str) -> Admission:
        """Whether the service knows `token` (well formed): from memory, or by one balance read, which then also
        answers the tenant's first balance read from its cache. Concurrent requests with one new token share that
        read."""
        fingerprint = token_fingerprint(token)
        while True:
            now = time.monotonic()
            if self._known_until.get(fingerprint, 0.0) > now:
                return KNOWN
            if self._refused_until.get(fingerprint, 0.0) > now:
                return _refused()
            check = self._checks.get(fingerprint)
            if check is None:
                break
            await check.wait()
        if len(self._checks) >= MAX_CHECKS_PENDING:
            return Admission("busy", "This server is checking many new tokens at once; try again shortly.", 1)
        if fingerprint not in self._known_until:  # a token known before is being checked again: not a new one
            wait = self._new_tokens.wait_seconds(NEW_TOKENS)
            if wait:
                return Admission(
                    "busy",
                    "This server has checked as many new tokens as it may for now; try again shortly.",
                    max(1, math.ceil(wait)),
                )
        self._checks[fingerprint] = check = anyio.Event()
        try:
            async with self._check_slots:
                return await self._check(token, fingerprint)
        finally:
            del self._checks[fingerprint]
            check.set()

    async def _check(self, token: str, fingerprint: str) -> Admission:
        tenant = Tenant.of(token)
        client = self._client(tenant)
        try:
            await client.balance()
        except (TokenNotRecognisedError, TokenRequiredError):
            return _refused()  # the client's on_token_refused has remembered it
        except UpstreamError as exc:
            return Admission("unavailable", f"TensorFeed could not be asked whether it knows this token: {exc}", 5)
        _remember(self._known_until, fingerprint, time.monotonic() + KNOWN_SECONDS)
        self._refused_until.pop(fingerprint, None)
        self._keep(fingerprint, self._service(tenant, client))
        return KNOWN

    def for_token(self, token: str) -> AccountService:
        """The tenant's service; the token must have been admitted (`admit` answered known)."""
        fingerprint = token_fingerprint(token)
        if fingerprint not in self._known_until:
            raise RuntimeError("A hosted request reached a handler with a token the service has not accepted.")
        kept = self._services.pop(fingerprint, None)
        if kept is None:
            tenant = Tenant.of(token)
            return self._keep(fingerprint, self._service(tenant, self._client(tenant)))
        return self._keep(fingerprint, kept[0])

    def _service(self, tenant: Tenant, client: TensorFeedClient) -> AccountService:
        return AccountService(self._settings, tenant, client, self._store, self._webhooks)

    def active(self) -> int:
        """How many tenants made a request in the last ACTIVE_SECONDS."""
        horizon = time.monotonic() - ACTIVE_SECONDS
        return sum(1 for _, last in self._services.values() if last >= horizon)

    def _client(self, tenant: Tenant) -> TensorFeedClient:
        return TensorFeedClient(
            self._settings,
            tenant,
            self._http,
            self._telemetry,
            on_token_refused=lambda: self._refused(tenant.fingerprint),
        )

    def _keep(self, fingerprint: str, service: AccountService) -> AccountService:
        self._services[fingerprint] = (service, time.monotonic())
        self._services.move_to_end(fingerprint)
        while len(self._services) > MAX_TENANTS_KEPT:
            self._services.popitem(last=False)
        return service

    def _refused(self, fingerprint: str) -> None:
        """The service refused the token (a made-up one, or a tenant's token since revoked): forget the tenant and
        refuse it at the gate for a while."""
        self._known_until.pop(fingerprint, None)
        self._services.pop(fingerprint, None)
        _remember(self._refused_until, fingerprint, time.monotonic() + REFUSED_SECONDS)


def _refused() -> Admission:
    return Admission(
        "refused",
        "TensorFeed does not recognise this token (revoked or mistyped); send the tf_live_ token you got when you "
        "bought credits.",
    )


def _remember(memory: OrderedDict[str, float], fingerprint: str, until: float) -> None:
    memory[fingerprint] = until
    memory.move_to_end(fingerprint)
    while len(memory) > MAX_REMEMBERED:
        memory.popitem(last=False)
