"""The hosted mode under many tenants: sandbox accounts, each read and guarded by its own MCP client, through two
replicas sharing PostgreSQL behind the round-robin proxy, and through one replica on SQLite."""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench.measurements import summary_ms
from bench.processes import Sandbox
from tensorfeed_mcp.sandbox import SandboxControl, sandbox_token
from tensorfeed_mcp.settings.identity import mask_token
from tests.support.clients import tenant_client
from tests.support.env import replica_env
from tests.support.postgres import running_postgres
from tests.support.servers import ServerProcess, running_proxy, running_replicas

TENANTS = 200
CONCURRENT_TENANTS = 50
# One tenant's session: set a rule, then the reads a host makes while the model works; 10 calls.
CALLS = (
    "set_spend_alert",
    "get_account_balance",
    "get_account_usage",
    "check_spend_alerts",
    "get_spend_cap",
    "get_account_balance",
    "get_account_usage",
    "check_spend_alerts",
    "get_spend_cap",
    "get_account_balance",
)
ERAS = ("legacy", "2026-07-28")  # tenant i speaks ERAS[i % 2]: the 2025 handshake (today's hosts), or sessionless
RULE = "floor"
ENDPOINT, CREDITS = "/api/premium/agents/directory", 5
# Set high so the figure is throughput, not the per-tenant limit; the cache keeps its default (5 seconds).
SETTINGS = {"TENSORFEED_MCP_TENANT_CALLS_PER_MINUTE": "1000000"}


@dataclass(frozen=True)
class Tenant:
    """A sandbox account as its tenant's answers must describe it."""

    name: str
    era: str
    balance: int
    daily_cap: int | None
    threshold: float  # of its balance_below rule: half the tenants' rules are triggered

    @property
    def token(self) -> str:
        return sandbox_token(self.name)


def create_tenants(control: SandboxControl, count: int, prefix: str = "hosted") -> list[Tenant]:
    """`count` new accounts with distinct balances, a few calls each and a daily cap on two in three."""
    tenants = []
    for number in range(count):
        name = f"{prefix}-{number:03d}"
        control.create_account(name, 10_000 + 37 * number, 500 + number if number % 3 else None)
        control.add_calls(name, ENDPOINT, CREDITS, count=1 + number % 5)
        account = control.account(name)
        balance = account["balance"]
        threshold = float(balance + 100 if number % 2 else balance - 100)
        tenants.append(Tenant(name, ERAS[number % 2], balance, account["daily_cap"], threshold))
    return tenants


def arguments(tool: str, tenant: Tenant) -> dict[str, Any]:
    if tool == "set_spend_alert":
        return {"kind": "balance_below", "threshold": tenant.threshold, "name": RULE}
    return {}


def is_own_answer(tool: str, answer: dict[str, Any], tenant: Tenant) -> bool:
    """Whether `answer` describes `tenant` alone: its masked token, balance and cap, and its one alert rule."""
    if tool == "set_spend_alert":
        own: bool = answer["rule"]["threshold"] == tenant.threshold and answer["rule_count"] == 1
        return own
    balance = answer["token_balance" if tool == "get_account_usage" else "balance"]
    own = answer["token"] == mask_token(tenant.token) and balance == tenant.balance
    if tool == "get_spend_cap":
        own = own and answer["daily_cap"] == tenant.daily_cap
    if tool == "check_spend_alerts":
        own = own and [(alert["name"], alert["threshold"]) for alert in answer["alerts"]] == [(RULE, tenant.threshold)]
    return own


async def sessions(url: str, tenants: Sequence[Tenant], concurrent: int) -> dict[str, Any]:
    """Every tenant's CALLS through its own client at `url`, `concurrent` tenants at a time. Each client lists the
    tools first (as a host does) and opens a new connection per request, so behind the proxy a tenant's requests
    go to both replicas, as a load balancer that balances requests would send them."""
    latencies: list[float] = []
    errors: list[str] = []
    wrong_tenant = 0
    waiting = iter(tenants)

    async def session(tenant: Tenant) -> None:
        nonlocal wrong_tenant
        async with tenant_client(url, tenant.token, tenant.era, new_connection_each_request=True) as client:
            await client.list_tools()
            for tool in CALLS:
                started = time.perf_counter()
                result = await client.call_tool(tool, arguments(tool, tenant))
                latencies.append(time.perf_counter() - started)
                if result.is_error or result.structured_content is None:
                    errors.append("error result")
                elif not is_own_answer(tool, result.structured_content, tenant):
                    wrong_tenant += 1

    async def worker() -> None:
        for tenant in waiting:
            try:
                await session(tenant)
            except Exception as exc:  # a failed session is an error to report; its type only, never its text
                errors.append(type(exc).__name__)

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(concurrent):
            group.start_soon(worker)
    wall = time.perf_counter() - started
    return {
        "completed": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "wrong_tenant": wrong_tenant,
        "wall_s": wall,
        "throughput_calls_per_s": len(latencies) / wall,
        **summary_ms(latencies),
        "latencies_s": latencies,
    }


