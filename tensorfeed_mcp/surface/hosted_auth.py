"""The SDK's auth seam in hosted mode: each request's bearer is its tenant's own TensorFeed token."""

from __future__ import annotations

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from pydantic import AnyHttpUrl

from tensorfeed_mcp.settings.identity import TOKEN_PATTERN, token_fingerprint

TENSORFEED_ISSUER = "https://tensorfeed.ai"


class TensorFeedTokenVerifier:
    """The SDK's TokenVerifier for TensorFeed tokens: the format only. The tenant gate in front of the SDK has
    already refused every token the service has not accepted."""

    async def verify_token(self, token: str) -> AccessToken | None:
        if not TOKEN_PATTERN.fullmatch(token):
            return None
        return AccessToken(token=token, client_id=token_fingerprint(token), scopes=[])


def hosted_auth_settings() -> AuthSettings:
    """The tokens are issued by the service itself: there is no OAuth flow to advertise, so no protected-resource
    metadata (clients are told to send the header)."""
    return AuthSettings(issuer_url=AnyHttpUrl(TENSORFEED_ISSUER), resource_server_url=None)


def current_tenant() -> str | None:
    """The fingerprint of the token this HTTP request was authenticated with; None outside hosted requests."""
    access = get_access_token()
    return None if access is None else access.client_id


def request_token() -> str | None:
    """The token this HTTP request was authenticated with; None outside hosted requests."""
    access = get_access_token()
    return None if access is None else access.token
