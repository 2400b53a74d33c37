"""Settings from the environment, and the only places the token is handled as text."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tensorfeed_mcp.alerts import make_rule
from tensorfeed_mcp.errors import ConfigurationError, InvalidInputError, TokenFormatError, TokenMissingError
from tensorfeed_mcp.models import AlertRule

DEFAULT_API_URL = "https://tensorfeed.ai/api"
TOKEN_PREFIX = "tf_live_"
MIN_ALERT_POLL_SECONDS = 30.0

# Environment variable -> alert kind, for rules that come from the environment.
ENV_ALERT_RULES: dict[str, str] = {
    "TENSORFEED_ALERT_BALANCE_BELOW": "balance_below",
    "TENSORFEED_ALERT_DAILY_SPEND_ABOVE": "daily_spend_above",
    "TENSORFEED_ALERT_DAILY_CAP_PCT_ABOVE": "daily_cap_used_pct_above",
    "TENSORFEED_ALERT_RUNWAY_BELOW_HOURS": "runway_below_hours",
}


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to know, read once at start."""

    token: str | None = field(default=None, repr=False)
    api_url: str = DEFAULT_API_URL
    timeout_seconds: float = 10.0
    cache_seconds: float = 5.0
    state_dir: Path | None = None
    alert_poll_seconds: float | None = None
    env_alert_rules: tuple[AlertRule, ...] = ()
    mcp_auth_token: str | None = field(default=None, repr=False)

    @property
    def deadline_seconds(self) -> float:
        """The most one tool call may spend on upstream requests, retries and waits included."""
        return 2 * self.timeout_seconds

    def resolved_state_dir(self) -> Path:
        """Where alert rules live: TENSORFEED_MCP_STATE_DIR, else the platform's user state folder."""
        if self.state_dir is not None:
            return self.state_dir
        import platformdirs  # deferred: only alert tools need it

        return Path(platformdirs.user_state_dir("tensorfeed-mcp", appauthor=False))

    def require_token(self) -> str:
        """The token, or a ConfigurationError that says how to get one right. Nothing is sent first."""
        if not self.token:
            raise TokenMissingError()
        if not self.token.startswith(TOKEN_PREFIX):
            raise TokenFormatError()
        return self.token


def _number(environ: Mapping[str, str], name: str, default: float | None, *, minimum: float) -> float | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number; give a number of at least {minimum:g}.") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigurationError(f"{name}={raw!r} is out of range; give a finite number of at least {minimum:g}.")
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read Settings from the environment; a malformed value raises ConfigurationError naming it."""
    env = os.environ if environ is None else environ
    poll = _number(env, "TENSORFEED_ALERT_POLL_SECONDS", None, minimum=0)
    if poll == 0:
        poll = None
    elif poll is not None and poll < MIN_ALERT_POLL_SECONDS:
        raise ConfigurationError(
            f"TENSORFEED_ALERT_POLL_SECONDS={poll:g} is too frequent; use 0 (off) or at least "
            f"{MIN_ALERT_POLL_SECONDS:g} seconds."
        )
    rules: list[AlertRule] = []
    for name, kind in ENV_ALERT_RULES.items():
        raw = env.get(name, "").strip()
        if raw:
            try:
                rules.append(make_rule(kind, float(raw), source="env"))
            except (ValueError, InvalidInputError) as exc:
                reason = exc if isinstance(exc, InvalidInputError) else "it is not a number"
                raise ConfigurationError(f"{name}={raw!r} is not a usable alert threshold: {reason}") from None
    state_dir = env.get("TENSORFEED_MCP_STATE_DIR", "").strip()
    return Settings(
        token=env.get("TENSORFEED_TOKEN", "").strip() or None,
        api_url=(env.get("TENSORFEED_API_URL", "").strip() or DEFAULT_API_URL).rstrip("/"),
        timeout_seconds=_number(env, "TENSORFEED_TIMEOUT_SECONDS", 10.0, minimum=0.1) or 10.0,
        cache_seconds=_number(env, "TENSORFEED_CACHE_SECONDS", 5.0, minimum=0) or 0.0,
        state_dir=Path(state_dir).expanduser() if state_dir else None,
        alert_poll_seconds=poll,
        env_alert_rules=tuple(rules),
        mcp_auth_token=env.get("TENSORFEED_MCP_AUTH_TOKEN", "").strip() or None,
    )


def mask_token(token: str) -> str:
    """The token as it may be shown: its first 12 and last 4 characters."""
    if len(token) <= 20:
        return token[:8] + "…"
    return f"{token[:12]}…{token[-4:]}"


def token_fingerprint(token: str) -> str:
    """A stable key for local state that cannot be turned back into the token."""
    return hashlib.sha256(b"tensorfeed-mcp:" + token.encode()).hexdigest()[:24]
