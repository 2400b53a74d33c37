"""AccountService: the answers the tools give, built from client snapshots. Nothing here knows about MCP."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx2

from tensorfeed_mcp.alerts import AccountSnapshot, evaluate_rules, make_rule, spend_figures
from tensorfeed_mcp.client import Fetched, TensorFeedClient, validate_spend_cap
from tensorfeed_mcp.config import Settings, mask_token, token_fingerprint, webhook_destination
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
    Notifications,
    PaymentHistory,
    Purchase,
    SpendCap,
    SpendCapChange,
    SpendCapPayload,
    UsageCall,
    UsdEstimate,
    WebhookDelivery,
)
from tensorfeed_mcp.store import AlertEvent, AlertStore
from tensorfeed_mcp.webhooks import alert_message, body_for, deliver

logger = logging.getLogger(__name__)

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
        verdicts = {verdict.name: verdict for verdict in evaluate_rules(rules, snapshot, figures)}
        oldest = min(fetched.values(), key=lambda value: value.as_of)
        stamp = self._stamp(oldest)

        def compose(name: str, event: AlertEvent, since: datetime | None) -> str:
            verdict = verdicts[name].model_copy(update={"since": since})
            return json.dumps(alert_message(event, verdict, figures, snapshot.balance, stamp["token"], snapshot.now))

        since: dict[str, datetime | None] = {}
        last_delivery: WebhookDelivery | None = None
        try:
            since = await anyio.to_thread.run_sync(
                self._store.record_statuses,
                fingerprint,
                {name: verdict.status for name, verdict in verdicts.items()},
                snapshot.now,
                compose if self._settings.alert_webhook_url else None,
            )
            last_delivery = await self._send_queued(fingerprint)
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
            notifications=await self._notifications(fingerprint, last_delivery),
        )

    async def _send_queued(self, fingerprint: str) -> WebhookDelivery | None:
        """Post the token's queued alert messages to the webhook, oldest first; return how the last one went.

        After a failure worth retrying the rest stay queued: the receiver is likely down, and the next check
        (of any process) tries again.
        """
        url = self._settings.alert_webhook_url
        if url is None:
            return None
        queued = await anyio.to_thread.run_sync(self._store.claim_messages, fingerprint, time.time())
        if not queued:
            return None
        last: WebhookDelivery | None = None
        async with httpx2.AsyncClient(follow_redirects=False, trust_env=False) as http:
            for position, (message_id, body) in enumerate(queued):
                message = json.loads(body)
                outcome, detail = await deliver(http, url, body_for(message, self._settings.alert_webhook_format))
                settle = functools.partial(self._store.settle_message, message_id, done=outcome != "will_retry")
                await anyio.to_thread.run_sync(settle)
                last = WebhookDelivery(
                    at=datetime.now(UTC),
                    rule=message["alert"]["name"],
                    event=message["event"],
                    outcome=outcome,
                    detail=detail,
                )
                if outcome != "delivered":
                    logger.warning("Alert webhook delivery %s: %s", outcome.replace("_", " "), detail)
                if outcome == "will_retry":
                    for later_id, _ in queued[position + 1 :]:
                        release = functools.partial(self._store.settle_message, later_id, done=False)
                        await anyio.to_thread.run_sync(release)
                    break
        return last

    async def _notifications(self, fingerprint: str, last_delivery: WebhookDelivery | None) -> Notifications:
        url = self._settings.alert_webhook_url
        if url is None:
            return Notifications(configured=False, destination=None, format=None, pending=0, last_delivery=None)
        try:
            pending = await anyio.to_thread.run_sync(self._store.queued_messages, fingerprint)
        except StateStoreError:
            pending = 0  # the check already reports the state file's problem in state_error
        return Notifications(
            configured=True,
            destination=webhook_destination(url),
            format=self._settings.alert_webhook_format,
            pending=pending,
            last_delivery=last_delivery,
        )
