"""A local stand-in for TensorFeed's account API, over real HTTP, for the demo, the tests and the benchmark.

It follows the contract in docs of the service (balance, usage, history, spend-cap, revoke, with the same
shapes, validation and error codes) for a few seeded accounts with fixed demo tokens. A control API under
/_sandbox lets tests count requests, switch fault modes, move the clock and add calls or purchases.
It deliberately imports nothing from the server, so it cannot share the server's mistakes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

RING_BUFFER_SIZE = 100
RECENT_SHOWN = 25
MAX_CAP = 1_000_000
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


def _demo_token(name: str) -> str:
    return "tf_live_" + hashlib.sha256(f"tensorfeed-sandbox-{name}".encode()).hexdigest()


DEMO_TOKENS: dict[str, str] = {name: _demo_token(name) for name in ("busy", "new", "low")}
"""Fixed tokens of the seeded accounts: `busy` (full ring buffer over more than one UTC day, daily cap 200),
`new` (no calls, no cap) and `low` (12 credits left, spending fast, no cap)."""


def iso(moment: datetime) -> str:
    """The service's timestamp format: UTC with milliseconds and a Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Call:
    endpoint: str
    credits: int
    at: datetime


@dataclass
class PurchaseRecord:
    tx_hash: str
    amount_usd: float
    credits_added: int
    confirmed_at: datetime
    block_number: int | None


@dataclass
class Account:
    name: str
    token: str
    balance: int
    created: datetime
    last_used: datetime | None = None
    calls: deque[Call] = field(default_factory=lambda: deque(maxlen=RING_BUFFER_SIZE))
    purchases: list[PurchaseRecord] = field(default_factory=list)
    daily_cap: int | None = None
    spent_by_day: Counter[date] = field(default_factory=Counter)
    revoked: bool = False

    @property
    def total_purchased(self) -> int:
        return sum(p.credits_added for p in self.purchases)

    def record_call(self, call: Call) -> None:
        self.calls.append(call)
        self.balance -= call.credits
        self.spent_by_day[call.at.date()] += call.credits
        self.last_used = max(self.last_used or call.at, call.at)


# Endpoint tiers as the service prices them: 1, 5, 10 or 50 credits a call.
_BUSY_PATTERN = [
    ("/api/premium/routing", 1),
    ("/api/premium/news/search", 1),
    ("/api/premium/agents/directory", 5),
    ("/api/premium/routing", 1),
    ("/api/premium/whats-new", 10),
    ("/api/premium/routing", 1),
    ("/api/premium/agents/directory", 5),
    ("/api/premium/news/search", 1),
    ("/api/premium/routing", 1),
    ("/api/premium/routing", 1),
]


def seed_accounts(now: datetime) -> dict[str, Account]:
    """The demo accounts, with call times relative to `now`.

    busy: 100 calls, the newest 25 every 20 minutes and the older 75 every 40 minutes (about 58 hours, so the
    buffer always spans more than one UTC day); at most 48 fall in any 24 hours, well under its cap of 200.
    low: 20 calls of 5 credits in the last two hours, 12 credits left.
    """
    busy = Account("busy", DEMO_TOKENS["busy"], balance=0, created=now - timedelta(days=40))
    busy.purchases = [
        PurchaseRecord("0x" + "a1" * 32, 50.0, 3250, now - timedelta(days=3, hours=2), 41_877_120),
        PurchaseRecord("0x" + "b2" * 32, 10.0, 550, now - timedelta(days=18, hours=5), 41_230_007),
        PurchaseRecord("0x" + "c3" * 32, 20.0, 1000, now - timedelta(days=40), None),
    ]
    offsets = [3 + 20 * i for i in range(RECENT_SHOWN)]
    offsets += [offsets[-1] + 40 * (i + 1) for i in range(RING_BUFFER_SIZE - RECENT_SHOWN)]
    busy.balance = busy.total_purchased - 2960  # lifetime spend of 2960 credits, most of it long rolled off
    calls = []
    for i, minutes in enumerate(offsets):
        endpoint, credits = _BUSY_PATTERN[i % len(_BUSY_PATTERN)]
        if i == RING_BUFFER_SIZE - 10:
            endpoint, credits = "/api/premium/monitor/bulk", 50
        calls.append(Call(endpoint, credits, now - timedelta(minutes=minutes)))
    for call in reversed(calls):
        busy.calls.append(call)
        busy.spent_by_day[call.at.date()] += call.credits
        busy.last_used = max(busy.last_used or call.at, call.at)
    busy.daily_cap = 200

    new = Account("new", DEMO_TOKENS["new"], balance=100, created=now - timedelta(hours=1))
    new.purchases = [PurchaseRecord("0x" + "d4" * 32, 2.0, 100, now - timedelta(hours=1), 41_900_001)]

    low = Account("low", DEMO_TOKENS["low"], balance=112, created=now - timedelta(days=2))
    low.purchases = [PurchaseRecord("0x" + "e5" * 32, 2.24, 112, now - timedelta(days=2), 41_880_555)]
    for i in reversed(range(20)):
        low.record_call(Call("/api/premium/agents/directory", 5, now - timedelta(minutes=1 + 6 * i)))
    return {account.name: account for account in (busy, new, low)}


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


