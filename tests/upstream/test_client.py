"""Upstream resilience, through the MCP server in memory, against the sandbox over real HTTP.

Every fault the sandbox can inject must reach the caller as an error result with its own actionable message,
within the deadline (2 x timeout_seconds), after retrying only what is worth retrying; the next call after the
fault clears must be answered normally. Concurrent identical reads share one upstream request, and the cache
answers repeats without asking upstream.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tensorfeed_mcp.sandbox import RunningSandbox
from tests.support.clients import MODES, Caller, in_memory
from tests.support.env import settings_for
from tests.support.records import WATCHED_TOKENS

pytestmark = pytest.mark.anyio

MAX_ATTEMPTS = 4
DEADLINE_MARGIN_SECONDS = 1.5  # scheduling slack on top of the 2 x timeout_seconds deadline
# C0 and C1 controls, DEL, and the Unicode bidi marks, embeddings, overrides and isolates.
UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
UNKNOWN_TOKEN = "tf_live_" + "0123456789abcdef" * 4  # well formed, but no account has it
BAD_PREFIX_TOKEN = "sk_live_notatensorfeedtoken"
WATCHED_TOKENS.append(BAD_PREFIX_TOKEN)


@pytest.fixture(autouse=True)
def no_fault_left_behind(sandbox: RunningSandbox) -> Iterator[None]:
    sandbox.control.clear_fault()
    yield
    sandbox.control.clear_fault()


def closed_port() -> int:
    """A local port nothing listens on: bound to pick it, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def requests_made(sandbox: RunningSandbox, before: int) -> int:
    return sandbox.control.upstream_requests() - before


# fault mode, set_fault options, settings overrides, message fragments, upstream requests (None: timing-dependent)
FAULTS: dict[str, tuple[str, dict[str, Any], dict[str, Any], list[str], int | None]] = {
    "500": ("500", {}, {}, ["server error (HTTP 500)", f"after {MAX_ATTEMPTS} attempts"], MAX_ATTEMPTS),
    "503": ("503", {}, {}, ["server error (HTTP 503)", f"after {MAX_ATTEMPTS} attempts"], MAX_ATTEMPTS),
    "429": ("429", {"retry_after": 0}, {}, ["rate limiting", "429 rate_limit_exceeded"], MAX_ATTEMPTS),
    "slow": ("slow", {"delay_seconds": 2.0}, {"timeout_seconds": 0.5}, ["did not answer within"], None),
    "html": ("html", {}, {}, ["text/html instead of JSON"], 1),
    "truncated": ("truncated", {}, {}, ["not valid JSON"], 1),
    "oversized": ("oversized", {}, {}, ["larger than 1024 KiB"], 1),
    "drop": ("drop", {}, {}, ["dropped before the answer was complete", f"after {MAX_ATTEMPTS} attempts"], 4),
}


async def timed_error(caller: Caller, tool: str, **arguments: Any) -> tuple[str, float]:
    """The message of a call that must fail, and how many seconds it took."""
    started = time.monotonic()
    message = await caller.error(tool, **arguments)
    return message, time.monotonic() - started


@pytest.mark.parametrize("case", list(FAULTS))
async def test_each_fault_is_an_error_with_its_own_message_and_the_next_call_recovers(
    sandbox: RunningSandbox, tmp_path: Path, case: str
) -> None:
    mode, options, overrides, fragments, expected_requests = FAULTS[case]
    settings = settings_for(sandbox, tmp_path, **overrides)
    async with in_memory(settings) as client:
        caller = Caller(client)
        before = sandbox.control.upstream_requests()
        sandbox.control.set_fault(mode, **options)
        message, elapsed = await timed_error(caller, "get_account_balance")
        sandbox.control.clear_fault()
        made = requests_made(sandbox, before)

        assert message.startswith("Error executing tool get_account_balance: ") and "TensorFeed" in message, message
        for fragment in fragments:
            assert fragment in message
        for other, (_, _, _, other_fragments, _) in FAULTS.items():
            if other != case:
                assert other_fragments[0] not in message, f"{case} reads like {other}: {message}"
        assert "Traceback" not in message and "httpx" not in message
        if expected_requests is not None:
            assert made == expected_requests, message
        if expected_requests == 1:
            assert "attempts" not in message  # a failure that is not retried does not claim retries
        assert elapsed < settings.deadline_seconds + DEADLINE_MARGIN_SECONDS

        balance = await caller.ok("get_account_balance")
    assert balance["balance"] == sandbox.control.account("busy")["balance"]


