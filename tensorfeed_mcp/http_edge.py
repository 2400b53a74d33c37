"""The single-token HTTP edge (streamable HTTP at /mcp, legacy SSE at /sse), and what the hosted edge shares with
it: the request-size limit, Host and Origin checks against DNS rebinding, the rule on where it may listen, and the
bearer-secret gate."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Literal

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tensorfeed_mcp.config import Settings, is_loopback
from tensorfeed_mcp.errors import ConfigurationError
from tensorfeed_mcp.server import AccountRuntime

HttpTransport = Literal["streamable-http", "sse"]
MAX_REQUEST_BODY_BYTES = 256 * 1024  # MCP requests to this server are small; refuse anything bigger early


def check_bind(host: str, auth_secret: str | None) -> None:
    """Refuse to listen beyond this machine without a bearer secret: anyone who can reach it could spend."""
    if not is_loopback(host) and not auth_secret:
        raise ConfigurationError(
            f"Refusing to listen on {host}: that address is reachable from other machines, and without a secret "
            "anyone who can reach it could read this account and change its spend cap. Set "
            "TENSORFEED_MCP_AUTH_TOKEN (or pass --auth-token-file), or bind to 127.0.0.1."
        )


def transport_security(host: str, extra_hosts: Sequence[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection: only these Host names (any port), and only Origins of the same names."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    if not is_loopback(host) and host not in ("0.0.0.0", "::"):
        names.append(f"[{host}]" if ":" in host else host)
    names.extend(extra_hosts)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[pattern for name in names for pattern in (name, f"{name}:*")],
        allowed_origins=[
            f"{scheme}://{pattern}" for name in names for scheme in ("http", "https") for pattern in (name, f"{name}:*")
        ],
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
    server: MCPServer[AccountRuntime],
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
