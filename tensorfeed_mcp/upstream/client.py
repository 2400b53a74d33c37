"""TensorFeedClient: the account API over httpx2, with deadlines, retries, coalescing and a short cache.

Every failure surfaces as an UpstreamError subclass whose message a person can act on. The token
travels only in the Authorization header; no message, log line or exception here contains it.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx2
from pydantic import BaseModel, ValidationError

from tensorfeed_mcp import __version__
from tensorfeed_mcp.errors import (
    InvalidInputError,
    InvalidResponseError,
    PaymentRequiredError,
    RateLimitedError,
    RedirectedError,
    RequestRejectedError,
    ServerError,
    SpendCapUncertainError,
    TokenNotRecognisedError,
    TokenRequiredError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from tensorfeed_mcp.limits import DAILY_CAP_RANGE, MAX_DAILY_CAP, MIN_DAILY_CAP
from tensorfeed_mcp.models import (
    BalancePayload,
    HistoryPayload,
    SpendCapPayload,
    UsagePayload,
    clean_upstream_text,
)
from tensorfeed_mcp.observability.telemetry import NO_TELEMETRY, Telemetry
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.identity import TOKEN_PREFIX, Tenant
from tensorfeed_mcp.settings.redaction import REDACTED

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1024 * 1024
MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.25
CLOCK_TOLERANCE = timedelta(minutes=5)
"""How far ahead of this machine's clock the service's Date may be and still be believed."""
EARLIEST_SERVICE_TIME = datetime(2020, 1, 1, tzinfo=UTC)
"""A Date before this (before the service existed) is not believed either."""

PayloadT = TypeVar("PayloadT", bound=BaseModel)


@dataclass(frozen=True)
class Fetched(Generic[PayloadT]):
    """An upstream payload with the service's time of answering and how long ago that was. `fresh` is true only
    for the caller whose request fetched it (not for a cached or shared answer), so it is recorded once."""

    data: PayloadT
    as_of: datetime
    age_seconds: float
    fresh: bool = False
    clock_note: str | None = None
    """Set when the service's Date was not believed: then `as_of` is this machine's time, and the answer must not
    go into the ledger."""


@dataclass
class _Answer:
    payload: Any
    as_of: datetime
    received_at: float
    clock_note: str | None = None


class _Flight:
    """One upstream read that concurrent callers of the same path wait on together."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.answer: _Answer | None = None
        self.error: UpstreamError | None = None


def validate_spend_cap(daily_cap: object) -> int:
    """A cap to set, within the service's range. Clearing is a separate, explicit act (clear_spend_cap)."""
    accepted = f"Give {DAILY_CAP_RANGE}; to remove the cap, use clear_spend_cap."
    if isinstance(daily_cap, bool) or not isinstance(daily_cap, int):
        raise InvalidInputError(f"daily_cap must be a whole number of credits. {accepted}")
    if not MIN_DAILY_CAP <= daily_cap <= MAX_DAILY_CAP:
        raise InvalidInputError(f"daily_cap {daily_cap} is out of range. {accepted}")
    return daily_cap


def upstream_http_client(settings: Settings) -> httpx2.AsyncClient:
    """The HTTP client for the service; it holds no token (each request carries its own), so tenants share it."""
    return httpx2.AsyncClient(
        base_url=settings.api_url + "/",
        headers={"User-Agent": f"tensorfeed-mcp/{__version__}", "Accept": "application/json"},
        timeout=settings.timeout_seconds,
        follow_redirects=False,
    )


