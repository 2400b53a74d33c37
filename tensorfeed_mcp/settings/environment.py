"""Settings from the environment: each variable parsed and checked once, at start, with an error that names it and
says what is accepted. What a URL or a token may be is decided in policy and identity."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

from tensorfeed_mcp.core.alerts import ALERT_KINDS, make_rule
from tensorfeed_mcp.errors import ConfigurationError, InvalidInputError, shown
from tensorfeed_mcp.models import AlertRule
from tensorfeed_mcp.settings.policy import checked_database_url, checked_webhook_url, is_loopback, url_parts

DEFAULT_API_URL = "https://tensorfeed.ai/api"
# Numeric settings: ASCII digits only (int() and float() also read other scripts' digits, float() "1e3", "inf" and
# "1_0"), a decimal point where decimals make sense, and an upper bound that catches a typo long before a value could
# overflow anything.
WHOLE_NUMBER = re.compile(r"[0-9]+")
DECIMAL_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")
MIN_ALERT_POLL_SECONDS = 30.0
MAX_ALERT_POLL_SECONDS = 24 * 3600.0
MAX_TIMEOUT_SECONDS = 120.0
MAX_CACHE_SECONDS = 3600.0
DEFAULT_MAX_SESSIONS = 32
MAX_SESSIONS = 1_000
DEFAULT_SESSION_IDLE_SECONDS = 30 * 60.0
MAX_SESSION_IDLE_SECONDS = 24 * 3600.0
DEFAULT_LEDGER_CALL_DAYS = 90
MIN_LEDGER_CALL_DAYS = 7
MAX_LEDGER_CALL_DAYS = 3_650
DEFAULT_TENANT_CALLS_PER_MINUTE = 120
MAX_TENANT_CALLS_PER_MINUTE = 10_000
DEFAULT_NEW_TOKENS_PER_MINUTE = 60
MAX_NEW_TOKENS_PER_MINUTE = 10_000
DEFAULT_LISTEN_STREAM_SECONDS = 600.0
MAX_LISTEN_STREAM_SECONDS = 24 * 3600.0
WebhookFormat = Literal["slack", "discord", "json"]
LogFormat = Literal["text", "json"]
WEBHOOK_FORMATS: tuple[str, ...] = get_args(WebhookFormat)


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
    max_sessions: int = DEFAULT_MAX_SESSIONS
    session_idle_seconds: float = DEFAULT_SESSION_IDLE_SECONDS
    alert_webhook_url: str | None = field(default=None, repr=False)
    alert_webhook_format: WebhookFormat = "json"
    ledger_call_days: int = DEFAULT_LEDGER_CALL_DAYS
    database_url: str | None = field(default=None, repr=False)
    multi_tenant: bool = False
    log_format: LogFormat = "text"
    tenant_calls_per_minute: int = DEFAULT_TENANT_CALLS_PER_MINUTE
    new_tokens_per_minute: int = DEFAULT_NEW_TOKENS_PER_MINUTE
    listen_stream_seconds: float = DEFAULT_LISTEN_STREAM_SECONDS

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


def _decimal(raw: str) -> float:
    """`raw` as a number if it is ASCII digits with at most one decimal point, else InvalidInputError."""
    if not DECIMAL_NUMBER.fullmatch(raw):
        raise InvalidInputError("give a number in digits, with at most one decimal point.")
    return float(raw)


def _number(
    environ: Mapping[str, str], name: str, default: float | None, *, minimum: float, maximum: float
) -> float | None:
    """A decimal setting from `minimum` to `maximum`, or `default` when it is empty."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = _decimal(raw)
    except InvalidInputError:
        value = math.nan
    if not minimum <= value <= maximum:
        raise ConfigurationError(
            f"{name}={shown(raw, 20)} is not accepted; give a number from {minimum:,g} to {maximum:,g} "
            "(digits, with at most one decimal point)."
        )
    return value


def _token(environ: Mapping[str, str]) -> str | None:
    """The token with surrounding whitespace dropped; one with whitespace or control characters inside is refused."""
    token = environ.get("TENSORFEED_TOKEN", "").strip()
    if any(char.isspace() or not char.isprintable() for char in token):
        raise ConfigurationError(
            "TENSORFEED_TOKEN contains spaces, line breaks or other control characters (often from a bad paste), "
            "so it was not used. Paste the token again as one line: tf_live_ followed by 64 hex characters."
        )
    return token or None


