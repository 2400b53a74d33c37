"""Security policy for what the settings name: which URLs may carry the token or a webhook's key, what counts as
this machine, and which database URLs are read alike by every library that could echo them."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from tensorfeed_mcp.errors import ConfigurationError

DATABASE_URL_EXAMPLE = "postgresql://user:password@host:5432/database"
UNENCODED_IN_CREDENTIALS = re.compile(r"[/\s]|%(?![0-9A-Fa-f]{2})")


def url_parts(name: str, raw: str, shown: str, example: str) -> SplitResult:
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


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): traffic that never leaves this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    parts = url_parts(name, raw, shown, "https://hooks.slack.com/services/…")
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        raise ConfigurationError(
            f"{name}={shown!r} uses plain http to another machine; a webhook URL carries its key, so it must be "
            "https:// (http:// is accepted only to this machine)."
        )
    return raw


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
