"""The command line as users and cron run it: the installed console script in a subprocess, and its exit codes."""

from __future__ import annotations

import subprocess

from tests.support.env import clean_env
from tests.support.records import record
from tests.support.servers import console_script

EXIT_OK, EXIT_TRIGGERED, EXIT_CANNOT_RUN = 0, 1, 2


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the console script with a clean environment plus `env`; record everything it printed."""
    done = subprocess.run(
        [console_script(), *args], env=clean_env(**(env or {})), capture_output=True, text=True, timeout=timeout
    )
    record(done.stdout)
    record(done.stderr)
    return done