def _check_custom(status: object, body: object, content_type: object, headers: object) -> None:
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


class Sandbox:
    """The sandbox's state: accounts, clock offset, request counts and the active fault. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.offset = timedelta()
        self.accounts = seed_accounts(self.now())
        self.requests: Counter[str] = Counter()
        self.user_agents: Counter[str] = Counter()
        self.fault: Fault | None = None

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def by_token(self, token: str) -> Account | None:
        return next((a for a in self.accounts.values() if a.token == token and not a.revoked), None)

    def account(self, name: str) -> Account:
        if name not in self.accounts:
            raise KeyError(f"no sandbox account {name!r}; there are: {', '.join(self.accounts)}")
        return self.accounts[name]

    def count(self, path: str, user_agent: str) -> None:
        with self._lock:
            self.requests[path] += 1
            self.user_agents[user_agent] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": sum(self.requests.values()),
                "by_path": dict(self.requests),
                "user_agents": dict(self.user_agents),
            }

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self.user_agents.clear()

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self.offset += timedelta(seconds=seconds)
        return self.now()

    def set_fault(
        self,
        mode: str,
        count: int | None = None,
        retry_after: float = 1.0,
        delay_seconds: float = 30.0,
        status: int = 200,
        body: str = "",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Apply `mode` to the next `count` requests it meets (None: until cleared).

        `retry_after` is for 429, `delay_seconds` for slow; `status`, `body`, `content_type` ("": none sent) and
        `headers` are what `custom` serves.
        """
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; modes: {', '.join(FAULT_MODES)}")
        _check_custom(status, body, content_type, headers)
        with self._lock:
            self.fault = Fault(mode, count, retry_after, delay_seconds, 0, status, body, content_type, headers or {})

    def clear_fault(self) -> None:
        with self._lock:
            self.fault = None

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The fault this request meets, if any; `flaky` hits every other request, starting with the first.

        Only requests the fault applies to count towards its `count`.
        """
        with self._lock:
            fault = self.fault
            if fault is None or not fault.applies_to(method, path):
                return None
            fault.seen += 1
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.fault = None
            if fault.mode == "flaky" and fault.seen % 2 == 0:
                return None
            return fault

    def add_calls(self, name: str, endpoint: str, credits: int, count: int, at: datetime | None) -> int:
        """Charge `count` calls as the service would; returns how many it accepted before the cap or balance ran out."""
        with self._lock:
            account = self.account(name)
            moment = at or self.now()
            accepted = 0
            for _ in range(count):
                day_spent = account.spent_by_day[moment.date()]
                if account.daily_cap is not None and day_spent + credits > account.daily_cap:
                    break
                if account.balance < credits:
                    break
                account.record_call(Call(endpoint, credits, moment))
                accepted += 1
            return accepted

    def add_purchase(self, name: str, credits: int, amount_usd: float) -> None:
        with self._lock:
            account = self.account(name)
            moment = self.now()
            digest = hashlib.sha256(f"{name}{moment.isoformat()}{len(account.purchases)}".encode()).hexdigest()
            account.purchases.insert(0, PurchaseRecord("0x" + digest, amount_usd, credits, moment, None))
            account.balance += credits

    def describe(self, name: str) -> dict[str, Any]:
        """Everything about an account, for tests to derive expected values from (the token is not included)."""
        with self._lock:
            account = self.account(name)
            today = self.now().date()
            return {
                "name": account.name,
                "balance": account.balance,
                "total_purchased": account.total_purchased,
                "created": iso(account.created),
                "last_used": iso(account.last_used) if account.last_used else None,
                "daily_cap": account.daily_cap,
                "spent_today": account.spent_by_day[today],
                "calls": [_call_json(call) for call in reversed(account.calls)],
                "purchases": [_purchase_json(p) for p in account.purchases],
                "revoked": account.revoked,
                "now": iso(self.now()),
            }


def _call_json(call: Call) -> dict[str, Any]:
    return {"endpoint": call.endpoint, "credits": call.credits, "at": iso(call.at)}


def _purchase_json(p: PurchaseRecord) -> dict[str, Any]:
    shown: dict[str, Any] = {"tx_hash": p.tx_hash, "amount_usd": p.amount_usd, "credits_added": p.credits_added}
    if p.block_number is not None:
        shown["block_number"] = p.block_number
    shown["confirmed_at"] = iso(p.confirmed_at)
    return shown


def _next_midnight(now: datetime) -> datetime:
    return datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


class _Api:
    """The account endpoints, answering as the service does."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def reply(self, body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse(
            body,
            status_code=status,
            headers={
                "Cache-Control": "public, max-age=0",
                "Date": format_datetime(self.sandbox.now(), usegmt=True),
                **(headers or {}),
            },
        )

    def error(self, status: int, code: str, message: str | None = None) -> Response:
        body: dict[str, Any] = {"ok": False, "error": code}
        if message:
            body["message"] = message
        return self.reply(body, status)

    def authorise(self, request: Request, format_code: str) -> Account | Response:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            return self.error(401, "token_required", "Send Authorization: Bearer tf_live_...")
        token = header[7:].strip()
        if not token.startswith("tf_live_"):
            return self.error(404, format_code)
        account = self.sandbox.by_token(token)
        return account if account is not None else self.error(404, "token_not_found")

    async def balance(self, request: Request) -> Response:
        account = self.authorise(request, "invalid_token_format")
        if isinstance(account, Response):
            return account
        return self.reply(
            {
                "ok": True,
                "balance": account.balance,
                "credits_remaining": account.balance,
                "created": iso(account.created),
                "last_used": iso(account.last_used) if account.last_used else None,
                "total_purchased": account.total_purchased,
            }
        )

    async def usage(self, request: Request) -> Response:
        account = self.authorise(request, "token_not_found")
        if isinstance(account, Response):
            return account
        by_endpoint: dict[str, dict[str, Any]] = {}
        for call in account.calls:
            entry = by_endpoint.setdefault(call.endpoint, {"calls": 0, "credits": 0, "last_seen": call.at})
            entry["calls"] += 1
            entry["credits"] += call.credits
            entry["last_seen"] = max(entry["last_seen"], call.at)
        newest_first = list(reversed(account.calls))
        return self.reply(
            {
                "ok": True,
                "token_balance": account.balance,
                "total_calls": len(account.calls),
                "total_credits_spent": sum(call.credits for call in account.calls),
                "by_endpoint": {
                    name: {**entry, "last_seen": iso(entry["last_seen"])} for name, entry in by_endpoint.items()
                },
                "recent": [_call_json(call) for call in newest_first[:RECENT_SHOWN]],
            }
        )

    async def history(self, request: Request) -> Response:
        account = self.authorise(request, "invalid_token_format")
        if isinstance(account, Response):
            return account
        return self.reply(
            {
                "ok": True,
                "token_short": account.token[:16] + "...",
                "current_balance": account.balance,
                "total_purchased_usd": round(sum(p.amount_usd for p in account.purchases), 2),
                "total_credits_added": account.total_purchased,
                "purchase_count": len(account.purchases),
                "purchases": [_purchase_json(p) for p in account.purchases],
            }
        )

    def _cap_body(self, account: Account) -> dict[str, Any]:
        now = self.sandbox.now()
        cap = account.daily_cap
        # With no cap the service does not read today's spend and reports 0.
        spent = account.spent_by_day[now.date()] if cap is not None else 0
        return {
            "ok": True,
            "token_short": account.token[:16] + "...",
            "daily_cap": cap,
            "daily_spent": spent,
            "remaining": max(0, cap - spent) if cap is not None else None,
            "reset_at": iso(_next_midnight(now)),
            "balance": account.balance,
        }

    async def spend_cap(self, request: Request) -> Response:
        if request.method not in ("GET", "POST"):
            return self.error(405, "method_not_allowed")
        account = self.authorise(request, "invalid_token_format")
        if isinstance(account, Response):
            return account
        if request.method == "POST":
            try:
                body = json.loads(await request.body())
            except ValueError:
                return self.error(400, "invalid_request_body", 'Body must be JSON: {"daily_cap": <number|null>}')
            if not isinstance(body, dict):
                return self.error(400, "invalid_request_body", "Body must be a JSON object")
            if "daily_cap" not in body:  # undefined in the service's JavaScript: neither a number nor null
                return self.error(400, "cap_must_be_number_or_null", "daily_cap must be a number or null")
            value = body["daily_cap"]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                return self.error(400, "cap_must_be_number_or_null", "daily_cap must be a number or null")
            if value is not None and (not math.isfinite(value) or value != int(value)):
                return self.error(400, "cap_must_be_integer", "daily_cap must be a whole number of credits")
            if value is not None and value != 0 and not 1 <= value <= MAX_CAP:
                return self.error(400, "cap_out_of_range_1_to_1000000", "daily_cap must be 1 to 1000000, or 0/null")
            account.daily_cap = int(value) if value else None
        return self.reply(self._cap_body(account))

    async def revoke(self, request: Request) -> Response:
        if request.method != "POST":
            return self.error(405, "method_not_allowed")
        account = self.authorise(request, "invalid_token_format")
        if isinstance(account, Response):
            return account
        account.revoked = True
        return self.reply(
            {
                "ok": True,
                "message": "Token revoked. It can no longer be used.",
                "token_short": account.token[:16] + "...",
                "balance_at_revoke": account.balance,
                "revoked_at": iso(self.sandbox.now()),
            }
        )


