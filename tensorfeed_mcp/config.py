"""Settings from the environment, and the only places the token is handled as text."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import SplitResult, urlsplit

from tensorfeed_mcp.alerts import ALERT_KINDS, make_rule
from tensorfeed_mcp.errors import ConfigurationError, InvalidInputError, TokenFormatError, TokenMissingError, shown
from tensorfeed_mcp.models import AlertRule

DEFAULT_API_URL = "https://tensorfeed.ai/api"
TOKEN_PREFIX = "tf_live_"
REDACTED = "[redacted]"
TOKEN_PATTERN = re.compile(r"tf_live_[0-9a-f]{64}")
# Anything that looks like a token, complete or not, for redaction from logs.
TOKEN_LIKE = re.compile(r"tf_live_[^\s\"'<>,;]*")
DATABASE_URL_EXAMPLE = "postgresql://user:password@host:5432/database"
UNENCODED_IN_CREDENTIALS = re.compile(r"[/\s]|%(?![0-9A-Fa-f]{2})")
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

    def with_token(self, token: str) -> Settings:
        """These settings for another token (a tenant's, in hosted mode)."""
        return replace(self, token=token)

    def require_token(self) -> str:
        """The token, or a ConfigurationError that says how to get one right. Nothing is sent first."""
        if not self.token:
            raise TokenMissingError()
        if not TOKEN_PATTERN.fullmatch(self.token):
            raise TokenFormatError()
        return self.token


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


def _url_parts(name: str, raw: str, shown: str, example: str) -> SplitResult:
    """`raw` split, if it is http(s) with a host, a valid port and no user name; else a ConfigurationError that
    names the variable and shows only `shown`."""
    accepted = f"Give an address like {example}."
    bad_port = f"{name}={shown!r} has an invalid port; use 1 to 65535. {accepted}"
    try:
        parts = urlsplit(raw)
    except ValueError:  # an unclosed IPv6 bracket, say
        raise ConfigurationError(f"{name}={shown!r} is not a readable address. {accepted}") from None
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(bad_port) from None
    if parts.scheme not in ("http", "https"):
        raise ConfigurationError(f"{name}={shown!r} must start with https:// (or http://). {accepted}")
    if not parts.hostname:
        raise ConfigurationError(f"{name}={shown!r} names no host. {accepted}")
    if port == 0:
        raise ConfigurationError(bad_port)
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(f"{name} must not carry a user name or password. {accepted}")
    return parts


def _api_url(environ: Mapping[str, str]) -> str:
    """TENSORFEED_API_URL checked: http(s), a host, a valid port, and TLS unless the host is this machine."""
    raw = environ.get("TENSORFEED_API_URL", "").strip() or DEFAULT_API_URL
    shown = raw if len(raw) <= 80 else raw[:80] + "…"
    example = DEFAULT_API_URL
    parts = _url_parts("TENSORFEED_API_URL", raw, shown, example)
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


def webhook_destination(url: str) -> str:
    """A webhook URL as it may be shown: scheme and host only, since its path usually carries a key."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(an unreadable address)"
    if not host:
        return "(an address without a host)"
    shown_host = f"[{host}]" if ":" in host else host  # an IPv6 address, written as in a URL
    return f"{parts.scheme}://{shown_host}{f':{port}' if port else ''}/…"


def checked_webhook_url(raw: str, name: str = "TENSORFEED_ALERT_WEBHOOK_URL") -> str:
    """A webhook URL checked: https, or http only to this machine (the URL is a secret and so is what it gets)."""
    shown = webhook_destination(raw)
    parts = _url_parts(name, raw, shown, "https://hooks.slack.com/services/…")
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        raise ConfigurationError(
            f"{name}={shown!r} uses plain http to another machine; a webhook URL carries its key, so it must be "
            "https:// (http:// is accepted only to this machine)."
        )
    return raw


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


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): traffic that never leaves this machine."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read Settings from the environment; a malformed value raises ConfigurationError naming it."""
    env = os.environ if environ is None else environ
    # TENSORFEED_POLL_SECONDS: the watcher both records the ledger and checks alerts; the old name still works.
    poll_variable = (
        "TENSORFEED_POLL_SECONDS"
        if env.get("TENSORFEED_POLL_SECONDS", "").strip()
        else ("TENSORFEED_ALERT_POLL_SECONDS")
    )
    poll = _number(env, poll_variable, None, minimum=0, maximum=MAX_ALERT_POLL_SECONDS)
    if poll == 0:
        poll = None
    elif poll is not None and poll < MIN_ALERT_POLL_SECONDS:
        raise ConfigurationError(
            f"{poll_variable}={poll:g} is too frequent; use 0 (off) or at least {MIN_ALERT_POLL_SECONDS:g} seconds."
        )
    rules: list[AlertRule] = []
    for kind in ALERT_KINDS.values():
        name = kind.env_variable
        raw = env.get(name, "").strip()
        if raw:
            try:
                rules.append(make_rule(kind.name, _decimal(raw), source="env"))
            except InvalidInputError as exc:
                raise ConfigurationError(f"{name}={shown(raw, 20)} is not a usable alert threshold: {exc}") from None
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
        alert_poll_seconds=poll,
        env_alert_rules=tuple(rules),
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


def checked_database_url(url: str) -> str:
    """`url` if it is a postgresql:// (or postgres://) URL whose user name and password every reader finds alike,
    else a ConfigurationError that shows no part of it.

    libpq ends the user name and password at the first @ and takes none before a /, where other readers differ:
    an unencoded @ or / there would put part of the password into the host, port or database it names in errors.
    """
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):  # libpq reads any other prefix as key=value text, echoed in errors
        raise ConfigurationError(
            f"TENSORFEED_MCP_DATABASE_URL is not a PostgreSQL URL; give one like {DATABASE_URL_EXAMPLE} (leave it "
            "empty for the local SQLite file)."
        )
    credentials, at, after = rest.partition("@")
    if at and ("@" in after or not credentials.isprintable() or UNENCODED_IN_CREDENTIALS.search(credentials)):
        raise ConfigurationError(
            "TENSORFEED_MCP_DATABASE_URL has a character in its user name or password that must be percent-encoded, "
            "so it is not used (nor shown): write % as %25, / as %2F, @ as %40 and a space as %20 there, and any "
            "other @ in the URL as %40; for example postgresql://user:pa%40ss@host:5432/database."
        )
    return url


