"""One tenant's spend ledger bookkeeping: what each fresh read adds, old calls forgotten once a day, and the views
the alert rules and the history read back."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Any

from tensorfeed_mcp.core.alerts import LedgerView
from tensorfeed_mcp.core.ledger import (
    DAY_MS,
    TRAILING_DAYS,
    Ledger,
    Reading,
    SeenCall,
    SeenPurchase,
    day_start,
    month_start,
    to_ms,
    trailing_median,
)
from tensorfeed_mcp.errors import StateStoreError
from tensorfeed_mcp.service.answers import ANSWER_SLACK_MS, listed_in_time
from tensorfeed_mcp.settings.identity import Tenant
from tensorfeed_mcp.store import Store
from tensorfeed_mcp.upstream.client import Fetched

logger = logging.getLogger(__name__)


def _says_nothing_new(reading: Reading, last: Reading) -> bool:
    """A reading within a minute of the last one recorded, with the same figures, adds nothing worth a write."""
    return (reading.spent, reading.purchased) == (last.spent, last.purchased) and 0 <= reading.at - last.at < 60_000


def ledger_start(now: int) -> int:
    """Where a ledger load must begin to cover today, the trailing week and the month so far."""
    return min(day_start(now) - TRAILING_DAYS * DAY_MS, month_start(now))


class LedgerBook:
    """Records a tenant's readings, calls and purchases, keeping calls `call_days` days."""

    def __init__(self, tenant: Tenant, store: Store, call_days: int) -> None:
        self._tenant = tenant
        self._store = store
        self._call_days = call_days
        self._forgotten_through = -1  # the UTC day (in days since the epoch) old calls were last forgotten on
        self._last_recorded: tuple[Reading | None, frozenset[SeenCall]] = (None, frozenset())

    async def record(self, fetched: dict[str, Fetched[Any]]) -> None:
        """Add what fresh reads found to the ledger: a balance reading, the calls listed, the purchases.

        Read together with the usage list, the balance counts every call that list shows (the Date header has
        whole seconds only, so the reading's time moves just past the newest call listed). An answer whose Date was
        not believed adds nothing, nor does a call or purchase dated after the answer that lists it: so no answer
        can move the ledger beyond this machine's now. A state file that cannot be used is logged; it never fails
        the read.
        """
        believed = {name: value for name, value in fetched.items() if value.clock_note is None}
        balance, usage, history = (believed.get(name) for name in ("balance", "usage", "history"))
        listed = [] if usage is None else listed_in_time(usage)
        calls: list[SeenCall] = []
        if usage is not None and usage.fresh:
            seen = Counter((to_ms(entry.at), entry.endpoint, entry.credits) for entry in listed)
            calls = [SeenCall(at, endpoint, credits, count) for (at, endpoint, credits), count in seen.items()]
        reading = None
        if balance is not None and balance.fresh:
            at = max([to_ms(balance.as_of), *(to_ms(entry.at) + 1 for entry in listed)])
            purchased = balance.data.total_purchased
            reading = Reading(at=at, spent=purchased - balance.data.balance, purchased=purchased)
        purchases = []
        if history is not None and history.fresh:
            latest = to_ms(history.as_of) + ANSWER_SLACK_MS
            purchases = [
                (purchase.tx_hash, SeenPurchase(to_ms(purchase.confirmed_at), purchase.credits_added))
                for purchase in history.data.purchases
                if purchase.confirmed_at is not None and to_ms(purchase.confirmed_at) <= latest
            ]
        last_reading, last_calls = self._last_recorded
        if reading is not None and last_reading is not None and _says_nothing_new(reading, last_reading):
            reading = None
        if frozenset(calls) == last_calls:
            calls = []
        if reading is None and not calls and not purchases:
            return
        fingerprint = self._tenant.fingerprint
        try:
            readings = [] if reading is None else [reading]
            await self._store.record_snapshot(fingerprint, readings, calls, purchases)
            self._last_recorded = (reading or last_reading, frozenset(calls) or last_calls)
            if reading is not None and reading.at // DAY_MS != self._forgotten_through:
                self._forgotten_through = reading.at // DAY_MS
                await self._store.forget_calls_before(fingerprint, reading.at - self._call_days * DAY_MS)
        except StateStoreError as exc:
            logger.warning("Could not add to the spend ledger: %s", exc)

    async def view(self, now: datetime) -> LedgerView | None:
        """Today's spend and the trailing median from the ledger, for the alert rules; None without a ledger."""
        week_before = day_start(to_ms(now)) - TRAILING_DAYS * DAY_MS
        try:
            ledger, _ = await self._store.load_ledger(self._tenant.fingerprint, week_before)
        except StateStoreError:
            return None
        if ledger.last_reading is None:
            return None
        end = ledger.last_reading + 1
        today = ledger.spend(day_start(ledger.last_reading), end, detail=False)
        median, _ = trailing_median(ledger, day_start(ledger.last_reading))
        return LedgerView(today_credits=today.credits, today_exact=today.exact, trailing_median=median)

    async def load(self, now: int, days: int) -> tuple[Ledger, int | None]:
        """The ledger from far enough back to cover `days` days ending `now`, the month so far and the trailing
        week, and the time of its first reading ever (None when there is none)."""
        return await self._store.load_ledger(
            self._tenant.fingerprint, min(ledger_start(now), day_start(now) - (days - 1) * DAY_MS)
        )
