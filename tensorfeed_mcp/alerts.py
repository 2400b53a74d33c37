"""Alert rules, spend figures and verdicts: pure functions over account snapshots, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from tensorfeed_mcp.errors import InvalidInputError, shown
from tensorfeed_mcp.models import (
    AlertKind,
    AlertRule,
    AlertStatus,
    AlertVerdict,
    SpendCapPayload,
    UsagePayload,
    is_unsafe_char,
)

RING_BUFFER_SIZE = 100
LOOKBACK_HOURS = 24.0
MIN_SPAN_HOURS = 1.0
MAX_NAME_LENGTH = 64
ENV_PREFIX = "env:"

Unit = Literal["credits", "percent", "hours"]
UNITS: dict[str, Unit] = {
    "balance_below": "credits",
    "daily_spend_above": "credits",
    "daily_cap_used_pct_above": "percent",
    "runway_below_hours": "hours",
    "daily_spend_spike_pct": "percent",
}
# Generous ceilings that still catch a typo (an extra zero or three) before it is saved.
MAX_THRESHOLD: dict[Unit, float] = {"credits": 100_000_000, "percent": 10_000, "hours": 24 * 365 * 10}
KINDS_HELP = (
    "balance_below (credits), daily_spend_above (credits), daily_cap_used_pct_above (percent, 1 to 100), "
    "runway_below_hours (hours), daily_spend_spike_pct (percent above the median day of the last seven)"
)


def make_rule(
    kind: str, threshold: float, name: str | None = None, source: Literal["user", "env"] = "user"
) -> AlertRule:
    """Validate a rule request; raise InvalidInputError naming what is wrong and what is accepted."""
    if kind not in get_args(AlertKind):
        raise InvalidInputError(f"Unknown alert kind {shown(kind)}. Use one of: {KINDS_HELP}.")
    unit = UNITS[kind]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        raise InvalidInputError(f"threshold must be a finite number of {unit}, not {threshold!r}.")
    if kind == "daily_cap_used_pct_above" and not 1 <= threshold <= 100:
        raise InvalidInputError(f"A percent of the cap must be from 1 to 100, not {threshold:g}.")
    if not 0 < threshold <= MAX_THRESHOLD[unit]:
        raise InvalidInputError(
            f"threshold {threshold:g} is out of range for {kind}: give more than 0 and at most "
            f"{MAX_THRESHOLD[unit]:,.0f} {unit}."
        )
    if name is None:
        name = ENV_PREFIX + kind if source == "env" else kind
    elif source == "user":
        _check_name(name)
    return AlertRule(name=name, kind=kind, threshold=float(threshold), unit=unit, source=source)  # type: ignore[arg-type]


def _check_name(name: str) -> None:
    if not name.strip():
        raise InvalidInputError("An alert name must not be empty.")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"An alert name may have at most {MAX_NAME_LENGTH} characters; this one has {len(name)}."
        )
    if any(is_unsafe_char(char) for char in name):
        raise InvalidInputError("An alert name must not contain control, formatting or line separator characters.")
    if name.startswith(ENV_PREFIX):
        raise InvalidInputError(f"Names starting with {ENV_PREFIX!r} are reserved for rules set in the environment.")


@dataclass(frozen=True)
class LedgerView:
    """What the local ledger knows about today: its spend (exact or not) and the trailing daily median."""

    today_credits: int
    today_exact: bool
    trailing_median: float | None


@dataclass(frozen=True)
class AccountSnapshot:
    """What one check saw; a part is None when fetching it failed (or, for the ledger, when it has no file)."""

    now: datetime
    balance: int | None
    usage: UsagePayload | None
    spend_cap: SpendCapPayload | None
    ledger: LedgerView | None = None


@dataclass(frozen=True)
class SpendFigures:
    daily_spent: int | None
    daily_spent_source: Literal["service", "ledger", "usage_buffer"]
    daily_spent_complete: bool
    burn_rate_credits_per_hour: float
    burn_rate_lookback_hours: float
    runway_hours: float | None


def daily_spend(snapshot: AccountSnapshot) -> tuple[int | None, Literal["service", "ledger", "usage_buffer"], bool]:
    """Today's spend: the service's own figure when a cap is set, else the ledger's when it is exact, else summed
    from the visible usage buffer."""
    cap = snapshot.spend_cap
    if cap is not None and cap.daily_cap is not None:
        return cap.daily_spent, "service", True
    if snapshot.ledger is not None and snapshot.ledger.today_exact:
        return snapshot.ledger.today_credits, "ledger", True
    usage = snapshot.usage
    if usage is None:
        return None, "usage_buffer", False
    today = snapshot.now.date()
    spent = sum(entry.credits for entry in usage.recent if entry.at.date() == today)
    sees_every_call = len(usage.recent) >= usage.total_calls and usage.total_calls < RING_BUFFER_SIZE
    oldest_seen_before_today = bool(usage.recent) and min(entry.at for entry in usage.recent).date() < today
    return spent, "usage_buffer", sees_every_call or oldest_seen_before_today


def burn_rate(usage: UsagePayload, now: datetime) -> tuple[float, float]:
    """Credits per hour over the look-back, and the hours it covered (see BURN_RATE_METHOD)."""
    past = [entry for entry in usage.recent if entry.at <= now]
    if not past:
        return 0.0, LOOKBACK_HOURS
    oldest = min(entry.at for entry in past)
    span_hours = min(LOOKBACK_HOURS, max(MIN_SPAN_HOURS, (now - oldest).total_seconds() / 3600))
    since = now - timedelta(hours=span_hours)
    credits = sum(entry.credits for entry in past if entry.at >= since)
    return credits / span_hours, span_hours


def spend_figures(snapshot: AccountSnapshot) -> SpendFigures:
    spent, source, complete = daily_spend(snapshot)
    rate, span = burn_rate(snapshot.usage, snapshot.now) if snapshot.usage is not None else (0.0, LOOKBACK_HOURS)
    runway = snapshot.balance / rate if rate > 0 and snapshot.balance is not None else None
    return SpendFigures(
        daily_spent=spent,
        daily_spent_source=source,
        daily_spent_complete=complete,
        burn_rate_credits_per_hour=round(rate, 4),
        burn_rate_lookback_hours=round(span, 4),
        runway_hours=round(runway, 2) if runway is not None else None,
    )


def _spike(threshold: float, ledger: LedgerView | None, figures: SpendFigures) -> tuple[float | None, AlertStatus, str]:
    """Today's spend against the trailing median: how many percent above it, and whether that passes `threshold`."""
    median = None if ledger is None else ledger.trailing_median
    if median is None:
        return (
            None,
            "unknown",
            (
                "Not enough history yet: this needs three exact full days in the last seven from the ledger "
                "(keep the watcher on, or run tensorfeed-mcp record from cron)."
            ),
        )
    if figures.daily_spent is None:
        return None, "unknown", "Today's spend could not be read."
    if median == 0:
        return None, "unknown", "Nothing was spent on a typical recent day, so there is no median to compare with."
    observed = round(100 * (figures.daily_spent / median - 1), 1)
    if observed > threshold:
        return (
            observed,
            "triggered",
            (
                f"Spent {figures.daily_spent:g} credits today, {observed:g}% above the {median:g} of a typical recent "
                f"day (the median of the last seven), more than {threshold:g}%."
            ),
        )
    if not figures.daily_spent_complete:
        return observed, "unknown", f"At least {figures.daily_spent:g} credits spent today; it may be more."
    return (
        observed,
        "ok",
        (
            f"Spent {figures.daily_spent:g} credits today against a median of {median:g}: {observed:g}%, not more "
            f"than {threshold:g}% above."
        ),
    )


