"""Alert rules, spend figures and verdicts: pure functions over account snapshots, no I/O."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from tensorfeed_mcp.errors import InvalidInputError, shown
from tensorfeed_mcp.limits import MAX_NAME_LENGTH, SERVICE_CALL_MEMORY
from tensorfeed_mcp.models import (
    AlertRule,
    AlertStatus,
    AlertVerdict,
    SpendCapPayload,
    UsagePayload,
    is_unsafe_char,
)

LOOKBACK_HOURS = 24.0
MIN_SPAN_HOURS = 1.0
ENV_PREFIX = "env:"

Unit = Literal["credits", "percent", "hours"]
# Generous ceilings that still catch a typo (an extra zero or three) before it is saved.
MAX_THRESHOLD: dict[Unit, float] = {"credits": 100_000_000, "percent": 10_000, "hours": 24 * 365 * 10}


def make_rule(
    kind: str, threshold: float, name: str | None = None, source: Literal["user", "env"] = "user"
) -> AlertRule:
    """Validate a rule request; raise InvalidInputError naming what is wrong and what is accepted."""
    spec = ALERT_KINDS.get(kind)
    if spec is None:
        raise InvalidInputError(f"Unknown alert kind {shown(kind)}. Use one of: {KINDS_HELP}.")
    unit = spec.unit
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        raise InvalidInputError(f"threshold must be a finite number of {unit}, not {threshold!r}.")
    if spec.bounds is not None and not spec.bounds.low <= threshold <= spec.bounds.high:
        bounds = spec.bounds
        raise InvalidInputError(f"{bounds.what} must be from {bounds.low:g} to {bounds.high:g}, not {threshold:g}.")
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
    sees_every_call = len(usage.recent) >= usage.total_calls and usage.total_calls < SERVICE_CALL_MEMORY
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


Finding = tuple[float | None, AlertStatus, str, bool]
"""What a kind's evaluator found: the observed value, the status, the message, and whether it is critical."""


def _balance_below(threshold: float, snapshot: AccountSnapshot, figures: SpendFigures) -> Finding:
    observed = snapshot.balance
    if observed is None:
        return None, "unknown", "The balance could not be read.", False
    triggered = observed < threshold
    relation = "below" if triggered else "not below"
    return observed, _status(triggered), f"Balance is {observed:g} credits, {relation} {threshold:g}.", observed <= 0


def _daily_spend_above(threshold: float, snapshot: AccountSnapshot, figures: SpendFigures) -> Finding:
    observed = figures.daily_spent
    if observed is None:
        return None, "unknown", "Today's spend could not be read.", False
    if observed > threshold:
        message = f"Spent {observed:g} credits today (UTC), above {threshold:g}."
        return observed, "triggered", message, observed >= 2 * threshold
    if not figures.daily_spent_complete:
        message = (
            f"At least {observed:g} credits spent today; older calls from today have rolled out of the usage "
            "buffer, so it may be more. Set a daily spend cap to get the service's exact figure."
        )
        return observed, "unknown", message, False
    return observed, "ok", f"Spent {observed:g} credits today (UTC), not above {threshold:g}.", False


def _daily_cap_used_pct_above(threshold: float, snapshot: AccountSnapshot, figures: SpendFigures) -> Finding:
    cap = snapshot.spend_cap
    if cap is None:
        return None, "unknown", "The spend cap could not be read.", False
    if cap.daily_cap is None:
        return None, "not_applicable", "No daily spend cap is set.", False
    observed = round(100 * cap.daily_spent / cap.daily_cap, 2)
    triggered = observed > threshold
    relation = "above" if triggered else "not above"
    message = f"{observed:g}% of the {cap.daily_cap} credit daily cap used, {relation} {threshold:g}%."
    return observed, _status(triggered), message, observed >= 100


