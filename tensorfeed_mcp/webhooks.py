"""Alert transitions as webhook messages: what a message says, its body in each format, and sending the queued
ones (the state store queues them, so each transition is sent once across processes)."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import httpx2

from tensorfeed_mcp.alerts import SpendFigures
from tensorfeed_mcp.config import Settings, WebhookFormat, webhook_destination
from tensorfeed_mcp.errors import StateStoreError
from tensorfeed_mcp.models import AlertVerdict, Notifications, WebhookDelivery
from tensorfeed_mcp.store import Store

logger = logging.getLogger(__name__)

ATTEMPTS = 3
ATTEMPT_TIMEOUT_SECONDS = 5.0
BACKOFF_SECONDS = 0.5  # doubled after each failed attempt
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

    The detail says what the receiver answered and never quotes the URL (it carries the receiver's key).
    """
    problem = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with anyio.fail_after(ATTEMPT_TIMEOUT_SECONDS):
                response = await http.post(url, json=body)
        except (TimeoutError, httpx2.TimeoutException):
            problem = f"no answer within {ATTEMPT_TIMEOUT_SECONDS:g} s"
        except httpx2.TransportError:
            problem = "could not connect"
        except Exception as exc:  # the exception's text may quote the URL: name only its kind
            problem = f"sending failed ({type(exc).__name__})"
        else:
            status = response.status_code
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


async def send_queued(store: Store, fingerprint: str, settings: Settings) -> WebhookDelivery | None:
    """Post the token's queued alert messages to the webhook, oldest first; return how the last one went.

    After a failure worth retrying the rest stay queued: the receiver is likely down, and the next check (of any
    process) tries again.
    """
    url = settings.alert_webhook_url
    if url is None:
        return None
    queued = await store.claim_messages(fingerprint, time.time())
    if not queued:
        return None
    last: WebhookDelivery | None = None
    async with httpx2.AsyncClient(follow_redirects=False, trust_env=False) as http:
        for position, (message_id, body) in enumerate(queued):
            message = json.loads(body)
            outcome, detail = await deliver(http, url, body_for(message, settings.alert_webhook_format))
            await store.settle_message(message_id, done=outcome != "will_retry")
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
                    await store.settle_message(later_id, done=False)
                break
    return last


async def notifications(
    store: Store, fingerprint: str, settings: Settings, last_delivery: WebhookDelivery | None
) -> Notifications:
    """What check_spend_alerts reports about the webhook: where, which format, what waits, how the last send went."""
    url = settings.alert_webhook_url
    if url is None:
        return Notifications(configured=False, destination=None, format=None, pending=0, last_delivery=None)
    try:
        pending = await store.queued_messages(fingerprint)
    except StateStoreError:
        pending = 0  # the check already reports the state file's problem in state_error
    return Notifications(
        configured=True,
        destination=webhook_destination(url),
        format=settings.alert_webhook_format,
        pending=pending,
        last_delivery=last_delivery,
    )
