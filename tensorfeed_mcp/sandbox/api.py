"""The account endpoints under /api/payment, answering as the service does (../shared/tensorfeed-api.md)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tensorfeed_mcp.sandbox.accounts import MAX_CAP, RECENT_SHOWN, Account, call_json, iso, purchase_json
from tensorfeed_mcp.sandbox.state import Sandbox


def _next_midnight(now: datetime) -> datetime:
    return datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


class AccountApi:
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
        with self.sandbox.lock:
            return self.reply(_balance_body(account))

    async def usage(self, request: Request) -> Response:
        account = self.authorise(request, "token_not_found")
        if isinstance(account, Response):
            return account
        with self.sandbox.lock:
            return self.reply(_usage_body(account))

    async def history(self, request: Request) -> Response:
        account = self.authorise(request, "invalid_token_format")
        if isinstance(account, Response):
            return account
        with self.sandbox.lock:
            return self.reply(_history_body(account))

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
            with self.sandbox.lock:
                account.daily_cap = int(value) if value else None
        with self.sandbox.lock:
            return self.reply(_cap_body(account, self.sandbox.now()))

    async def revoke(self, request: Request) -> Response:
        if request.method != "POST":
            return self.error(405, "method_not_allowed")
        account = self.authorise(request, "invalid_token_format")
        if isinstance(account, Response):
            return account
        with self.sandbox.lock:
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


def _balance_body(account: Account) -> dict[str, Any]:
    return {
        "ok": True,
        "balance": account.balance,
        "credits_remaining": account.balance,
        "created": iso(account.created),
        "last_used": iso(account.last_used) if account.last_used else None,
        "total_purchased": account.total_purchased,
    }


def _usage_body(account: Account) -> dict[str, Any]:
    """The ring buffer, aggregated by endpoint, and its newest RECENT_SHOWN calls, newest first."""
    by_endpoint: dict[str, dict[str, Any]] = {}
    for call in account.calls:
        entry = by_endpoint.setdefault(call.endpoint, {"calls": 0, "credits": 0, "last_seen": call.at})
        entry["calls"] += 1
        entry["credits"] += call.credits
        entry["last_seen"] = max(entry["last_seen"], call.at)
    newest_first = list(reversed(account.calls))
    return {
        "ok": True,
        "token_balance": account.balance,
        "total_calls": len(account.calls),
        "total_credits_spent": sum(call.credits for call in account.calls),
        "by_endpoint": {name: {**entry, "last_seen": iso(entry["last_seen"])} for name, entry in by_endpoint.items()},
        "recent": [call_json(call) for call in newest_first[:RECENT_SHOWN]],
    }


def _history_body(account: Account) -> dict[str, Any]:
    return {
        "ok": True,
        "token_short": account.token[:16] + "...",
        "current_balance": account.balance,
        "total_purchased_usd": round(sum(p.amount_usd for p in account.purchases), 2),
        "total_credits_added": account.total_purchased,
        "purchase_count": len(account.purchases),
        "purchases": [purchase_json(p) for p in account.purchases],
    }


def _cap_body(account: Account, now: datetime) -> dict[str, Any]:
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
