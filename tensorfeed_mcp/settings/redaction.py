"""Redaction: no token or secret reaches a log handler or an error text."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.policy import database_password

REDACTED = "[redacted]"
# Anything that looks like a token, complete or not, for redaction from logs.
TOKEN_LIKE = re.compile(r"tf_live_[^\s\"'<>,;]*")


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
