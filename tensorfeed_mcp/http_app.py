"""Serving over HTTP (streamable HTTP at /mcp, legacy SSE at /sse) with a bearer secret and Host checks."""

from __future__ import annotations

import hmac
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Literal

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tensorfeed_mcp.account import AccountService
from tensorfeed_mcp.config import is_loopback
from tensorfeed_mcp.errors import ConfigurationError
from tensorfeed_mcp.server import AccountRuntime

logger = logging.getLogger(__name__)

HttpTransport = Literal["streamable-http", "sse"]
MAX_REQUEST_BODY_BYTES = 256 * 1024  # MCP requests to this server are small; refuse anything bigger early
SHUTDOWN_GRACE_SECONDS = 3


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
    server: MCPServer[AccountService],
    transport: HttpTransport,
    host: str,
    auth_secret: str | None,
    extra_hosts: Sequence[str] = (),
) -> ASGIApp:
    security = transport_security(host, extra_hosts)
    app: ASGIApp
    if transport == "sse":
        app = server.sse_app(max_request_body_size=MAX_REQUEST_BODY_BYTES, transport_security=security, host=host)
    else:
        app = server.streamable_http_app(
            max_request_body_size=MAX_REQUEST_BODY_BYTES, transport_security=security, host=host
        )
    return BearerAuth(app, auth_secret) if auth_secret else app


async def serve_http(
    runtime: AccountRuntime,
    server: MCPServer[AccountService],
    transport: HttpTransport,
    host: str,
    port: int,
    extra_hosts: Sequence[str] = (),
) -> None:
    """Listen until SIGINT or SIGTERM; the account client and watcher are opened once for the process."""
    import uvicorn  # deferred: stdio serving never needs the web server

    auth_secret = runtime.settings.mcp_auth_token
    check_bind(host, auth_secret)
    app = build_http_app(server, transport, host, auth_secret, extra_hosts)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this; without it a reply sent in two writes waits ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound_port = sock.getsockname()[1]
    path = "/sse" if transport == "sse" else "/mcp"
    shown_host = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        log_level="info",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        server_header=False,
    )
    async with runtime.open():
        print(f"tensorfeed-mcp listening on http://{shown_host}:{bound_port}{path}", file=sys.stderr, flush=True)
        await uvicorn.Server(config).serve(sockets=[sock])
