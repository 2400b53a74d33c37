"""Alert transitions as webhook messages: what a message says, its body in each format, and sending the queued
ones (the state store queues them, at most MAX_QUEUED_MESSAGES per token, so each transition is sent once across
processes)."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import anyio.abc
import httpx2

from tensorfeed_mcp.core.alerts import SpendFigures
from tensorfeed_mcp.errors import StateStoreError
from tensorfeed_mcp.models import AlertVerdict, Notifications, WebhookDelivery
from tensorfeed_mcp.settings.environment import Settings, WebhookFormat
from tensorfeed_mcp.settings.policy import webhook_destination
from tensorfeed_mcp.store import Outbox, Store

logger = logging.getLogger(__name__)

ATTEMPTS = 3
ATTEMPT_TIMEOUT_SECONDS = 5.0
BACKOFF_SECONDS = 0.5  # doubled after each failed attempt
RETRY_SECONDS = 5.0  # a background sender's first wait after the receiver did not take a message; doubled each time
MAX_RETRY_SECONDS = 300.0
MAX_REMEMBERED_TOKENS = 1_000  # last deliveries kept in memory (hosted: tenants), the least recent forgotten
Outcome = Literal["delivered", "failed", "will_retry"]


def alert_message(
    event: Literal["triggered", "resolved"],
    verdict: AlertVerdict,
    figures: SpendFigures,
    balance: int | None,
    token: str,
    at: datetime,
) -> dict[str, Any]:
    """The message for one transition, as the `json` format sends it: the verdict as check_spend_alerts reports
    it, with the account's balance, today's spend and runway, and the masked token."""
    return {
        "event": event,
        "alert": verdict.model_dump(mode="json"),
        "balance": balance,
        "daily_spent": figures.daily_spent,
        "runway_hours": figures.runway_hours,
        "token": token,
        "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _number(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}"


def headline(message: dict[str, Any]) -> str:
    """One line: what happened to which rule, the observed value against the threshold, and since when."""
    alert = message["alert"]
    line = (
        f"TensorFeed alert {message['event']}: {alert['name']}. {alert['message']} Observed "
        f"{_number(alert['observed'])} against a threshold of {_number(alert['threshold'])} {alert['unit']}"
    )
    return line + (f", since {alert['since']}." if message["event"] == "triggered" and alert["since"] else ".")


def account_line(message: dict[str, Any]) -> str:
    runway = message["runway_hours"]
    return (
        f"Balance {_number(message['balance'])} credits; spent today {_number(message['daily_spent'])}; runway "
        f"{'not forecast' if runway is None else f'{runway:g} h'}. Token {message['token']}."
    )


def body_for(message: dict[str, Any], fmt: WebhookFormat) -> dict[str, Any]:
    """The POST body in `fmt`: Slack's incoming-webhook shape, Discord's, or the message itself."""
    if fmt == "json":
        return message
    if fmt == "discord":
        return {"content": f"{headline(message)}\n{account_line(message)}"}
    return {
        "text": headline(message),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": headline(message)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": account_line(message)}]},
        ],
    }


async def deliver(http: httpx2.AsyncClient, url: str, body: dict[str, Any]) -> tuple[Outcome, str]:
    """POST `body` to `url`, retrying 5xx, timeouts and connection errors with backoff; never a 4xx or redirect.

    Only the status is read: the answer's body is never (a receiver could answer with gigabytes). The detail says
    what the receiver answered and never quotes the URL (it carries the receiver's key).
    """
    problem = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with anyio.fail_after(ATTEMPT_TIMEOUT_SECONDS):
                async with http.stream("POST", url, json=body) as response:
                    status = response.status_code
        except (TimeoutError, httpx2.TimeoutException):
            problem = f"no answer within {ATTEMPT_TIMEOUT_SECONDS:g} s"
        except httpx2.TransportError:
            problem = "could not connect"
        except Exception as exc:  # the exception's text may quote the URL: name only its kind
            problem = f"sending failed ({type(exc).__name__})"
        else:
            if status < 300:
                return "delivered", f"HTTP {status}"
            if status < 400:
                return "failed", f"HTTP {status}: a redirect, not followed"
            if status < 500:
                return "failed", f"HTTP {status}: refused; check the webhook URL"
            problem = f"HTTP {status}"
        if attempt < ATTEMPTS:
            await anyio.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
    return "will_retry", f"{problem} after {ATTEMPTS} attempts"


class WebhookSender:
    """Posts tokens' queued alert messages to the webhook, oldest first, one at a time, and remembers how the last
    one went for each token.

    A server runs it in the background (`send_in_background`): a check then only wakes it, so no tool call waits on a
    receiver, and a message the receiver did not take is tried again by itself, later and later, while the process
    runs. Otherwise (a `check` or `record` command) each check sends before it answers, for at most the call
    deadline, and what is left stays queued for the next run.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._last: OrderedDict[str, WebhookDelivery] = OrderedDict()
        self._group: anyio.abc.TaskGroup | None = None
        self._woken: dict[str, anyio.Event] = {}  # a token's sending task, by the event that wakes it early

    def send_in_background(self, group: anyio.abc.TaskGroup) -> None:
        """From now on send in `group`'s tasks; cancelling it stops them, and a message being sent then is left
        queued for whoever is next."""
        self._group = group

    async def after_check(self, fingerprint: str) -> Notifications:
        """What a check reports about the webhook, once it has queued the token's transitions: the background
        sender is woken after the report is made (so the report says what this check left), a foreground one has
        sent first."""
        url = self._settings.alert_webhook_url
        if url is None:
            return Notifications(
                configured=False, destination=None, format=None, pending=0, dropped=0, last_delivery=None
            )
        if self._group is None:
            budget = self._settings.deadline_seconds
            with anyio.move_on_after(budget):
                try:
                    await self._send_queue(fingerprint, f"the {budget:g} s allowed for sending ran out")
                except StateStoreError as exc:
                    logger.warning("Alert webhook: the queue could not be read: %s", exc)
        try:
            outbox = await self._store.outbox(fingerprint)
        except StateStoreError:
            outbox = Outbox(0, 0)  # the check already reports the state file's problem in state_error
        report = Notifications(
            configured=True,
            destination=webhook_destination(url),
            format=self._settings.alert_webhook_format,
            pending=outbox.pending,
            dropped=outbox.dropped,
            last_delivery=self._last.get(fingerprint),
        )
        if self._group is not None and outbox.pending:
            self._wake(fingerprint, self._group)
        return report

    def _wake(self, fingerprint: str, group: anyio.abc.TaskGroup) -> None:
        woken = self._woken.get(fingerprint)
        if woken is not None:
            woken.set()
        else:
            self._woken[fingerprint] = anyio.Event()
            group.start_soon(self._keep_sending, fingerprint)

    async def _keep_sending(self, fingerprint: str) -> None:
        """Send the token's queue; after a failure worth retrying, wait (RETRY_SECONDS, doubling up to
        MAX_RETRY_SECONDS, or until the next check wakes it) and send again, until nothing is left and no check
        woke it meanwhile (a message queued while this round finished is not left behind)."""
        wait = RETRY_SECONDS
        try:
            while True:
                woken = self._woken[fingerprint] = anyio.Event()  # a check during this round asks for another
                try:
                    sent_all = await self._send_queue(fingerprint, "the server stopped before the receiver answered")
                except StateStoreError as exc:
                    logger.warning("Alert webhook: the queue could not be read: %s", exc)
                    sent_all = False
                if sent_all and not woken.is_set():
                    return
                if not sent_all:
                    with anyio.move_on_after(wait):
                        await woken.wait()
                    wait = min(2 * wait, MAX_RETRY_SECONDS)
        finally:
            del self._woken[fingerprint]

    async def _send_queue(self, fingerprint: str, stopped: str) -> bool:
        """Send the token's queued messages one by one; True once none is left that this process could take.
        Stopped (cancelled) while a message is out, that message stays queued and `stopped` says why."""
        url = self._settings.alert_webhook_url
        assert url is not None
        async with httpx2.AsyncClient(follow_redirects=False, trust_env=False) as http:
            while True:
                with anyio.CancelScope(shield=True):  # a claim made but not heard of would hold the message a lease
                    claimed = await self._store.claim_message(fingerprint, time.time())
                if claimed is None:
                    return True
                message_id, body = claimed
                message = json.loads(body)
                outcome: Outcome = "will_retry"
                try:
                    outcome, detail = await deliver(http, url, body_for(message, self._settings.alert_webhook_format))
                except anyio.get_cancelled_exc_class():
                    self._remember(fingerprint, message, "will_retry", stopped)
                    raise
                finally:
                    with anyio.CancelScope(shield=True):  # stopped mid-send: leave it queued for the next sender
                        await self._store.settle_message(message_id, done=outcome != "will_retry")
                self._remember(fingerprint, message, outcome, detail)
                if outcome == "will_retry":
                    return False

    def _remember(self, fingerprint: str, message: dict[str, Any], outcome: Outcome, detail: str) -> None:
        if outcome != "delivered":
            logger.warning("Alert webhook delivery %s: %s", outcome.replace("_", " "), detail)
        self._last[fingerprint] = WebhookDelivery(
            at=datetime.now(UTC), rule=message["alert"]["name"], event=message["event"], outcome=outcome, detail=detail
        )
        self._last.move_to_end(fingerprint)
        while len(self._last) > MAX_REMEMBERED_TOKENS:
            self._last.popitem(last=False)