def database_password(url: str) -> str | None:
    """The password of a URL that checked_database_url accepted, as written (still percent-encoded), if it has one."""
    credentials, at, _ = url.partition("://")[2].partition("@")
    _, colon, password = credentials.partition(":")
    return password if at and colon else None


def hosted_extra_missing(needed_for: str) -> ConfigurationError:
    """The error for a feature whose libraries come with the `hosted` extra when they are not installed."""
    return ConfigurationError(
        f"{needed_for} needs the libraries of the hosted extra, which are not installed: "
        "pip install 'tensorfeed-mcp[hosted]'."
    )


def mask_token(token: str) -> str:
    """The token as it may be shown: its first 12 and last 4 characters."""
    if len(token) <= 20:
        return token[:8] + "…"
    return f"{token[:12]}…{token[-4:]}"


def token_fingerprint(token: str) -> str:
    """A stable key for local state that cannot be turned back into the token."""
    return hashlib.sha256(b"tensorfeed-mcp:" + token.encode()).hexdigest()[:24]


def redact_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with anything shaped like a token, and each given secret, replaced by a marker."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return TOKEN_LIKE.sub("tf_live_[redacted]", text)


class SecretRedactor(logging.Filter):
    """Rewrites each record, traceback included, so no token or secret reaches a log handler."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        # Arguments are redacted one by one, not merged into msg: formatters such as
        # uvicorn's access log read record.args by position.
        record.msg = redact_secrets(str(record.msg), self._secrets)
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact_arg(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self._redact_arg(arg) for key, arg in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text, self._secrets)
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info, self._secrets)
        return True

    def _redact_arg(self, arg: object) -> object:
        if arg is None or isinstance(arg, (bool, int, float)):
            return arg
        return redact_secrets(str(arg), self._secrets)


def redact_logs(settings: Settings) -> None:
    """Put a SecretRedactor on every handler now configured (ours, and uvicorn's once it has set up its own)."""
    password = database_password(settings.database_url) if settings.database_url else None
    redactor = SecretRedactor(
        [settings.token, settings.mcp_auth_token, settings.alert_webhook_url, settings.database_url, password]
    )
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(existing, SecretRedactor) for existing in handler.filters):
                handler.addFilter(redactor)
