"""AccountService: the answers the tools give, built from client snapshots. Nothing here knows about MCP."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio

from tensorfeed_mcp.core.alerts import AccountSnapshot, LedgerView, evaluate_rules, make_rule, spend_figures
from tensorfeed_mcp.core.ledger import (
    DAY_MS,
    TRAILING_DAYS,
    GroupBy,
    Reading,
    SeenCall,
    SeenPurchase,
    day_start,
    from_ms,
    history,
    month_start,
    to_ms,
    trailing_median,
)
from tensorfeed_mcp.errors import InvalidInputError, StateStoreError, UpstreamError, shown
from tensorfeed_mcp.limits import DEFAULT_RECENT_LIMIT, MAX_HISTORY_DAYS, MAX_HOUR_DAYS
from tensorfeed_mcp.models import (
    AccountBalance,
    AccountUsage,
    AlertCheck,
    AlertRule,
    AlertRuleDeleted,
    AlertRuleSaved,
    BalancePayload,
    EndpointUsage,
    PaymentHistory,
    Purchase,
    SpendCap,
    SpendCapChange,
    SpendCapPayload,
    SpendHistory,
    UsageCall,
    UsageEntry,
    UsagePayload,
    UsdEstimate,
)
from tensorfeed_mcp.service.webhooks import WebhookSender, alert_message
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.identity import Tenant, configured_tenant
from tensorfeed_mcp.store import AlertEvent, Store, open_store
from tensorfeed_mcp.upstream.client import Fetched, TensorFeedClient, validate_spend_cap

logger = logging.getLogger(__name__)

USD_PER_CREDIT = 0.02  # the base rate, 50 credits per dollar; volume purchases get more credits per dollar


ANSWER_SLACK_MS = 1000  # the Date header has whole seconds: a call may be up to a second later than it says


def _says_nothing_new(reading: Reading, last: Reading) -> bool:
    """A reading within a minute of the last one recorded, with the same figures, adds nothing worth a write."""
    return (reading.spent, reading.purchased) == (last.spent, last.purchased) and 0 <= reading.at - last.at < 60_000


class AccountService:
    """One token's account: reads, the spend cap, and alert rules with their verdicts."""

    def __init__(
        self, settings: Settings, tenant: Tenant, client: TensorFeedClient, store: Store, webhooks: WebhookSender
    ) -> None:
        self._settings = settings
        self._tenant = tenant
        self._client = client
        self._store = store
        self._webhooks = webhooks
        self._env_rules = list(settings.env_alert_rules)
        self._forgotten_through = -1  # the UTC day (in days since the epoch) old calls were last forgotten on
        self._last_recorded: tuple[Reading | None, frozenset[SeenCall]] = (None, frozenset())

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[AccountService]:
        """An AccountService with its HTTP client and state store, closed on exit; its checks send webhook
        messages before they answer (a command's way: no background)."""
        tenant = configured_tenant(settings.token)
        async with TensorFeedClient(settings, tenant) as client, open_store(settings) as store:
            yield cls(settings, tenant, client, store, WebhookSender(store, settings))

    def _stamp(self, fetched: Fetched[Any], *also: Fetched[Any]) -> dict[str, Any]:
        """The fields every result carries, from `fetched`; the note covers `also` too."""
        return {
            "as_of": fetched.as_of,
            "age_seconds": fetched.age_seconds,
            "token": self._tenant.masked,
            "note": " ".join(dict.fromkeys(_notes(fetched, *also))) or None,
        }

    async def usage(self, endpoint: str | None = None, recent_limit: int = DEFAULT_RECENT_LIMIT) -> AccountUsage:
        """Usage per endpoint, filtered to endpoints containing `endpoint`, with the newest `recent_limit` calls."""
        fetched = await self._client.usage()
        await self._record({"usage": fetched})
        usage = fetched.data
        needle = endpoint.strip().lower() if endpoint and endpoint.strip() else None
        aggregates = {name: agg for name, agg in usage.by_endpoint.items() if needle is None or needle in name.lower()}
        recent = [call for call in usage.recent if needle is None or needle in call.endpoint.lower()]
        total_credits = sum(agg.credits for agg in aggregates.values()) if needle else usage.total_credits_spent
        by_endpoint = sorted(
            (
                EndpointUsage(
                    endpoint=name,
                    calls=agg.calls,
                    credits=agg.credits,
                    share_pct=round(100 * agg.credits / total_credits, 1) if total_credits else 0.0,
                    last_seen=agg.last_seen,
                )
                for name, agg in aggregates.items()
            ),
            key=lambda row: (-row.credits, -row.calls, row.endpoint),
        )
        return AccountUsage(
            **self._stamp(fetched),
            token_balance=usage.token_balance,
            total_calls=sum(agg.calls for agg in aggregates.values()) if needle else usage.total_calls,
            total_credits_spent=total_credits,
            by_endpoint=by_endpoint,
            recent=[UsageCall(endpoint=c.endpoint, credits=c.credits, at=c.at) for c in recent[:recent_limit]],
            window_start=min((c.at for c in usage.recent), default=None),
            window_end=max((c.at for c in usage.recent), default=None),
            buffer_full=usage.total_calls >= 100,
            endpoint_filter=needle,
            upstream_cut=usage.cut,
        )

    async def balance(self) -> AccountBalance:
        fetched = await self._client.balance()
        await self._record({"balance": fetched})
        return self._balance_result(fetched)

    def _balance_result(self, fetched: Fetched[BalancePayload]) -> AccountBalance:
        data = fetched.data
        return AccountBalance(
            **self._stamp(fetched),
            balance=data.balance,
            total_purchased=data.total_purchased,
            spent_lifetime=data.total_purchased - data.balance,
            created=data.created,
            last_used=data.last_used,
            usd_estimate=UsdEstimate(
                amount_usd=round(data.balance * USD_PER_CREDIT, 2),
                usd_per_credit=USD_PER_CREDIT,
                note="Estimate at the base rate of 50 credits per US dollar; credits bought in volume cost less.",
            ),
        )

    async def history(self) -> PaymentHistory:
        fetched = await self._client.history()
        await self._record({"history": fetched})
        data = fetched.data
        return PaymentHistory(
            **self._stamp(fetched),
            purchases=[Purchase(**purchase.model_dump(exclude={"cut"})) for purchase in data.purchases],
            purchase_count=data.purchase_count,
            total_purchased_usd=data.total_purchased_usd,
            total_credits_added=data.total_credits_added,
            current_balance=data.current_balance,
            upstream_cut=data.cut,
        )

    def _spend_cap(self, fetched: Fetched[SpendCapPayload]) -> dict[str, Any]:
        return {**self._stamp(fetched), **fetched.data.model_dump()}

    async def spend_cap(self) -> SpendCap:
        return SpendCap(**self._spend_cap(await self._client.spend_cap()))

    async def set_spend_cap(self, daily_cap: int) -> SpendCapChange:
        validate_spend_cap(daily_cap)  # before reading the current cap: a refused value sends nothing
        return await self._change_spend_cap(lambda: self._client.set_spend_cap(daily_cap))

    async def clear_spend_cap(self) -> SpendCapChange:
        return await self._change_spend_cap(self._client.clear_spend_cap)

    async def _change_spend_cap(self, change: Callable[[], Awaitable[Fetched[SpendCapPayload]]]) -> SpendCapChange:
        previous = await self._client.spend_cap()
        changed = await change()
        return SpendCapChange(**self._spend_cap(changed), previous_cap=previous.data.daily_cap)

    async def rules(self) -> list[AlertRule]:
        """Environment rules first, then the user's saved rules."""
        saved = await self._store.list_rules(self._tenant.fingerprint)
        return [*self._env_rules, *saved]

    async def set_alert(self, kind: str, threshold: float, name: str | None) -> AlertRuleSaved:
        rule = make_rule(kind, threshold, name)
        action, saved = await self._store.save_rule(self._tenant.fingerprint, rule)
        return AlertRuleSaved(rule=rule, action=action, rule_count=len(self._env_rules) + saved)

    async def delete_alert(self, name: str) -> AlertRuleDeleted:
        if any(rule.name == name for rule in self._env_rules):
            raise InvalidInputError(
                f"{shown(name)} comes from the environment (TENSORFEED_ALERT_*); remove the variable to remove it."
            )
        deleted = await self._store.delete_rule(self._tenant.fingerprint, name)
        if deleted is None:
            names = [rule.name for rule in await self.rules()]
            listed = ", ".join(shown(other) for other in names[:5])
            if len(names) > 5:
                listed += f" and {len(names) - 5} more"
            raise InvalidInputError(f"No alert named {shown(name)}. Rules in force: {listed or 'none'}.")
        rule, remaining = deleted
        return AlertRuleDeleted(deleted=rule, rule_count=len(self._env_rules) + remaining)

    async def check_alerts(self) -> AlertCheck:
        """Fetch balance, usage and spend cap concurrently and evaluate every rule against them.

        A part that fails to load makes the rules that need it `unknown`; if all three fail, the error is raised.
        """
        fingerprint = self._tenant.fingerprint
        state_error: str | None = None
        try:
            rules = await self.rules()
        except StateStoreError as exc:  # the environment's rules need no file: evaluate those, and say why
            rules, state_error = list(self._env_rules), str(exc)
        fetched, failures = await self._read_together(
            balance=self._client.balance, usage=self._client.usage, spend_cap=self._client.spend_cap
        )
        if not fetched:
            raise failures["balance"]
        await self._record(fetched)
        now = max(value.as_of for value in fetched.values())
        snapshot = AccountSnapshot(
            now=now,
            balance=fetched["balance"].data.balance if "balance" in fetched else None,
            usage=fetched["usage"].data if "usage" in fetched else None,
            spend_cap=fetched["spend_cap"].data if "spend_cap" in fetched else None,
            ledger=await self._ledger_view(fingerprint, now),
        )
        figures = spend_figures(snapshot)
        verdicts = {verdict.name: verdict for verdict in evaluate_rules(rules, snapshot, figures)}
        oldest = min(fetched.values(), key=lambda value: value.as_of)
        stamp = self._stamp(oldest, *fetched.values())

        def compose(name: str, event: AlertEvent, since: datetime | None) -> str:
            verdict = verdicts[name].model_copy(update={"since": since})
            return json.dumps(alert_message(event, verdict, figures, snapshot.balance, stamp["token"], snapshot.now))

        since: dict[str, datetime | None] = {}
        try:
            since = await self._store.record_statuses(
                fingerprint,
                {name: verdict.status for name, verdict in verdicts.items()},
                snapshot.now,
                compose if self._settings.alert_webhook_url else None,
            )
        except StateStoreError as exc:
            state_error = state_error or str(exc)
        return AlertCheck(
            **stamp,
            alerts=[verdict.model_copy(update={"since": since.get(name)}) for name, verdict in verdicts.items()],
            triggered=sum(verdict.status == "triggered" for verdict in verdicts.values()),
            balance=snapshot.balance,
            daily_spent=figures.daily_spent,
            daily_spent_source=figures.daily_spent_source,
            daily_spent_complete=figures.daily_spent_complete,
            burn_rate_credits_per_hour=figures.burn_rate_credits_per_hour,
            burn_rate_lookback_hours=figures.burn_rate_lookback_hours,
            runway_hours=figures.runway_hours,
            state_error=state_error,
            notifications=await self._webhooks.after_check(fingerprint),
        )

    async def _read_together(
        self, **reads: Callable[[], Awaitable[Fetched[Any]]]
    ) -> tuple[dict[str, Fetched[Any]], dict[str, UpstreamError]]:
        """Run the reads concurrently; what each one fetched, and how each one that failed failed."""
        fetched: dict[str, Fetched[Any]] = {}
        failures: dict[str, UpstreamError] = {}

        async def read(name: str, fetch: Callable[[], Awaitable[Fetched[Any]]]) -> None:
            try:
                fetched[name] = await fetch()
            except UpstreamError as exc:
                failures[name] = exc

        async with anyio.create_task_group() as group:
            for name, fetch in reads.items():
                group.start_soon(read, name, fetch)
        return fetched, failures

    async def _record(self, fetched: dict[str, Fetched[Any]]) -> None:
        """Add what fresh reads found to the ledger: a balance reading, the calls listed, the purchases.

        Read together with the usage list, the balance counts every call that list shows (the Date header has
        whole seconds only, so the reading's time moves just past the newest call listed). An answer whose Date was
        not believed adds nothing, nor does a call or purchase dated after the answer that lists it: so no answer
        can move the ledger beyond this machine's now. A state file that cannot be used is logged; it never fails
        the read.
        """
        believed = {name: value for name, value in fetched.items() if value.clock_note is None}
        balance, usage, history = (believed.get(name) for name in ("balance", "usage", "history"))
        listed = [] if usage is None else _listed_in_time(usage)
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
                cutoff = reading.at - self._settings.ledger_call_days * DAY_MS
                await self._store.forget_calls_before(fingerprint, cutoff)
        except StateStoreError as exc:
            logger.warning("Could not add to the spend ledger: %s", exc)

    async def _ledger_view(self, fingerprint: str, now: datetime) -> LedgerView | None:
        """Today's spend and the trailing median from the ledger, for the alert rules; None without a ledger."""
        week_before = day_start(to_ms(now)) - TRAILING_DAYS * DAY_MS
        try:
            ledger, _ = await self._store.load_ledger(fingerprint, week_before)
        except StateStoreError:
            return None
        if ledger.last_reading is None:
            return None
        end = ledger.last_reading + 1
        today = ledger.spend(day_start(ledger.last_reading), end, detail=False)
        median, _ = trailing_median(ledger, day_start(ledger.last_reading))
        return LedgerView(today_credits=today.credits, today_exact=today.exact, trailing_median=median)

    async def _take_snapshot(self) -> tuple[dict[str, Fetched[Any]], dict[str, UpstreamError]]:
        """Read balance, usage and purchases together and add what came to the ledger; what failed, and how."""
        fetched, failures = await self._read_together(
            balance=self._client.balance, usage=self._client.usage, history=self._client.history
        )
        await self._record(fetched)
        return fetched, failures

    async def snapshot(self) -> AccountBalance:
        """One snapshot for the ledger (what `record` does); an UpstreamError when any part cannot be read."""
        fetched, failures = await self._take_snapshot()
        if failures:
            raise next(iter(failures.values()))
        return self._balance_result(fetched["balance"])

    async def spend_history(self, days: int, group_by: GroupBy, *, fresh: bool = False) -> SpendHistory:
        """Spend per UTC day, hour or endpoint over the last `days` days, from a fresh snapshot and the ledger.

        When the service cannot be read, the ledger still answers as it stands and the note says so, unless
        `fresh` asks for an UpstreamError instead.
        """
        if not 1 <= days <= MAX_HISTORY_DAYS or (group_by == "hour" and days > MAX_HOUR_DAYS):
            raise InvalidInputError(
                f"days must be from 1 to {MAX_HISTORY_DAYS} (at most {MAX_HOUR_DAYS} with group_by 'hour')."
            )
        fetched, failures = await self._take_snapshot()
        if failures and fresh:
            raise next(iter(failures.values()))
        fingerprint = self._tenant.fingerprint
        believed = [to_ms(value.as_of) for value in fetched.values() if value.clock_note is None]
        now = max(believed, default=self._now_ms())
        ledger, first = await self._store.load_ledger(
            fingerprint, min(self._ledger_start(now), day_start(now) - (days - 1) * DAY_MS)
        )
        end = (ledger.last_reading if ledger.last_reading is not None else now) + 1
        parts = history(ledger, first, end, days, group_by)
        notes = _notes(*fetched.values())
        if failures:
            notes.insert(0, f"No fresh snapshot ({next(iter(failures.values()))}); this is the ledger as it stands.")
        elif first is None or first == ledger.last_reading:  # its only snapshot is the one just taken
            notes.insert(
                0,
                "No spend history yet: it starts with this snapshot. Keep history by leaving the watcher on "
                "(TENSORFEED_POLL_SECONDS) or by running `tensorfeed-mcp record` from cron every 10 minutes.",
            )
        doubtful = ledger.doubtful_in(parts.period_start, end)
        if doubtful:
            notes.append(
                f"In {doubtful} stretch{'es' if doubtful > 1 else ''} between snapshots the account's lifetime spend "
                "went down (a balance that rose without a purchase, or purchases that shrank), which cannot be right: "
                "they count as unknown, not as spend."
            )
        balance = fetched.get("balance")
        return SpendHistory(
            as_of=from_ms(end - 1),
            age_seconds=0.0 if balance is not None else round(max(0, self._now_ms() - end) / 1000, 3),
            token=self._tenant.masked,
            period_start=from_ms(parts.period_start),
            period_end=from_ms(end),
            group_by=group_by,
            buckets=parts.buckets,
            totals=parts.totals,
            coverage=parts.coverage,
            trend=parts.trend,
            note=" ".join(dict.fromkeys(notes)) or None,
        )

    @staticmethod
    def _now_ms() -> int:
        return to_ms(datetime.now(UTC))

    @staticmethod
    def _ledger_start(now: int) -> int:
        """Where a ledger load must begin to cover today, the trailing week and the month so far."""
        return min(day_start(now) - TRAILING_DAYS * DAY_MS, month_start(now))


def _listed_in_time(usage: Fetched[UsagePayload]) -> list[UsageEntry]:
    """The calls a usage answer lists that happened before it was given; a call dated later cannot be true."""
    latest = to_ms(usage.as_of) + ANSWER_SLACK_MS
    return [entry for entry in usage.data.recent if to_ms(entry.at) <= latest]


def _notes(*fetched: Fetched[Any]) -> list[str]:
    """What the answers' figures cannot show: a clock not believed, calls dated after the answer that listed them."""
    notes = []
    for value in fetched:
        if value.clock_note is not None:
            notes.append(value.clock_note)
        elif isinstance(value.data, UsagePayload):
            late = len(value.data.recent) - len(_listed_in_time(value))
            if late:
                notes.append(
                    f"TensorFeed listed {late} call{'s' if late > 1 else ''} dated after its own answer, which "
                    "cannot be right; they were kept out of the spend ledger."
                )
    return notes
