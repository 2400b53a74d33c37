"""A token's identity: its format, how it may be shown (masked), the key local state is kept under (its
fingerprint), and the Tenant value that carries all three to the service layer."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from tensorfeed_mcp.errors import TokenFormatError, TokenMissingError

TOKEN_PREFIX = "tf_live_"
TOKEN_PATTERN = re.compile(r"tf_live_[0-9a-f]{64}")


def mask_token(token: str) -> str:
    """The token as it may be shown: its first 12 and last 4 characters."""
    if len(token) <= 20:
        return token[:8] + "…"
    return f"{token[:12]}…{token[-4:]}"


def token_fingerprint(token: str) -> str:
    """A stable key for local state that cannot be turned back into the token."""
    return hashlib.sha256(b"tensorfeed-mcp:" + token.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Tenant:
    """Whose account a service reads: the token (sent only in the Authorization header, never shown, never in a
    repr), its mask and its fingerprint."""

    token: str = field(repr=False)
    masked: str
    fingerprint: str

    @classmethod
    def of(cls, token: str) -> Tenant:
        """The tenant of a well-formed token."""
        return cls(token=token, masked=mask_token(token), fingerprint=token_fingerprint(token))


def configured_tenant(token: str | None) -> Tenant:
    """The tenant of the configured TENSORFEED_TOKEN, or the ConfigurationError that says how to get it right.
    Nothing is sent first."""
    if not token:
        raise TokenMissingError()
    if not TOKEN_PATTERN.fullmatch(token):
        raise TokenFormatError()
    return Tenant.of(token)
