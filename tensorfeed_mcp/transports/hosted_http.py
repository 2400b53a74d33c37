"""The hosted edge (`serve --multi-tenant`): the tenant gate in front of /mcp (the bearer's format, a clear 401, a
per-tenant rate limit with Retry-After), and the operations routes /healthz, /readyz and /metrics."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tensorfeed_mcp.core.rate_limits import RateLimiter
from tensorfeed_mcp.errors import ConfigurationError, StateStoreError
from tensorfeed_mcp.runtime.hosted import HostedRuntime
from tensorfeed_mcp.runtime.tenants import Admission
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.identity import TOKEN_PATTERN, token_fingerprint
from tensorfeed_mcp.transports.listener import MAX_REQUEST_BODY_BYTES, serve_app, transport_security

DRAIN_NOTICE_SECONDS = 3.0  # how long readiness fails, the listener still answering, before it closes
EXPECTED_BEARER = "'Authorization: Bearer tf_live_...' (tf_live_ followed by 64 hex characters)"


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
            "TENSORFEED_MCP_AUTH_TOKEN (or --auth-token-file) cannot be used with --multi-tenant: there the "
            "Authorization header carries each client's TensorFeed token. Drop it and protect the endpoint at the "
            "network or load balancer."
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


class TenantGate:
    """ASGI middleware for the MCP endpoint, in front of the SDK: a request passes only with one Authorization header
    carrying a token the service has accepted (`TenantAccounts.admit`), within its tenant's rate. Anything else is
    answered here, and nothing of it is stored or held: a 401 that says what to send, a 400 for two headers, a 429
    with Retry-After for a tenant over its rate or too many new tokens at once, a 503 when the service cannot be
    asked."""

    def __init__(
        self,
        app: ASGIApp,
        admit: Callable[[str], Awaitable[Admission]],
        limiter: RateLimiter,
        on_limited: Callable[[], None],
    ) -> None:
        self._app = app
        self._admit = admit
        self._limiter = limiter
        self._on_limited = on_limited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = await self._refusal(scope) if scope["type"] == "http" and scope["path"].startswith("/mcp") else None
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self._app(scope, receive, send)

    async def _refusal(self, scope: Scope) -> Response | None:
        """The answer for a request that may not go on, or None."""
        headers = [value for name, value in scope["headers"] if name.lower() == b"authorization"]
        if len(headers) > 1:
            # The SDK would serve the first and a proxy might log the last: one request, one tenant.
            return _refused(400, "invalid_request", "Send one Authorization header, not several.")
        scheme, _, token = (headers[0] if headers else b"").decode("latin-1").partition(" ")
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
        admission = await self._admit(token)
        if admission.verdict == "refused":
            return _unauthorised(admission.reason)
        if admission.verdict != "known":
            status, code = (429, "too_many_new_tokens") if admission.verdict == "busy" else (503, "unavailable")
            return _refused(status, code, admission.reason, admission.retry_after)
        wait = self._limiter.wait_seconds(token_fingerprint(token))
        if wait <= 0:
            return None
        self._on_limited()
        retry_after = max(1, math.ceil(wait))
        return _refused(
            429, "rate_limited", f"Too many requests for this token; try again in {retry_after} s.", retry_after
        )


def _refused(status: int, code: str, description: str, retry_after: int = 0) -> Response:
    """An error answer as RFC 6750 words them, with Retry-After when a later try may pass."""
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    return JSONResponse({"error": code, "error_description": description}, status_code=status, headers=headers)


class Operations:
    """/healthz (the process answers), /readyz (the store is reachable and migrated, and the process is not
    draining) and /metrics (Prometheus text). None of them needs or reads a token."""

    def __init__(self, runtime: HostedRuntime, exposition: Callable[[], bytes], content_type: str) -> None:
        self._runtime = runtime
        self._exposition = exposition
        self._content_type = content_type
        self.draining = False

    def start_draining(self) -> None:
        """Fail readiness from now on, and end the listen streams (their clients listen again on another replica)."""
        self.draining = True
        self._runtime.subscriptions.end_listen_streams()

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


def build_hosted_app(runtime: HostedRuntime, host: str, extra_hosts: Sequence[str]) -> tuple[ASGIApp, Operations]:
    """The multi-tenant app: stateless streamable HTTP at /mcp behind the tenant gate, and the operations routes."""
    metrics = runtime.metrics
    operations = Operations(runtime, metrics.exposition, metrics.content_type)
    server = runtime.server()
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
    return TenantGate(app, runtime.admit, limiter, metrics.rate_limited.inc), operations


async def serve_hosted(runtime: HostedRuntime, host: str, port: int, extra_hosts: Sequence[str] = ()) -> None:
    """Listen until SIGINT or SIGTERM, then drain: readiness fails for DRAIN_NOTICE_SECONDS before the listener
    closes, and calls in flight (up to the upstream deadline) finish."""
    app, operations = build_hosted_app(runtime, host, extra_hosts)
    async with runtime.open():
        await serve_app(
            app,
            runtime.settings,
            operations.start_draining,
            notice_seconds=DRAIN_NOTICE_SECONDS,
            grace_seconds=math.ceil(runtime.settings.deadline_seconds) + 1,
            host=host,
            port=port,
            path="/mcp",
            label=" (multi-tenant)",
        )