class _FaultInjector:
    """ASGI middleware: counts account API requests and applies the active fault mode to them."""

    def __init__(self, app: Any, sandbox: Sandbox) -> None:
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
            await _respond(send, status, [(k.lower().encode(), v.encode("latin-1")) for k, v in extra.items()], body)


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


def _control_routes(sandbox: Sandbox) -> list[Route]:
    async def stats(request: Request) -> Response:
        if request.method == "POST":
            sandbox.reset_stats()
        return JSONResponse(sandbox.stats())

    async def clock(request: Request) -> Response:
        if request.method == "POST":
            sandbox.advance(float((await request.json())["advance_seconds"]))
        return JSONResponse({"now": iso(sandbox.now()), "offset_seconds": sandbox.offset.total_seconds()})

    async def fault(request: Request) -> Response:
        if request.method == "DELETE":
            sandbox.clear_fault()
            return JSONResponse({"fault": None})
        spec = await request.json()
        try:
            sandbox.set_fault(**spec)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"fault": spec})

    async def account(request: Request) -> Response:
        try:
            return JSONResponse(sandbox.describe(request.path_params["name"]))
        except KeyError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    async def calls(request: Request) -> Response:
        spec = await request.json()
        at = datetime.fromisoformat(spec["at"].replace("Z", "+00:00")) if spec.get("at") else None
        accepted = sandbox.add_calls(
            request.path_params["name"], spec["endpoint"], int(spec["credits"]), int(spec.get("count", 1)), at
        )
        return JSONResponse({"accepted": accepted})

    async def purchases(request: Request) -> Response:
        spec = await request.json()
        sandbox.add_purchase(request.path_params["name"], int(spec["credits"]), float(spec["amount_usd"]))
        return JSONResponse({"ok": True})

    return [
        Route("/_sandbox/stats", stats, methods=["GET", "POST"]),
        Route("/_sandbox/clock", clock, methods=["GET", "POST"]),
        Route("/_sandbox/fault", fault, methods=["POST", "DELETE"]),
        Route("/_sandbox/accounts/{name}", account, methods=["GET"]),
        Route("/_sandbox/accounts/{name}/calls", calls, methods=["POST"]),
        Route("/_sandbox/accounts/{name}/purchases", purchases, methods=["POST"]),
    ]


