"""Issue 8, items 1 to 3: hostile upstream answers, bad settings, the token and the spend cap, through real clients.

Every odd answer the sandbox can give is a tool error that names the problem, and the same session answers again
once the fault clears; lists are cut and say so; `check` exits 2 with one line for every failure to run; the alert
watcher outlives every failure; a malformed token is refused before anything is sent and never printed; and a cap
change that may have reached the service says what the service now holds.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client

from tensorfeed_mcp.sandbox import DEMO_TOKENS, REDIRECT_TARGET, RunningSandbox, running_sandbox
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.policy import is_loopback
from tests.support.cli import EXIT_CANNOT_RUN, EXIT_OK, run
from tests.support.clients import Caller, in_memory
from tests.support.env import SANDBOX_START, server_env, settings_for
from tests.support.records import WATCHED_TOKENS, read_recorded
from tests.support.servers import stdio_params

pytestmark = pytest.mark.anyio

LIST_BOUND = 1000  # the bound on endpoints and purchases taken from one answer
RESULT_BYTES_BOUND = 300_000  # a cut result must stay far below the hostile answer's size
WAIT_SECONDS = 15.0  # how long a condition wait may take before the test fails
WATCHER_POLL_SECONDS = 0.2
POLLS_PER_FAULT = 3
READS_PER_CHECK = 3  # check_alerts reads balance, usage and spend cap once each
REDIRECT = urlsplit(REDIRECT_TARGET)

# fault mode -> fragments the error message must contain (reading the balance)
HOSTILE_ANSWERS: dict[str, list[str]] = {
    "nested": ["nested too deeply"],
    "gzip": ["could not be decoded", "compression was broken"],
    "naive_time": ["wrong kind", "problem with: created, last_used", "time zone"],
    "nan": ["not valid JSON", "holds NaN"],
    "infinity": ["not valid JSON", "holds Infinity"],
    "bool_number": ["wrong kind", "problem with: balance"],
    "string_number": ["wrong kind", "problem with: balance"],
    "redirect": ["redirect (HTTP 302)", f"to {REDIRECT.hostname}"],
    "html": ["text/html instead of JSON"],
    "truncated": ["not valid JSON", "cut short"],
}
# the faults that escaped the error mapping before the fix, and what the watcher must log for each
WATCHER_FAULTS: dict[str, str] = {
    "nested": "nested too deeply",
    "gzip": "could not be decoded",
    "naive_time": "time zone",
    "bool_number": "problem with: balance",
}


@asynccontextmanager
async def stdio_caller(settings: Settings, stderr: Path) -> AsyncIterator[Caller]:
    """A Caller over the console script as a stdio subprocess; afterwards its stderr must not hold the token."""
    with stderr.open("w") as errlog:
        async with Client(stdio_client(stdio_params(settings), errlog=errlog)) as client:
            yield Caller(client)
    printed = read_recorded(stderr)
    assert settings.token is None or settings.token not in printed


def assert_refused_in_one_line(done: subprocess.CompletedProcess[str], fragment: str) -> None:
    """The command could not run: exit 2, nothing on stdout, one line on stderr naming the problem, no traceback."""
    assert done.returncode == EXIT_CANNOT_RUN, (done.returncode, done.stderr)
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert fragment in done.stderr


def upstream_body_bytes(sandbox: RunningSandbox, path: str) -> int:
    """The size of the answer the sandbox sends the busy account for `path` under the active fault."""
    headers = {"Authorization": f"Bearer {DEMO_TOKENS['busy']}"}
    response = httpx2.get(f"{sandbox.api_url}/{path}", headers=headers, timeout=10)
    return len(response.content)


def compact_size(result: dict[str, Any]) -> int:
    return len(json.dumps(result, separators=(",", ":")).encode())


# ---- 1. No upstream answer crashes the server or gives an unexplained error -----------------------------------


async def test_every_hostile_answer_is_a_named_error_and_the_session_keeps_serving(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    balance = fresh_sandbox.control.account("busy")["balance"]
    settings = settings_for(fresh_sandbox, tmp_path / "state")
    async with stdio_caller(settings, tmp_path / "stderr.log") as caller:
        for mode, fragments in HOSTILE_ANSWERS.items():
            fresh_sandbox.control.set_fault(mode)
            message = await caller.error("get_account_balance")
            assert all(fragment in message for fragment in fragments), (mode, message)
            assert REDIRECT.path not in message, (mode, message)  # a redirect is named by its host only
            fresh_sandbox.control.clear_fault()
            assert (await caller.ok("get_account_balance"))["balance"] == balance, mode


async def test_huge_upstream_lists_are_cut_and_the_result_says_so(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    fresh_sandbox.control.set_fault("huge_lists")
    usage_sent = upstream_body_bytes(fresh_sandbox, "payment/usage")
    history_sent = upstream_body_bytes(fresh_sandbox, "payment/history")
    async with stdio_caller(settings_for(fresh_sandbox, tmp_path / "state"), tmp_path / "stderr.log") as caller:
        usage = await caller.ok("get_account_usage")
        history = await caller.ok("get_payment_history")
    assert compact_size(usage) < RESULT_BYTES_BOUND < usage_sent
    assert len(usage["by_endpoint"]) <= LIST_BOUND
    assert "by_endpoint" in (usage.get("upstream_cut") or "")
    assert compact_size(history) < RESULT_BYTES_BOUND < history_sent
    assert len(history["purchases"]) <= LIST_BOUND
    assert "purchases" in (history.get("upstream_cut") or "")


# ---- 1 (check and the API URL). `check` exits 2 with one clear line on every failure to run --------------------


@pytest.mark.parametrize(("mode", "fragment"), [("nested", "nested too deeply"), ("gzip", "could not be decoded")])
def test_check_on_a_hostile_answer_exits_2_with_one_line(
    fresh_sandbox: RunningSandbox, tmp_path: Path, mode: str, fragment: str
) -> None:
    fresh_sandbox.control.set_fault(mode)
    done = run("check", env=server_env(settings_for(fresh_sandbox, tmp_path)))
    assert_refused_in_one_line(done, fragment)
    assert DEMO_TOKENS["busy"] not in done.stderr


@pytest.mark.parametrize(
    ("api_url", "fragment"),
    [
        ("127.0.0.1:9/api", "must start with https://"),
        ("ftp://127.0.0.1/api", "must start with https://"),
        ("http://127.0.0.1:99999/api", "invalid port"),
        ("http://example.com/api", "TENSORFEED_ALLOW_INSECURE_HTTP=1"),
    ],
)
def test_check_with_a_malformed_api_url_exits_2_with_one_line(tmp_path: Path, api_url: str, fragment: str) -> None:
    env = {
        "TENSORFEED_TOKEN": DEMO_TOKENS["busy"],
        "TENSORFEED_API_URL": api_url,
        "TENSORFEED_MCP_STATE_DIR": str(tmp_path),
    }
    done = run("check", env=env)
    assert_refused_in_one_line(done, fragment)
    assert DEMO_TOKENS["busy"] not in done.stderr


@contextmanager
def sandbox_on_this_machine_by_name() -> Iterator[tuple[RunningSandbox, str]]:
    """A sandbox reached through this machine's host name: local traffic, but not a loopback name or address."""
    host = socket.gethostname()
    assert not is_loopback(host), f"the host name {host!r} is a loopback name; this test needs another"
    with running_sandbox(socket.gethostbyname(host), start=SANDBOX_START) as local:
        port = urlsplit(local.url).port
        yield local, f"http://{host}:{port}/api"


