"""The hosted multi-tenant mode: real replicas (`serve --multi-tenant` subprocesses) sharing a real PostgreSQL, in
front of the sandbox, reached by real MCP clients of both protocol eras, directly or through a round-robin proxy.

Each tenant gets only its own account's answers, across replicas, under concurrency and from caches; alert rules and
ledger readings live in the shared database; an alert transition seen by one replica reaches the listen streams of
that tenant (only) on another; a replica killed mid-call costs a client one retry; a drained replica finishes its
calls; the edge refuses bad bearers and floods; the metrics and logs name no tenant.
"""

from __future__ import annotations

import json
import signal
import subprocess
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg
import pytest
from mcp import Client
from mcp.client.subscriptions import Subscription
from mcp.server.subscriptions import ServerEvent
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.types import CONNECTION_CLOSED, METHOD_NOT_FOUND
from prometheus_client.parser import text_string_to_metric_families

from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox, sandbox_token
from tensorfeed_mcp.settings.identity import token_fingerprint
from tensorfeed_mcp.store.postgres import SCHEMA_VERSION
from tensorfeed_mcp.surface.subscriptions import MAX_STREAMS_PER_TENANT
from tensorfeed_mcp.transports.hosted_http import DRAIN_NOTICE_SECONDS
from tests.support.clients import MODES, Caller, tenant_client
from tests.support.env import replica_env
from tests.support.postgres import PostgresServer
from tests.support.records import WATCHED_TOKENS, masked, read_recorded, record
from tests.support.servers import (
    HOSTED,
    SERVE,
    RoundRobinProxy,
    ServerProcess,
    console_script,
    running_proxy,
    running_replicas,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

ALERTS_URI = "tensorfeed://account/alerts"
READS = ("get_account_balance", "get_account_usage", "get_spend_cap", "check_spend_alerts")
ENDPOINT = "/api/premium/agents/directory"
DEADLINE_SECONDS = 10.0  # for anything awaited: a delivery, a poll, a call
MIXED = {"mix-a": (777, 50), "mix-b": (4321, None)}  # created accounts beside the seeded ones: balance, daily cap
MANY = [f"many-{i:02d}" for i in range(40)]
LIMITED_PER_MINUTE = 3
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
OTHER_NAMES = ("rules-x", "listen-x", "listen-y", "survivor", "refused")
TOKENS = {name: sandbox_token(name) for name in (*DEMO_TOKENS, *MIXED, *MANY, *OTHER_NAMES)}
WATCHED_TOKENS.extend(token for token in TOKENS.values() if token not in WATCHED_TOKENS)


def own_values(tool: str, account: dict[str, Any]) -> dict[str, Any]:
    """What `tool` must answer for the sandbox account described by `account` (control.account)."""
    calls = account["calls"]
    cap = account["daily_cap"]
    return {
        "get_account_balance": {"balance": account["balance"], "total_purchased": account["total_purchased"]},
        "get_account_usage": {
            "token_balance": account["balance"],
            "total_calls": len(calls),
            "total_credits_spent": sum(call["credits"] for call in calls),
        },
        # Without a cap the service reports daily_spent as 0.
        "get_spend_cap": {"daily_cap": cap, "daily_spent": account["spent_today"] if cap is not None else 0},
        "check_spend_alerts": {"balance": account["balance"]},
    }[tool]


def assert_own_answer(tool: str, answer: dict[str, Any], name: str, account: dict[str, Any]) -> None:
    expected = {"token": masked(TOKENS[name]), **own_values(tool, account)}
    assert {key: answer[key] for key in expected} == expected, (tool, name)


@contextmanager
def recorded_replicas(env: dict[str, str], folder: Path, count: int) -> Iterator[list[ServerProcess]]:
    """`count` replicas started at once; everything they printed is recorded for the token scan afterwards."""
    logs = [folder / f"replica-{number}.log" for number in range(count)]
    try:
        with running_replicas(env, logs) as started:
            yield started
    finally:
        for log in logs:
            read_recorded(log)


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` says the connection to the server broke (the SDK's own word for it, or httpx's), and nothing
    else went wrong."""
    if isinstance(exc, BaseExceptionGroup):
        return all(connection_lost(inner) for inner in exc.exceptions)
    return isinstance(exc, httpx2.TransportError) or (isinstance(exc, MCPError) and exc.error.code == CONNECTION_CLOSED)


class RetryingTenant:
    """Calls tools for one tenant as a host that reconnects would: a new client per call, and a call whose
    connection broke retried once. `retries` counts the retries."""

    def __init__(self, url: str, name: str, mode: str) -> None:
        self._url = url
        self._token = TOKENS[name]
        self._mode = mode
        self.retries = 0

    async def ok(self, tool: str, **arguments: Any) -> dict[str, Any]:
        try:
            return await self._once(tool, arguments)
        except Exception as exc:
            if not connection_lost(exc):
                raise
        self.retries += 1
        return await self._once(tool, arguments)

    async def _once(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        async with tenant_client(self._url, self._token, self._mode, new_connection_each_request=True) as client:
            return await Caller(client).ok(tool, **arguments)


@asynccontextmanager
async def callers(url: str, names: list[str], mode: str, **options: bool) -> AsyncIterator[dict[str, Caller]]:
    """A connected Caller per tenant name."""
    async with AsyncExitStack() as stack:
        yield {
            name: Caller(await stack.enter_async_context(tenant_client(url, TOKENS[name], mode, **options)))
            for name in names
        }


async def events_now(subscription: Subscription) -> list[ServerEvent]:
    """The events a listen stream holds once every task of this process is idle (all received data handled)."""
    events: list[ServerEvent] = []

    async def take() -> None:
        async for event in subscription:
            events.append(event)

    async with anyio.create_task_group() as group:
        group.start_soon(take)
        await anyio.wait_all_tasks_blocked()
        group.cancel_scope.cancel()
    return events


def samples(replica: ServerProcess, name: str, *labels: str) -> Counter[tuple[str, ...]]:
    """The replica's samples of metric `name`, by the values of `labels`."""
    counts: Counter[tuple[str, ...]] = Counter()
    for family in text_string_to_metric_families(metrics_text(replica)):
        for sample in family.samples:
            if sample.name == name:
                counts[tuple(sample.labels[label] for label in labels)] = int(sample.value)
    return counts


def tool_calls(replica: ServerProcess) -> Counter[tuple[str, ...]]:
    """The replica's tensorfeed_mcp_tool_calls_total by (tool, outcome)."""
    return samples(replica, "tensorfeed_mcp_tool_calls_total", "tool", "outcome")


def metrics_text(replica: ServerProcess) -> str:
    response = httpx2.get(replica.base_url + "/metrics", timeout=DEADLINE_SECONDS)
    assert response.status_code == 200
    record(response.text)
    return response.text


@pytest.fixture(scope="module")
def shared_database(postgres_server: PostgresServer) -> Iterator[str]:
    with postgres_server.database() as url:
        yield url


@pytest.fixture(scope="module")
def pair(
    sandbox: RunningSandbox, shared_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    """Two replicas started at the same moment on an empty database, caching for longer than any test here runs.
    The mixed accounts are made first, so no replica can have cached them before their calls."""
    for name, (balance, cap) in MIXED.items():
        sandbox.control.create_account(name, balance, cap)
    sandbox.control.add_calls("mix-a", ENDPOINT, 4, count=3)
    env = replica_env(sandbox.api_url, shared_database, TENSORFEED_CACHE_SECONDS="60")
    with recorded_replicas(env, tmp_path_factory.mktemp("pair"), 2) as started:
        yield started


@pytest.fixture(scope="module")
def proxy(pair: list[ServerProcess]) -> Iterator[RoundRobinProxy]:
    with running_proxy([replica.port for replica in pair]) as running:
        yield running


def test_replicas_started_at_once_on_an_empty_database_migrate_it_once(
    pair: list[ServerProcess], shared_database: str
) -> None:
    for replica in pair:
        ready = httpx2.get(replica.base_url + "/readyz", timeout=DEADLINE_SECONDS)
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    with psycopg.connect(shared_database) as conn:
        rows = conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")
        assert rows.fetchall() == [(version, 1) for version in range(1, SCHEMA_VERSION + 1)]


@pytest.mark.parametrize("mode", MODES)
async def test_tenants_interleaved_through_the_proxy_each_get_their_own_account(
    sandbox: RunningSandbox, proxy: RoundRobinProxy, mode: str
) -> None:
    names = [*DEMO_TOKENS, *MIXED]
    accounts = {name: sandbox.control.account(name) for name in names}
    served_before = Counter(proxy.served)
    async with callers(proxy.url(), names, mode, new_connection_each_request=True) as by_name:
        for tool in READS:
            for name in names:
                assert_own_answer(tool, await by_name[name].ok(tool), name, accounts[name])
    served = proxy.served - served_before
    assert set(served) == set(proxy.backends)
    assert min(served.values()) >= len(names) * len(READS) // 2  # each replica answered about half the calls


async def test_forty_tenants_at_once_over_both_replicas_never_get_another_tenants_answer(
    sandbox: RunningSandbox, pair: list[ServerProcess]
) -> None:
    """Tenant i calls replica i % 2 in era (i // 2) % 2. The second round comes from the replicas' caches, all of
    it, and still every answer is the caller's own."""
    control = sandbox.control
    for number, name in enumerate(MANY):
        control.create_account(name, 1000 + 37 * number, 100 + number if number % 3 else None)
    accounts = {name: control.account(name) for name in MANY}
    reads = READS[:3]  # check_spend_alerts reads the same three paths
    before_first = control.upstream_requests()
    async with AsyncExitStack() as stack:
        by_name = {
            name: Caller(
                await stack.enter_async_context(
                    tenant_client(pair[number % 2].url, TOKENS[name], MODES[(number // 2) % 2])
                )
            )
            for number, name in enumerate(MANY)
        }

        async def one_round() -> None:
            async def tenant(name: str) -> None:
                for tool in reads:
                    assert_own_answer(tool, await by_name[name].ok(tool), name, accounts[name])

            async with anyio.create_task_group() as group:
                for name in MANY:
                    group.start_soon(tenant, name)

        await one_round()
        before_second = control.upstream_requests()
        await one_round()
        after_second = control.upstream_requests()
    # One upstream request per tenant and path: the check of a new token is its tenant's first balance read.
    assert before_second - before_first == len(MANY) * len(reads)
    assert after_second == before_second  # the second round was answered from the caches alone


async def test_an_alert_rule_set_through_one_replica_is_evaluated_by_the_other(
    sandbox: RunningSandbox, pair: list[ServerProcess]
) -> None:
    sandbox.control.create_account("rules-x", 500)
    a, b = pair
    async with callers(a.url, ["rules-x"], "legacy") as on_a, callers(b.url, ["rules-x"], "2026-07-28") as on_b:
        await on_a["rules-x"].ok("set_spend_alert", kind="balance_below", threshold=600, name="under 600")
        await on_a["rules-x"].ok("set_spend_alert", kind="daily_spend_above", threshold=10, name="spendy")
        seen_by_b = {alert["name"]: alert for alert in (await on_b["rules-x"].ok("check_spend_alerts"))["alerts"]}
        assert {name: (alert["status"], alert["observed"]) for name, alert in seen_by_b.items()} == {
            "under 600": ("triggered", 500.0),
            "spendy": ("ok", 0.0),
        }
        deleted = await on_b["rules-x"].ok("delete_spend_alert", name="spendy")
        assert deleted["rule_count"] == 1
        seen_by_a = (await on_a["rules-x"].ok("check_spend_alerts"))["alerts"]
    assert [(alert["name"], alert["since"]) for alert in seen_by_a] == [("under 600", seen_by_b["under 600"]["since"])]


async def test_a_transition_seen_by_one_replica_reaches_that_tenants_listeners_on_the_other_only(
    sandbox: RunningSandbox, pair: list[ServerProcess]
) -> None:
    control = sandbox.control
    a, b = pair
    tenants = ["listen-x", "listen-y"]
    for name in tenants:
        control.create_account(name, 300)
    async with (
        callers(a.url, tenants, "2026-07-28") as on_a,
        tenant_client(b.url, TOKENS["listen-x"], "2026-07-28") as x_on_b,
        tenant_client(b.url, TOKENS["listen-y"], "2026-07-28") as y_on_b,
        x_on_b.listen(resource_subscriptions=[ALERTS_URI]) as x_stream,
        y_on_b.listen(resource_subscriptions=[ALERTS_URI]) as y_stream,
    ):
        for name in tenants:
            # 300 -> 150, below the floor, before A first reads the balance (and caches it, for 60 s here)
            control.add_calls(name, ENDPOINT, 50, count=3)
            await on_a[name].ok("set_spend_alert", kind="balance_below", threshold=200, name="floor")
        streams = {"listen-x": x_stream, "listen-y": y_stream}
        for name, other in [("listen-x", "listen-y"), ("listen-y", "listen-x")]:
            check = await on_a[name].ok("check_spend_alerts")
            assert [(alert["name"], alert["status"]) for alert in check["alerts"]] == [("floor", "triggered")]
            with anyio.fail_after(DEADLINE_SECONDS):
                event = await streams[name].__anext__()
            assert ALERTS_URI in str(event)
            # B tells every listener of a change in one call, so the other tenant's stream would hold it by now.
            assert await events_now(streams[other]) == [], f"{other} heard of {name}'s alert"


@pytest.mark.parametrize("mode", MODES)
async def test_a_replica_killed_mid_call_costs_a_client_one_retry_and_loses_nothing(
    fresh_sandbox: RunningSandbox, database_url: str, tmp_path: Path, mode: str
) -> None:
    control = fresh_sandbox.control
    control.create_account("survivor", 5000, 400)
    env = replica_env(fresh_sandbox.api_url, database_url, TENSORFEED_CACHE_SECONDS="0")
    with recorded_replicas(env, tmp_path, 2) as pair, running_proxy([replica.port for replica in pair]) as proxy:
        tenant = RetryingTenant(proxy.url(), "survivor", mode)
        await tenant.ok("set_spend_alert", kind="balance_below", threshold=100, name="floor")
        await tenant.ok("set_spend_alert", kind="daily_spend_above", threshold=300, name="busy day")
        first = await tenant.ok("get_spend_history", days=2)
        control.advance_clock(600)
        control.add_calls("survivor", ENDPOINT, 7, count=3)
        control.advance_clock(600)
        second = await tenant.ok("get_spend_history", days=2)
        assert second["coverage"]["snapshots"] == first["coverage"]["snapshots"] + 1
        assert second["totals"]["credits"] == 21  # spent between the two snapshots
        assert tenant.retries == 0

        control.set_fault("slow", count=1, delay_seconds=3)  # holds the next upstream request
        upstream_before = control.upstream_requests()
        answers: list[dict[str, Any]] = []

        async def call() -> None:
            answers.append(await tenant.ok("get_account_balance"))

        async with anyio.create_task_group() as group:
            group.start_soon(call)
            await eventually(lambda: control.upstream_requests() > upstream_before, within=DEADLINE_SECONDS)
            [holder] = [port for port, count in proxy.open.items() if count]
            [victim] = [replica for replica in pair if replica.port == holder]
            assert victim.kill() == -signal.SIGKILL
        assert tenant.retries == 1
        assert answers[0]["balance"] == 5000 - 21

        control.advance_clock(600)
        after = await tenant.ok("get_spend_history", days=2)
        check = await tenant.ok("check_spend_alerts")
    assert after["coverage"]["first_snapshot"] == first["coverage"]["first_snapshot"]
    assert after["coverage"]["snapshots"] >= second["coverage"]["snapshots"] + 1
    assert after["totals"]["credits"] == 21
    assert sorted(alert["name"] for alert in check["alerts"]) == ["busy day", "floor"]
    assert tenant.retries == 1


async def test_sigterm_fails_readiness_for_a_notice_then_finishes_the_call_in_flight_and_exits_0(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """After SIGTERM /readyz answers 503 while the listener still answers (the notice), then the listener closes
    with a call still in flight, which completes. An open listen stream does not hold the drain up: it is ended
    (gracefully, so its client listens again elsewhere) and the replica exits well within its grace period (the
    upstream deadline, 21 s here)."""
    env = replica_env(sandbox.api_url, state_dir=tmp_path, TENSORFEED_CACHE_SECONDS="0")
    with recorded_replicas(env, tmp_path, 1) as [replica]:
        ready = httpx2.get(replica.base_url + "/readyz", timeout=DEADLINE_SECONDS)
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        expected = sandbox.control.account("busy")["balance"]
        async with (
            callers(replica.url, ["busy"], "2026-07-28") as by_name,
            tenant_client(replica.url, TOKENS["new"], "2026-07-28") as listener,
            listener.listen(resource_subscriptions=[ALERTS_URI]) as stream,
        ):
            caller = by_name["busy"]
            await caller.schemas()  # so the call's result needs no further request to validate
            sandbox.control.set_fault("slow", count=1, delay_seconds=DRAIN_NOTICE_SECONDS + 2)
            upstream_before = sandbox.control.upstream_requests()
            answers: list[dict[str, Any]] = []
            readiness: list[tuple[int, str]] = []
            refused_while_in_flight = False
            stream_ended = anyio.Event()

            async def call() -> None:
                answers.append(await caller.ok("get_account_balance"))

            async def listen() -> None:
                async for _ in stream:
                    pass
                stream_ended.set()

            probe = httpx2.AsyncClient(timeout=DEADLINE_SECONDS, limits=httpx2.Limits(max_keepalive_connections=0))
            async with anyio.create_task_group() as group, probe:
                group.start_soon(listen)
                group.start_soon(call)
                await eventually(lambda: sandbox.control.upstream_requests() > upstream_before, within=DEADLINE_SECONDS)
                replica.process.send_signal(signal.SIGTERM)
                with anyio.fail_after(DEADLINE_SECONDS):
                    while True:  # a new connection each time, until the listener is closed
                        try:
                            response = await probe.get(replica.base_url + "/readyz")
                        except httpx2.TransportError:
                            refused_while_in_flight = not answers
                            break
                        readiness.append((response.status_code, response.text))
                    await stream_ended.wait()
        code = await anyio.to_thread.run_sync(replica.process.wait, DEADLINE_SECONDS)
    assert answers[0]["balance"] == expected
    assert readiness and set(readiness) == {(503, '{"status":"draining"}')}  # never ready again once told to stop
    assert refused_while_in_flight
    assert code == 0


async def test_a_request_without_a_tensorfeed_bearer_gets_a_401_that_says_what_to_send(
    sandbox: RunningSandbox, pair: list[ServerProcess]
) -> None:
    token = TOKENS["busy"]
    refused: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
        {"Authorization": f"Bearer {token[:-1]}"},
        {"Authorization": f"Bearer {token.upper()}"},
        {"Authorization": "Bearer tf_live_not-a-token"},
    ]
    upstream_before = sandbox.control.upstream_requests()
    async with httpx2.AsyncClient(timeout=DEADLINE_SECONDS) as http:
        for headers in refused:
            for method in ("POST", "GET"):
                response = await http.request(
                    method, pair[0].url, json=INITIALIZE if method == "POST" else None, headers=MCP_HEADERS | headers
                )
                record(response.text)
                assert response.status_code == 401, (method, headers)
                body = response.json()
                assert body["error"] == "invalid_token"
                assert "Authorization: Bearer tf_live_" in body["error_description"]
                assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert sandbox.control.upstream_requests() == upstream_before


async def test_a_tenant_over_its_rate_gets_429_with_retry_after_while_another_is_served(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    env = replica_env(
        sandbox.api_url, state_dir=tmp_path, TENSORFEED_MCP_TENANT_CALLS_PER_MINUTE=str(LIMITED_PER_MINUTE)
    )
    with recorded_replicas(env, tmp_path, 1) as [replica]:
        headers = MCP_HEADERS | {"Authorization": f"Bearer {TOKENS['low']}"}
        async with httpx2.AsyncClient(timeout=DEADLINE_SECONDS) as http:
            answers = [
                await http.post(replica.url, json=INITIALIZE, headers=headers) for _ in range(LIMITED_PER_MINUTE)
            ]
            limited = await http.post(replica.url, json=INITIALIZE, headers=headers)
        record(limited.text)
        assert [answer.status_code for answer in answers] == [200] * LIMITED_PER_MINUTE
        assert limited.status_code == 429
        assert limited.json()["error"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60 // LIMITED_PER_MINUTE
        async with callers(replica.url, ["new"], "2026-07-28") as by_name:
            balance = await by_name["new"].ok("get_account_balance")
        assert balance["balance"] == sandbox.control.account("new")["balance"]
        assert "tensorfeed_mcp_rate_limited_requests_total 1.0" in metrics_text(replica)


async def test_metrics_count_tool_calls_per_tool_and_name_no_tenant(pair: list[ServerProcess]) -> None:
    """Also the other families: the second balance read of `new` within the cache window is a cache hit, the
    upstream latency histogram has counted requests, and both tenants are active."""
    replica = pair[0]
    planned = {"get_account_balance": 3, "get_spend_cap": 2, "get_account_usage": 1}
    before = tool_calls(replica)
    hits_before = samples(replica, "tensorfeed_mcp_cache_hits_total", "path")
    async with callers(replica.url, ["new", "mix-b"], "2026-07-28") as by_name:
        for tool, times in planned.items():
            for number in range(times):
                await by_name[["new", "mix-b"][number % 2]].ok(tool)
        await by_name["new"].error("set_spend_alert", kind="balance_below", threshold="many")
        await by_name["new"].error("no_such_tool")
    counted = tool_calls(replica) - before
    assert counted == Counter(
        {
            **{(tool, "ok"): times for tool, times in planned.items()},
            ("set_spend_alert", "error"): 1,
            ("unknown", "error"): 1,
        }
    )
    hits = samples(replica, "tensorfeed_mcp_cache_hits_total", "path") - hits_before
    assert hits[("payment/balance",)] >= 1
    assert sum(samples(replica, "tensorfeed_mcp_upstream_request_seconds_count").values()) > 0
    assert samples(replica, "tensorfeed_mcp_active_tenants")[()] >= 2
    text = metrics_text(replica)
    for token in TOKENS.values():
        for form in (token, token[8:], token_fingerprint(token), masked(token), token[:12]):
            assert form not in text


async def test_a_2025_client_is_told_resources_cannot_be_subscribed_and_a_try_is_refused(
    sandbox: RunningSandbox, pair: list[ServerProcess]
) -> None:
    """A replica keeps no sessions to hold a 2025-era subscription in: it advertises none, refuses one asked for
    anyway, and keeps answering."""
    async with callers(pair[1].url, ["low"], "legacy") as by_name:
        client: Client = by_name["low"].client
        resources = client.server_capabilities.resources
        assert resources is not None and not resources.subscribe
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # resources/subscribe is the 2025-era way
            with pytest.raises(MCPError) as refused:
                await client.subscribe_resource(ALERTS_URI)
        record(refused.value)
        assert refused.value.error.code == METHOD_NOT_FOUND
        balance = await by_name["low"].ok("get_account_balance")
    assert balance["balance"] == sandbox.control.account("low")["balance"]


def test_settings_a_multi_tenant_server_cannot_honour_are_refused_at_start(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    env = replica_env(sandbox.api_url, state_dir=tmp_path)
    secret_file = tmp_path / "secret"
    secret_file.write_text("hosted-test-secret-" + "cd" * 16)
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["--transport", "sse", "--multi-tenant"], {}, "--transport streamable-http"),
        (["--transport", "stdio", "--multi-tenant"], {}, "--transport streamable-http"),
        (["--transport", "sse"], {"TENSORFEED_MCP_MULTI_TENANT": "1"}, "--transport streamable-http"),
        ([*HOSTED], {"TENSORFEED_TOKEN": TOKENS["refused"]}, "TENSORFEED_TOKEN"),
        ([*HOSTED], {"TENSORFEED_MCP_AUTH_TOKEN": "hosted-test-secret-" + "ab" * 16}, "TENSORFEED_MCP_AUTH_TOKEN"),
        ([*HOSTED, "--auth-token-file", str(secret_file)], {}, "--auth-token-file"),
        ([*HOSTED], {"TENSORFEED_POLL_SECONDS": "60"}, "TENSORFEED_POLL_SECONDS"),
    ]
    processes = [
        subprocess.Popen(
            [*SERVE, *args, "--port", "0"],
            env=env | extra,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, extra, _ in cases
    ]
    for process, (args, extra, named) in zip(processes, cases, strict=True):
        stdout, stderr = process.communicate(timeout=30)
        record(stdout + stderr)
        assert process.returncode == 2, (args, extra, stderr)
        assert stdout == ""
        [line] = stderr.strip().splitlines()
        assert line.startswith("tensorfeed-mcp: ") and named in line, (args, extra, line)


PASSWORD_HALVES = ("Kq7wLeak", "Zx9pMe13")
"""Each made-up database password below is these two around a character a URL reserves: a message that holds either
half holds part of the password."""


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("postgresql://postgres:{0}%{1}@127.0.0.1:{port}/postgres", "write % as %25, / as %2F, @ as %40"),
        ("postgresql://postgres:{0}/{1}@127.0.0.1:{port}/postgres", "write % as %25, / as %2F, @ as %40"),
        ("postgresql://postgres:{0}@{1}@127.0.0.1:{port}/postgres", "write % as %25, / as %2F, @ as %40"),
        ("postgresql://postgres:{0} {1}@127.0.0.1:{port}/postgres", "a space as %20"),
        ("postgresql://127.0.0.1:{port}/postgres?password={0}%{1}", "percent-encoding (%XX)"),
        ("postgresql://postgres:{0}{1}@[::1:{port}/postgres", "check the host, port, database name"),
        ("POSTGRESQL://postgres:{0}{1}@127.0.0.1:{port}/postgres", "give one like postgresql://user:password@host"),
    ],
)
def test_a_database_url_that_cannot_be_used_is_refused_at_start_without_any_of_its_password(
    sandbox: RunningSandbox, postgres_server: PostgresServer, tmp_path: Path, url: str, accepted: str
) -> None:
    """A real PostgreSQL listens at the URL's host and port, so only the URL's own text is wrong."""
    database_url = url.format(*PASSWORD_HALVES, port=postgres_server.port)
    done = subprocess.run(
        [console_script(), "serve", *HOSTED, "--port", "0"],
        env=replica_env(sandbox.api_url, database_url, tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    record(done.stdout + done.stderr)
    assert not any(half in done.stdout + done.stderr for half in PASSWORD_HALVES), done.stderr
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("tensorfeed-mcp: TENSORFEED_MCP_DATABASE_URL ") and accepted in line, line


@pytest.mark.parametrize("password", ["{0}%25%2F%40%20{1}", "{0}?#{1}"])
def test_a_database_password_written_as_libpq_reads_it_is_used_and_never_printed(
    sandbox: RunningSandbox, postgres_server: PostgresServer, tmp_path: Path, password: str
) -> None:
    """Reserved characters percent-encoded, or ? and # as they are (libpq reads them as part of the password): the
    replica connects (the test server trusts local users, so any password will do) and prints no part of it."""
    written = password.format(*PASSWORD_HALVES)
    with postgres_server.database() as url:
        env = replica_env(sandbox.api_url, url.replace("postgres@", f"postgres:{written}@"))
        with recorded_replicas(env, tmp_path, 1) as (replica,):
            ready = httpx2.get(replica.base_url + "/readyz", timeout=DEADLINE_SECONDS)
            assert replica.terminate() == 0
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert not any(half in replica.output() for half in PASSWORD_HALVES)


async def test_json_logs_put_every_line_after_the_listening_line_in_one_object(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    env = replica_env(sandbox.api_url, state_dir=tmp_path, TENSORFEED_MCP_LOG_FORMAT="json")
    with recorded_replicas(env, tmp_path, 1) as [replica]:
        async with callers(replica.url, ["busy"], "legacy") as by_name:
            await by_name["busy"].ok("get_account_balance")
        unauthorised = httpx2.post(replica.url, json=INITIALIZE, headers=MCP_HEADERS, timeout=DEADLINE_SECONDS)
        assert unauthorised.status_code == 401
        assert replica.terminate() == 0
        lines = replica.output().splitlines()
    after = lines[next(number for number, line in enumerate(lines) if "listening on" in line) + 1 :]
    entries = [json.loads(line) for line in after]
    assert all(isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert all(datetime.fromisoformat(entry["time"]).utcoffset() == timedelta(0) for entry in entries)
    access = [entry["message"] for entry in entries if entry["logger"] == "uvicorn.access"]
    assert any('"POST /mcp HTTP/1.1" 200' in message for message in access)
    assert any('"POST /mcp HTTP/1.1" 401' in message for message in access)


async def test_one_tenant_may_hold_only_so_many_listen_streams_on_a_replica_and_others_still_listen(
    pair: list[ServerProcess],
) -> None:
    replica = pair[1]
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(tenant_client(replica.url, TOKENS["mix-a"], "2026-07-28"))
        for _ in range(MAX_STREAMS_PER_TENANT):
            await stack.enter_async_context(client.listen(resource_subscriptions=[ALERTS_URI]))
        with pytest.raises(MCPError) as refused:
            await stack.enter_async_context(client.listen(resource_subscriptions=[ALERTS_URI]))
        record(refused.value)
        assert f"already has {MAX_STREAMS_PER_TENANT} listen streams" in str(refused.value)
        other = await stack.enter_async_context(tenant_client(replica.url, TOKENS["mix-b"], "2026-07-28"))
        async with other.listen(resource_subscriptions=[ALERTS_URI]):
            balance = await Caller(other).ok("get_account_balance")
    assert balance["balance"] == MIXED["mix-b"][0]


@pytest.mark.parametrize(
    ("library", "args", "extra", "named"),
    [
        ("prometheus_client", ["serve", *HOSTED], {}, "--multi-tenant"),
        (
            "psycopg",
            ["check"],
            {"TENSORFEED_TOKEN": TOKENS["busy"], "TENSORFEED_MCP_DATABASE_URL": "postgresql://tf@127.0.0.1:1/none"},
            "PostgreSQL",
        ),
    ],
)
def test_without_the_hosted_extra_what_needs_it_says_how_to_install_it(
    sandbox: RunningSandbox, tmp_path: Path, library: str, args: list[str], extra: dict[str, str], named: str
) -> None:
    """A plain install lacks the extra's libraries: the CLI runs with one of them made unimportable."""
    without = f"import sys; sys.modules[{library!r}] = None; from tensorfeed_mcp.cli import main; sys.exit(main())"
    done = subprocess.run(
        [SERVE[0], "-c", without, *args],
        env=replica_env(sandbox.api_url, state_dir=tmp_path) | extra,
        capture_output=True,
        text=True,
        timeout=60,
    )
    record(done.stdout + done.stderr)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert named in line and "pip install 'tensorfeed-mcp[hosted]'" in line, line


async def test_a_get_for_an_event_stream_is_refused_at_once_with_405_since_replicas_keep_no_sessions(
    pair: list[ServerProcess],
) -> None:
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {TOKENS['busy']}"}
    async with httpx2.AsyncClient(timeout=DEADLINE_SECONDS) as http:
        for era in ("2025-11-25", "2026-07-28", None):
            versioned = headers | ({"MCP-Protocol-Version": era} if era else {})
            response = await http.get(pair[0].url, headers=versioned)
            record(response.text)
            assert (response.status_code, response.headers["allow"]) == (405, "POST"), era
            assert "subscriptions/listen" in response.json()["error_description"]