def build_app(sandbox: Sandbox) -> Any:
    """The sandbox as an ASGI app: the account API under /api/payment and the control API under /_sandbox."""
    api = _Api(sandbox)
    every_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes = [
        Route("/api/payment/balance", api.balance, methods=["GET"]),
        Route("/api/payment/usage", api.usage, methods=["GET"]),
        Route("/api/payment/history", api.history, methods=["GET"]),
        Route("/api/payment/spend-cap", api.spend_cap, methods=every_method),
        Route("/api/payment/revoke", api.revoke, methods=every_method),
        *_control_routes(sandbox),
    ]
    return _FaultInjector(Starlette(routes=routes), sandbox)


class SandboxControl:
    """The control API of a running sandbox, for tests and the benchmark (synchronous, httpx2)."""

    def __init__(self, base_url: str) -> None:
        self._http = httpx2.Client(base_url=base_url + "/_sandbox/", timeout=10)

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return self._json("GET", "stats")  # type: ignore[no-any-return]

    def upstream_requests(self) -> int:
        return int(self.stats()["requests"])

    def reset_stats(self) -> None:
        self._json("POST", "stats")

    def set_fault(self, mode: str, **options: Any) -> None:
        """Switch on `mode` with the options `Sandbox.set_fault` takes; a refused spec raises HTTPStatusError (400)."""
        self._json("POST", "fault", {"mode": mode, **options})

    def clear_fault(self) -> None:
        self._json("DELETE", "fault")

    def now(self) -> datetime:
        return datetime.fromisoformat(self._json("GET", "clock")["now"].replace("Z", "+00:00"))

    def advance_clock(self, seconds: float) -> datetime:
        return datetime.fromisoformat(
            self._json("POST", "clock", {"advance_seconds": seconds})["now"].replace("Z", "+00:00")
        )

    def account(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"accounts/{name}")  # type: ignore[no-any-return]

    def add_calls(self, name: str, endpoint: str, credits: int, count: int = 1, at: datetime | None = None) -> int:
        body = {"endpoint": endpoint, "credits": credits, "count": count, "at": iso(at) if at else None}
        return int(self._json("POST", f"accounts/{name}/calls", body)["accepted"])

    def add_purchase(self, name: str, credits: int, amount_usd: float) -> None:
        self._json("POST", f"accounts/{name}/purchases", {"credits": credits, "amount_usd": amount_usd})

    def close(self) -> None:
        self._http.close()


