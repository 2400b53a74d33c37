"""Exceptions whose messages say what went wrong and what to do about it.

Every message here may reach a person or a model verbatim, so none of them ever
contains the token: only its masked form, if anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tensorfeed_mcp.models import SpendCapPayload

TOKEN_HELP = (
    "A token looks like tf_live_ followed by 64 hex characters; you get one when you buy credits "
    "at https://tensorfeed.ai (see the account page)."
)


def shown(text: str, limit: int = 40) -> str:
    """A quoted prefix of text someone gave us, at most `limit` characters as shown (escapes count at their
    shown length), so no error echoes a huge or multi-line value."""
    quoted = repr(text)
    if len(quoted) <= limit + 2:
        return quoted
    prefix = text[:limit]
    while len(repr(prefix)) > limit + 2:
        prefix = prefix[:-1]
    return repr(prefix + "…")


class TensorFeedError(Exception):
    """Base class: the message is written for the person who has to act on it."""


class ConfigurationError(TensorFeedError):
    """The local configuration (environment or flags) is missing or malformed."""


class TokenMissingError(ConfigurationError):
    def __init__(self) -> None:
        super().__init__(
            "No TensorFeed token is configured. Set TENSORFEED_TOKEN in the MCP server's environment "
            f"(the 'env' block of your MCP host's config). {TOKEN_HELP}"
        )


class TokenFormatError(ConfigurationError):
    def __init__(self) -> None:
        super().__init__(
            "TENSORFEED_TOKEN does not look like a TensorFeed token: it must be 'tf_live_' followed by 64 "
            f"lowercase hex characters, and this one is not. No request was sent. {TOKEN_HELP}"
        )


class UpstreamError(TensorFeedError):
    """TensorFeed could not be reached or gave an answer we cannot use.

    `attempts` counts the requests made for this operation (retries included).
    """

    retryable = False

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts

    def __str__(self) -> str:
        text = super().__str__()
        if self.attempts > 1:
            return f"{text} (after {self.attempts} attempts)"
        return text


class TokenRequiredError(UpstreamError):
    def __init__(self) -> None:
        super().__init__(
            "TensorFeed answered 401 token_required: the request carried no usable token. "
            "Check that TENSORFEED_TOKEN holds your whole tf_live_ token."
        )


class TokenNotRecognisedError(UpstreamError):
    def __init__(self, code: str) -> None:
        super().__init__(
            f"TensorFeed answered 404 {code}: token not recognised: revoked or mistyped. "
            "Check TENSORFEED_TOKEN against the token you were given when you bought credits."
        )


class PaymentRequiredError(UpstreamError):
    def __init__(self, detail: str) -> None:
        said = f" (the service said{detail})" if detail else ""
        super().__init__(
            f"TensorFeed answered 402 payment required{said}: the token has no credits left for this. "
            "Top up at https://tensorfeed.ai."
        )


class RequestRejectedError(UpstreamError):
    """A 4xx that names what was wrong with the request (for example a bad spend cap)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"TensorFeed rejected the request ({status} {code}){detail}")
        self.code = code


class RateLimitedError(UpstreamError):
    retryable = True

    def __init__(self, retry_after: float | None, code: str) -> None:
        wait = f"; it asked to wait {retry_after:g} s" if retry_after is not None else ""
        super().__init__(f"TensorFeed is rate limiting this token (429 {code}){wait}. Try again shortly.")
        self.retry_after = retry_after


class ServerError(UpstreamError):
    retryable = True

    def __init__(self, status: int) -> None:
        super().__init__(f"TensorFeed had a server error (HTTP {status}). This is on their side; try again shortly.")
        self.status = status


class InvalidResponseError(UpstreamError):
    """The answer was not the JSON the contract promises (an HTML error page, truncated, too large, odd values)."""


class RedirectedError(UpstreamError):
    """The service answered with a redirect; it is never followed, since the token would go with it."""

    def __init__(self, status: int, host: str) -> None:
        where = f" to {host}" if host else ""
        super().__init__(
            f"TensorFeed answered with a redirect (HTTP {status}){where}, which was not followed so the token "
            "stays with TensorFeed. Check TENSORFEED_API_URL: it should be https://tensorfeed.ai/api."
        )


class UpstreamUnavailableError(UpstreamError):
    """No answer at all: connection refused, DNS failure, or the connection dropped mid-answer."""

    retryable = True


class UpstreamTimeoutError(UpstreamError):
    retryable = True


class SpendCapUncertainError(UpstreamError):
    """Changing the cap failed in a way that may have reached the service; says what the service now holds."""

    def __init__(self, cause: UpstreamError, wanted: int | None, now: SpendCapPayload | None) -> None:
        asked = "clear the cap" if wanted is None else f"set the cap to {wanted}"
        if now is None:
            outcome = "Could not confirm what TensorFeed now holds: call get_spend_cap before trying again."
        else:
            holds = "no cap" if now.daily_cap is None else f"a cap of {now.daily_cap}"
            applied = "so the change was applied" if now.daily_cap == wanted else "so the change was not applied"
            outcome = f"Reading it back, TensorFeed now holds {holds}, {applied}."
        super().__init__(f"The request to {asked} failed: {cause} {outcome}", attempts=cause.attempts)
        self.now = now


class InvalidInputError(TensorFeedError):
    """An argument was rejected before anything was sent or saved; the message says what is accepted."""


class StateStoreError(TensorFeedError):
    """The local alert state file cannot be used; the message says where it is and what to do."""
