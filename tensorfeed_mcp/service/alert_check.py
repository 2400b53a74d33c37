"""The alert check: fresh balance, usage and cap read together, every rule evaluated, each status change stored
(with its webhook message queued in the same write) and the outbox's state reported."""

from __future__ import annotations

import json
from datetime import datetime

from tensorfeed_mcp.core.alerts import AccountSnapshot, evaluate_rules, spend_figures
from tensorfeed_mcp.errors import StateStoreError
from tensorfeed_mcp.models import AlertCheck
from tensorfeed_mcp.service.answers import read_together, stamp
from tensorfeed_mcp.service.ledger_book import LedgerBook
from tensorfeed_mcp.service.rule_book import RuleBook
from tensorfeed_mcp.service.webhooks import WebhookSender, alert_message
from tensorfeed_mcp.settings.identity import Tenant
from tensorfeed_mcp.store import AlertEvent, Store
from tensorfeed_mcp.upstream.client import TensorFeedClient


class AlertChecker:
    """Checks one tenant's rules; messages are composed only when a webhook is configured (`post_webhooks`)."""

    def __init__(
        self,
        tenant: Tenant,
        client: TensorFeedClient,
        store: Store,
        rules: RuleBook,
        ledger: LedgerBook,
        webhooks: WebhookSender,
        *,
        post_webhooks: bool,
    ) -> None:
        self._tenant = tenant
        self._client = client
        self._store = store
        self._rules = rules
        self._ledger = ledger
        self._webhooks = webhooks
        self._post_webhooks = post_webhooks

    async def check(self) -> AlertCheck:
        """Fetch balance, usage and spend cap concurrently and evaluate every rule against them.

        A part that fails to load makes the rules that need it `unknown`; if all three fail, the error is raised.
        """
        fingerprint = self._tenant.fingerprint
        state_error: str | None = None
        try:
            rules = await self._rules.rules()
        except StateStoreError as exc:  # the environment's rules need no file: evaluate those, and say why
            rules, state_error = list(self._rules.env_rules), str(exc)
        fetched, failures = await read_together(
            balance=self._client.balance, usage=self._client.usage, spend_cap=self._client.spend_cap
        )
        if not fetched:
            raise failures["balance"]
        await self._ledger.record(fetched)
        now = max(value.as_of for value in fetched.values())
        snapshot = AccountSnapshot(
            now=now,
            balance=fetched["balance"].data.balance if "balance" in fetched else None,
            usage=fetched["usage"].data if "usage" in fetched else None,
            spend_cap=fetched["spend_cap"].data if "spend_cap" in fetched else None,
            ledger=await self._ledger.view(now),
        )
        figures = spend_figures(snapshot)
        verdicts = {verdict.name: verdict for verdict in evaluate_rules(rules, snapshot, figures)}
        oldest = min(fetched.values(), key=lambda value: value.as_of)
        stamped = stamp(self._tenant, oldest, *fetched.values())

        def compose(name: str, event: AlertEvent, since: datetime | None) -> str:
            verdict = verdicts[name].model_copy(update={"since": since})
            return json.dumps(alert_message(event, verdict, figures, snapshot.balance, stamped["token"], snapshot.now))

        since: dict[str, datetime | None] = {}
        try:
            since = await self._store.record_statuses(
                fingerprint,
                {name: verdict.status for name, verdict in verdicts.items()},
                snapshot.now,
                compose if self._post_webhooks else None,
            )
        except StateStoreError as exc:
            state_error = state_error or str(exc)
        return AlertCheck(
            **stamped,
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
