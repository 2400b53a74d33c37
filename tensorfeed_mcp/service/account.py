"""AccountService: one tenant's account as the tools and commands see it: reads, the cap, and (through the rule
book, the ledger book and the alert checker) rules, history and the alert check. Nothing here knows about MCP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from tensorfeed_mcp.core.ledger import (
    GroupBy,
    from_ms,
    history,
    to_ms,
)
from tensorfeed_mcp.errors import InvalidInputError, UpstreamError
from tensorfeed_mcp.limits import DEFAULT_RECENT_LIMIT, MAX_HISTORY_DAYS, MAX_HOUR_DAYS, SERVICE_CALL_MEMORY
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
    UsdEstimate,
)
from tensorfeed_mcp.service.alert_check import AlertChecker
from tensorfeed_mcp.service.answers import notes, read_together, stamp
from tensorfeed_mcp.service.ledger_book import LedgerBook
from tensorfeed_mcp.service.rule_book import RuleBook
from tensorfeed_mcp.service.webhooks import WebhookSender
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.identity import Tenant, configured_tenant
from tensorfeed_mcp.store import Store, open_store
from tensorfeed_mcp.upstream.client import Fetched, TensorFeedClient, validate_spend_cap

USD_PER_CREDIT = 0.02  # the base rate, 50 credits per dollar; volume purchases get more credits per dollar


class AccountService:
    """One token's account: reads, the spend cap, and alert rules with their verdicts."""

    def __init__(
        self, settings: Settings, tenant: Tenant, client: TensorFeedClient, store: Store, webhooks: WebhookSender
    ) -> None:
        self._tenant = tenant
        self._client = client
        self._rules = RuleBook(tenant, list(settings.env_alert_rules), store)
        self._ledger = LedgerBook(tenant, store, settings.ledger_call_days)
        self._alerts = AlertChecker(
            tenant, client, store, self._rules, self._ledger, webhooks, post_webhooks=bool(settings.alert_webhook_url)
        )

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[AccountService]:
        """An AccountService with its HTTP client and state store, closed on exit; its checks send webhook
        messages before they answer (a command's way: no background)."""
        tenant = configured_tenant(settings.token)
        async with TensorFeedClient(settings, tenant) as client, open_store(settings) as store:
            yield cls(settings, tenant, client, store, WebhookSender(store, settings))

    async def usage(self, endpoint: str | None = None, recent_limit: int = DEFAULT_RECENT_LIMIT) -> AccountUsage:
        """Usage per endpoint, filtered to endpoints containing `endpoint`, with the newest `recent_limit` calls."""
        fetched = await self._client.usage()
        await self._ledger.record({"usage": fetched})
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
            **stamp(self._tenant, fetched),
            token_balance=usage.token_balance,
            total_calls=sum(agg.calls for agg in aggregates.values()) if needle else usage.total_calls,
            total_credits_spent=total_credits,
            by_endpoint=by_endpoint,
            recent=[UsageCall(endpoint=c.endpoint, credits=c.credits, at=c.at) for c in recent[:recent_limit]],
            window_start=min((c.at for c in usage.recent), default=None),
            window_end=max((c.at for c in usage.recent), default=None),
            buffer_full=usage.total_calls >= SERVICE_CALL_MEMORY,
            endpoint_filter=needle,
            upstream_cut=usage.cut,
        )

    async def balance(self) -> AccountBalance:
        fetched = await self._client.balance()
        await self._ledger.record({"balance": fetched})
        return self._balance_result(fetched)

    def _balance_result(self, fetched: Fetched[BalancePayload]) -> AccountBalance:
        data = fetched.data
        return AccountBalance(
            **stamp(self._tenant, fetched),
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
        await self._ledger.record({"history": fetched})
        data = fetched.data
        return PaymentHistory(
            **stamp(self._tenant, fetched),
            purchases=[Purchase(**purchase.model_dump(exclude={"cut"})) for purchase in data.purchases],
            purchase_count=data.purchase_count,
            total_purchased_usd=data.total_purchased_usd,
            total_credits_added=data.total_credits_added,
            current_balance=data.current_balance,
            upstream_cut=data.cut,
        )

    def _spend_cap(self, fetched: Fetched[SpendCapPayload]) -> dict[str, Any]:
        return {**stamp(self._tenant, fetched), **fetched.data.model_dump()}

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
        return await self._rules.rules()

    async def set_alert(self, kind: str, threshold: float, name: str | None) -> AlertRuleSaved:
        return await self._rules.save(kind, threshold, name)

    async def delete_alert(self, name: str) -> AlertRuleDeleted:
        return await self._rules.delete(name)

    async def check_alerts(self) -> AlertCheck:
        """Every rule's verdict on fresh reads; see AlertChecker.check."""
        return await self._alerts.check()

    async def _take_snapshot(self) -> tuple[dict[str, Fetched[Any]], dict[str, UpstreamError]]:
        """Read balance, usage and purchases together and add what came to the ledger; what failed, and how."""
        fetched, failures = await read_together(
            balance=self._client.balance, usage=self._client.usage, history=self._client.history
        )
        await self._ledger.record(fetched)
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
        believed = [to_ms(value.as_of) for value in fetched.values() if value.clock_note is None]
        now = max(believed, default=self._now_ms())
        ledger, first = await self._ledger.load(now, days)
        end = (ledger.last_reading if ledger.last_reading is not None else now) + 1
        parts = history(ledger, first, end, days, group_by)
        found = notes(*fetched.values())
        if failures:
            found.insert(0, f"No fresh snapshot ({next(iter(failures.values()))}); this is the ledger as it stands.")
        elif first is None or first == ledger.last_reading:  # its only snapshot is the one just taken
            found.insert(
                0,
                "No spend history yet: it starts with this snapshot. Keep history by leaving the watcher on "
                "(TENSORFEED_POLL_SECONDS) or by running `tensorfeed-mcp record` from cron every 10 minutes.",
            )
        doubtful = ledger.doubtful_in(parts.period_start, end)
        if doubtful:
            found.append(
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
            note=" ".join(dict.fromkeys(found)) or None,
        )

    @staticmethod
    def _now_ms() -> int:
        return to_ms(datetime.now(UTC))