async def test_a_slow_upstream_gives_up_within_the_deadline_after_retrying(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path, timeout_seconds=0.5)
    async with in_memory(settings) as client:
        caller = Caller(client)
        before = sandbox.control.upstream_requests()
        sandbox.control.set_fault("slow", delay_seconds=2.0)
        message, elapsed = await timed_error(caller, "get_spend_cap")
    assert "did not answer within" in message
    assert elapsed < settings.deadline_seconds + DEADLINE_MARGIN_SECONDS
    assert elapsed >= settings.timeout_seconds  # it did wait for the answer
    assert 1 <= requests_made(sandbox, before) <= MAX_ATTEMPTS


async def test_a_silent_upstream_gives_up_within_the_deadline(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """A host that accepts the connection and never answers (a listening socket nobody accepts from)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        settings = settings_for(sandbox, tmp_path, api_url=f"http://127.0.0.1:{port}/api", timeout_seconds=0.5)
        async with in_memory(settings) as client:
            caller = Caller(client)
            message, elapsed = await timed_error(caller, "get_account_usage")
    assert "did not answer within" in message
    assert elapsed < settings.deadline_seconds + DEADLINE_MARGIN_SECONDS


async def test_connection_refused_says_it_could_not_connect_within_the_deadline(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    port = closed_port()
    settings = settings_for(sandbox, tmp_path, api_url=f"http://127.0.0.1:{port}/api", timeout_seconds=0.5)
    async with in_memory(settings) as client:
        caller = Caller(client)
        message, elapsed = await timed_error(caller, "get_account_balance")
    assert "Could not connect to TensorFeed" in message
    assert f"127.0.0.1:{port}" in message and "TENSORFEED_API_URL" in message
    assert "attempts" in message  # connection failures are retried
    assert elapsed < settings.deadline_seconds + DEADLINE_MARGIN_SECONDS


async def test_no_token_says_how_to_configure_one_and_sends_nothing(sandbox: RunningSandbox, tmp_path: Path) -> None:
    before = sandbox.control.upstream_requests()
    async with in_memory(settings_for(sandbox, tmp_path, token=None)) as client:
        message = await Caller(client).error("get_account_balance")
    assert "No TensorFeed token is configured" in message and "TENSORFEED_TOKEN" in message
    assert requests_made(sandbox, before) == 0


async def test_a_token_without_the_prefix_is_refused_before_sending(sandbox: RunningSandbox, tmp_path: Path) -> None:
    before = sandbox.control.upstream_requests()
    async with in_memory(settings_for(sandbox, tmp_path, token=BAD_PREFIX_TOKEN)) as client:
        caller = Caller(client)
        messages = [await caller.error(tool) for tool in ("get_account_balance", "get_spend_cap", "get_account_usage")]
    for message in messages:
        assert "'tf_live_' followed by 64" in message and "No request was sent" in message
        assert BAD_PREFIX_TOKEN not in message and BAD_PREFIX_TOKEN[8:] not in message
    assert requests_made(sandbox, before) == 0


async def test_an_unknown_token_is_one_request_and_says_revoked_or_mistyped(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    async with in_memory(settings_for(sandbox, tmp_path, token=UNKNOWN_TOKEN)) as client:
        caller = Caller(client)
        before = sandbox.control.upstream_requests()
        message = await caller.error("get_account_balance")
        assert requests_made(sandbox, before) == 1  # a 404 is not retried
        usage_message = await caller.error("get_account_usage")
    for text in (message, usage_message):
        assert "token not recognised: revoked or mistyped" in text
        assert UNKNOWN_TOKEN not in text and UNKNOWN_TOKEN[8:] not in text
        assert "attempts" not in text


async def test_a_flaky_upstream_is_retried_into_success(sandbox: RunningSandbox, tmp_path: Path) -> None:
    expected = sandbox.control.account("busy")["balance"]
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        caller = Caller(client)
        before = sandbox.control.upstream_requests()
        sandbox.control.set_fault("flaky")  # every other request fails with 503, starting with the first
        balances = [(await caller.ok("get_account_balance"))["balance"] for _ in range(5)]
    assert balances == [expected] * 5
    assert requests_made(sandbox, before) == 10  # each call: one 503, then one success


async def test_a_429_with_retry_after_is_waited_out(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        caller = Caller(client)
        before = sandbox.control.upstream_requests()
        sandbox.control.set_fault("429", count=1, retry_after=1)
        started = time.monotonic()
        balance = await caller.ok("get_account_balance")
        elapsed = time.monotonic() - started
    assert balance["balance"] == sandbox.control.account("busy")["balance"]
    assert elapsed >= 0.95  # Retry-After: 1 was honoured, not just the short backoff
    assert requests_made(sandbox, before) == 2


@pytest.mark.parametrize("mode", MODES)
async def test_concurrent_identical_reads_share_one_upstream_request(
    sandbox: RunningSandbox, tmp_path: Path, mode: str
) -> None:
    """With the cache off, 20 concurrent calls join the one request in flight (held open 0.6 s by the sandbox)."""
    expected = sandbox.control.account("busy")["balance"]
    balances: list[int] = []
    async with in_memory(settings_for(sandbox, tmp_path, cache_seconds=0.0), mode) as client:
        caller = Caller(client)

        async def one_call() -> None:
            balances.append((await caller.ok("get_account_balance"))["balance"])

        before = sandbox.control.upstream_requests()
        sandbox.control.set_fault("slow", count=1, delay_seconds=0.6)  # only the first request is held
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one_call)
        made = requests_made(sandbox, before)
    assert balances == [expected] * 20
    # Every call starts well within the 0.6 s the first request is held, so all join it; a second request
    # could only come from a call that started after the first one finished.
    assert 1 <= made <= 2


async def test_the_cache_answers_repeats_within_cache_seconds(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with in_memory(settings_for(sandbox, tmp_path, cache_seconds=30.0)) as client:
        caller = Caller(client)
        before = sandbox.control.upstream_requests()
        first = await caller.ok("get_account_balance")
        second = await caller.ok("get_account_balance")
        assert requests_made(sandbox, before) == 1
    assert first["age_seconds"] == 0.0
    assert second["age_seconds"] >= 0.0
    assert second["as_of"] == first["as_of"]
    assert second["balance"] == first["balance"]


async def test_without_a_cache_every_call_asks_upstream(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with in_memory(settings_for(sandbox, tmp_path, cache_seconds=0.0)) as client:
        caller = Caller(client)
        before = sandbox.control.upstream_requests()
        first = await caller.ok("get_account_balance")
        second = await caller.ok("get_account_balance")
        assert requests_made(sandbox, before) == 2
    assert first["age_seconds"] == second["age_seconds"] == 0.0


@pytest.mark.parametrize(
    "value", [None, 0, float("nan"), float("inf"), 1.5, -1, 1_000_001, "abc", "200", True, [200], {"cap": 1}]
)
async def test_set_spend_cap_refuses_bad_values_before_sending(
    sandbox: RunningSandbox, tmp_path: Path, value: object
) -> None:
    """Nothing that is not a cap, null and 0 included, may reach the service or lift the guard."""
    cap = sandbox.control.account("busy")["daily_cap"]
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        caller = Caller(client)
        before = sandbox.control.upstream_requests()
        message = await caller.error("set_spend_cap", daily_cap=value)
        assert requests_made(sandbox, before) == 0
    assert message == (
        "daily_cap must be a whole number of credits from 1 to 1,000,000; to remove the cap, use clear_spend_cap."
    )
    assert sandbox.control.account("busy")["daily_cap"] == cap


async def test_endpoint_names_from_upstream_are_cleaned_and_capped(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    evil = "/api/premium/evil\u202e\x1b[31m" + "x" * 500
    assert fresh_sandbox.control.add_calls("busy", endpoint=evil, credits=1) == 1
    async with in_memory(settings_for(fresh_sandbox, tmp_path)) as client:
        caller = Caller(client)
        usage = await caller.ok("get_account_usage")
        filtered = await caller.ok("get_account_usage", endpoint="evil")
        raw = await caller.raw("get_account_usage")
    text_content = json.loads(" ".join(getattr(block, "text", "") for block in raw.content))
    names = [row["endpoint"] for result in (usage, filtered, text_content) for row in result["by_endpoint"]]
    names += [call["endpoint"] for result in (usage, filtered, text_content) for call in result["recent"]]
    assert names
    for name in names:
        assert not UNSAFE_TEXT.search(name), repr(name)
        assert len(name) <= 200
    shown = [name for name in names if name.startswith("/api/premium/evil")]
    assert len(shown) == 6  # by_endpoint and recent, in each of the three results
    assert set(shown) == {shown[0]}
    assert shown[0].startswith("/api/premium/evil[31mxxx") and shown[0].endswith("…") and len(shown[0]) == 200
    assert usage["recent"][0]["endpoint"] == shown[0]  # the newest call
    assert [row["endpoint"] for row in filtered["by_endpoint"]] == [shown[0]]