def _api_url(environ: Mapping[str, str]) -> str:
    """TENSORFEED_API_URL checked: http(s), a host, a valid port, and TLS unless the host is this machine."""
    raw = environ.get("TENSORFEED_API_URL", "").strip() or DEFAULT_API_URL
    shown = raw if len(raw) <= 80 else raw[:80] + "…"
    example = DEFAULT_API_URL
    parts = url_parts("TENSORFEED_API_URL", raw, shown, example)
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"TENSORFEED_API_URL={shown!r} must not have a query or fragment. Give an address like {example}."
        )
    insecure_allowed = environ.get("TENSORFEED_ALLOW_INSECURE_HTTP", "").strip() == "1"
    if parts.scheme == "http" and not is_loopback(parts.hostname or "") and not insecure_allowed:
        raise ConfigurationError(
            f"TENSORFEED_API_URL={shown!r} uses plain http to another machine, so the token would cross the "
            "network unencrypted. Use https://, or set TENSORFEED_ALLOW_INSECURE_HTTP=1 if you really mean it."
        )
    return raw.rstrip("/")


def webhook_format(url: str, raw: str) -> WebhookFormat:
    """TENSORFEED_ALERT_WEBHOOK_FORMAT, or when it is empty the format the URL's host expects."""
    value = raw.strip().lower()
    if value in WEBHOOK_FORMATS:
        return value  # type: ignore[return-value]
    if value:
        raise ConfigurationError(
            f"TENSORFEED_ALERT_WEBHOOK_FORMAT={raw[:20]!r} is not a format; use one of: {', '.join(WEBHOOK_FORMATS)}."
        )
    host = (urlsplit(url).hostname or "").lower()
    if host == "hooks.slack.com":
        return "slack"
    if host in ("discord.com", "discordapp.com"):
        return "discord"
    return "json"


