"""Run every measurement against a sandbox, then write bench/results.json and BENCHMARKS.md."""

from __future__ import annotations

import compileall
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

import tensorfeed_mcp
from bench import measurements
from bench.processes import sandbox, server_env
from bench.report import render

ROOT = Path(__file__).resolve().parent.parent
COLD_START_RUNS = 21
PER_CALL_CALLS = 500
BURST_CLIENTS, BURST_CALLS_EACH = 100, 10
MEMORY_CALLS = 5000


def run() -> dict[str, Any]:
    started = time.perf_counter()
    # An installed package has bytecode; an editable install under PYTHONDONTWRITEBYTECODE would recompile
    # every module at each start. Measure what users run.
    compileall.compile_dir(Path(tensorfeed_mcp.__file__).parent, quiet=1)
    results: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": measurements.machine()}
    with tempfile.TemporaryDirectory(prefix="tensorfeed-bench-") as state, sandbox() as sb:
        state_dir = Path(state)
        print("cold start …", flush=True)
        results["cold_start"] = measurements.cold_start(server_env(sb.api_url, state_dir, None), COLD_START_RUNS)
        results["imports"] = measurements.import_profile()
        print("per-call overhead …", flush=True)
        results["per_call"] = anyio.run(measurements.per_call, sb, state_dir, PER_CALL_CALLS)
        print("burst …", flush=True)
        results["burst"] = anyio.run(measurements.burst, sb, state_dir, BURST_CLIENTS, BURST_CALLS_EACH)
        print("memory …", flush=True)
        results["memory"] = anyio.run(measurements.memory, sb, state_dir, MEMORY_CALLS)
    results["duration_s"] = time.perf_counter() - started
    return results


def main() -> None:
    results = run()
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = render(results)
    (ROOT / "BENCHMARKS.md").write_text(report)
    print(report.split("## Cold start")[0])


if __name__ == "__main__":
    main()
