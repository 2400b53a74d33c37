"""The sandbox's state: accounts, its clock, request counts and the active fault, behind one lock."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from tensorfeed_mcp.sandbox.accounts import (
    Account,
    Call,
    PurchaseRecord,
    call_json,
    iso,
    new_account,
    purchase_json,
    seed_accounts,
)
from tensorfeed_mcp.sandbox.faults import FAULT_MODES, Fault, check_custom
from tensorfeed_mcp.sandbox.traffic import TrafficSpec


class UnknownAccount(KeyError):
    """No sandbox account has that name."""


class Sandbox:
    """The sandbox's state: accounts, clock offset, request counts and the active fault. Thread-safe.

    Whoever reads or changes accounts holds `lock`, so nobody sees half of a change.
    """

    def __init__(self, start: datetime | None = None) -> None:
        """A sandbox whose clock reads `start` now (default: this machine's time) and runs on from there; the seeded
        accounts' history lies just before it."""
        self.lock = threading.Lock()
        self.offset = timedelta() if start is None else start - datetime.now(UTC)
        self.accounts: dict[str, Account] = {}
        self._by_token: dict[str, Account] = {}  # every account, revoked ones too; a token is never reused
        for account in seed_accounts(self.now()).values():
            self._add(account)
        self.requests: Counter[str] = Counter()
        self.user_agents: Counter[str] = Counter()
        self.fault: Fault | None = None

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def _add(self, account: Account) -> None:
        self.accounts[account.name] = account
        self._by_token[account.token] = account

    def by_token(self, token: str) -> Account | None:
        """The account `token` opens, or None when there is none or it was revoked."""
        account = self._by_token.get(token)
        return account if account is not None and not account.revoked else None

    def create_account(self, name: object, balance: object, daily_cap: object) -> None:
        """Add an account created now with one purchase of `balance` credits; ValueError says what is accepted."""
        with self.lock:
            account = new_account(name, balance, daily_cap, self.now())
            if account.name in self.accounts:
                raise ValueError(f"an account named {account.name!r} exists already; choose a name not yet used")
            self._add(account)

    def account(self, name: str) -> Account:
        if name not in self.accounts:
            raise UnknownAccount(f"no sandbox account {name!r}; there are: {', '.join(self.accounts)}")
        return self.accounts[name]

    def count(self, path: str, user_agent: str) -> None:
        with self.lock:
            self.requests[path] += 1
            self.user_agents[user_agent] += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": sum(self.requests.values()),
                "by_path": dict(self.requests),
                "user_agents": dict(self.user_agents),
            }

    def reset_stats(self) -> None:
        with self.lock:
            self.requests.clear()
            self.user_agents.clear()

    def advance(self, seconds: float) -> datetime:
        with self.lock:
            self.offset += timedelta(seconds=seconds)
        return self.now()

    def set_clock(self, moment: datetime) -> datetime:
        """Make the clock read `moment` now (forward or back); it runs on from there."""
        with self.lock:
            self.offset = moment - datetime.now(UTC)
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
        check_custom(status, body, content_type, headers)
        with self.lock:
            self.fault = Fault(mode, count, retry_after, delay_seconds, 0, status, body, content_type, headers or {})

    def clear_fault(self) -> None:
        with self.lock:
            self.fault = None

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The fault this request meets, if any; `flaky` hits every other request, starting with the first.

        Only requests the fault applies to count towards its `count`.
        """
        with self.lock:
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
        with self.lock:
            account = self.account(name)
            moment = at or self.now()
            accepted = 0
            for _ in range(count):
                if account.refusal(credits, moment) is not None:
                    break
                account.record_call(Call(endpoint, credits, moment))
                accepted += 1
            return accepted

    def generate_traffic(self, name: str, spec: TrafficSpec) -> dict[str, Any]:
        """Make the spec's calls over the next `spec.seconds` of the clock, charging each as the service would, then
        move the clock past the last one. A refused call is neither charged nor recorded."""
        with self.lock:
            account = self.account(name)
            refused: Counter[str] = Counter()
            for endpoint, credits, at in spec.planned_calls(self.now()):
                refusal = account.refusal(credits, at)
                if refusal is None:
                    account.record_call(Call(endpoint, credits, at))
                else:
                    refused[refusal] += 1
            self.offset += timedelta(seconds=spec.seconds)
            return {
                "made": spec.calls - refused.total(),
                "refused_no_credits": refused["no_credits"],
                "refused_by_cap": refused["cap"],
                "now": iso(self.now()),
            }

    def add_purchase(self, name: str, credits: int, amount_usd: float, at: datetime | None = None) -> None:
        """Credit a purchase confirmed at `at` (default: now); the balance rises at once either way."""
        with self.lock:
            self.account(name).add_purchase(credits, amount_usd, at or self.now())

    def describe(self, name: str) -> dict[str, Any]:
        """Everything about an account, for tests to derive expected values from (the token is not included)."""
        with self.lock:
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
                "calls": [call_json(call) for call in reversed(account.calls)],
                "purchases": [purchase_json(p) for p in account.purchases],
                "revoked": account.revoked,
                "now": iso(self.now()),
            }

    def truth(self, name: str) -> dict[str, Any]:
        """An account's ground truth: every call it was ever charged, per UTC day too, and every purchase.

        Calls and purchases are oldest first. `spent_lifetime` also counts spend from before the sandbox's record
        began (the seeded `busy` account's older calls), so compare it across a stretch, not with the calls' sum.
        """
        with self.lock:
            account = self.account(name)
            calls = sorted(account.history, key=lambda call: call.at)
            by_day: dict[str, dict[str, Any]] = {}
            for call in calls:
                day = by_day.setdefault(call.at.date().isoformat(), {"calls": 0, "credits": 0, "by_endpoint": {}})
                day["calls"] += 1
                day["credits"] += call.credits
                day["by_endpoint"][call.endpoint] = day["by_endpoint"].get(call.endpoint, 0) + call.credits
            return {
                "calls": [call_json(call) for call in calls],
                "by_day": by_day,
                "purchases": [_truth_purchase(p) for p in reversed(account.purchases)],
                "balance": account.balance,
                "total_purchased": account.total_purchased,
                "spent_lifetime": account.total_purchased - account.balance,
            }


def _truth_purchase(p: PurchaseRecord) -> dict[str, Any]:
    return {
        "tx_hash": p.tx_hash,
        "credits_added": p.credits_added,
        "amount_usd": p.amount_usd,
        "confirmed_at": iso(p.confirmed_at),
    }
