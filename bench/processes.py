"""The processes a benchmark runs: the sandbox, tensorfeed-mcp over stdio and HTTP, and their environment. They are
started as the tests start them (tests.support.servers); only the command and the environment are the benchmark's."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tensorfeed_mcp.sandbox import DEMO_TOKENS, SandboxControl
from tensorfeed_mcp.settings.environment import Settings
from tests.support.env import clean_env, settings_for
from tests.support.servers import SANDBOX_LISTENING, SERVE, SERVER, running_server

TOKEN = DEMO_TOKENS["busy"]
DEFAULTS = Settings()


@dataclass
class Sandbox:
    api_url: str
    control: SandboxControl
    pid: int


@contextmanager
def sandbox() -> Iterator[Sandbox]:
    """The sandbox in its own process, so its work does not share the benchmark's interpreter."""
    with running_server([*SERVER, "sandbox", "--port", "0"], None, SANDBOX_LISTENING) as served:
        control = SandboxControl(served.base_url)
        try:
            yield Sandbox(api_url=served.url, control=control, pid=served.process.pid)
        finally:
            control.close()


def server_env(sb: Sandbox, state_dir: Path, cache_seconds: float | None) -> dict[str, str]:
    """tensorfeed-mcp's environment for the busy demo account on `sb`, with the default timeout; cache_seconds None
    keeps the default cache."""
    cache = DEFAULTS.cache_seconds if cache_seconds is None else cache_seconds
    return clean_env(settings_for(sb, state_dir, timeout_seconds=DEFAULTS.timeout_seconds, cache_seconds=cache))


@asynccontextmanager
async def stdio_server(env: dict[str, str], command: list[str] = SERVER) -> AsyncIterator[Client]:
    """An SDK client connected over stdio to `command` (tensorfeed-mcp by default), its stderr discarded."""
    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    with open(os.devnull, "w") as quiet:
        async with Client(stdio_client(params, errlog=quiet)) as client:
            yield client


@contextmanager
def http_server(env: dict[str, str]) -> Iterator[str]:
    """tensorfeed-mcp over streamable HTTP on a free port; yields its /mcp URL."""
    with running_server([*SERVE, "--transport", "streamable-http", "--port", "0"], env) as served:
        yield served.url


def child_running(command: list[str]) -> int:
    """The PID of the one child of this process that runs exactly `command`."""
    wanted = [part.encode() for part in command]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            arguments = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and arguments == wanted:
            found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one child running {command}, found {len(found)}")
    return found[0]


def resident_mb(pid: int) -> float:
    """Resident set size of a process in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
