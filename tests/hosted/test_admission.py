"""Which requests a hosted replica lets through to its tenants: only those whose token the service has accepted.

Real replicas (`serve --multi-tenant` subprocesses) on a real PostgreSQL in front of the sandbox. A made-up token
costs one upstream read at most (within a budget of new tokens per replica) and is then refused from memory; it
gets no stored row, no held stream and no cache slot. Two Authorization headers are refused; a revoked tenant is
refused at the gate once the service has said so; listen streams are capped per replica and end after a lifetime.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg
import pytest
from mcp.shared.exceptions import MCPError

from tensorfeed_mcp.sandbox import RunningSandbox, sandbox_token
from tensorfeed_mcp.surface.subscriptions import MAX_LISTEN_STREAMS, MAX_STREAMS_PER_TENANT
from tests.support.clients import Caller, tenant_client
from tests.support.env import replica_env
from tests.support.records import WATCHED_TOKENS, read_recorded, record
from tests.support.servers import ServerProcess, running_proxy, running_replicas

pytestmark = pytest.mark.anyio

ALERTS_URI = "tensorfeed://account/alerts"
DEADLINE_SECONDS = 10.0
NEW_TOKENS_PER_MINUTE = 20
LISTEN = {
    "jsonrpc": "2.0",
    "id": "listen-1",
    "method": "subscriptions/listen",
    "params": {
        "notifications": {"resourceSubscriptions": [ALERTS_URI]},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "flood", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    },
}
"""A listen request as the SDK's client sends it (sessionless 2026-07-28): one held stream each, if admitted."""
MODERN_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2026-07-28",
    "MCP-Method": "subscriptions/listen",
}
TENANTS = [f"adm-{number}" for number in range(MAX_LISTEN_STREAMS // MAX_STREAMS_PER_TENANT + 1)]
TOKENS = {name: sandbox_token(name) for name in (*TENANTS, "real", "paired", "revoked", "later")}
WATCHED_TOKENS.extend(TOKENS.values())


def made_up_token() -> str:
    """A well-formed token nobody was ever given (watched: it must not show anywhere either)."""
    token = "tf_live_" + secrets.token_hex(32)
    WATCHED_TOKENS.append(token)
    return token


def set_alert(number: int) -> dict[str, Any]:
    """A 2025-era tools/call of set_spend_alert, which would store a rule if it got through."""
    return {
        "jsonrpc": "2.0",
        "id": number,
        "method": "tools/call",
        "params": {"name": "set_spend_alert", "arguments": {"kind": "balance_below", "threshold": 5}},
    }


@contextmanager
def hosted_replicas(
    sandbox: RunningSandbox, database_url: str, tmp_path: Path, count: int, **extra: str
) -> Iterator[list[ServerProcess]]:
    env = {
        "TENSORFEED_API_URL": sandbox.api_url,
        "TENSORFEED_MCP_DATABASE_URL": database_url,
        "TENSORFEED_MCP_NEW_TOKENS_PER_MINUTE": str(NEW_TOKENS_PER_MINUTE),
        "TENSORFEED_TIMEOUT_SECONDS": "1",
        "TENSORFEED_CACHE_SECONDS": "0",
        **extra,
    }
    logs = [tmp_path / f"replica-{number}.log" for number in range(count)]
    try:
        with running_replicas(replica_env(sandbox.api_url) | env, logs) as started:
            yield started
    finally:
        for log in logs:
            read_recorded(log)


async def post(http: httpx2.AsyncClient, url: str, token: str, body: dict[str, Any], **headers: str) -> httpx2.Response:
    response = await http.post(url, json=body, headers={"Authorization": f"Bearer {token}", **headers})
    record(response.text)
    return response


async def test_a_flood_of_made_up_tokens_holds_nothing_stores_nothing_and_costs_at_most_the_budget(
    sandbox: RunningSandbox, database_url: str, tmp_path: Path
) -> None:
    """100 listen requests and 100 set_spend_alert calls, each with its own made-up token, through two replicas:
    every one is answered at once (401 after the one check the budget allows, else 429 with Retry-After), upstream
    sees at most each replica's budget of checks, no rule reaches PostgreSQL, and afterwards /healthz and a known
    tenant's listen stream and calls are served. (A tenant new to a replica waits, like the flood, for the budget.)"""
    sandbox.control.create_account("real", 900)
    with hosted_replicas(sandbox, database_url, tmp_path, 2) as pair, running_proxy([r.port for r in pair]) as proxy:
        for replica in pair:  # the real tenant is known to both before the flood
            async with tenant_client(replica.url, TOKENS["real"], "legacy") as client:
                await Caller(client).ok("get_spend_cap")
        upstream_before = sandbox.control.upstream_requests()
        statuses: Counter[int] = Counter()
        retry_after: set[str] = set()
        async with httpx2.AsyncClient(timeout=DEADLINE_SECONDS) as http:

            async def one(body: dict[str, Any], headers: dict[str, str]) -> None:
                response = await post(http, proxy.url(), made_up_token(), body, **headers)
                statuses[response.status_code] += 1
                if response.status_code == 429:
                    retry_after.add(response.headers["retry-after"])

            with anyio.fail_after(DEADLINE_SECONDS):  # a bound: nothing is held open
                async with anyio.create_task_group() as flood:
                    for number in range(100):
                        flood.start_soon(one, LISTEN, MODERN_HEADERS)
                        flood.start_soon(one, set_alert(number), {"Accept": "application/json, text/event-stream"})
            checked = sandbox.control.upstream_requests() - upstream_before
            health = await http.get(pair[0].base_url + "/healthz")
        assert set(statuses) <= {401, 429} and statuses.total() == 200, statuses
        assert statuses[401] == checked <= 2 * NEW_TOKENS_PER_MINUTE  # one upstream read per token checked
        assert statuses[429] >= 200 - 2 * NEW_TOKENS_PER_MINUTE and retry_after and "0" not in retry_after
        assert health.status_code == 200
        with psycopg.connect(database_url) as db:
            assert db.execute("SELECT count(*) FROM alert_rules").fetchone() == (0,)
        async with (
            tenant_client(proxy.url(), TOKENS["real"], "2026-07-28") as client,
            client.listen(resource_subscriptions=[ALERTS_URI]),
        ):
            balance = await Caller(client).ok("get_account_balance")
    assert balance["balance"] == 900


async def test_a_token_the_service_refused_is_refused_again_without_asking_it(
    sandbox: RunningSandbox, database_url: str, tmp_path: Path
) -> None:
    """Ten requests with one made-up token cost one upstream read; each 401 says the service does not know the
    token, and none says to check TENSORFEED_TOKEN, which a hosted server does not read."""
    token = made_up_token()
    with hosted_replicas(sandbox, database_url, tmp_path, 1) as [replica]:
        before = sandbox.control.upstream_requests()
        async with httpx2.AsyncClient(timeout=DEADLINE_SECONDS) as http:
            answers = [await post(http, replica.url, token, set_alert(n), Accept="application/json") for n in range(10)]
        assert sandbox.control.upstream_requests() - before == 1
    for answer in answers:
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        description = answer.json()["error_description"]
        assert "does not recognise this token" in description and "TENSORFEED_TOKEN" not in description


async def test_two_authorization_headers_are_refused_whatever_their_order_and_pass_no_rate_limit(
    sandbox: RunningSandbox, database_url: str, tmp_path: Path
) -> None:
    """A real token beside a made-up one, in either order: 400 every time, nothing answered as either tenant,
    nothing upstream; the real token alone is still limited to its rate (5 a minute here)."""
    sandbox.control.create_account("paired", 400)
    real, fake = TOKENS["paired"], made_up_token()
    with hosted_replicas(sandbox, database_url, tmp_path, 1, TENSORFEED_MCP_TENANT_CALLS_PER_MINUTE="5") as [replica]:
        before = sandbox.control.upstream_requests()
        async with httpx2.AsyncClient(timeout=DEADLINE_SECONDS) as http:
            doubled = []
            for number in range(12):
                first, second = (real, fake) if number % 2 else (fake, real)
                doubled.append(
                    await http.post(
                        replica.url,
                        json=set_alert(number),
                        headers=[
                            ("Authorization", f"Bearer {first}"),
                            ("Authorization", f"Bearer {second}"),
                            ("Accept", "application/json, text/event-stream"),
                        ],
                    )
                )
            upstream_for_doubled = sandbox.control.upstream_requests() - before
            alone = [
                (await post(http, replica.url, real, set_alert(n), Accept="application/json, text/event-stream"))
                for n in range(7)
            ]
    for response in doubled:
        record(response.text)
        assert response.status_code == 400 and "one Authorization header" in response.json()["error_description"]
    assert upstream_for_doubled == 0
    assert [response.status_code for response in alone] == [200] * 5 + [429] * 2


async def test_a_tenant_whose_token_is_revoked_is_refused_at_the_gate_once_the_service_says_so(
    sandbox: RunningSandbox, database_url: str, tmp_path: Path
) -> None:
    sandbox.control.create_account("revoked", 300)
    token = TOKENS["revoked"]
    with hosted_replicas(sandbox, database_url, tmp_path, 1) as [replica]:
        async with tenant_client(replica.url, token, "2026-07-28") as client:
            assert (await Caller(client).ok("get_account_balance"))["balance"] == 300
        revoked = httpx2.post(sandbox.api_url + "/payment/revoke", headers={"Authorization": f"Bearer {token}"})
        assert revoked.status_code == 200
        async with tenant_client(replica.url, token, "2026-07-28") as client:
            message = await Caller(client).error("get_account_balance")  # the service says so, once
        assert "not recognised" in message
        before = sandbox.control.upstream_requests()
        async with httpx2.AsyncClient(timeout=DEADLINE_SECONDS) as http:
            again = [await post(http, replica.url, token, set_alert(n), Accept="application/json") for n in range(3)]
        assert [answer.status_code for answer in again] == [401] * 3
        assert sandbox.control.upstream_requests() == before


async def test_a_new_token_checked_while_the_service_fails_gets_a_503_and_is_checked_again_later(
    sandbox: RunningSandbox, database_url: str, tmp_path: Path
) -> None:
    sandbox.control.create_account("later", 50)
    token = TOKENS["later"]
    with hosted_replicas(sandbox, database_url, tmp_path, 1) as [replica]:
        sandbox.control.set_fault("503")
        try:
            async with httpx2.AsyncClient(timeout=DEADLINE_SECONDS) as http:
                unavailable = await post(http, replica.url, token, set_alert(1), Accept="application/json")
        finally:
            sandbox.control.clear_fault()
        assert unavailable.status_code == 503 and int(unavailable.headers["retry-after"]) >= 1
        assert "could not be asked whether it knows this token" in unavailable.json()["error_description"]
        async with tenant_client(replica.url, token, "legacy") as client:
            assert (await Caller(client).ok("get_account_balance"))["balance"] == 50


async def test_a_replica_holds_so_many_listen_streams_and_ends_each_after_its_lifetime(
    sandbox: RunningSandbox, database_url: str, tmp_path: Path
) -> None:
    """Known tenants filling MAX_LISTEN_STREAMS are refused one more (in words) while /healthz and calls are still
    served; with a lifetime of 2 s, a stream then ends gracefully on its own, and the client may listen again."""
    for name in TENANTS:
        sandbox.control.create_account(name, 100)
    with hosted_replicas(sandbox, database_url, tmp_path, 1, TENSORFEED_MCP_LISTEN_STREAM_SECONDS="2") as [replica]:
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(tenant_client(replica.url, TOKENS[name], "2026-07-28"))
                for name in TENANTS
            ]
            for number in range(MAX_LISTEN_STREAMS):
                await stack.enter_async_context(
                    clients[number // MAX_STREAMS_PER_TENANT].listen(resource_subscriptions=[ALERTS_URI])
                )
            with pytest.raises(MCPError) as refused:
                await stack.enter_async_context(clients[-1].listen(resource_subscriptions=[ALERTS_URI]))
            record(refused.value)
            assert f"already holds {MAX_LISTEN_STREAMS} listen streams" in str(refused.value)
            assert httpx2.get(replica.base_url + "/healthz", timeout=DEADLINE_SECONDS).status_code == 200
            assert (await Caller(clients[-1]).ok("get_account_balance"))["balance"] == 100
        async with tenant_client(replica.url, TOKENS[TENANTS[0]], "2026-07-28") as client:
            with anyio.fail_after(2 + DEADLINE_SECONDS):  # the lifetime is the bound under test
                async with client.listen(resource_subscriptions=[ALERTS_URI]) as stream:
                    async for _ in stream:
                        pass
                async with client.listen(resource_subscriptions=[ALERTS_URI]):
                    pass
