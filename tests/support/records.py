"""Everything a test sees from the server (tool results, errors, resources, stderr, HTTP bodies, log records) goes
through `record`; at the end of the session every process checks that no watched token appeared in any of it."""

from __future__ import annotations

import logging
from pathlib import Path

from tensorfeed_mcp.sandbox import DEMO_TOKENS

CAPTURED: list[str] = []
SENTINEL = "tf_live_5e171e1" + "0123456789abcdef" * 3 + "5e171e1ab"
"""A token known to no account, which the token-hygiene test pushes through every surface."""
WATCHED_TOKENS: list[str] = [*DEMO_TOKENS.values(), SENTINEL]
"""Tokens that must appear nowhere in CAPTURED; test modules add the ones they make up."""


def masked(token: str) -> str:
    """A token as the server may show it: its first 12 and last 4 characters (worked out here, not by the code
    under test)."""
    return f"{token[:12]}…{token[-4:]}"


def record(text: object) -> None:
    """Keep text the server produced, for the token scan at the end of the run."""
    CAPTURED.append(str(text))


def read_recorded(path: Path) -> str:
    """Read a captured stream (a subprocess's stderr) and record it for the token scan."""
    text = path.read_text(errors="replace") if path.exists() else ""
    record(text)
    return text


class _RecordLogs(logging.Handler):
    def emit(self, log_record: logging.LogRecord) -> None:
        record(self.format(log_record))


def record_logs() -> None:
    """Record every log record of this process (the package's from INFO up)."""
    handler = _RecordLogs(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s %(exc_text)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("tensorfeed_mcp").setLevel(logging.INFO)
