"""A private PostgreSQL server for the tests: Debian's binaries, a fresh cluster in a temporary folder, listening on
127.0.0.1 on a free port, tuned for speed over durability, and a new empty database per test."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

START_SECONDS = 30.0
SERVER_SETTINGS = {
    "fsync": "off",  # a test cluster is thrown away, so nothing needs to survive a crash
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "listen_addresses": "127.0.0.1",
}


class PostgresServer:
    """A running server that trusts every local connection as the `postgres` user."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._names = itertools.count(1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database's URL, dropped afterwards (with any connection still open to it)."""
        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        try:
            yield self.url(name)
        finally:
            with psycopg.connect(self.url(), autocommit=True) as admin:
                admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def binaries() -> Path:
    """The folder of the newest installed PostgreSQL's server programs (Debian keeps them off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda path: int(path.parts[-3]))
    if not found:
        pytest.fail("PostgreSQL is not installed: run  make postgres  (Debian's postgresql package)", pytrace=False)
    return found[-1].parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root, so under root its programs run as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server in a new cluster, wait until it accepts a connection, and stop it (fast mode) on exit."""
    bin_dir = binaries()
    # Not under pytest's tmp_path: its parent folders are closed to the `postgres` user.
    folder = Path(tempfile.mkdtemp(prefix="tensorfeed-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, log = folder / "data", folder / "server.log"
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]
        # A language's collation, as most real databases have, so that a query relying on it for byte order fails.
        collation = ["--encoding=UTF8", "--locale=C", "--locale-provider=icu", "--icu-locale=en-US"]
        made = subprocess.run(as_server_user([*initdb, *collation]), capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.fail(f"initdb failed ({made.returncode}): {made.stderr.strip()}", pytrace=False)
        server = PostgresServer(free_port())
        options = [f"--{name}={value}" for name, value in {**SERVER_SETTINGS, "port": server.port}.items()]
        command = as_server_user([str(bin_dir / "postgres"), "-D", str(data), "-k", str(folder), *options])
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_until_ready(server, folder, process, log)
            yield server
        finally:
            subprocess.run(
                as_server_user([str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast"]),
                capture_output=True,
                check=False,
            )
            process.wait(timeout=START_SECONDS)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_ready(server: PostgresServer, folder: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll for a connection until the deadline; fail with the server's log if it exits or never answers.

    The poll goes through the server's own socket in `folder`: on the TCP port another server could answer. This one
    opens that socket only after its TCP port, so once it answers the port is its own.
    """
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            psycopg.connect(host=str(folder), port=server.port, user="postgres", connect_timeout=2).close()
            return
        except psycopg.OperationalError as exc:
            error = exc
        if process.poll() is not None or time.monotonic() > deadline:
            said = log.read_text(errors="replace").strip()[-2000:]
            pytest.fail(f"PostgreSQL did not start ({error}); its log says:\n{said}", pytrace=False)
        time.sleep(0.05)
