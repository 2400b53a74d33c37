"""The one builder of a server's settings and environment: Settings for a demo account on a sandbox, the
TENSORFEED variables that make a subprocess use them, and the clean environment a subprocess starts from."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tensorfeed_mcp.sandbox import DEMO_TOKENS
from tensorfeed_mcp.settings.environment import Settings

SANDBOX_START = datetime(2026, 5, 12, 12, 0, tzinfo=UTC)
"""Where every test's sandbox clock starts: a fixed instant (noon UTC on a Tuesday in mid-May), so no test depends on
the hour, the day or the month it runs in, and a test about 'today' cannot straddle a midnight. A test that needs a
midnight, a month end or a week moves the sandbox's clock there itself."""


class Upstream(Protocol):
    """What a server needs of a sandbox: its API URL (a RunningSandbox in process, or one in its own process)."""

    @property
    def api_url(self) -> str: ...


def settings_for(sandbox: Upstream, state_dir: Path, account: str = "busy", **overrides: Any) -> Settings:
    """Settings for one demo account on `sandbox`; tests that change upstream state turn the cache off."""
    base = Settings(
        token=DEMO_TOKENS[account],
        api_url=sandbox.api_url,
        timeout_seconds=2.0,
        cache_seconds=0.0,
        state_dir=state_dir,
    )
    return replace(base, **overrides)


def server_env(settings: Settings) -> dict[str, str]:
    """The TENSORFEED variables that make a server subprocess use `settings` (and nothing else)."""
    env = {
        "TENSORFEED_API_URL": settings.api_url,
        "TENSORFEED_TIMEOUT_SECONDS": str(settings.timeout_seconds),
        "TENSORFEED_CACHE_SECONDS": str(settings.cache_seconds),
        "TENSORFEED_MCP_STATE_DIR": str(settings.state_dir),
    }
    if settings.token:
        env["TENSORFEED_TOKEN"] = settings.token
    return env


def clean_env(settings: Settings | None = None, /, **extra: str) -> dict[str, str]:
    """This process's environment without any TENSORFEED setting, plus those of `settings` and the `extra`
    variables: what a subprocess that must not see a stray setting (or a real token) gets."""
    base = {name: value for name, value in os.environ.items() if not name.startswith("TENSORFEED")}
    return base | (server_env(settings) if settings is not None else {}) | extra


def replica_env(
    api_url: str, database_url: str | None = None, state_dir: Path | None = None, **extra: str
) -> dict[str, str]:
    """A clean environment for a hosted replica: the sandbox's URL, the shared store (PostgreSQL at `database_url`,
    else SQLite in `state_dir`) and `extra` variables."""
    env = {"TENSORFEED_API_URL": api_url}
    if database_url is not None:
        env["TENSORFEED_MCP_DATABASE_URL"] = database_url
    if state_dir is not None:
        env["TENSORFEED_MCP_STATE_DIR"] = str(state_dir)
    return clean_env(**(env | extra))
