"""The processes a benchmark runs: the sandbox, tensorfeed-mcp over HTTP, and their environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tensorfeed_mcp.sandbox import DEMO_TOKENS, SandboxControl

PYTHON = sys.executable
SERVER = [PYTHON, "-m", "tensorfeed_mcp"]
TOKEN = DEMO_TOKENS["busy"]
URL_IN_LINE = re.compile(r"(http://\S+)")


@dataclass
class Sandbox:
    api_url: str
    control: SandboxControl


def _first_url(stream: IO[str], process: subprocess.Popen[str]) -> str:
    """Read lines until one holds a URL, then keep draining the stream so the process never blocks on it."""
    for line in stream:
        found = URL_IN_LINE.search(line)
        if found:
            threading.Thread(target=stream.read, daemon=True).start()
            return found.group(1)
    raise RuntimeError(f"{process.args!r} exited ({process.wait()}) before printing its URL")


@contextmanager
def running(command: list[str], env: dict[str, str] | None = None, url_on: str = "stdout") -> Iterator[str]:
    """Run `command` until the block ends; yields the first URL it prints on stdout or stderr."""
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE if url_on == "stdout" else subprocess.DEVNULL,
        stderr=subprocess.PIPE if url_on == "stderr" else subprocess.DEVNULL,
        text=True,
    )
    stream = process.stdout if url_on == "stdout" else process.stderr
    assert stream is not None
    try:
        yield _first_url(stream, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def sandbox() -> Iterator[Sandbox]:
    """The sandbox in its own process, so its work does not share the benchmark's interpreter."""
    with running([*SERVER, "sandbox", "--port", "0"]) as api_url:
        control = SandboxControl(api_url.removesuffix("/api"))
        try:
            yield Sandbox(api_url=api_url, control=control)
        finally:
            control.close()


def server_env(api_url: str, state_dir: Path, cache_seconds: float | None) -> dict[str, str]:
    """tensorfeed-mcp's environment for the busy demo account; cache_seconds None keeps the default."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TENSORFEED")}
    env |= {"TENSORFEED_TOKEN": TOKEN, "TENSORFEED_API_URL": api_url, "TENSORFEED_MCP_STATE_DIR": str(state_dir)}
    if cache_seconds is not None:
        env["TENSORFEED_CACHE_SECONDS"] = f"{cache_seconds:g}"
    return env


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
    with running([*SERVER, "serve", "--transport", "streamable-http", "--port", "0"], env, url_on="stderr") as url:
        yield url


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
