"""Alert transitions as webhook messages: what a message says, its body in each format, and its delivery."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import anyio
import httpx2

from tensorfeed_mcp.alerts import SpendFigures
from tensorfeed_mcp.config import WebhookFormat
from tensorfeed_mcp.models import AlertVerdict

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
