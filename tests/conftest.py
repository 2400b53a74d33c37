"""Shared fixtures: a sandbox over real HTTP, a private PostgreSQL server, and the session-wide token scan.

The helpers the tests share are in tests.support: everything a test sees from the server goes through
tests.support.records.record, and at the end of the session every process checks that no token appeared in any of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tensorfeed_mcp.sandbox import RunningSandbox, running_sandbox
from tests.support.env import SANDBOX_START
from tests.support.postgres import PostgresServer, running_postgres
from tests.support.records import CAPTURED, WATCHED_TOKENS, record_logs

record_logs()
os.environ.pop("TENSORFEED_TOKEN", None)  # the suite must not depend on (or leak) a real token in the environment


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the PostgreSQL server (directly, or through database_url or another fixture) is marked
    `postgres`; one that gets it by name at run time (request.getfixturevalue) marks its parameter itself."""
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session", autouse=True)
def no_token_in_anything_captured() -> Iterator[None]:
    """After the last test of this process (each xdist worker is one), scan all it captured for a token."""
    yield
    for number, text in enumerate(CAPTURED):
        for token in WATCHED_TOKENS:
            if token[8:] in text:  # not even without its prefix; the token itself is not printed here either
                pytest.fail(f"captured output no. {number} contains the token {token[:10]}…", pytrace=False)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    """A sandbox shared by a module's tests; tests that change accounts use `fresh_sandbox`."""
    with running_sandbox(start=SANDBOX_START) as running:
        yield running
        running.control.clear_fault()


@pytest.fixture
def fresh_sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(start=SANDBOX_START) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for this process (each xdist worker has its own), started on first use."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new empty database on the private server, dropped after the test."""
    with postgres_server.database() as url:
        yield url
