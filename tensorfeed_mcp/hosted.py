"""The hosted edge (`serve --multi-tenant`): the tenant gate in front of /mcp (the bearer's format, a clear 401, a
per-tenant rate limit with Retry-After), and the operations routes /healthz, /readyz and /metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from mcp.server import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tensorfeed_mcp.config import TOKEN_PATTERN, Settings, token_fingerprint
from tensorfeed_mcp.errors import ConfigurationError, StateStoreError
from tensorfeed_mcp.http_app import MAX_REQUEST_BODY_BYTES, transport_security
from tensorfeed_mcp.server import AccountRuntime

EXPECTED_BEARER = "'Authorization: Bearer tf_live_...' (tf_live_ followed by 64 hex characters)"
MAX_BUCKETS = 100_000  # idle full buckets are dropped beyond this, so many one-off tokens cannot fill memory


def check_hosted_settings(settings: Settings, transport: str) -> None:
    """Refuse what a multi-tenant server cannot honour, naming the setting and what to do instead."""
    if transport != "streamable-http":
        raise ConfigurationError(
            "--multi-tenant serves streamable HTTP only (replicas keep no sessions, which legacy SSE needs): "
            "use --transport streamable-http."
        )
    if settings.token:
        raise ConfigurationError(
            "TENSORFEED_TOKEN is set, but a multi-tenant server holds no token of its own: each client sends its "
            "own. Unset it."
        )
    if settings.mcp_auth_token:
        raise ConfigurationError(
            "TENSORFEED_MCP_AUTH_TOKEN cannot be used with --multi-tenant: there the Authorization header carries "
            "each client's TensorFeed token. Unset it and protect the endpoint at the network or load balancer."
        )
    if settings.alert_poll_seconds:
        raise ConfigurationError(
            "TENSORFEED_POLL_SECONDS needs a token to poll with, and a multi-tenant server holds none. Unset it; "
            "alerts are checked when clients call check_spend_alerts (or run `tensorfeed-mcp record` per token)."
        )


def _unauthorised(description: str) -> Response:
    """A 401 as RFC 6750 words it, which MCP clients understand; the description says what is accepted."""
    return JSONResponse(
        {"error": "invalid_token", "error_description": description},
        status_code=401,
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'},
    )


class RateLimiter:
    """A token bucket per tenant: `per_minute` requests a minute, in bursts of up to that many."""

    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def wait_seconds(self, tenant: str) -> float:
        """0 when the request may go now (and it is counted), else how long until it could."""
        now = time.monotonic()
        tokens, at = self._buckets.get(tenant, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._rate)
        if tokens < 1:
            self._buckets[tenant] = (tokens, now)
            return (1 - tokens) / self._rate
        self._buckets[tenant] = (tokens - 1, now)
        if len(self._buckets) > MAX_BUCKETS:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        for tenant, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self._rate >= self._capacity:
                del self._buckets[tenant]


class TenantGate:
    """ASGI middleware for the MCP endpoint: a request without a well-formed TensorFeed bearer gets a 401 that says
    what to send (nothing goes upstream), and a tenant over its rate gets a 429 with Retry-After. The SDK's auth
    layer (TensorFeedTokenVerifier) then checks the bearer again and hands it to the handlers."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, on_limited: Callable[[], None]) -> None:
        self._app = app
        self._limiter = limiter
        self._on_limited = on_limited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(scope) if scope["type"] == "http" and scope["path"].startswith("/mcp") else None
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        """The answer for a request that may not go on, or None."""
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _unauthorised(
                f"This server serves many TensorFeed accounts: send your own token as {EXPECTED_BEARER}."
            )
        if not TOKEN_PATTERN.fullmatch(token):
            return _unauthorised(f"The bearer is not a TensorFeed token; send {EXPECTED_BEARER}.")
        if scope["method"] == "GET":
            # A replica keeps no sessions, so it has no standalone event stream to offer; without this the SDK's
            # stateless mode would hold the GET open, silent, for as long as the client likes.
            return JSONResponse(
                {
                    "error": "method_not_allowed",
                    "error_description": "This server keeps no sessions, so it offers no event stream on GET: send "
                    "requests with POST, and listen for changes with subscriptions/listen (protocol 2026-07-28).",
                },
                status_code=405,
                headers={"Allow": "POST"},
            )
        wait = self._limiter.wait_seconds(token_fingerprint(token))
        if wait <= 0:
            return None
        self._on_limited()
        retry_after = max(1, math.ceil(wait))
        return JSONResponse(
            {
                "error": "rate_limited",
                "error_description": f"Too many requests for this token; try again in {retry_after} s.",
            },
            status_code=429,
            headers={"Retry-After": str(retry_after)},
        )


class Operations:
    """/healthz (the process answers), /readyz (the store is reachable and migrated, and the process is not
    draining) and /metrics (Prometheus text). None of them needs or reads a token."""

    def __init__(self, runtime: AccountRuntime, exposition: Callable[[], bytes], content_type: str) -> None:
        self._runtime = runtime
        self._exposition = exposition
        self._content_type = content_type
        self.draining = False

    def start_draining(self) -> None:
        """Fail readiness from now on, and end the listen streams (their clients listen again on another replica)."""
        self.draining = True
        self._runtime.end_listen_streams()

    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        if self.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        store = self._runtime.store
        if store is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await store.check_ready()
        except StateStoreError as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(self, _request: Request) -> Response:
        return Response(self._exposition(), media_type=self._content_type)


def build_hosted_app(
    runtime: AccountRuntime, server: MCPServer[AccountRuntime], host: str, extra_hosts: Sequence[str]
) -> tuple[ASGIApp, Operations]:
    """The multi-tenant app: stateless streamable HTTP at /mcp behind the tenant gate, and the operations routes."""
    metrics = runtime.metrics
    if metrics is None:
        raise RuntimeError("The hosted app needs a runtime opened with multi_tenant settings.")
    operations = Operations(runtime, metrics.exposition, metrics.content_type)
    server.custom_route("/healthz", methods=["GET"])(operations.healthz)
    server.custom_route("/readyz", methods=["GET"])(operations.readyz)
    server.custom_route("/metrics", methods=["GET"])(operations.metrics)
    app = server.streamable_http_app(
        stateless_http=True,  # 2025-era clients too: any replica answers any request
        max_request_body_size=MAX_REQUEST_BODY_BYTES,
        transport_security=transport_security(host, extra_hosts),
        host=host,
    )
    limiter = RateLimiter(runtime.settings.tenant_calls_per_minute)
    return TenantGate(app, limiter, metrics.rate_limited.inc), operations
