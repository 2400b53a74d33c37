"""Tools from npm that the tests run (the MCP conformance suite, Claude Code's CLI): pinned, installed once into
.cache/, and reused by later runs without the network."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

INSTALL_SECONDS = 600


def run_or_fail(
    command: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `command` without stdin, its output captured as text; one that outlives `timeout` fails the test with
    what it printed so far."""
    try:
        return subprocess.run(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        printed = _text(exc.stdout) + _text(exc.stderr)
        pytest.fail(f"{' '.join(command[:4])} took over {timeout:g} s:\n{printed}", pytrace=False)


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def install_pinned(folder: Path, package_json: dict[str, Any], problem: Callable[[Path], str | None]) -> None:
    """Make `folder` hold a working install: keep it when `problem(folder)` finds none, else npm-install
    `package_json` into a staging folder beside it, check that, and move it in (atomically, so a test run that
    stops half-way leaves no broken install behind)."""
    if problem(folder) is None:
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not on PATH: install Node.js and npm (apt-get install nodejs npm).", pytrace=False)
    shutil.rmtree(folder, ignore_errors=True)  # a broken or outdated earlier install
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}.partial-", dir=folder.parent))
    staging.chmod(0o755)
    try:
        (staging / "package.json").write_text(json.dumps(package_json, indent=2) + "\n")
        command = [npm, "install", "--no-audit", "--no-fund", "--no-update-notifier"]
        done = run_or_fail(command, cwd=staging, timeout=INSTALL_SECONDS)
        staged = problem(staging)
        if done.returncode != 0 or staged is not None:
            printed = done.stdout + done.stderr
            pytest.fail(f"npm install failed (exit {done.returncode}; {staged}):\n{printed}", pytrace=False)
        with contextlib.suppress(OSError):  # another test run may have installed it meanwhile
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    assert problem(folder) is None, problem(folder)