def evaluate_rules(rules: list[AlertRule], snapshot: AccountSnapshot, figures: SpendFigures) -> list[AlertVerdict]:
    """One verdict per rule, `since` left empty for the caller to fill from stored state."""
    return [_evaluate(rule, snapshot, figures) for rule in rules]


def _evaluate(rule: AlertRule, snapshot: AccountSnapshot, figures: SpendFigures) -> AlertVerdict:
    limit = f"{rule.threshold:g}"
    observed: float | None
    status: AlertStatus
    critical = False
    if rule.kind == "balance_below":
        observed = snapshot.balance
        if observed is None:
            status, message = "unknown", "The balance could not be read."
        else:
            status = "triggered" if observed < rule.threshold else "ok"
            critical = observed <= 0
            relation = "below" if status == "triggered" else "not below"
            message = f"Balance is {observed:g} credits, {relation} {limit}."
    elif rule.kind == "daily_spend_above":
        observed = figures.daily_spent
        if observed is None:
            status, message = "unknown", "Today's spend could not be read."
        elif observed > rule.threshold:
            status, message = "triggered", f"Spent {observed:g} credits today (UTC), above {limit}."
            critical = observed >= 2 * rule.threshold
        elif not figures.daily_spent_complete:
            status = "unknown"
            message = (
                f"At least {observed:g} credits spent today; older calls from today have rolled out of the usage "
                "buffer, so it may be more. Set a daily spend cap to get the service's exact figure."
            )
        else:
            status, message = "ok", f"Spent {observed:g} credits today (UTC), not above {limit}."
    elif rule.kind == "daily_cap_used_pct_above":
        cap = snapshot.spend_cap
        if cap is None:
            observed, status, message = None, "unknown", "The spend cap could not be read."
        elif cap.daily_cap is None:
            observed, status, message = None, "not_applicable", "No daily spend cap is set."
        else:
            observed = round(100 * cap.daily_spent / cap.daily_cap, 2)
            status = "triggered" if observed > rule.threshold else "ok"
            critical = observed >= 100
            relation = "above" if status == "triggered" else "not above"
            message = f"{observed:g}% of the {cap.daily_cap} credit daily cap used, {relation} {limit}%."
    elif rule.kind == "daily_spend_spike_pct":
        observed, status, message = _spike(rule.threshold, snapshot.ledger, figures)
        critical = status == "triggered" and observed is not None and observed >= 2 * rule.threshold
    else:
        observed = figures.runway_hours
        if snapshot.usage is None or snapshot.balance is None:
            status, message = "unknown", "Usage or balance could not be read, so the runway is unknown."
        elif observed is None:
            status, message = "ok", "Nothing is being spent, so the credits are not running out."
        else:
            status = "triggered" if observed < rule.threshold else "ok"
            critical = observed < 1
            relation = "below" if status == "triggered" else "not below"
            message = (
                f"About {observed:g} hours of credits left at "
                f"{figures.burn_rate_credits_per_hour:g} credits/hour, {relation} {limit}."
            )
    severity: Literal["info", "warning", "critical"] = "info"
    if status == "triggered":
        severity = "critical" if critical else "warning"
    return AlertVerdict(
        name=rule.name,
        kind=rule.kind,
        threshold=rule.threshold,
        unit=rule.unit,
        source=rule.source,
        observed=observed,
        status=status,
        severity=severity,
        message=message,
        since=None,
    )