def test_plain_http_to_a_host_that_is_not_loopback_needs_the_opt_in(tmp_path: Path) -> None:
    with sandbox_on_this_machine_by_name() as (local, api_url):
        env = server_env(settings_for(local, tmp_path)) | {"TENSORFEED_API_URL": api_url}
        refused = run("check", env=env)
        assert_refused_in_one_line(refused, "TENSORFEED_ALLOW_INSECURE_HTTP=1")
        assert local.control.upstream_requests() == 0
        allowed = run("check", env=env | {"TENSORFEED_ALLOW_INSECURE_HTTP": "1"})
        assert allowed.returncode == EXIT_OK, allowed.stderr
        assert f"Balance {local.control.account('busy')['balance']} credits" in allowed.stdout
        assert local.control.upstream_requests() > 0


# ---- 1 (the watcher). It survives every failure and keeps polling ----------------------------------------------


class WatcherLog(logging.Handler):
    """Keeps the messages the alert watcher logs about failed background checks."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.failures: list[str] = []

    def emit(self, log_record: logging.LogRecord) -> None:
        message = log_record.getMessage()
        if message.startswith("Background alert check failed"):
            self.failures.append(message)


@contextmanager
def watcher_log() -> Iterator[WatcherLog]:
    handler = WatcherLog()
    server_logger = logging.getLogger("tensorfeed_mcp.runtime.local")
    server_logger.addHandler(handler)
    try:
        yield handler
    finally:
        server_logger.removeHandler(handler)


async def wait_until_polled(sandbox: RunningSandbox, log: WatcherLog, polls: int) -> list[str]:
    """Wait (bounded) for `polls` more failed background checks that reached the sandbox; return their messages."""
    logged, requested = len(log.failures), sandbox.control.upstream_requests()
    with anyio.fail_after(WAIT_SECONDS):
        while len(log.failures) < logged + polls or (
            sandbox.control.upstream_requests() < requested + polls * READS_PER_CHECK
        ):
            await anyio.sleep(0.05)
    return log.failures[logged:]


async def test_the_alert_watcher_survives_hostile_answers_and_keeps_polling(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """In memory: the environment's minimum poll interval (30 s) makes several polls too slow for a subprocess."""
    settings = settings_for(fresh_sandbox, tmp_path, alert_poll_seconds=WATCHER_POLL_SECONDS)
    balance = fresh_sandbox.control.account("busy")["balance"]
    with watcher_log() as log:
        async with in_memory(settings) as client:
            caller = Caller(client)
            for mode, fragment in WATCHER_FAULTS.items():
                fresh_sandbox.control.set_fault(mode)
                for message in await wait_until_polled(fresh_sandbox, log, POLLS_PER_FAULT):
                    assert fragment in message, (mode, message)
                assert fragment in await caller.error("get_account_balance")
            fresh_sandbox.control.clear_fault()
            assert (await caller.ok("get_account_balance"))["balance"] == balance
            requested = fresh_sandbox.control.upstream_requests()
            with anyio.fail_after(WAIT_SECONDS):
                while fresh_sandbox.control.upstream_requests() < requested + POLLS_PER_FAULT * READS_PER_CHECK:
                    await anyio.sleep(0.05)


