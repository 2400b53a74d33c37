"""Fault modes: how the sandbox misbehaves on request, and the ASGI middleware that applies them.

A mode either answers instead of the endpoint (a status, a broken or hostile body, a dropped connection), delays
it, or lets it answer and rewrites the JSON it answered with.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Protocol

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tensorfeed_mcp.sandbox.accounts import iso

FAULT_MODES = (
    *("401", "402", "500", "503", "429", "slow", "html", "truncated", "oversized", "drop", "flaky"),
    *("nested", "gzip", "redirect", "cap_apply_500", "custom"),
    *("naive_time", "nan", "infinity", "bool_number", "string_number", "huge_lists"),
)
OVERSIZED_BYTES = 2 * 1024 * 1024 + 4096
NESTING_DEPTH = 100_000
HUGE_LIST_LENGTH = 5_000
REDIRECT_TARGET = "https://elsewhere.example.net/steal?from=tensorfeed"
NUMBER_FIELDS = frozenset(
    {
        *("balance", "credits_remaining", "token_balance", "credits", "daily_spent", "total_purchased"),
        *("total_calls", "total_credits_spent", "calls", "credits_added", "amount_usd"),
    }
)
"""The numeric fields the `nan`, `infinity`, `bool_number` and `string_number` modes rewrite, wherever they are."""


@dataclass
class Fault:
    mode: str
    remaining: int | None  # None: until cleared
    retry_after: float
    delay_seconds: float
    seen: int = 0
    status: int = 200
    body: str = ""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def applies_to(self, method: str, path: str) -> bool:
        """Whether a request meets this fault: `cap_apply_500` meets only POSTs to the spend cap, the rest all."""
        return self.mode != "cap_apply_500" or (method == "POST" and path == "/api/payment/spend-cap")


_HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(rb"([^\x00\s]+([ \t]+[^\x00\s]+)*)?")  # as h11 (uvicorn's HTTP/1.1) checks it
_FRAMING_HEADERS = ("content-length", "transfer-encoding")


def _is_header_value(value: object) -> bool:
    try:
        return isinstance(value, str) and _HEADER_VALUE.fullmatch(value.encode("latin-1")) is not None
    except UnicodeEncodeError:
        return False


def check_custom(status: object, body: object, content_type: object, headers: object) -> None:
    """Refuse a `custom` answer HTTP cannot carry, so a bad spec fails when set, not mid-answer on the socket."""
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError("status must be an integer from 200 to 599")
    if not isinstance(body, str):
        raise ValueError("body must be a string")
    body.encode()  # lone surrogates raise UnicodeEncodeError, a ValueError
    if body and status in (204, 304):
        raise ValueError(f"a {status} answer cannot have a body")
    if not _is_header_value(content_type):
        raise ValueError("content_type must be a valid header value")
    if headers is None:
        return
    if not isinstance(headers, dict):
        raise ValueError("headers must be an object of names to values")
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name) or not _is_header_value(value):
            raise ValueError(f"invalid header {name!r}: {value!r}")
        if name.lower() == "content-type":
            raise ValueError("set the content type with content_type, not headers")
        if name.lower() in _FRAMING_HEADERS:
            raise ValueError(f"the sandbox sets {name} itself")


class FaultSource(Protocol):
    """What the injector needs from the sandbox's state: its clock, a request count and the fault a request meets."""

    def now(self) -> datetime: ...

    def count(self, path: str, user_agent: str) -> None: ...

    def take_fault(self, method: str, path: str) -> Fault | None: ...


