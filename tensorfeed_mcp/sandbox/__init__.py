"""A local stand-in for TensorFeed's account API, over real HTTP, for the demo, the tests and the benchmark.

It follows the contract in docs of the service (balance, usage, history, spend-cap, revoke, with the same
shapes, validation and error codes) for a few seeded accounts with fixed demo tokens. A control API under
/_sandbox lets tests count requests, switch fault modes, move or set the clock, create accounts (whose tokens
`sandbox_token` derives from their names), add calls or purchases, generate traffic over a stretch of the clock
and read each account's ground truth.
It deliberately imports nothing from the server, so it cannot share the server's mistakes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from tensorfeed_mcp.sandbox.accounts import (
    DEMO_TOKENS,
    MAX_CAP,
    RECENT_SHOWN,
    RING_BUFFER_SIZE,
    Account,
    Call,
    PurchaseRecord,
    iso,
    sandbox_token,
    seed_accounts,
)
from tensorfeed_mcp.sandbox.api import AccountApi
from tensorfeed_mcp.sandbox.control import SandboxControl, control_routes
from tensorfeed_mcp.sandbox.faults import (
    FAULT_MODES,
    HUGE_LIST_LENGTH,
    NESTING_DEPTH,
    NUMBER_FIELDS,
    OVERSIZED_BYTES,
    REDIRECT_TARGET,
    Fault,
    FaultInjector,
)
from tensorfeed_mcp.sandbox.state import Sandbox, UnknownAccount
from tensorfeed_mcp.sandbox.traffic import DEFAULT_ENDPOINTS, DEFAULT_WEIGHTS, TrafficSpec

__all__ = [
    "DEFAULT_ENDPOINTS",
    "DEFAULT_WEIGHTS",
    "DEMO_TOKENS",
    "FAULT_MODES",
    "HUGE_LIST_LENGTH",
    "MAX_CAP",
    "NESTING_DEPTH",
    "NUMBER_FIELDS",
    "OVERSIZED_BYTES",
    "RECENT_SHOWN",
    "REDIRECT_TARGET",
    "RING_BUFFER_SIZE",
    "Account",
    "Call",
    "Fault",
    "PurchaseRecord",
    "RunningSandbox",
    "Sandbox",
    "SandboxControl",
    "TrafficSpec",
    "UnknownAccount",
    "build_app",
    "iso",
    "running_sandbox",
    "sandbox_token",
    "seed_accounts",
    "serve",
]


def build_app(sandbox: Sandbox) -> Any:
    """The sandbox as an ASGI app: the account API under /api/payment and the control API under /_sandbox."""
    api = AccountApi(sandbox)
    every_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes = [
        Route("/api/payment/balance", api.balance, methods=["GET"]),
        Route("/api/payment/usage", api.usage, methods=["GET"]),
        Route("/api/payment/history", api.history, methods=["GET"]),
        Route("/api/payment/spend-cap", api.spend_cap, methods=every_method),
        Route("/api/payment/revoke", api.revoke, methods=every_method),
        *control_routes(sandbox),
    ]
    return FaultInjector(Starlette(routes=routes), sandbox)


@dataclass
class RunningSandbox:
    url: str
    sandbox: Sandbox
    control: SandboxControl

    @property
    def api_url(self) -> str:
        """What TENSORFEED_API_URL should be to use this sandbox."""
        return self.url + "/api"


@contextmanager
def running_sandbox(host: str = "127.0.0.1", port: int = 0, start: datetime | None = None) -> Iterator[RunningSandbox]:
    """Serve a fresh sandbox in a background thread on `host:port` (0: a free port) until the block ends; its clock
    starts at `start` (default: now)."""
    sandbox = Sandbox(start)
    sock = socket.create_server((host, port))
    # Accepted connections inherit this; without it a reply sent in two writes waits ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    config = uvicorn.Config(
        build_app(sandbox), log_config=None, access_log=False, date_header=False, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tensorfeed-sandbox", daemon=True)
    thread.start()
    # The socket is already listening, so requests made before uvicorn starts accepting simply queue.
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{bound_host}:{bound_port}"
    control = SandboxControl(url)
    try:
        yield RunningSandbox(url=url, sandbox=sandbox, control=control)
    finally:
        control.close()
        server.should_exit = server.force_exit = True  # do not wait out requests held by the slow fault mode
        thread.join(timeout=10)
        sock.close()


def serve(host: str, port: int) -> None:
    """Run a sandbox in the foreground until interrupted, printing its URL and the demo tokens."""
    with running_sandbox(host, port) as running:
        print(f"TensorFeed sandbox serving at {running.api_url}")
        print(f"Use it with: TENSORFEED_API_URL={running.api_url}")
        for name, token in DEMO_TOKENS.items():
            print(f"  {name:5} {token}")
        print(
            "Control API under /_sandbox (stats, fault, clock, accounts: create, traffic, truth). Ctrl-C stops it.",
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("sandbox stopped")