class TensorFeedClient:
    """The TensorFeed account API for one token, with its own cache and request coalescing. Open once per process
    (`async with`), share freely. Given `http`, it uses that connection pool and leaves closing it to its owner."""

    def __init__(
        self,
        settings: Settings,
        tenant: Tenant,
        http: httpx2.AsyncClient | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
        on_token_refused: Callable[[], None] | None = None,
    ) -> None:
        """`on_token_refused` is called whenever the service answers that it does not know the token."""
        self._settings = settings
        self._tenant = tenant
        self._http = http
        self._owns_http = http is None
        self._telemetry = telemetry
        self._on_token_refused = on_token_refused
        self._cache: dict[str, _Answer] = {}
        self._flights: dict[str, _Flight] = {}

    async def __aenter__(self) -> TensorFeedClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._http is not None and self._owns_http:
            await self._http.aclose()

    def _connection(self) -> httpx2.AsyncClient:
        """The HTTP client, made on first use: its TLS setup takes tens of milliseconds the start-up need not wait."""
        if self._http is None:
            self._http = upstream_http_client(self._settings)
        return self._http

    async def balance(self) -> Fetched[BalancePayload]:
        return await self._read("payment/balance", BalancePayload)

    async def usage(self) -> Fetched[UsagePayload]:
        return await self._read("payment/usage", UsagePayload)

    async def history(self) -> Fetched[HistoryPayload]:
        return await self._read("payment/history", HistoryPayload)

    async def spend_cap(self) -> Fetched[SpendCapPayload]:
        return await self._read("payment/spend-cap", SpendCapPayload)

    async def set_spend_cap(self, daily_cap: int) -> Fetched[SpendCapPayload]:
        """Set the daily cap; validated locally first (nothing is sent for a refused value), the service decides."""
        return await self._change_spend_cap(validate_spend_cap(daily_cap))

    async def clear_spend_cap(self) -> Fetched[SpendCapPayload]:
        """Remove the daily cap."""
        return await self._change_spend_cap(None)

    async def _change_spend_cap(self, daily_cap: int | None) -> Fetched[SpendCapPayload]:
        """POST the cap. A failure that may have reached the service is followed by one read of what it now holds,
        and the error says what that is, so the user never has to guess whether the guard changed."""
        path = "payment/spend-cap"
        self._cache.pop(path, None)
        try:
            # Setting a cap to a value is idempotent, so the POST may be retried like a read.
            answer = await self._request("POST", path, {"daily_cap": daily_cap})
        except (ServerError, UpstreamTimeoutError, UpstreamUnavailableError, InvalidResponseError) as exc:
            raise SpendCapUncertainError(exc, daily_cap, await self._cap_after_failure()) from None
        self._cache[path] = answer
        return self._fetched(answer, SpendCapPayload, fresh=True)

    async def _cap_after_failure(self) -> SpendCapPayload | None:
        try:
            answer = await self._request("GET", "payment/spend-cap")
            fetched = self._fetched(answer, SpendCapPayload)
        except UpstreamError:
            return None
        self._cache["payment/spend-cap"] = answer
        return fetched.data

    async def _read(self, path: str, model: type[PayloadT]) -> Fetched[PayloadT]:
        """GET `path`: from the cache while fresh, else one upstream request shared by concurrent callers."""
        while True:
            cached = self._cache.get(path)
            if cached is not None and anyio.current_time() - cached.received_at < self._settings.cache_seconds:
                self._telemetry.cache_hit(path)
                return self._fetched(cached, model)
            flight = self._flights.get(path)
            if flight is None:
                break
            self._telemetry.cache_hit(path)
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.answer is not None:
                return self._fetched(flight.answer, model)
            # The caller that led the flight was cancelled: loop and lead a new one.

        flight = _Flight()
        self._flights[path] = flight
        try:
            flight.answer = await self._request("GET", path)
            self._cache[path] = flight.answer
            return self._fetched(flight.answer, model, fresh=True)
        except UpstreamError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[path]
            flight.done.set()

    def _fetched(self, answer: _Answer, model: type[PayloadT], *, fresh: bool = False) -> Fetched[PayloadT]:
        try:
            data = model.model_validate(answer.payload)
        except ValidationError as exc:
            fields = sorted({clean_upstream_text(".".join(map(str, err["loc"])), 60) for err in exc.errors()})
            shown_fields = ", ".join(fields[:5]) + (f" and {len(fields) - 5} more" if len(fields) > 5 else "")
            raise InvalidResponseError(
                f"TensorFeed's answer had values of the wrong kind (problem with: {shown_fields}): numbers must be "
                "numbers and timestamps must carry a time zone. The service may have changed; please report this."
            ) from None
        age = max(0.0, anyio.current_time() - answer.received_at)
        return Fetched(
            data=data, as_of=answer.as_of, age_seconds=round(age, 3), fresh=fresh, clock_note=answer.clock_note
        )

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> _Answer:
        """Send with retries on retryable failures, within the deadline; raise the last error with its attempts."""
        token = self._tenant.token
        deadline = anyio.current_time() + self._settings.deadline_seconds
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - anyio.current_time()
            try:
                return await self._attempt(method, path, body, token, min(self._settings.timeout_seconds, remaining))
            except UpstreamError as exc:
                exc.attempts = attempt
                if isinstance(exc, TokenNotRecognisedError | TokenRequiredError) and self._on_token_refused:
                    self._on_token_refused()
                if not exc.retryable or attempt >= MAX_ATTEMPTS:
                    self._telemetry.upstream_error(type(exc).__name__)
                    raise
                delay = BACKOFF_BASE_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                # Waiting only makes sense if a useful attempt still fits before the deadline.
                if deadline - anyio.current_time() - delay < 0.1:
                    self._telemetry.upstream_error(type(exc).__name__)
                    raise
                logger.info("%s %s failed (%s); retry %d in %.2f s", method, path, type(exc).__name__, attempt, delay)
                await anyio.sleep(delay)

    async def _attempt(
        self, method: str, path: str, body: dict[str, Any] | None, token: str, timeout: float
    ) -> _Answer:
        headers = {"Authorization": f"Bearer {token}"}
        started = anyio.current_time()
        try:
            with anyio.fail_after(timeout):
                async with self._connection().stream(
                    method, path, json=body, headers=headers, timeout=timeout
                ) as response:
                    raw = await self._read_capped(response)
            return self._interpret(response, raw, token.removeprefix(TOKEN_PREFIX))
        except UpstreamError:
            raise
        except (TimeoutError, httpx2.TimeoutException):
            raise UpstreamTimeoutError(f"TensorFeed did not answer within {timeout:.3g} s.") from None
        except httpx2.ConnectError:
            raise UpstreamUnavailableError(
                f"Could not connect to TensorFeed at {self._settings.api_url} (connection refused or no network). "
                "Check your connection, or TENSORFEED_API_URL if you set it."
            ) from None
        except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError):
            raise UpstreamUnavailableError(
                "The connection to TensorFeed dropped before the answer was complete. Try again shortly."
            ) from None
        except httpx2.DecodingError:
            raise InvalidResponseError(
                "TensorFeed's answer could not be decoded (its compression was broken). Try again shortly."
            ) from None
        except Exception as exc:
            # The exception's own text may quote the request, token included: name only its kind.
            raise UpstreamUnavailableError(
                f"Talking to TensorFeed failed unexpectedly ({type(exc).__name__}). Try again shortly; if it "
                "persists, check TENSORFEED_API_URL."
            ) from None
        finally:
            self._telemetry.upstream_request(path, anyio.current_time() - started)

    async def _read_capped(self, response: httpx2.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
            raise _too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise _too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _interpret(self, response: httpx2.Response, raw: bytes, secret: str) -> _Answer:
        """The answer's payload, or the UpstreamError it amounts to. Nothing the service sent keeps `secret` (the
        token's own part): a broken or hostile service could echo the token, and its text reaches the model."""
        status = response.status_code
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        is_json = content_type == "application/json" or content_type.endswith("+json")
        if 300 <= status < 400:
            host = _host_of(response.headers.get("location", ""))
            raise RedirectedError(status, clean_upstream_text(host.replace(secret, REDACTED), 100))
        payload: Any = None
        if is_json:
            try:
                payload = _without(secret, json.loads(raw, parse_constant=_refuse_constant))
            except RecursionError:
                raise InvalidResponseError(
                    "TensorFeed's answer was JSON nested too deeply to read; this is not a normal account answer."
                ) from None
            except ValueError as exc:
                if status < 400:
                    problem = str(exc) if isinstance(exc, _NotANumber) else "it was cut short or corrupted"
                    raise InvalidResponseError(
                        f"TensorFeed's answer was not valid JSON ({problem}). Try again shortly."
                    ) from None
        code, detail = _error_fields(payload)
        if status == 401:
            raise TokenRequiredError()
        if status == 404 and code in ("token_not_found", "invalid_token_format"):
            raise TokenNotRecognisedError(code)
        if status == 402:
            raise PaymentRequiredError(detail)
        if status == 429:
            raise RateLimitedError(_retry_after(response), code or "rate_limited")
        if status >= 500:
            raise ServerError(status)
        if status >= 400:
            raise RequestRejectedError(status, code or "error", detail)
        if not is_json:
            shown = clean_upstream_text(content_type or "no content type", 60)
            raise InvalidResponseError(
                f"TensorFeed answered with {shown} instead of JSON, often a CDN error page during an outage. "
                "Try again shortly."
            )
        if not isinstance(payload, dict) or payload.get("ok") is not True:
            raise InvalidResponseError("TensorFeed's answer did not say ok. Try again shortly.")
        as_of, clock_note = _service_time(response)
        return _Answer(payload=payload, as_of=as_of, received_at=anyio.current_time(), clock_note=clock_note)


def _without(secret: str, value: Any) -> Any:
    """Parsed JSON `value` with `secret` replaced wherever it occurs, in keys and strings."""
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, list):
        return [_without(secret, item) for item in value]
    if isinstance(value, dict):
        return {_without(secret, key): _without(secret, item) for key, item in value.items()}
    return value


