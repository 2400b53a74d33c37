"""The HTTP listener both edges share (local_http: one token; hosted_http: tenants): uvicorn with bounded
connections and header time-outs, a drain on SIGTERM, the request-size limit and the Host and Origin checks
against DNS rebinding."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from tensorfeed_mcp.observability.logs import uvicorn_log_config
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.policy import is_loopback
from tensorfeed_mcp.settings.redaction import redact_logs

logger = logging.getLogger(__name__)

HEADER_TIMEOUT_SECONDS = 10
MAX_CONNECTIONS = 100  # far below the usual 1,024 open files, so a flood cannot exhaust descriptors
MAX_REQUEST_BODY_BYTES = 256 * 1024  # MCP requests to this server are small; refuse anything bigger early


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


class BoundedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's headers and a cap on open connections.

    uvicorn waits for headers forever, so slow-header clients (slowloris) could hold every descriptor. Here one
    whose request headers are not complete within HEADER_TIMEOUT_SECONDS (of connecting, or of the previous
    response) is closed, and a connection beyond MAX_CONNECTIONS takes the place of the one that has waited longest
    for its headers (so refreshing slow sockets cannot hold the cap), or is closed at once when every connection is
    busy with a request. The deadline is a timer of its own: uvicorn cancels its keep-alive timer on any byte
    received, so a client sending headers a byte at a time would otherwise never be timed out.
    """

    header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            waiting = [
                other
                for other in self.connections
                if isinstance(other, BoundedH11Protocol) and other is not self and other.header_deadline is not None
            ]
            if not waiting:
                _warn_once_a_minute(f"Refusing connections beyond {MAX_CONNECTIONS} open at once, all busy.")
                transport.close()
                return
            _warn_once_a_minute(f"At {MAX_CONNECTIONS} connections: closing those waiting longest for headers.")
            oldest = min(waiting, key=lambda other: other.header_deadline.when() if other.header_deadline else 0.0)
            oldest._stop_header_deadline()
            oldest.transport.close()
        self._start_header_deadline()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:  # a request's headers are in
            self._stop_header_deadline()

    def on_response_complete(self) -> None:
        self._start_header_deadline()  # for the next request's headers; a pipelined request already in stops it
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_deadline()
        super().connection_lost(exc)

    def _start_header_deadline(self) -> None:
        self._stop_header_deadline()
        self.header_deadline = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self.timeout_keep_alive_handler)

    def _stop_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None


_last_warning: dict[str, float] = {}


def _warn_once_a_minute(message: str) -> None:
    """Log a warning at most once a minute, so an attack cannot flood the log."""
    now = time.monotonic()
    if now - _last_warning.get(message, -60.0) >= 60:
        _last_warning[message] = now
        logger.warning(message)


class DrainingServer(uvicorn.Server):
    """uvicorn's server that first calls `on_exit` (which ends listen streams and, hosted, fails readiness) when
    SIGTERM or SIGINT arrives, and then keeps answering for `notice_seconds`, so a load balancer polling readiness
    sees it fail before the listener closes; uvicorn then stops accepting connections and lets requests in flight
    finish within the grace period. A second signal ends the notice at once."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None], notice_seconds: float = 0.0) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._notice_seconds = notice_seconds
        self._stop_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._stop_at is None:
            self._on_exit()
            self._stop_at = time.monotonic() + self._notice_seconds
        elif not self.should_exit:
            self._stop_at = time.monotonic()
        else:
            super().handle_exit(sig, frame)  # during the drain, uvicorn's own: a second Ctrl-C forces the exit
        self._captured_signals.clear()  # else uvicorn re-raises it after the drain, and the process dies of it (143)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


async def serve_app(
    app: ASGIApp,
    settings: Settings,
    on_exit: Callable[[], None],
    *,
    notice_seconds: float,
    grace_seconds: int,
    host: str,
    port: int,
    path: str,
    label: str = "",
) -> None:
    """Listen with `app` until SIGINT or SIGTERM, then call `on_exit` and drain (see DrainingServer)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this; without it a reply sent in two writes waits ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        http=BoundedH11Protocol,
        log_level="info",
        log_config=uvicorn_log_config(settings.log_format) or uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=grace_seconds,
        server_header=False,
    )
    redact_logs(settings)  # again: uvicorn has just installed handlers of its own
    print(f"tensorfeed-mcp listening on http://{shown_host}:{bound_port}{path}{label}", file=sys.stderr, flush=True)
    await DrainingServer(config, on_exit, notice_seconds).serve(sockets=[sock])
