"""AccountService: the answers the tools give, built from client snapshots. Nothing here knows about MCP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio

from tensorfeed_mcp.alerts import AccountSnapshot, evaluate_rules, make_rule, spend_figures
from tensorfeed_mcp.client import Fetched, TensorFeedClient, validate_spend_cap
from tensorfeed_mcp.config import Settings, mask_token, token_fingerprint
from tensorfeed_mcp.errors import InvalidInputError, StateStoreError, UpstreamError, shown
from tensorfeed_mcp.models import (
    DEFAULT_RECENT_LIMIT,
    AccountBalance,
    AccountUsage,
    AlertCheck,
    AlertRule,
    AlertRuleDeleted,
    AlertRuleSaved,
    EndpointUsage,
    PaymentHistory,
    Purchase,
    SpendCap,
    SpendCapChange,
    SpendCapPayload,
    UsageCall,
    UsdEstimate,
)
from tensorfeed_mcp.store import AlertStore

USD_PER_CREDIT = 0.02  # the base rate, 50 credits per dollar; volume purchases get more credits per dollar


class AccountService:
    """One token's account: reads, the spend cap, and alert rules with their verdicts."""

    def __init__(self, settings: Settings, client: TensorFeedClient) -> None:
        self._settings = settings
        self._client = client
        self._env_rules = list(settings.env_alert_rules)
        self._alert_store: AlertStore | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[AccountService]:
        """An AccountService with its HTTP client, closed on exit."""
        async with TensorFeedClient(settings) as client:
            yield cls(settings, client)

    @property
    def _store(self) -> AlertStore:
        """Made on first use: finding the platform's state folder imports platformdirs, which start-up need not."""
        if self._alert_store is None:
            self._alert_store = AlertStore(self._settings.resolved_state_dir() / "alerts.sqlite3")
        return self._alert_store

    def _stamp(self, fetched: Fetched[Any]) -> dict[str, Any]:
        return {
            "as_of": fetched.as_of,
            "age_seconds": fetched.age_seconds,
            "token": mask_token(self._settings.require_token()),
        }

    async def usage(self, endpoint: str | None = None, recent_limit: int = DEFAULT_RECENT_LIMIT) -> AccountUsage:
        """Usage per endpoint, filtered to endpoints containing `endpoint`, with the newest `recent_limit` calls."""
        fetched = await self._client.usage()
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

    def _fingerprint(self) -> str:
        return token_fingerprint(self._settings.require_token())

    async def rules(self) -> list[AlertRule]:
        """Environment rules first, then the user's saved rules."""
        saved = await anyio.to_thread.run_sync(self._store.list_rules, self._fingerprint())
        return [*self._env_rules, *saved]

    async def set_alert(self, kind: str, threshold: float, name: str | None) -> AlertRuleSaved:
        rule = make_rule(kind, threshold, name)
        action, saved = await anyio.to_thread.run_sync(self._store.save_rule, self._fingerprint(), rule)
        return AlertRuleSaved(rule=rule, action=action, rule_count=len(self._env_rules) + saved)

    async def delete_alert(self, name: str) -> AlertRuleDeleted:
        if any(rule.name == name for rule in self._env_rules):
            raise InvalidInputError(
                f"{shown(name)} comes from the environment (TENSORFEED_ALERT_*); remove the variable to remove it."
            )
        deleted = await anyio.to_thread.run_sync(self._store.delete_rule, self._fingerprint(), name)
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
        fingerprint = self._fingerprint()
        state_error: str | None = None
        try:
            rules = await self.rules()
        except StateStoreError as exc:  # the environment's rules need no file: evaluate those, and say why
            rules, state_error = list(self._env_rules), str(exc)
        results: dict[str, Fetched[Any] | UpstreamError] = {}

        async def fetch(name: str, read: Callable[[], Awaitable[Fetched[Any]]]) -> None:
            try:
                results[name] = await read()
            except UpstreamError as exc:
                results[name] = exc

        async with anyio.create_task_group() as group:
            group.start_soon(fetch, "balance", self._client.balance)
            group.start_soon(fetch, "usage", self._client.usage)
            group.start_soon(fetch, "spend_cap", self._client.spend_cap)
        fetched = {name: value for name, value in results.items() if isinstance(value, Fetched)}
        if not fetched:
            raise results["balance"]  # type: ignore[misc]

        snapshot = AccountSnapshot(
            now=max(value.as_of for value in fetched.values()),
            balance=fetched["balance"].data.balance if "balance" in fetched else None,
            usage=fetched["usage"].data if "usage" in fetched else None,
            spend_cap=fetched["spend_cap"].data if "spend_cap" in fetched else None,
        )
        figures = spend_figures(snapshot)
        verdicts = evaluate_rules(rules, snapshot, figures)
        since: dict[str, datetime | None] = {}
        try:
            since = await anyio.to_thread.run_sync(
                self._store.record_statuses, fingerprint, {v.name: v.status for v in verdicts}, snapshot.now
            )
        except StateStoreError as exc:
            state_error = state_error or str(exc)
        oldest = min(fetched.values(), key=lambda value: value.as_of)
        return AlertCheck(
            **self._stamp(oldest),
            alerts=[verdict.model_copy(update={"since": since.get(verdict.name)}) for verdict in verdicts],
            triggered=sum(verdict.status == "triggered" for verdict in verdicts),
            balance=snapshot.balance,
            daily_spent=figures.daily_spent,
            daily_spent_source=figures.daily_spent_source,
            daily_spent_complete=figures.daily_spent_complete,
            burn_rate_credits_per_hour=figures.burn_rate_credits_per_hour,
            burn_rate_lookback_hours=figures.burn_rate_lookback_hours,
            runway_hours=figures.runway_hours,
            state_error=state_error,
        )
