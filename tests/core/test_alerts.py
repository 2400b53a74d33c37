"""The pure alert functions: rule validation, today's spend, burn rate and runway, verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tensorfeed_mcp.core.alerts import AccountSnapshot, evaluate_rules, make_rule, spend_figures
from tensorfeed_mcp.errors import InvalidInputError
from tensorfeed_mcp.models import SpendCapPayload, UsageEntry, UsagePayload

NOW = datetime(2026, 4, 27, 18, 0, tzinfo=UTC)


def usage(calls: list[tuple[float, int]], total_calls: int | None = None) -> UsagePayload:
    """Usage whose `recent` holds calls given as (hours before NOW, credits), newest first."""
    entries = [
        UsageEntry(endpoint="/api/premium/routing", credits=credits, at=NOW - timedelta(hours=hours))
        for hours, credits in sorted(calls)
    ]
    return UsagePayload(
        token_balance=None,
        total_calls=len(entries) if total_calls is None else total_calls,
        total_credits_spent=sum(e.credits for e in entries),
        by_endpoint={},
        recent=entries,
    )


def cap(daily_cap: int | None, spent: int) -> SpendCapPayload:
    return SpendCapPayload(
        daily_cap=daily_cap,
        daily_spent=spent if daily_cap else 0,
        remaining=max(0, daily_cap - spent) if daily_cap else None,
        reset_at=datetime(2026, 4, 28, tzinfo=UTC),
        balance=None,
    )


def test_burn_rate_over_full_24_hours() -> None:
    # Calls at 2 h (10 credits), 12 h (20) and 30 h (50) ago: the look-back is 24 h and the 30 h call is outside.
    figures = spend_figures(AccountSnapshot(NOW, 600, usage([(2, 10), (12, 20), (30, 50)]), None))
    assert figures.burn_rate_lookback_hours == 24
    assert figures.burn_rate_credits_per_hour == pytest.approx(30 / 24)
    assert figures.runway_hours == pytest.approx(600 / (30 / 24), abs=0.01)  # 480 h


def test_burn_rate_over_the_span_the_calls_cover() -> None:
    # Four calls of 5 credits over the last 4 hours: 20 credits / 4 h = 5 per hour; 12 credits last 2.4 h.
    figures = spend_figures(AccountSnapshot(NOW, 12, usage([(1, 5), (2, 5), (3, 5), (4, 5)]), None))
    assert figures.burn_rate_lookback_hours == 4
    assert figures.burn_rate_credits_per_hour == 5
    assert figures.runway_hours == 2.4


def test_burn_rate_span_is_at_least_one_hour() -> None:
    figures = spend_figures(AccountSnapshot(NOW, 100, usage([(0.25, 10)]), None))
    assert figures.burn_rate_lookback_hours == 1
    assert figures.burn_rate_credits_per_hour == 10
    assert figures.runway_hours == 10


def test_no_spending_means_no_runway() -> None:
    figures = spend_figures(AccountSnapshot(NOW, 100, usage([]), None))
    assert figures.burn_rate_credits_per_hour == 0
    assert figures.runway_hours is None


def test_daily_spend_from_the_service_when_a_cap_is_set() -> None:
    figures = spend_figures(AccountSnapshot(NOW, 100, usage([(1, 5)]), cap(200, 35)))
    assert (figures.daily_spent, figures.daily_spent_source, figures.daily_spent_complete) == (35, "service", True)


def test_daily_spend_from_the_buffer_counts_only_today() -> None:
    # NOW is 18:00 UTC: calls 2 h and 17 h ago are today, 19 h ago is yesterday.
    figures = spend_figures(AccountSnapshot(NOW, 100, usage([(2, 10), (17, 5), (19, 50)]), cap(None, 0)))
    assert (figures.daily_spent, figures.daily_spent_source, figures.daily_spent_complete) == (15, "usage_buffer", True)


def test_daily_spend_is_a_lower_bound_when_the_full_buffer_starts_today() -> None:
    calls = [(hours / 10, 1) for hours in range(25)]  # 25 visible calls, all today
    figures = spend_figures(AccountSnapshot(NOW, 100, usage(calls, total_calls=100), None))
    assert figures.daily_spent == 25
    assert figures.daily_spent_complete is False
    rule = make_rule("daily_spend_above", 30)
    [verdict] = evaluate_rules([rule], AccountSnapshot(NOW, 100, usage(calls, total_calls=100), None), figures)
    assert verdict.status == "unknown"
    assert "At least 25" in verdict.message


def test_verdicts_for_each_kind() -> None:
    snapshot = AccountSnapshot(NOW, 40, usage([(1, 5), (2, 5), (3, 5), (4, 5)]), cap(100, 90))
    figures = spend_figures(snapshot)  # 5 credits/h, runway 8 h, 90 of 100 spent
    rules = [
        make_rule("balance_below", 50),
        make_rule("daily_spend_above", 100),
        make_rule("daily_cap_used_pct_above", 80),
        make_rule("runway_below_hours", 4),
    ]
    verdicts = {v.kind: v for v in evaluate_rules(rules, snapshot, figures)}
    assert (verdicts["balance_below"].status, verdicts["balance_below"].observed) == ("triggered", 40)
    assert verdicts["balance_below"].severity == "warning"
    assert (verdicts["daily_spend_above"].status, verdicts["daily_spend_above"].observed) == ("ok", 90)
    assert (verdicts["daily_cap_used_pct_above"].status, verdicts["daily_cap_used_pct_above"].observed) == (
        "triggered",
        90,
    )
    assert (verdicts["runway_below_hours"].status, verdicts["runway_below_hours"].observed) == ("ok", 8)


def test_cap_rule_not_applicable_without_a_cap_and_unknown_without_data() -> None:
    rules = [make_rule("daily_cap_used_pct_above", 50), make_rule("balance_below", 10)]
    snapshot = AccountSnapshot(NOW, None, None, cap(None, 0))
    statuses = [v.status for v in evaluate_rules(rules, snapshot, spend_figures(snapshot))]
    assert statuses == ["not_applicable", "unknown"]


def test_zero_balance_is_critical() -> None:
    snapshot = AccountSnapshot(NOW, 0, usage([]), None)
    [verdict] = evaluate_rules([make_rule("balance_below", 10)], snapshot, spend_figures(snapshot))
    assert (verdict.status, verdict.severity) == ("triggered", "critical")


@pytest.mark.parametrize(
    ("kind", "threshold", "name", "fragment"),
    [
        ("balance_over", 10, None, "Unknown alert kind"),
        ("balance_below", -5, None, "out of range"),
        ("balance_below", float("nan"), None, "finite number"),
        ("balance_below", float("inf"), None, "finite number"),
        ("balance_below", 1e12, None, "out of range"),
        ("daily_cap_used_pct_above", 0.5, None, "from 1 to 100"),
        ("daily_cap_used_pct_above", 101, None, "from 1 to 100"),
        ("balance_below", 10, "x" * 65, "at most 64"),
        ("balance_below", 10, "bad\x07name", "control"),
        ("balance_below", 10, "evil\u202ename", "control"),
        ("balance_below", 10, "env:mine", "reserved"),
        ("balance_below", 10, "   ", "empty"),
    ],
)
def test_bad_rules_are_refused_with_what_is_accepted(
    kind: str, threshold: float, name: str | None, fragment: str
) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        make_rule(kind, threshold, name)


def test_rule_defaults() -> None:
    rule = make_rule("runway_below_hours", 48)
    assert (rule.name, rule.unit, rule.source, rule.threshold) == ("runway_below_hours", "hours", "user", 48.0)
    env_rule = make_rule("balance_below", 10, source="env")
    assert (env_rule.name, env_rule.source) == ("env:balance_below", "env")


def test_invalid_input_error_is_not_an_exception_for_valid_64_char_name() -> None:
    assert make_rule("balance_below", 10, "n" * 64).name == "n" * 64