# ---- 2. The token: refused when malformed, before anything is sent; never printed -----------------------------


def made_up_token(hex_digits: int = 64, inside: str = "") -> str:
    """A random token of `hex_digits` hex characters, with `inside` in the middle of them."""
    digits = secrets.token_hex(32)[:hex_digits]
    return f"tf_live_{digits[: hex_digits // 2]}{inside}{digits[hex_digits // 2 :]}"


WHITESPACE_TOKENS = {"line-break": made_up_token(inside="\r\n"), "space": made_up_token(inside=" ")}
MALFORMED_TOKENS = {"placeholder": "tf_live_paste_your_token_here", "63-hex": made_up_token(63)}
WATCHED_TOKENS.extend([*WHITESPACE_TOKENS.values(), *MALFORMED_TOKENS.values()])


def token_pieces(token: str) -> set[str]:
    """Every 8-character piece of the token but its public prefix `tf_live_`."""
    return {token[i : i + 8] for i in range(1, len(token) - 7)}


@pytest.mark.parametrize("token", WHITESPACE_TOKENS.values(), ids=WHITESPACE_TOKENS.keys())
def test_a_token_with_whitespace_inside_is_refused_at_start_and_never_shown(
    sandbox: RunningSandbox, tmp_path: Path, token: str
) -> None:
    env = server_env(settings_for(sandbox, tmp_path)) | {"TENSORFEED_TOKEN": token}
    requested = sandbox.control.upstream_requests()
    for command in (["check"], ["serve", "--transport", "stdio"]):
        done = run(*command, env=env, timeout=30)
        assert_refused_in_one_line(done, "TENSORFEED_TOKEN contains spaces, line breaks")
        printed = done.stdout + done.stderr
        assert not [piece for piece in token_pieces(token) if piece in printed], command
    assert sandbox.control.upstream_requests() == requested


@pytest.mark.parametrize("token", MALFORMED_TOKENS.values(), ids=MALFORMED_TOKENS.keys())
async def test_a_token_of_the_wrong_format_is_refused_by_a_tool_call_and_nothing_is_sent(
    sandbox: RunningSandbox, tmp_path: Path, token: str
) -> None:
    settings = settings_for(sandbox, tmp_path / "state", token=token)
    requested = sandbox.control.upstream_requests()
    async with stdio_caller(settings, tmp_path / "stderr.log") as caller:
        message = await caller.error("get_account_balance")
    assert "does not look like a TensorFeed token" in message and "No request was sent" in message
    assert token not in message
    assert sandbox.control.upstream_requests() == requested


def test_the_demo_prints_no_token() -> None:
    done = run("demo", timeout=120)
    assert done.returncode == EXIT_OK, done.stderr
    for token in DEMO_TOKENS.values():
        assert token not in done.stderr and token not in done.stdout


