"""The one way the tests and the benchmark start a server subprocess and wait for it: the installed console script
over stdio (the SDK's client starts it from `stdio_params`), `tensorfeed-mcp serve` over HTTP or the sandbox in its own
process (`running_server`, `serving`), hosted replicas (`serve --multi-tenant`), and a round-robin TCP proxy in front
of them.

A server's output goes to a file, and the caller decides what to do with it (the tests record it for the token scan).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mcp import StdioServerParameters

from tensorfeed_mcp.settings.environment import Settings
from tests.support.env import clean_env, server_env
from tests.support.records import record

LISTENING = re.compile(r"tensorfeed-mcp listening on (http://\S+)")
SANDBOX_LISTENING = re.compile(r"TensorFeed sandbox serving at (http://\S+)")
START_SECONDS = 20.0
STOP_SECONDS = 30.0  # a drain waits for calls in flight, up to the upstream deadline
SERVER = [sys.executable, "-m", "tensorfeed_mcp"]
"""The server as this interpreter runs the package (the benchmark's and the replicas' command)."""
SERVE = [*SERVER, "serve"]
HOSTED = ("--transport", "streamable-http", "--multi-tenant")


def console_script() -> str:
    """The installed `tensorfeed-mcp` entry point of the environment running the tests."""
    script = Path(sys.executable).parent / "tensorfeed-mcp"
    assert script.exists(), f"console script missing at {script}: install the package (make test does)"
    return str(script)


def stdio_params(settings: Settings, **extra_env: str) -> StdioServerParameters:
    """The installed console script over stdio, using `settings` (and `extra_env`); the SDK's client starts it."""
    return StdioServerParameters(command=console_script(), args=[], env={**server_env(settings), **extra_env})


@dataclass
class ServerProcess:
    """A running `tensorfeed-mcp serve` over HTTP (a replica, when hosted): its MCP endpoint, and its stdout and
    stderr (merged) copied line by line to `log`."""

    process: subprocess.Popen[str]
    url: str
    log: Path
    _copier: threading.Thread
    _final_output: str | None = None

    @property
    def base_url(self) -> str:
        """The server's root, where /healthz, /readyz and /metrics are."""
        return self.url.rsplit("/", 1)[0]

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def terminate(self, signum: int = signal.SIGTERM) -> int:
        """SIGTERM (drain and exit), or `signum`; wait for the exit, and answer the exit code."""
        self.process.send_signal(signum)
        return self._wait()

    def kill(self) -> int:
        """SIGKILL: the replica dies at once, as in a crash."""
        self.process.kill()
        return self._wait()

    def output(self) -> str:
        """Everything the server printed so far; once it has been stopped, all of it, even if `log` is gone."""
        return self._final_output if self._final_output is not None else self.log.read_text(errors="replace")

    def _wait(self) -> int:
        code = self.process.wait(STOP_SECONDS)
        self._copier.join(STOP_SECONDS)  # its output is complete once the pipe has ended
        self._final_output = self.log.read_text(errors="replace")
        return code


def _copy_output(
    stream: IO[str], log: Path, pattern: re.Pattern[str], listening: list[str], ready: threading.Event
) -> None:
    """Copy the server's output to `log` until it ends; note the URL of the first line matching `pattern` as soon as
    it is printed, and set `ready` then (or at the end, when the server exited without listening)."""
    with log.open("w", encoding="utf-8") as copy:
        for line in stream:
            copy.write(line)
            copy.flush()
            match = pattern.search(line)
            if match and not listening:
                listening.append(match.group(1))
                ready.set()
    ready.set()


def start_replica(env: dict[str, str], log: Path, *args: str) -> ServerProcess:
    """Start a hosted replica (`args` added to its command line) on a free port of 127.0.0.1; see start_server."""
    return start_server([*SERVE, *HOSTED, "--port", "0", *args], env, log)