class FaultInjector:
    """ASGI middleware: counts account API requests and applies the active fault mode to them."""

    def __init__(self, app: ASGIApp, sandbox: FaultSource) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        user_agent = dict(scope["headers"]).get(b"user-agent", b"").decode(errors="replace")
        self.sandbox.count(scope["path"], user_agent)
        fault = self.sandbox.take_fault(scope["method"], scope["path"])
        if fault is None:
            await self.app(scope, receive, send)
        elif fault.mode == "slow":
            await anyio.sleep(fault.delay_seconds)
            await self.app(scope, receive, send)
        elif fault.mode == "drop":
            # Promise a body, send part of it, and end: the server closes the connection mid-response.
            headers = [(b"content-type", b"application/json"), (b"content-length", b"400")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"ok": true, "bal', "more_body": True})
        elif fault.mode in _REWRITES:
            status, headers, body = await _answer_of(self.app, scope, receive)
            await _respond(send, status, headers, _rewrite_json(body, _REWRITES[fault.mode]))
        else:
            if fault.mode == "cap_apply_500":
                await _answer_of(self.app, scope, receive)  # the endpoint applies the change; its answer is lost
            status, extra, body = _fault_response(fault)
            # Every answer carries a Date, as the service's (and its CDN's) do; a custom one may send its own.
            dated = {"date": format_datetime(self.sandbox.now(), usegmt=True)}
            extra = dated | {name.lower(): value for name, value in extra.items()}
            await _respond(send, status, [(k.encode(), v.encode("latin-1")) for k, v in extra.items()], body)


async def _answer_of(app: Any, scope: Scope, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Let the app answer the request, and keep its status, headers and body instead of sending them."""
    start: Message = {}
    chunks: list[bytes] = []

    async def keep(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, keep)
    return start["status"], list(start.get("headers", [])), b"".join(chunks)


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Send a whole answer, with a Content-Length that fits `body` in place of any in `headers`."""
    headers = [(name, value) for name, value in headers if name.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _fault_response(fault: Fault) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (without Content-Length) and body a mode answers with instead of the endpoint."""
    json_type = {"content-type": "application/json"}
    if fault.mode == "401":
        return 401, json_type, b'{"ok": false, "error": "token_required"}'
    if fault.mode == "402":
        body = b'{"ok": false, "error": "insufficient_credits", "message": "This call needs 5 credits; 2 left."}'
        return 402, json_type, body
    if fault.mode in ("500", "503", "flaky", "cap_apply_500"):
        status = 503 if fault.mode in ("503", "flaky") else 500
        return status, json_type, b'{"ok": false, "error": "internal_error"}'
    if fault.mode == "429":
        body = b'{"ok": false, "error": "rate_limit_exceeded", "message": "Too many requests"}'
        return 429, json_type | {"retry-after": f"{fault.retry_after:g}"}, body
    if fault.mode == "html":
        body = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>cdn error</body></html>"
        return 200, {"content-type": "text/html; charset=utf-8"}, body
    if fault.mode == "truncated":
        return 200, json_type, b'{"ok": true, "balance": 12, "credits_rem'
    if fault.mode == "nested":
        return 200, json_type, b'{"ok": true, "balance": ' + b"[" * NESTING_DEPTH + b"]" * NESTING_DEPTH + b"}"
    if fault.mode == "gzip":
        # Plain JSON labelled as gzip: the client's decoder must fail on it.
        return 200, json_type | {"content-encoding": "gzip"}, b'{"ok": true, "balance": 1}'
    if fault.mode == "redirect":
        return 302, json_type | {"location": REDIRECT_TARGET}, b'{"ok": true, "balance": 1}'
    if fault.mode == "custom":
        content_type = {"content-type": fault.content_type} if fault.content_type else {}
        return fault.status, content_type | fault.headers, fault.body.encode()
    padding = "x" * OVERSIZED_BYTES
    return 200, json_type, json.dumps({"ok": True, "balance": 1, "padding": padding}).encode()


Rewrite = Callable[[str | None, Any], Any]
"""A body rewrite: given a JSON value and the name of the field holding it (None in a list or at the top),
the value to send instead."""

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z")


def _rewrite_json(body: bytes, rewrite: Rewrite) -> bytes:
    """`body` with `rewrite` applied to every value in it, innermost first; a body that is not JSON is kept."""
    try:
        value = json.loads(body)
    except ValueError:  # Starlette's own plain-text 404 or 405
        return body
    return json.dumps(_walk(value, rewrite, None), ensure_ascii=False, separators=(",", ":")).encode()


def _walk(value: Any, rewrite: Rewrite, key: str | None) -> Any:
    if isinstance(value, dict):
        value = {name: _walk(item, rewrite, name) for name, item in value.items()}
    elif isinstance(value, list):
        value = [_walk(item, rewrite, None) for item in value]
    return rewrite(key, value)


def _without_time_zone(key: str | None, value: Any) -> Any:
    """A service timestamp loses its Z."""
    return value[:-1] if isinstance(value, str) and _TIMESTAMP.fullmatch(value) else value


def _numbers_become(replace: Callable[[float], Any]) -> Rewrite:
    """A rewrite that replaces the number in each field named in NUMBER_FIELDS."""

    def rewrite(key: str | None, value: Any) -> Any:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return replace(value) if is_number and key in NUMBER_FIELDS else value

    return rewrite


def _padded_lists(key: str | None, value: Any) -> Any:
    """Usage's `by_endpoint` gains HUGE_LIST_LENGTH endpoints, and `recent` and history's `purchases` grow to
    HUGE_LIST_LENGTH entries; every added entry is well-formed and older than those already there."""
    if not isinstance(value, dict):
        return value
    padded = dict(value)
    if isinstance(value.get("recent"), list):
        at = _going_back_from(value["recent"], "at")
        if isinstance(value.get("by_endpoint"), dict):
            extra = {
                f"/api/premium/padding/{i}": {"calls": 1, "credits": 1, "last_seen": at(i)}
                for i in range(HUGE_LIST_LENGTH)
            }
            padded["by_endpoint"] = value["by_endpoint"] | extra
        padded["recent"] = value["recent"] + [
            {"endpoint": f"/api/premium/padding/{i}", "credits": 1, "at": at(i)}
            for i in range(len(value["recent"]), HUGE_LIST_LENGTH)
        ]
    if isinstance(value.get("purchases"), list):
        confirmed_at = _going_back_from(value["purchases"], "confirmed_at")
        more = [
            {
                "tx_hash": "0x" + hashlib.sha256(f"padding-{i}".encode()).hexdigest(),
                "amount_usd": 0.02,
                "credits_added": 1,
                "confirmed_at": confirmed_at(i),
            }
            for i in range(len(value["purchases"]), HUGE_LIST_LENGTH)
        ]
        padded["purchases"] = value["purchases"] + more
    return padded


def _going_back_from(newest_first: list[Any], field_name: str) -> Callable[[int], str]:
    """Timestamps a second apart, going back from the last entry's `field_name` (or from now, with no entries)."""
    last = newest_first[-1].get(field_name) if newest_first and isinstance(newest_first[-1], dict) else None
    start = datetime.fromisoformat(last) if isinstance(last, str) else datetime.now(UTC)
    return lambda i: iso(start - timedelta(seconds=i + 1))


_REWRITES: dict[str, Rewrite] = {
    "naive_time": _without_time_zone,
    "nan": _numbers_become(lambda _: math.nan),
    "infinity": _numbers_become(lambda _: math.inf),
    "bool_number": _numbers_become(lambda _: True),
    "string_number": _numbers_become(str),
    "huge_lists": _padded_lists,
}
"""The modes that let the endpoint answer, then rewrite the JSON body it answered with."""