def _count(environ: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    """A whole-number setting from `minimum` to `maximum`, or `default` when it is empty."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    # More digits than the maximum has is out of range, and int() is never given thousands of them (it refuses those).
    in_range = WHOLE_NUMBER.fullmatch(raw) and len(raw.lstrip("0")) <= len(str(maximum))
    if not in_range or not minimum <= int(raw) <= maximum:
        raise ConfigurationError(
            f"{name}={shown(raw, 20)} is not accepted; give a whole number from {minimum:,} to {maximum:,} "
            "(digits only)."
        )
    return int(raw)


def _poll_seconds(env: Mapping[str, str]) -> float | None:
    """TENSORFEED_POLL_SECONDS (the watcher both records the ledger and checks alerts; the old name
    TENSORFEED_ALERT_POLL_SECONDS still works): None when off."""
    poll_variable = (
        "TENSORFEED_POLL_SECONDS" if env.get("TENSORFEED_POLL_SECONDS", "").strip() else "TENSORFEED_ALERT_POLL_SECONDS"
    )
    poll = _number(env, poll_variable, None, minimum=0, maximum=MAX_ALERT_POLL_SECONDS)
    if poll == 0:
        return None
    if poll is not None and poll < MIN_ALERT_POLL_SECONDS:
        raise ConfigurationError(
            f"{poll_variable}={poll:g} is too frequent; use 0 (off) or at least {MIN_ALERT_POLL_SECONDS:g} seconds."
        )
    return poll


def _env_alert_rules(env: Mapping[str, str]) -> tuple[AlertRule, ...]:
    """The rules set by each alert kind's environment variable (see core.alerts.ALERT_KINDS)."""
    rules: list[AlertRule] = []
    for kind in ALERT_KINDS.values():
        name = kind.env_variable
        raw = env.get(name, "").strip()
        if raw:
            try:
                rules.append(make_rule(kind.name, _decimal(raw), source="env"))
            except InvalidInputError as exc:
                raise ConfigurationError(f"{name}={shown(raw, 20)} is not a usable alert threshold: {exc}") from None
    return tuple(rules)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read Settings from the environment; a malformed value raises ConfigurationError naming it."""
    env = os.environ if environ is None else environ
    state_dir = env.get("TENSORFEED_MCP_STATE_DIR", "").strip()
    webhook_url = env.get("TENSORFEED_ALERT_WEBHOOK_URL", "").strip() or None
    if webhook_url is not None:
        checked_webhook_url(webhook_url)
    return Settings(
        token=_token(env),
        api_url=_api_url(env),
        timeout_seconds=_number(env, "TENSORFEED_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=MAX_TIMEOUT_SECONDS)
        or 10.0,
        cache_seconds=_number(env, "TENSORFEED_CACHE_SECONDS", 5.0, minimum=0, maximum=MAX_CACHE_SECONDS) or 0.0,
        state_dir=Path(state_dir).expanduser() if state_dir else None,
        alert_poll_seconds=_poll_seconds(env),
        env_alert_rules=_env_alert_rules(env),
        mcp_auth_token=env.get("TENSORFEED_MCP_AUTH_TOKEN", "").strip() or None,
        max_sessions=_count(env, "TENSORFEED_MCP_MAX_SESSIONS", DEFAULT_MAX_SESSIONS, minimum=1, maximum=MAX_SESSIONS),
        session_idle_seconds=_number(
            env,
            "TENSORFEED_MCP_SESSION_IDLE_SECONDS",
            DEFAULT_SESSION_IDLE_SECONDS,
            minimum=10,
            maximum=MAX_SESSION_IDLE_SECONDS,
        )
        or DEFAULT_SESSION_IDLE_SECONDS,
        alert_webhook_url=webhook_url,
        alert_webhook_format=webhook_format(webhook_url or "", env.get("TENSORFEED_ALERT_WEBHOOK_FORMAT", "")),
        ledger_call_days=_count(
            env,
            "TENSORFEED_LEDGER_CALL_DAYS",
            DEFAULT_LEDGER_CALL_DAYS,
            minimum=MIN_LEDGER_CALL_DAYS,
            maximum=MAX_LEDGER_CALL_DAYS,
        ),
        database_url=_database_url(env),
        multi_tenant=_switch(env, "TENSORFEED_MCP_MULTI_TENANT"),
        log_format=_choice(env, "TENSORFEED_MCP_LOG_FORMAT", ("text", "json")),  # type: ignore[arg-type]
        tenant_calls_per_minute=_count(
            env,
            "TENSORFEED_MCP_TENANT_CALLS_PER_MINUTE",
            DEFAULT_TENANT_CALLS_PER_MINUTE,
            minimum=1,
            maximum=MAX_TENANT_CALLS_PER_MINUTE,
        ),
        new_tokens_per_minute=_count(
            env,
            "TENSORFEED_MCP_NEW_TOKENS_PER_MINUTE",
            DEFAULT_NEW_TOKENS_PER_MINUTE,
            minimum=1,
            maximum=MAX_NEW_TOKENS_PER_MINUTE,
        ),
        listen_stream_seconds=_number(
            env,
            "TENSORFEED_MCP_LISTEN_STREAM_SECONDS",
            DEFAULT_LISTEN_STREAM_SECONDS,
            minimum=1,
            maximum=MAX_LISTEN_STREAM_SECONDS,
        )
        or DEFAULT_LISTEN_STREAM_SECONDS,
    )


def _switch(environ: Mapping[str, str], name: str) -> bool:
    """A yes/no variable: 1/true/yes or 0/false/no (empty is no)."""
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigurationError(f"{name}={raw[:20]!r} is not a yes or no; use 1 or 0.")


def _choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first when empty)."""
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise ConfigurationError(f"{name}={raw[:20]!r} is not accepted; use one of: {', '.join(choices)}.")
    return raw


def _database_url(environ: Mapping[str, str]) -> str | None:
    """TENSORFEED_MCP_DATABASE_URL, checked (see checked_database_url); its user name and password are never shown."""
    raw = environ.get("TENSORFEED_MCP_DATABASE_URL", "").strip()
    return checked_database_url(raw) if raw else None


def hosted_extra_missing(needed_for: str) -> ConfigurationError:
    """The error for a feature whose libraries come with the `hosted` extra when they are not installed."""
    return ConfigurationError(
        f"{needed_for} needs the libraries of the hosted extra, which are not installed: "
        "pip install 'tensorfeed-mcp[hosted]'."
    )
