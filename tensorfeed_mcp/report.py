"""Plain-text renderings of tool results for the terminal (the check command and the demo)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from tensorfeed_mcp.models import AccountBalance, AccountUsage, AlertCheck, SpendBucket, SpendCap, SpendHistory


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table; numbers are right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], int | float) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_balance(balance: AccountBalance) -> str:
    return (
        f"Balance: {balance.balance:,} credits (about ${balance.usd_estimate.amount_usd:,.2f} at the base rate), "
        f"{balance.spent_lifetime:,} spent of {balance.total_purchased:,} bought. Token {balance.token}."
    )


def format_usage(usage: AccountUsage) -> str:
    rows = [(row.endpoint, row.calls, row.credits, f"{row.share_pct:.1f}%") for row in usage.by_endpoint]
    span = f"{_cell(usage.window_start)} .. {_cell(usage.window_end)}"
    note = " (buffer full: older calls have rolled off)" if usage.buffer_full else ""
    return (
        table(["endpoint", "calls", "credits", "share"], rows)
        + f"\nTotal: {usage.total_calls} calls, {usage.total_credits_spent:,} credits{note}; newest calls {span}."
    )


def format_spend_cap(cap: SpendCap) -> str:
    if cap.daily_cap is None:
        return f"Daily spend cap: none set. Resets {_cell(cap.reset_at)}."
    return (
        f"Daily spend cap: {cap.daily_cap:,} credits; spent today {cap.daily_spent:,}, remaining "
        f"{cap.remaining if cap.remaining is not None else '-'}; resets {_cell(cap.reset_at)}."
    )


def format_alert_check(check: AlertCheck) -> str:
    rows = [(a.name, a.status, a.severity, a.observed, a.threshold, a.message) for a in check.alerts]
    runway = f"{check.runway_hours:g} h" if check.runway_hours is not None else "not running out"
    spent = "-" if check.daily_spent is None else f"{check.daily_spent:,}"
    bound = "" if check.daily_spent_complete else " (at least)"
    summary = (
        f"Balance {check.balance if check.balance is not None else '-'} credits; spent today {spent}{bound} "
        f"(from {check.daily_spent_source.replace('_', ' ')}); burn {check.burn_rate_credits_per_hour:g} credits/h "
        f"over {check.burn_rate_lookback_hours:g} h; runway {runway}. {check.triggered} triggered."
    )
    notifications = check.notifications
    if notifications.configured:
        delivery = notifications.last_delivery
        sent = (
            f"last message ({delivery.event} {delivery.rule}) {delivery.outcome.replace('_', ' ')}: {delivery.detail}"
            if delivery
            else "nothing to send"
        )
        dropped = f", {notifications.dropped} dropped unsent (queue full)" if notifications.dropped else ""
        summary += (
            f"\nWebhook {notifications.destination} ({notifications.format}): {sent}; "
            f"{notifications.pending} queued{dropped}."
        )
    if not rows:
        return summary + "\nNo alert rules are set."
    return table(["rule", "status", "severity", "observed", "threshold", "message"], rows) + "\n" + summary


BAR_WIDTH = 30
EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(value: float, largest: float) -> str:
    """A horizontal bar of unicode blocks, BAR_WIDTH long for `largest`, in eighths of a character."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(8 * BAR_WIDTH * value / largest))
    return "█" * (eighths // 8) + (EIGHTHS[eighths % 8] if eighths % 8 else "")


def _credits(bucket: SpendBucket) -> str:
    if bucket.exact:
        return f"{bucket.credits:,}"
    if bucket.credits_max is None:
        return f"≥ {bucket.credits:,}" if bucket.credits else "unknown"
    return f"{bucket.credits:,} to {bucket.credits_max:,}"


def format_history(history: SpendHistory) -> str:
    """The daily table with a bar per day; bounds are marked (≥ the least it can be, "a to b" a range), and so are days
    that hold a gap between snapshots."""
    gap_days = {
        (gap.start + timedelta(days=offset)).date()
        for gap in history.coverage.gaps
        for offset in range((gap.end.date() - gap.start.date()).days + 1)
    }
    largest = max((bucket.credits_max or bucket.credits for bucket in history.buckets), default=0)
    rows = [
        (
            bucket.start.strftime("%Y-%m-%d"),
            _credits(bucket),
            bucket.calls_seen,
            bucket.unattributed,
            bucket.purchased_credits,
            "gap" if bucket.start.date() in gap_days else "-",
            bar(bucket.credits, largest),
        )
        for bucket in history.buckets
    ]
    totals, trend, coverage = history.totals, history.trend, history.coverage
    median = "-" if trend.trailing_median_daily is None else f"{trend.trailing_median_daily:,g}"
    projected = "-" if trend.projected_month_end is None else f"{trend.projected_month_end:,.0f}"
    first = "-" if coverage.first_snapshot is None else _cell(coverage.first_snapshot)
    lines = [
        table(["day (UTC)", "credits", "calls seen", "unattributed", "bought", "gap", "spend"], rows),
        f"Total {_credits(totals)} credits. Snapshots in the period: {coverage.snapshots} (the first ever "
        f"{first}); gaps over {coverage.gap_limit_hours:g} h: {coverage.gap_count}.",
        f"Median day (last 7) {median}; month to date {trend.month_to_date:,}"
        f"{'' if trend.month_to_date_exact else ' (at least)'}; projected month end {projected}.",
    ]
    if history.note:
        lines.append(history.note)
    return "\n".join(lines)
