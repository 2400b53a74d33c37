"""Run the measurements against a sandbox. All of them (the default) write bench/results.json and BENCHMARKS.md;
a selection (`python -m bench context`) only prints its figures and writes nothing."""

from __future__ import annotations

import argparse
import compileall
import json
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

import tensorfeed_mcp
from bench import measurements
from bench.context import context_cost
from bench.hosted import hosted
from bench.ledger import ledger_at_scale
from bench.processes import sandbox, server_env
from bench.report import context_section, hosted_section, ledger_section, render

ROOT = Path(__file__).resolve().parent.parent
COLD_START_RUNS = 21
PER_CALL_CALLS = 500
BURST_CLIENTS, BURST_CALLS_EACH = 100, 10
MEMORY_CALLS = 5000
SECTIONS = ("cold_start", "per_call", "burst", "memory", "context", "ledger", "hosted")
RENDERED = {"context": context_section, "ledger": ledger_section, "hosted": hosted_section}  # printed as reported
SAMPLE_KEYS = {"samples_s", "latencies_s"}  # left out when a selection's figures are printed


def run(sections: Sequence[str] = SECTIONS) -> dict[str, Any]:
    """The results of `sections` (cold_start includes the import profile), with the date, machine and duration."""
    started = time.perf_counter()
    # An installed package has bytecode; an editable install under PYTHONDONTWRITEBYTECODE would recompile
    # every module at each start. Measure what users run.
    compileall.compile_dir(Path(tensorfeed_mcp.__file__).parent, quiet=1)
    results: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": measurements.machine()}
    with tempfile.TemporaryDirectory(prefix="tensorfeed-bench-") as state, sandbox() as sb:
        state_dir = Path(state)
        if "cold_start" in sections:
            print("cold start …", flush=True)
            results["cold_start"] = measurements.cold_start(server_env(sb, state_dir, None), COLD_START_RUNS)
            results["imports"] = measurements.import_profile()
        if "per_call" in sections:
            print("per-call overhead …", flush=True)
            results["per_call"] = anyio.run(measurements.per_call, sb, state_dir, PER_CALL_CALLS)
        if "burst" in sections:
            print("burst …", flush=True)
            results["burst"] = anyio.run(measurements.burst, sb, state_dir, BURST_CLIENTS, BURST_CALLS_EACH)
        if "memory" in sections:
            print("memory …", flush=True)
            results["memory"] = anyio.run(measurements.memory, sb, state_dir, MEMORY_CALLS)
        if "context" in sections:
            print("context cost …", flush=True)
            results["context"] = anyio.run(context_cost, sb)
        if "ledger" in sections:
            print("ledger at scale …", flush=True)
            with tempfile.TemporaryDirectory(prefix="tensorfeed-bench-ledger-") as ledger_state:
                results["ledger"] = anyio.run(ledger_at_scale, sb, Path(ledger_state))
        if "hosted" in sections:
            print("hosted, many tenants …", flush=True)
            with tempfile.TemporaryDirectory(prefix="tensorfeed-bench-hosted-") as hosted_state:
                results["hosted"] = hosted(sb, Path(hosted_state))
    results["duration_s"] = time.perf_counter() - started
    return results


def print_selection(results: dict[str, Any], sections: Sequence[str]) -> None:
    """Print the selected sections: those in RENDERED as in the report, the others as JSON without samples."""
    for section in sections:
        if section in RENDERED:
            print("\n".join(RENDERED[section](results[section])))
            continue
        for key in (section, "imports") if section == "cold_start" else (section,):
            figures = {name: value for name, value in results[key].items() if name not in SAMPLE_KEYS}
            print(f"{key}: {json.dumps(figures, indent=1)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="section",
        help=f"any of {', '.join(SECTIONS)}; all by default, and only then are the report and results.json written",
    )
    chosen = parser.parse_args(argv).sections
    # Checked here: argparse's `choices` rejects the empty list of nargs="*" before Python 3.12.
    if unknown := sorted(set(chosen) - set(SECTIONS)):
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    sections = [section for section in SECTIONS if section in chosen] or list(SECTIONS)
    results = run(sections)
    if len(sections) < len(SECTIONS):
        print_selection(results, sections)
        print("(a selection: BENCHMARKS.md and bench/results.json were not written)")
        return
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = render(results)
    (ROOT / "BENCHMARKS.md").write_text(report)
    print(report.split("## Cold start")[0])


if __name__ == "__main__":
    main()