def _runway_below_hours(threshold: float, snapshot: AccountSnapshot, figures: SpendFigures) -> Finding:
    observed = figures.runway_hours
    if snapshot.usage is None or snapshot.balance is None:
        return observed, "unknown", "Usage or balance could not be read, so the runway is unknown.", False
    if observed is None:
        return None, "ok", "Nothing is being spent, so the credits are not running out.", False
    triggered = observed < threshold
    relation = "below" if triggered else "not below"
    message = (
        f"About {observed:g} hours of credits left at "
        f"{figures.burn_rate_credits_per_hour:g} credits/hour, {relation} {threshold:g}."
    )
    return observed, _status(triggered), message, observed < 1


def _daily_spend_spike_pct(threshold: float, snapshot: AccountSnapshot, figures: SpendFigures) -> Finding:
    observed, status, message = _spike(threshold, snapshot.ledger, figures)
    return observed, status, message, status == "triggered" and observed is not None and observed >= 2 * threshold


def _status(triggered: bool) -> AlertStatus:
    return "triggered" if triggered else "ok"


@dataclass(frozen=True)
class Bounds:
    """A kind's own threshold range, narrower than its unit's, and what its error calls the threshold."""

    what: str
    low: float
    high: float


@dataclass(frozen=True)
class AlertKindSpec:
    """Everything one alert kind is, declared once: the tool's schema and descriptions, the environment's rules
    and the README's table follow from (or are checked against) these."""

    name: str
    unit: Unit
    unit_help: str  # the unit as help texts and the README show it
    triggers_when: str  # completes "triggers when …"
    env_variable: str  # TENSORFEED_ALERT_…: a rule from the environment
    evaluate: Callable[[float, AccountSnapshot, SpendFigures], Finding]
    bounds: Bounds | None = None


ALERT_KINDS: dict[str, AlertKindSpec] = {
    spec.name: spec
    for spec in (
        AlertKindSpec(
            "balance_below",
            "credits",
            "credits",
            "the balance is below the threshold",
            "TENSORFEED_ALERT_BALANCE_BELOW",
            _balance_below,
        ),
        AlertKindSpec(
            "daily_spend_above",
            "credits",
            "credits",
            "today's spend is above the threshold",
            "TENSORFEED_ALERT_DAILY_SPEND_ABOVE",
            _daily_spend_above,
        ),
        AlertKindSpec(
            "daily_cap_used_pct_above",
            "percent",
            "percent, 1 to 100",
            "today's spend is above that share of the cap (`not_applicable` with no cap)",
            "TENSORFEED_ALERT_DAILY_CAP_PCT_ABOVE",
            _daily_cap_used_pct_above,
            Bounds("A percent of the cap", 1, 100),
        ),
        AlertKindSpec(
            "runway_below_hours",
            "hours",
            "hours",
            "balance / burn rate is below the threshold",
            "TENSORFEED_ALERT_RUNWAY_BELOW_HOURS",
            _runway_below_hours,
        ),
        AlertKindSpec(
            "daily_spend_spike_pct",
            "percent",
            "percent above the median day of the last seven",
            "today's spend is more than that much above the median of the last seven exact days (`unknown` "
            "until the ledger has three)",
            "TENSORFEED_ALERT_DAILY_SPEND_SPIKE_PCT",
            _daily_spend_spike_pct,
        ),
    )
}
KINDS_HELP = ", ".join(f"{spec.name} ({spec.unit_help})" for spec in ALERT_KINDS.values())
TRIGGERS_HELP = "; ".join(f"{spec.name}: {spec.triggers_when}" for spec in ALERT_KINDS.values())


def evaluate_rules(rules: list[AlertRule], snapshot: AccountSnapshot, figures: SpendFigures) -> list[AlertVerdict]:
    """One verdict per rule, `since` left empty for the caller to fill from stored state."""
    return [_evaluate(rule, snapshot, figures) for rule in rules]


def _evaluate(rule: AlertRule, snapshot: AccountSnapshot, figures: SpendFigures) -> AlertVerdict:
    observed, status, message, critical = ALERT_KINDS[rule.kind].evaluate(rule.threshold, snapshot, figures)
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