@dataclass
class RunningSandbox:
    url: str
    sandbox: Sandbox
    control: SandboxControl

    @property
    def api_url(self) -> str:
        """What TENSORFEED_API_URL should be to use this sandbox."""
        return self.url + "/api"


@contextmanager
def running_sandbox(host: str = "127.0.0.1", port: int = 0) -> Iterator[RunningSandbox]:
    """Serve a fresh sandbox in a background thread on `host:port` (0: a free port) until the block ends."""
    sandbox = Sandbox()
    sock = socket.create_server((host, port))
    # Accepted connections inherit this; without it a reply sent in two writes waits ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    config = uvicorn.Config(
        build_app(sandbox), log_config=None, access_log=False, date_header=False, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tensorfeed-sandbox", daemon=True)
    thread.start()
    # The socket is already listening, so requests made before uvicorn starts accepting simply queue.
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{bound_host}:{bound_port}"
    control = SandboxControl(url)
    try:
        yield RunningSandbox(url=url, sandbox=sandbox, control=control)
    finally:
        control.close()
        server.should_exit = server.force_exit = True  # do not wait out requests held by the slow fault mode
        thread.join(timeout=10)
        sock.close()


def serve(host: str, port: int) -> None:
    """Run a sandbox in the foreground until interrupted, printing its URL and the demo tokens."""
    with running_sandbox(host, port) as running:
        print(f"TensorFeed sandbox serving at {running.api_url}")
        print(f"Use it with: TENSORFEED_API_URL={running.api_url}")
        for name, token in DEMO_TOKENS.items():
            print(f"  {name:5} {token}")
        print("Control API under /_sandbox (stats, fault, clock, accounts). Ctrl-C stops it.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("sandbox stopped")
