"""The sandbox's accounts: calls, purchases and the rules the service charges a call by, plus the seeded demo data."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

RING_BUFFER_SIZE = 100
RECENT_SHOWN = 25
MAX_CAP = 1_000_000
MAX_BALANCE = 1_000_000_000
CREDITS_PER_USD = 50  # the service's base rate
ACCOUNT_NAME = re.compile(r"[a-z0-9-]{1,40}")

Refusal = Literal["no_credits", "cap"]
"""Why the service refuses a premium call: the balance cannot cover it, or it would pass the day's cap."""


def sandbox_token(name: str) -> str:
    """The fixed token of the sandbox account called `name`, so a test derives it and no token crosses the wire."""
    return "tf_live_" + hashlib.sha256(f"tensorfeed-sandbox-{name}".encode()).hexdigest()


DEMO_TOKENS: dict[str, str] = {name: sandbox_token(name) for name in ("busy", "new", "low")}
"""Fixed tokens of the seeded accounts: `busy` (full ring buffer over more than one UTC day, daily cap 200),
`new` (no calls, no cap) and `low` (12 credits left, spending fast, no cap)."""


def iso(moment: datetime) -> str:
    """The service's timestamp format: UTC with milliseconds and a Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """An ISO-8601 time with a zone (a Z included), in UTC; ValueError for anything else."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return moment.astimezone(UTC)


@dataclass(slots=True)
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
    """One token's account. `calls` is the service's ring buffer; `history` keeps every call ever made."""

    name: str
    token: str
    balance: int
    created: datetime
    last_used: datetime | None = None
    calls: deque[Call] = field(default_factory=lambda: deque(maxlen=RING_BUFFER_SIZE))
    history: list[Call] = field(default_factory=list)
    purchases: list[PurchaseRecord] = field(default_factory=list)  # newest first, as the service lists them
    daily_cap: int | None = None
    spent_by_day: Counter[date] = field(default_factory=Counter)
    revoked: bool = False

    @property
    def total_purchased(self) -> int:
        return sum(p.credits_added for p in self.purchases)

    def refusal(self, credits: int, at: datetime) -> Refusal | None:
        """Why the service would refuse a call of `credits` at `at`, or None when it would charge it."""
        if self.daily_cap is not None and self.spent_by_day[at.date()] + credits > self.daily_cap:
            return "cap"
        if self.balance < credits:
            return "no_credits"
        return None

    def record_call(self, call: Call) -> None:
        """Charge a call: into the ring buffer and the history, off the balance and onto its UTC day's spend."""
        self.calls.append(call)
        self.history.append(call)
        self.balance -= call.credits
        self.spent_by_day[call.at.date()] += call.credits
        self.last_used = max(self.last_used or call.at, call.at)

    def add_purchase(self, credits: int, amount_usd: float, confirmed_at: datetime) -> None:
        """Credit a purchase at once, listed among the others by its confirmation time."""
        digest = hashlib.sha256(f"{self.name}{confirmed_at.isoformat()}{len(self.purchases)}".encode()).hexdigest()
        purchase = PurchaseRecord("0x" + digest, amount_usd, credits, confirmed_at, None)
        newer = sum(1 for p in self.purchases if p.confirmed_at > confirmed_at)
        self.purchases.insert(newer, purchase)
        self.balance += credits


def new_account(name: object, balance: object, daily_cap: object, now: datetime) -> Account:
    """An account created at `now` with no calls and one purchase that explains its balance.

    Values come from a control request as they were sent; ValueError says what is accepted.
    """
    if not isinstance(name, str) or not ACCOUNT_NAME.fullmatch(name):
        raise ValueError(f"name must be 1 to 40 characters of a-z, 0-9 and -, not {name!r:.60}")
    if type(balance) is not int or not 1 <= balance <= MAX_BALANCE:
        raise ValueError(f"balance must be a whole number of credits from 1 to {MAX_BALANCE}, not {balance!r:.60}")
    if daily_cap is not None and (type(daily_cap) is not int or not 1 <= daily_cap <= MAX_CAP):
        raise ValueError(f"daily_cap must be null or a whole number from 1 to {MAX_CAP}, not {daily_cap!r:.60}")
    account = Account(name, sandbox_token(name), balance=0, created=now, daily_cap=daily_cap)
    account.add_purchase(balance, round(balance / CREDITS_PER_USD, 2), now)
    return account


def call_json(call: Call) -> dict[str, Any]:
    """A call as the service lists it."""
    return {"endpoint": call.endpoint, "credits": call.credits, "at": iso(call.at)}


def purchase_json(p: PurchaseRecord) -> dict[str, Any]:
    """A purchase as the service lists it (`block_number` only when known)."""
    shown: dict[str, Any] = {"tx_hash": p.tx_hash, "amount_usd": p.amount_usd, "credits_added": p.credits_added}
    if p.block_number is not None:
        shown["block_number"] = p.block_number
    shown["confirmed_at"] = iso(p.confirmed_at)
    return shown


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
_BUSY_LIFETIME_SPEND = 2960  # most of it long rolled off the buffer, before the sandbox's own record begins


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
    calls = []
    for i, minutes in enumerate(offsets):
        endpoint, credits = _BUSY_PATTERN[i % len(_BUSY_PATTERN)]
        if i == RING_BUFFER_SIZE - 10:
            endpoint, credits = "/api/premium/monitor/bulk", 50
        calls.append(Call(endpoint, credits, now - timedelta(minutes=minutes)))
    for call in reversed(calls):
        busy.record_call(call)
    busy.balance = busy.total_purchased - _BUSY_LIFETIME_SPEND
    busy.daily_cap = 200

    new = Account("new", DEMO_TOKENS["new"], balance=100, created=now - timedelta(hours=1))
    new.purchases = [PurchaseRecord("0x" + "d4" * 32, 2.0, 100, now - timedelta(hours=1), 41_900_001)]

    low = Account("low", DEMO_TOKENS["low"], balance=112, created=now - timedelta(days=2))
    low.purchases = [PurchaseRecord("0x" + "e5" * 32, 2.24, 112, now - timedelta(days=2), 41_880_555)]
    for i in reversed(range(20)):
        low.record_call(Call("/api/premium/agents/directory", 5, now - timedelta(minutes=1 + 6 * i)))
    return {account.name: account for account in (busy, new, low)}