class _NotANumber(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotANumber(f"it holds {name}, which is not a number JSON allows")


def _too_large() -> InvalidResponseError:
    return InvalidResponseError(
        f"TensorFeed's answer was larger than {MAX_RESPONSE_BYTES // 1024} KiB, so it was not read. "
        "This is not a normal account answer; check TENSORFEED_API_URL."
    )


def _error_fields(payload: Any) -> tuple[str, str]:
    """The machine code and a ': human message' suffix from an error body, both cleaned."""
    if not isinstance(payload, dict):
        return "", ""
    code = payload.get("error")
    message = payload.get("message")
    code_text = clean_upstream_text(code, 64) if isinstance(code, str) else ""
    detail = f": {clean_upstream_text(message)}" if isinstance(message, str) and message else ""
    return code_text, detail


def _retry_after(response: httpx2.Response) -> float | None:
    """Seconds the service asked us to wait (a number or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value) if value else None
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - _service_time(response)[0]).total_seconds()
        except (TypeError, ValueError, OverflowError):
            return None
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def _host_of(location: str) -> str:
    """The host a redirect points to; empty when there is none or the Location is not a readable URL."""
    try:
        return urlsplit(location).hostname or ""
    except ValueError:  # an unclosed IPv6 bracket, say
        return ""


def _service_time(response: httpx2.Response) -> tuple[datetime, str | None]:
    """The service's clock from the Date header, so 'today' matches the service's UTC day, with None; ours when it
    sends none. A Date ahead of this machine's clock by more than CLOCK_TOLERANCE (or before the service existed)
    is not believed: ours is used, with a note that says why. A Date behind ours is believed, since an answer from
    the past can never move the ledger beyond now."""
    now = datetime.now(UTC)
    try:
        when = parsedate_to_datetime(response.headers.get("date", ""))
        when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):  # missing, malformed, or beyond datetime's range in UTC
        return now, None
    if EARLIEST_SERVICE_TIME <= when <= now + CLOCK_TOLERANCE:
        return when, None
    if when > now:
        why = f"{_span(when - now)} ahead of this machine's clock (more than {_span(CLOCK_TOLERANCE)} is not believed)"
    else:
        why = "before TensorFeed existed"
    return now, (
        f"TensorFeed's answer was dated {when:%Y-%m-%d %H:%M} UTC, {why}, so it is timed by this machine's clock "
        "and was kept out of the spend ledger. If this machine's clock is wrong, correct it."
    )


def _span(delta: timedelta) -> str:
    """A duration in its largest whole unit: '74 years', '3 days', '5 minutes'."""
    seconds = abs(delta.total_seconds())
    for unit, size in (("year", 365 * 86_400), ("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count:,} {unit}{'s' if count != 1 else ''}"
    return f"{int(seconds)} seconds"
