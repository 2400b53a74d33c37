"""The four measurements. Each returns plain data (seconds, counts, MiB) for results.json and the report."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import anyio
import httpx2
from mcp import Client

from bench.processes import TOKEN, Sandbox, child_running, http_server, resident_mb, server_env, stdio_server
from tests.support.servers import SERVER

PYTHON = sys.executable

BARE_SERVER = [PYTHON, str(Path(__file__).with_name("bare_server.py"))]
TOOL = "get_account_balance"


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def summary_ms(samples: list[float]) -> dict[str, float]:
    """p50 and p99 of samples in seconds, as milliseconds."""
    return {"p50_ms": 1000 * statistics.median(samples), "p99_ms": 1000 * percentile(samples, 99)}


# Cold start -------------------------------------------------------------------------------------------------


def _send(stdin: IO[bytes], message: dict[str, Any]) -> None:
    stdin.write(json.dumps(message).encode() + b"\n")
    stdin.flush()


def _await_response(stdout: IO[bytes], request_id: int) -> None:
    for line in stdout:
        if json.loads(line).get("id") == request_id:
            return
    raise RuntimeError("the server closed stdout before answering")


def cold_start_once(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds from spawn to the initialize result, and to the tools/list result, over raw JSON-RPC on stdio."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    client_info = {"name": "bench", "version": "1"}
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client_info}
    _send(process.stdin, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
    _await_response(process.stdout, 1)
    initialized = time.perf_counter() - started
    _send(process.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    _send(process.stdin, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    _await_response(process.stdout, 2)
    listed = time.perf_counter() - started
    process.stdin.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    return initialized, listed


def cold_start(env: dict[str, str], runs: int) -> dict[str, Any]:
    """Ours and the bare server, both as `python <module or file>`, interleaved, after one warm-up each."""
    commands = {"tensorfeed_mcp": SERVER, "bare_mcpserver": BARE_SERVER}
    for command in commands.values():
        cold_start_once(command, env)
    samples: dict[str, dict[str, list[float]]] = {name: {"initialize": [], "tools_list": []} for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            initialized, listed = cold_start_once(command, env)
            samples[name]["initialize"].append(initialized)
            samples[name]["tools_list"].append(listed)
    medians = {name: {step: statistics.median(values) for step, values in by.items()} for name, by in samples.items()}
    ratio = {
        step: medians["tensorfeed_mcp"][step] / medians["bare_mcpserver"][step] for step in ("initialize", "tools_list")
    }
    return {"runs": runs, "median_s": medians, "ratio": ratio, "samples_s": samples}


def import_profile() -> dict[str, Any]:
    """What our modules add to the SDK's own import time (`python -X importtime`), biggest first."""

    def self_times(code: str) -> dict[str, int]:
        done = subprocess.run([PYTHON, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
        times = {}
        for line in done.stderr.splitlines():
            if line.startswith("import time:") and "self [us]" not in line:
                self_us, _cumulative, module = line.removeprefix("import time:").split("|")
                times[module.strip()] = int(self_us)
        return times

    sdk = self_times("import mcp.server")
    ours = self_times("import tensorfeed_mcp.cli, tensorfeed_mcp.surface.server")
    added = sorted(((us, name) for name, us in ours.items() if name not in sdk), reverse=True)
    return {
        "sdk_total_ms": sum(sdk.values()) / 1000,
        "ours_total_ms": sum(ours.values()) / 1000,
        "added_ms": sum(us for us, _ in added) / 1000,
        "added_top": [{"module": name, "self_ms": us / 1000} for us, name in added[:10]],
    }


# Per-call overhead ------------------------------------------------------------------------------------------


async def per_call(sb: Sandbox, state_dir: Path, calls: int, warmup: int = 30) -> dict[str, Any]:
    """The same balance read directly with httpx2, via MCP over stdio and via streamable HTTP, interleaved."""
    env = server_env(sb, state_dir, cache_seconds=0)
    with http_server(env) as url:
        async with (
            stdio_server(env) as stdio,
            Client(url) as http,
            stdio_server(env, BARE_SERVER) as floor,
            httpx2.AsyncClient(base_url=sb.api_url + "/", headers={"Authorization": f"Bearer {TOKEN}"}) as direct,
        ):

            async def via_direct() -> None:
                (await direct.get("payment/balance")).raise_for_status()

            def via(client: Client, tool: str) -> Callable[[], Awaitable[None]]:
                async def call() -> None:
                    if (await client.call_tool(tool, {})).is_error:
                        raise RuntimeError(f"{tool} failed during the benchmark")

                return call

            paths = {
                "direct_httpx2": via_direct,
                "mcp_stdio": via(stdio, TOOL),
                "mcp_http": via(http, TOOL),
                "bare_stdio_ping": via(floor, "ping"),
            }
            samples: dict[str, list[float]] = {name: [] for name in paths}
            for round_number in range(warmup + calls):
                for name, call in paths.items():
                    started = time.perf_counter()
                    await call()
                    if round_number >= warmup:
                        samples[name].append(time.perf_counter() - started)
    stats = {name: summary_ms(values) for name, values in samples.items()}
    direct_p50 = stats["direct_httpx2"]["p50_ms"]
    for name in ("mcp_stdio", "mcp_http"):
        stats[name]["overhead_p50_ms"] = stats[name]["p50_ms"] - direct_p50
        stats[name]["ratio_p50"] = stats[name]["p50_ms"] / direct_p50
    return {"calls": calls, "warmup": warmup, "stats": stats, "samples_s": samples}


# Burst ------------------------------------------------------------------------------------------------------


async def burst(sb: Sandbox, state_dir: Path, clients: int, calls_each: int) -> dict[str, Any]:
    """`clients` connected clients start together and each makes `calls_each` calls; the default cache is on."""
    latencies: list[float] = []
    errors: list[str] = []
    with http_server(server_env(sb, state_dir, cache_seconds=None)) as url:
        connected = 0
        go = anyio.Event()

        async def client_session() -> None:
            nonlocal connected
            try:
                async with Client(url) as client:
                    connected += 1
                    if connected == clients:
                        go.set()
                    await go.wait()
                    for _ in range(calls_each):
                        started = time.perf_counter()
                        result = await client.call_tool(TOOL, {})
                        latencies.append(time.perf_counter() - started)
                        if result.is_error:
                            errors.append("error result")
            except Exception as exc:  # a failed connection is an error to report, not a crash of the benchmark
                errors.append(type(exc).__name__)
                go.set()

        before = sb.control.upstream_requests()
        async with anyio.create_task_group() as group:
            for _ in range(clients):
                group.start_soon(client_session)
            await go.wait()
            started = time.perf_counter()
        wall = time.perf_counter() - started
        upstream = sb.control.upstream_requests() - before
    total = clients * calls_each
    return {
        "clients": clients,
        "calls_each": calls_each,
        "completed": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "wall_s": wall,
        "throughput_calls_per_s": len(latencies) / wall,
        **summary_ms(latencies),
        "upstream_requests": upstream,
        "upstream_per_call": upstream / total,
        "latencies_s": latencies,
    }


# Memory -----------------------------------------------------------------------------------------------------


async def memory(sb: Sandbox, state_dir: Path, calls: int) -> dict[str, Any]:
    """Resident size of the stdio server after start-up and its first call, and after `calls` more (cache off)."""
    async with stdio_server(server_env(sb, state_dir, cache_seconds=0)) as client:
        await client.call_tool(TOOL, {})
        pid = child_running(SERVER)
        after_start = resident_mb(pid)
        checkpoints = []
        for done in range(1, calls + 1):
            if (await client.call_tool(TOOL, {})).is_error:
                raise RuntimeError(f"{TOOL} failed during the benchmark")
            if done % 1000 == 0:
                checkpoints.append({"calls": done, "rss_mb": resident_mb(pid)})
    after = checkpoints[-1]["rss_mb"]
    return {
        "calls": calls,
        "rss_after_start_mb": after_start,
        "rss_after_calls_mb": after,
        "growth_mb": after - after_start,
        "checkpoints": checkpoints,
    }


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "mcp": version("mcp"),
        "httpx2": version("httpx2"),
        "os": platform.platform(),
    }
