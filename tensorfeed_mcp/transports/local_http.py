"""The single-user HTTP edge: streamable HTTP at /mcp or legacy SSE at /sse, the rule on where it may listen, and
the bearer-secret gate."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any, Literal

from mcp.server import MCPServer
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tensorfeed_mcp.errors import ConfigurationError
from tensorfeed_mcp.runtime.local import LocalRuntime
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.policy import is_loopback
from tensorfeed_mcp.transports.listener import MAX_REQUEST_BODY_BYTES, serve_app, transport_security

HttpTransport = Literal["streamable-http", "sse"]


def check_bind(host: str, auth_secret: str | None) -> None:
    """Refuse to listen beyond this machine without a bearer secret: anyone who can reach it could spend."""
    if not is_loopback(host) and not auth_secret:
        raise ConfigurationError(
            f"Refusing to listen on {host}: that address is reachable from other machines, and without a secret "
            "anyone who can reach it could read this account and change its spend cap. Set "
            "TENSORFEED_MCP_AUTH_TOKEN (or pass --auth-token-file), or bind to 127.0.0.1."
        )


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <secret>` (constant-time check)."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self._app = app
        self._secret = secret.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorised(scope):
            response = JSONResponse(
                {"error": "unauthorized", "message": "This MCP server needs 'Authorization: Bearer <secret>'."},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="tensorfeed-mcp"'},
            )
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, presented = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self._secret)


def build_http_app(
    server: MCPServer[Any],
    transport: HttpTransport,
    host: str,
    settings: Settings,
    extra_hosts: Sequence[str] = (),
) -> ASGIApp:
    security = transport_security(host, extra_hosts)
    app: ASGIApp
    if transport == "sse":
        app = server.sse_app(max_request_body_size=MAX_REQUEST_BODY_BYTES, transport_security=security, host=host)
    else:
        app = server.streamable_http_app(
            max_request_body_size=MAX_REQUEST_BODY_BYTES,
            transport_security=security,
            host=host,
            max_sessions=settings.max_sessions,
            session_idle_timeout=settings.session_idle_seconds,
        )
    auth_secret = settings.mcp_auth_token
    return BearerAuth(app, auth_secret) if auth_secret else app


SHUTDOWN_GRACE_SECONDS = 3


async def serve_http(
    runtime: LocalRuntime, transport: HttpTransport, host: str, port: int, extra_hosts: Sequence[str] = ()
) -> None:
    """Listen until SIGINT or SIGTERM; the store and the account client are opened once for the process."""
    settings = runtime.settings
    check_bind(host, settings.mcp_auth_token)
    app = build_http_app(runtime.server(), transport, host, settings, extra_hosts)
    async with runtime.open():
        await serve_app(
            app,
            settings,
            runtime.subscriptions.end_listen_streams,
            notice_seconds=0.0,
            grace_seconds=SHUTDOWN_GRACE_SECONDS,
            host=host,
            port=port,
            path="/sse" if transport == "sse" else "/mcp",
        )