def cpu_seconds(roots: Collection[int]) -> float:
    """CPU time (user and system) used so far by the processes `roots` and their descendants, ended ones included:
    a process's stat counts the children it has waited for."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it has just ended
            continue
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = sum(int(value) for value in fields[11:15])

    def in_trees(pid: int) -> bool:
        while pid not in roots and pid in parents:
            pid = parents[pid]
        return pid in roots

    return sum(used for pid, used in ticks.items() if in_trees(pid)) / os.sysconf("SC_CLK_TCK")


def postgres_processes(port: int) -> list[int]:
    """The PIDs of the processes started to run the PostgreSQL server on `port`: their command line names it."""
    wanted = f"--port={port}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and wanted in (entry / "cmdline").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # ended meanwhile
            continue
    return found


def measure(
    sb: Sandbox,
    setup: str,
    replicas: Sequence[ServerProcess],
    url: str,
    tenants: Sequence[Tenant],
    servers: dict[str, list[int]],
) -> dict[str, Any]:
    """One warm-up session on each replica directly (a tenant of its own), then the measured sessions through `url`,
    with the sandbox's request count reset in between. The CPU time of this process (the clients) and of each of
    `servers` (PIDs by role, with their descendants) is taken over the measured sessions."""
    warm_up = create_tenants(sb.control, len(replicas), prefix=f"warm-up-{setup}")
    for replica, tenant in zip(replicas, warm_up, strict=True):
        anyio.run(sessions, replica.url, [tenant], 1)
    sb.control.reset_stats()
    roles = {"replicas": [replica.process.pid for replica in replicas], **servers}
    before = {"client": time.process_time()} | {role: cpu_seconds(pids) for role, pids in roles.items()}
    figures = anyio.run(sessions, url, tenants, CONCURRENT_TENANTS)
    after = {"client": time.process_time()} | {role: cpu_seconds(pids) for role, pids in roles.items()}
    upstream = sb.control.upstream_requests()
    calls = len(tenants) * len(CALLS)
    return {
        "replicas": len(replicas),
        **figures,
        "upstream_requests": upstream,
        "upstream_per_call": upstream / calls,
        "cpu_ms_per_call": {role: 1000 * (after[role] - before[role]) / calls for role in before},
    }


def logs(folder: Path, setup: str, count: int) -> list[Path]:
    return [folder / f"{setup}-replica-{number}.log" for number in range(count)]


def hosted(sb: Sandbox, work: Path) -> dict[str, Any]:
    """TENANTS tenants x CALLS through two replicas on PostgreSQL behind the proxy, then through one on SQLite."""
    tenants = create_tenants(sb.control, TENANTS)
    sandbox = {"sandbox": [sb.pid]}
    with (
        running_postgres() as server,
        server.database() as database_url,
        running_replicas(replica_env(sb.api_url, database_url) | SETTINGS, logs(work, "postgres", 2)) as pair,
        running_proxy([replica.port for replica in pair]) as proxy,
    ):
        servers = {"postgres": postgres_processes(server.port), **sandbox}
        postgres = measure(sb, "postgres", pair, proxy.url(), tenants, servers)
        postgres["connections_per_replica"] = [proxy.served[replica.port] for replica in pair]
    sqlite_env = replica_env(sb.api_url, state_dir=work) | SETTINGS
    with running_replicas(sqlite_env, logs(work, "sqlite", 1)) as single:
        sqlite = measure(sb, "sqlite", single, single[0].url, tenants, sandbox)
    return {
        "tenants": TENANTS,
        "calls_each": len(CALLS),
        "calls": list(CALLS),
        "concurrent_tenants": CONCURRENT_TENANTS,
        "eras": list(ERAS),
        "cores": os.cpu_count(),
        "postgres_two_replicas": postgres,
        "sqlite_one_replica": sqlite,
    }
