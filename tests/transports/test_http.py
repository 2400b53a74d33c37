"""Serving over HTTP: the installed console script in a subprocess, reached over real sockets.

Streamable HTTP (both protocol eras) and legacy SSE serve every tool; concurrent calls coalesce upstream;
a bearer secret guards every request when set; a non-loopback bind without one is refused; forged Host and
Origin headers are refused; SIGTERM and SIGINT stop the server promptly; and the token never shows up in any
response body or in the server's output (its access log included).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox
from tests.support import servers
from tests.support.clients import INITIALIZE, MCP_HEADERS, MODES, TOOL_NAMES, Caller
from tests.support.env import clean_env, settings_for
from tests.support.records import record
from tests.support.servers import ServerProcess, console_script

pytestmark = pytest.mark.anyio

SHUTDOWN_SECONDS = 5.0
SECRET = "http-test-secret-" + "5a" * 16
FILE_SECRET = "file-test-secret-" + "c3" * 16
ALLOWED_HOST = "tensorfeed.test"

SEEN: list[str] = []
"""Everything this module got back from a server (bodies, results, output), for its own token check."""


def seen(text: object) -> None:
    SEEN.append(str(text))
    record(text)


class RecordingCaller(Caller):
    """A Caller that also keeps each result for this module's token check."""

    async def raw(self, tool: str, **arguments: Any) -> CallToolResult:
        result = await super().raw(tool, **arguments)
        SEEN.append(result.model_dump_json())
        return result


serving = partial(servers.serving, keep=seen)
"""tests.support.servers.serving, with each server's output also kept for this module's token check."""