def start_server(
    command: Sequence[str], env: dict[str, str] | None, log: Path, listening_line: re.Pattern[str] = LISTENING
) -> ServerProcess:
    """Start `command` (a `tensorfeed-mcp serve` over HTTP, or the sandbox with SANDBOX_LISTENING) with `env` (None:
    this process's) and return once it prints its listening line; RuntimeError (with what it printed) when it exits
    or says nothing within START_SECONDS."""
    process = subprocess.Popen(
        list(command),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert process.stdout is not None
    listening: list[str] = []
    ready = threading.Event()
    copier = threading.Thread(
        target=_copy_output, args=(process.stdout, log, listening_line, listening, ready), daemon=True
    )
    copier.start()
    ready.wait(START_SECONDS)
    if not listening:
        process.kill()
        process.wait(STOP_SECONDS)
        copier.join(STOP_SECONDS)
        raise RuntimeError(f"the server never said it was listening:\n{log.read_text(errors='replace')}")
    return ServerProcess(process, listening[0], log, copier)


@contextmanager
def running_server(
    command: Sequence[str], env: dict[str, str] | None, listening_line: re.Pattern[str] = LISTENING
) -> Iterator[ServerProcess]:
    """`command` started as start_server does, its output in a temporary folder, until the block ends; then stopped
    (see stop). Its output stays readable afterwards."""
    with tempfile.TemporaryDirectory(prefix="tensorfeed-serve-") as folder:
        served = start_server(command, env, Path(folder) / "server.log", listening_line)
        try:
            yield served
        finally:
            stop(served)


@contextmanager
def serving(
    settings: Settings,
    transport: str = "streamable-http",
    *args: str,
    env: dict[str, str] | None = None,
    keep: Callable[[str], None] = record,
) -> Iterator[ServerProcess]:
    """Run the installed `tensorfeed-mcp serve` with `settings` (in a clean environment plus `env`) on a free port
    until the block ends; its output goes to `keep` (recorded, by default) afterwards."""
    command = [console_script(), "serve", "--transport", transport, "--port", "0", *args]
    with running_server(command, clean_env(settings, **(env or {}))) as served:
        try:
            yield served
        finally:
            stop(served)
            keep(served.output())


@contextmanager
def running_replicas(env: dict[str, str], logs: Sequence[Path]) -> Iterator[list[ServerProcess]]:
    """One replica per log file, all started at once, for the block; those still running at the end are stopped
    with SIGTERM (SIGKILL if one hangs)."""
    with ThreadPoolExecutor(len(logs)) as pool:
        starting = [pool.submit(start_replica, env, log) for log in logs]
    started = [future.result() for future in starting if future.exception() is None]
    try:
        for future in starting:
            future.result()  # raise the first failure to start, once the others are in `started`
        yield started
    finally:
        for replica in started:
            stop(replica)


def stop(replica: ServerProcess) -> None:
    """SIGTERM, or SIGKILL when the replica does not exit in time; nothing when it has exited already."""
    if replica.process.poll() is None:
        try:
            replica.terminate()
        except subprocess.TimeoutExpired:
            replica.kill()


class RoundRobinProxy:
    """A TCP proxy on 127.0.0.1 that sends each new connection to the next backend port in turn, skipping a
    backend that refuses the connection (a dead replica). It runs its own event loop in a thread, so the tests'
    loop and blocking calls never stall it. `served` counts the connections each backend port was given, `open`
    those open now."""

    def __init__(self, backends: Sequence[int]) -> None:
        self.backends = list(backends)
        self.served: Counter[int] = Counter()
        self.open: Counter[int] = Counter()
        self.port = 0
        self._turn = itertools.cycle(range(len(self.backends)))
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)

    def url(self) -> str:
        """The MCP endpoint through the proxy."""
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(START_SECONDS):
            raise RuntimeError("the proxy did not start")

    def stop(self) -> None:
        """Stop accepting, cut every open connection, and end the thread."""
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(STOP_SECONDS)
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def accepted(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._forward(client_reader, client_writer)
            finally:
                connections.discard(task)

        server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            backend = await self._connect_next()
            if backend is None:
                return
            port, backend_reader, backend_writer = backend
            self.open[port] += 1
            try:
                await asyncio.gather(_pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer))
            finally:
                backend_writer.close()
                self.open[port] -= 1
        finally:
            client_writer.close()

    async def _connect_next(self) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The port of the next backend that accepts a connection, and the connection; None when none does."""
        for _ in self.backends:
            port = self.backends[next(self._turn)]
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.served[port] += 1
            return port, reader, writer
        return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until the reader ends, then half-close the writer (HTTP without keep-alive ends that way); a reset
    on either side closes the writer, which ends the other direction too."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


@contextmanager
def running_proxy(backends: Sequence[int]) -> Iterator[RoundRobinProxy]:
    proxy = RoundRobinProxy(backends)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