def echoing_the_token(sandbox: RunningSandbox, token: str) -> list[tuple[str, dict[str, Any]]]:
    """(tool, custom fault) pairs in which the service sends the token back: in error fields, in a redirect's
    host, and in endpoint names of an otherwise valid usage answer."""
    usage = httpx2.get(
        f"{sandbox.api_url}/payment/usage", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()
    for row in usage["recent"]:
        row["endpoint"] = f"/api/premium/{token}"
    usage["by_endpoint"] = {f"/api/premium/{token}": next(iter(usage["by_endpoint"].values()))}
    echo = json.dumps({"ok": False, "error": token, "message": f"echo {token}"})
    secret = token.removeprefix("tf_live_")
    return [
        ("get_account_balance", {"status": 400, "body": echo, "content_type": "application/json"}),
        ("get_account_balance", {"status": 402, "body": echo, "content_type": "application/json"}),
        ("get_account_balance", {"status": 429, "body": echo, "content_type": "application/json"}),
        ("get_account_balance", {"status": 302, "body": "", "headers": {"location": f"https://{secret}.example/"}}),
        ("get_account_usage", {"status": 200, "body": json.dumps(usage), "content_type": "application/json"}),
    ]


async def test_a_token_the_service_sends_back_never_reaches_the_model(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A broken or hostile service that echoes the token gets it replaced before any text reaches a result."""
    token = DEMO_TOKENS["busy"]
    secret = token.removeprefix("tf_live_")
    async with stdio_caller(settings_for(fresh_sandbox, tmp_path / "state"), tmp_path / "stderr.log") as caller:
        for tool, fault in echoing_the_token(fresh_sandbox, token):
            fresh_sandbox.control.set_fault("custom", **fault)
            result = await caller.raw(tool)
            shown = result.model_dump_json()
            assert secret[:16] not in shown and secret[-16:] not in shown, (tool, fault["status"])
            assert "[redacted]" in shown, (tool, fault["status"], shown)
        fresh_sandbox.control.clear_fault()


# ---- 3. The spend cap: no typo lifts the guard, no failure leaves the user guessing ----------------------------


async def test_a_cap_applied_then_answered_500_is_reported_and_not_served_stale(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    settings = settings_for(fresh_sandbox, tmp_path / "state", cache_seconds=60.0)
    cap = fresh_sandbox.control.account("busy")["daily_cap"]
    wanted = cap + 577
    async with stdio_caller(settings, tmp_path / "stderr.log") as caller:
        assert (await caller.ok("get_spend_cap"))["daily_cap"] == cap  # now cached for a minute
        fresh_sandbox.control.set_fault("cap_apply_500")
        message = await caller.error("set_spend_cap", daily_cap=wanted)
        fresh_sandbox.control.clear_fault()
        assert fresh_sandbox.control.account("busy")["daily_cap"] == wanted
        assert "server error (HTTP 500)" in message
        assert f"TensorFeed now holds a cap of {wanted}, so the change was applied" in message
        assert (await caller.ok("get_spend_cap"))["daily_cap"] == wanted


@pytest.mark.parametrize("mode", ["500", "drop"])
async def test_a_cap_change_that_cannot_be_confirmed_says_to_call_get_spend_cap(
    fresh_sandbox: RunningSandbox, tmp_path: Path, mode: str
) -> None:
    settings = settings_for(fresh_sandbox, tmp_path / "state", cache_seconds=60.0)
    cap = fresh_sandbox.control.account("busy")["daily_cap"]
    async with stdio_caller(settings, tmp_path / "stderr.log") as caller:
        assert (await caller.ok("get_spend_cap"))["daily_cap"] == cap
        fresh_sandbox.control.set_fault(mode)
        message = await caller.error("set_spend_cap", daily_cap=cap + 1)
        fresh_sandbox.control.clear_fault()
        assert f"The request to set the cap to {cap + 1} failed" in message
        assert "Could not confirm what TensorFeed now holds: call get_spend_cap" in message
        assert fresh_sandbox.control.account("busy")["daily_cap"] == cap  # the fault answered in the endpoint's place
        assert (await caller.ok("get_spend_cap"))["daily_cap"] == cap


async def test_set_spend_cap_refuses_anything_but_a_cap_and_clear_spend_cap_clears_it(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    cap = fresh_sandbox.control.account("busy")["daily_cap"]
    assert cap is not None
    async with stdio_caller(settings_for(fresh_sandbox, tmp_path / "state"), tmp_path / "stderr.log") as caller:
        for value in (None, 0, 1_000_001, 2.5, "abc"):
            requested = fresh_sandbox.control.upstream_requests()
            message = await caller.error("set_spend_cap", daily_cap=value)
            assert "use clear_spend_cap" in message, (value, message)
            assert fresh_sandbox.control.upstream_requests() == requested, value
            assert fresh_sandbox.control.account("busy")["daily_cap"] == cap, value
        cleared = await caller.ok("clear_spend_cap")
    assert (cleared["previous_cap"], cleared["daily_cap"]) == (cap, None)
    assert fresh_sandbox.control.account("busy")["daily_cap"] is None