@pytest.fixture(scope="module")
def http_server(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One streamable-HTTP server for the module, with the default 5 s cache and one extra allowed Host name."""
    settings = settings_for(sandbox, tmp_path_factory.mktemp("http-state"), cache_seconds=5.0)
    with serving(settings, "streamable-http", "--allow-host", ALLOWED_HOST) as served:
        yield served


@asynccontextmanager
async def client_with_secret(url: str, secret: str, mode: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {secret}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def exercise_every_tool(caller: Caller, sandbox: RunningSandbox, alert_name: str) -> None:
    """Call all 8 tools and check the values against the sandbox; leaves the account and rules as they were."""
    account = sandbox.control.account("busy")
    cap = account["daily_cap"]

    balance = await caller.ok("get_account_balance")
    assert (balance["balance"], balance["total_purchased"]) == (account["balance"], account["total_purchased"])
    usage = await caller.ok("get_account_usage")
    assert usage["total_calls"] == len(account["calls"])
    assert usage["total_credits_spent"] == sum(call["credits"] for call in account["calls"])
    history = await caller.ok("get_payment_history")
    assert [p["tx_hash"] for p in history["purchases"]] == [p["tx_hash"] for p in account["purchases"]]
    spend_cap = await caller.ok("get_spend_cap")
    assert (spend_cap["daily_cap"], spend_cap["daily_spent"]) == (cap, account["spent_today"])

    changed = await caller.ok("set_spend_cap", daily_cap=cap + 123)
    assert (changed["previous_cap"], changed["daily_cap"]) == (cap, cap + 123)
    assert sandbox.control.account("busy")["daily_cap"] == cap + 123
    restored = await caller.ok("set_spend_cap", daily_cap=cap)
    assert (restored["previous_cap"], restored["daily_cap"]) == (cap + 123, cap)
    assert sandbox.control.account("busy")["daily_cap"] == cap

    saved = await caller.ok("set_spend_alert", kind="balance_below", threshold=account["balance"] + 1, name=alert_name)
    assert (saved["action"], saved["rule"]["name"], saved["rule_count"]) == ("created", alert_name, 1)
    check = await caller.ok("check_spend_alerts")
    assert [(alert["name"], alert["status"]) for alert in check["alerts"]] == [(alert_name, "triggered")]
    assert check["balance"] == account["balance"]
    deleted = await caller.ok("delete_spend_alert", name=alert_name)
    assert (deleted["deleted"]["name"], deleted["rule_count"]) == (alert_name, 0)


@pytest.mark.parametrize("mode", MODES)
async def test_every_tool_over_streamable_http(http_server: ServerProcess, sandbox: RunningSandbox, mode: str) -> None:
    assert http_server.url == f"http://127.0.0.1:{http_server.port}/mcp"
    async with Client(http_server.url, mode=mode) as client:
        assert (client.protocol_version == "2026-07-28") == (mode != "legacy")
        assert len((await client.list_tools()).tools) == len(TOOL_NAMES)
        await exercise_every_tool(RecordingCaller(client), sandbox, f"http-{mode}")


async def test_every_tool_over_sse(sandbox: RunningSandbox, tmp_path: Path) -> None:
    with serving(settings_for(sandbox, tmp_path), "sse") as served:
        assert served.url == f"http://127.0.0.1:{served.port}/sse"
        async with sse_client(served.url) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            assert len((await session.list_tools()).tools) == len(TOOL_NAMES)
            await exercise_every_tool(RecordingCaller(session), sandbox, "sse")  # type: ignore[arg-type]


async def test_fifty_concurrent_calls_share_upstream_requests(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Five connections (both eras), fifty calls at once: the cache and request coalescing keep upstream quiet."""
    expected = sandbox.control.account("busy")["balance"]
    balances: list[int] = []
    with serving(settings_for(sandbox, tmp_path, cache_seconds=5.0)) as served:
        async with AsyncExitStack() as stack:
            callers = [
                RecordingCaller(await stack.enter_async_context(Client(served.url, mode=MODES[i % 2])))
                for i in range(5)
            ]
            for caller in callers:
                await caller.schemas()

            async def one_call(caller: Caller) -> None:
                balances.append((await caller.ok("get_account_balance"))["balance"])

            before = sandbox.control.upstream_requests()
            async with anyio.create_task_group() as group:
                for i in range(50):
                    group.start_soon(one_call, callers[i % len(callers)])
            made = sandbox.control.upstream_requests() - before
    assert balances == [expected] * 50
    assert 1 <= made <= 5


async def test_a_bearer_secret_from_the_environment_guards_every_request(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    refused_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong-secret"},
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": SECRET},
    ]
    with serving(settings_for(sandbox, tmp_path), env={"TENSORFEED_MCP_AUTH_TOKEN": SECRET}) as served:
        async with httpx2.AsyncClient(timeout=10) as http:
            for headers in refused_headers:
                response = await http.post(served.url, json=INITIALIZE, headers=MCP_HEADERS | headers)
                seen(response.text)
                assert response.status_code == 401, headers
                assert response.headers["www-authenticate"].startswith("Bearer ")
                assert "Authorization: Bearer" in response.json()["message"]
                assert SECRET not in response.text
            get = await http.get(served.url, headers={"Accept": "text/event-stream"})
            seen(get.text)
            assert get.status_code == 401
        for mode in MODES:
            async with client_with_secret(served.url, SECRET, mode) as client:
                balance = await RecordingCaller(client).ok("get_account_balance")
            assert balance["balance"] == sandbox.control.account("busy")["balance"]
    assert SECRET not in served.output()


async def test_a_bearer_secret_from_a_file(sandbox: RunningSandbox, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(FILE_SECRET + "\n")
    with serving(settings_for(sandbox, tmp_path), "streamable-http", "--auth-token-file", str(secret_file)) as served:
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(served.url, json=INITIALIZE, headers=MCP_HEADERS)
            seen(response.text)
            assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer ")
        async with client_with_secret(served.url, FILE_SECRET, "legacy") as client:
            spend_cap = await RecordingCaller(client).ok("get_spend_cap")
        assert spend_cap["daily_cap"] == sandbox.control.account("busy")["daily_cap"]
    assert FILE_SECRET not in served.output()


@pytest.mark.parametrize(
    ("host", "transport"), [("0.0.0.0", "streamable-http"), ("0.0.0.0", "sse"), ("::", "streamable-http")]
)
def test_a_non_loopback_bind_without_a_secret_is_refused(
    sandbox: RunningSandbox, tmp_path: Path, host: str, transport: str
) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [console_script(), "serve", "--transport", transport, "--host", host, "--port", "0"],
        env=clean_env(settings_for(sandbox, tmp_path)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    elapsed = time.monotonic() - started
    seen(done.stdout)
    seen(done.stderr)
    assert done.returncode == 2, done.stderr
    assert f"Refusing to listen on {host}" in done.stderr and "TENSORFEED_MCP_AUTH_TOKEN" in done.stderr
    assert "listening on" not in done.stderr and "Traceback" not in done.stderr
    assert elapsed < 15  # it stops at the check, well before serving anything


async def test_forged_host_and_origin_headers_are_refused(http_server: ServerProcess) -> None:
    port = http_server.port
    cases: list[tuple[dict[str, str], int]] = [
        ({}, 200),
        ({"Host": f"localhost:{port}"}, 200),
        ({"Host": f"{ALLOWED_HOST}:{port}"}, 200),  # --allow-host
        ({"Origin": f"http://127.0.0.1:{port}"}, 200),
        ({"Host": "evil.example"}, 421),
        ({"Host": f"evil.example:{port}"}, 421),
        ({"Host": f"127.0.0.1.evil.example:{port}"}, 421),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": f"http://localhost.evil.example:{port}"}, 403),
        ({"Host": f"localhost:{port}", "Origin": "https://evil.example"}, 403),
    ]
    async with httpx2.AsyncClient(timeout=10) as http:
        for headers, status in cases:
            response = await http.post(http_server.url, json=INITIALIZE, headers=MCP_HEADERS | headers)
            seen(response.text)
            assert response.status_code == status, (headers, response.text)
            if status == 421:
                assert "Invalid Host header" in response.text
            elif status == 403:
                assert "Invalid Origin header" in response.text
            else:
                assert '"serverInfo"' in response.text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_the_server_promptly_even_with_a_client_connected(
    sandbox: RunningSandbox, tmp_path: Path, signum: signal.Signals
) -> None:
    with serving(settings_for(sandbox, tmp_path)) as served:
        async with Client(served.url, mode="legacy") as client:  # legacy keeps a GET event stream open
            await RecordingCaller(client).ok("get_account_balance")
            started = time.monotonic()
            returncode = await anyio.to_thread.run_sync(served.terminate, signum)
            elapsed = time.monotonic() - started
    assert elapsed < SHUTDOWN_SECONDS
    assert returncode == 0
    assert "Traceback" not in served.output()


def test_no_token_in_any_response_body_or_server_output(http_server: ServerProcess) -> None:
    """Runs last in this module: the access logs and bodies of every server above carry no token."""
    assert '"POST /mcp HTTP/1.1" 200' in http_server.output()  # the access log is on, so the check means something
    everything = "\n".join([*SEEN, http_server.output()])
    assert len(SEEN) > 20
    for token in DEMO_TOKENS.values():
        assert token not in everything
        assert token[8:] not in everything
