"""Spend history from snapshots: exact where the data allows, bounded where it does not. Pure functions, no I/O.

The service's lifetime spend (total purchased minus balance) never decreases, so the credits spent between two
readings of the balance are known exactly, whatever rolled out of the 100-call buffer in between; purchases raise
both terms and so never count as negative spend. Calls seen in the usage list attribute that spend to endpoints
and to moments: an interval between two readings whose seen calls add up to its exact spend had every call seen,
so the calls' own timestamps split it exactly at a day's (or hour's) edge. Anything else is a bound that holds the
truth: at least the calls seen, at most those plus the interval's unattributed credits.

Times are integer milliseconds since the epoch (UTC). A reading covers the calls at or before its time.
"""

from __future__ import annotations

import statistics
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Literal

from tensorfeed_mcp.models import EndpointSpend, HistoryCoverage, SnapshotGap, SpendBucket, SpendTrend

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
GAP_LIMIT_HOURS = 6.0
TRAILING_DAYS = 7
MIN_TRAILING_DAYS = 3
TOP_ENDPOINTS = 3
MAX_GAPS_SHOWN = 10


@dataclass(frozen=True)
class Reading:
    """The account at one moment: lifetime spend and lifetime purchases, in credits."""

    at: int
    spent: int
    purchased: int


@dataclass(frozen=True)
class SeenCall:
    """`count` calls with the same time, endpoint and credits (two such calls are two calls)."""

    at: int
    endpoint: str
    credits: int
    count: int = 1


@dataclass(frozen=True)
class SeenPurchase:
    at: int
    credits: int


@dataclass
class Figure:
    """Spend in a window: `credits` exact, or a lower bound with `credits_max` the upper (None: unknown)."""

    credits: int = 0
    credits_max: int | None = 0
    calls_seen: int = 0
    attributed: int = 0
    purchased: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)
    calls_by_endpoint: Counter[str] = field(default_factory=Counter)

    @property
    def exact(self) -> bool:
        return self.credits_max == self.credits

    @property
    def unattributed(self) -> int:
        return max(0, self.credits - self.attributed)


class Ledger:
    """A token's readings, seen calls and purchases, indexed for spend questions over any window."""

    def __init__(
        self, readings: Sequence[Reading], calls: Sequence[SeenCall], purchases: Sequence[SeenPurchase]
    ) -> None:
        self.readings = sorted(readings, key=lambda reading: reading.at)
        self.calls = sorted(calls, key=lambda call: call.at)
        self.purchases = sorted(purchases, key=lambda purchase: purchase.at)
        self._reading_at = [reading.at for reading in self.readings]
        self._call_at = [call.at for call in self.calls]
        self._credits_before = [0]
        for call in self.calls:
            self._credits_before.append(self._credits_before[-1] + call.credits * call.count)
        # Per interval k, between readings k and k+1: its exact spend, and whether its seen calls account for it.
        self._spend = [max(0, later.spent - earlier.spent) for earlier, later in pairwise(self.readings)]
        self._complete = [
            self.seen_credits(earlier.at + 1, later.at) == spend
            for (earlier, later), spend in zip(pairwise(self.readings), self._spend, strict=True)
        ]

    @property
    def first_reading(self) -> int | None:
        return self.readings[0].at if self.readings else None

    @property
    def last_reading(self) -> int | None:
        return self.readings[-1].at if self.readings else None

    def seen_credits(self, first: int, last: int) -> int:
        """Credits of the seen calls with first <= at <= last."""
        if last < first:
            return 0
        return (
            self._credits_before[bisect_right(self._call_at, last)]
            - self._credits_before[bisect_left(self._call_at, first)]
        )

    def spend(self, start: int, end: int) -> Figure:
        """What was spent with start <= time < end, and which seen calls and purchases fall there."""
        first, last = start, end - 1
        figure = Figure()
        for call in self.calls[bisect_left(self._call_at, first) : bisect_right(self._call_at, last)]:
            figure.calls_seen += call.count
            figure.attributed += call.credits * call.count
            figure.by_endpoint[call.endpoint] += call.credits * call.count
            figure.calls_by_endpoint[call.endpoint] += call.count
        figure.purchased = sum(p.credits for p in self.purchases if first <= p.at <= last)
        if not self.readings:
            figure.credits, figure.credits_max = figure.attributed, None
            return figure
        low, high, bounded = 0, 0, True
        head, tail = self.readings[0].at, self.readings[-1].at
        if first <= head:  # before the first reading only the seen calls are known
            low += self.seen_credits(first, min(last, head))
            bounded = False
        if last > tail:
            low += self.seen_credits(max(first, tail + 1), last)
            bounded = False
        # Intervals k = (reading k, reading k+1] that meet [first, last].
        begin = max(0, bisect_left(self._reading_at, first) - 1)
        stop = min(len(self._spend), bisect_left(self._reading_at, last))
        for k in range(begin, stop):
            opens, closes = self._reading_at[k] + 1, self._reading_at[k + 1]
            inside_first, inside_last = max(first, opens), min(last, closes)
            if inside_first > inside_last:
                continue
            spend = self._spend[k]
            if (inside_first, inside_last) == (opens, closes):
                low, high = low + spend, high + spend
                continue
            seen_inside = self.seen_credits(inside_first, inside_last)
            if self._complete[k]:
                low, high = low + seen_inside, high + seen_inside
            else:
                unseen = max(0, spend - self.seen_credits(opens, closes))
                low += min(seen_inside, spend)
                high += min(spend, seen_inside + unseen)
        figure.credits, figure.credits_max = low, high if bounded else None
        return figure

    def gaps(self, start: int, end: int, limit_ms: int) -> list[tuple[int, int]]:
        """Stretches between consecutive readings longer than `limit_ms` that overlap [start, end)."""
        return [
            (earlier, later)
            for earlier, later in pairwise(self._reading_at)
            if later - earlier > limit_ms and later > start and earlier < end
        ]

    def readings_in(self, start: int, end: int) -> int:
        return bisect_left(self._reading_at, end) - bisect_left(self._reading_at, start)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def day_start(moment: int) -> int:
    return moment - moment % DAY_MS


def day_of(moment: int) -> date:
    return from_ms(moment).date()


def month_start(moment: int) -> int:
    first = from_ms(moment).date().replace(day=1)
    return to_ms(datetime(first.year, first.month, 1, tzinfo=UTC))


def next_month_start(moment: int) -> int:
    first = from_ms(moment).date().replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return to_ms(datetime(following.year, following.month, 1, tzinfo=UTC))


def windows(end: int, days: int, step_ms: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) windows of `step_ms` covering the `days` UTC days up to `end`; the last ends at
    `end` (one millisecond past the newest reading), so it covers the day so far."""
    period_start = day_start(end - 1) - (days - 1) * DAY_MS
    edges = list(range(period_start, end, step_ms))
    return [(edge, min(edge + step_ms, end)) for edge in edges]


def trailing_median(ledger: Ledger, today_start: int) -> tuple[float | None, int]:
    """The median of the exact full UTC days among the TRAILING_DAYS before `today_start`, and how many there
    were; None with fewer than MIN_TRAILING_DAYS."""
    exact = [
        figure.credits
        for figure in (
            ledger.spend(today_start - back * DAY_MS, today_start - (back - 1) * DAY_MS)
            for back in range(1, TRAILING_DAYS + 1)
        )
        if figure.exact
    ]
    if len(exact) < MIN_TRAILING_DAYS:
        return None, len(exact)
    return float(statistics.median(exact)), len(exact)


def trend(ledger: Ledger, end: int) -> SpendTrend:
    """Trailing daily median, month to date and a projection to month end at the median's rate."""
    median, used = trailing_median(ledger, day_start(end - 1))
    month = ledger.spend(month_start(end - 1), end)
    remaining_days = (next_month_start(end - 1) - end) / DAY_MS
    projected = None if median is None else round(month.credits + median * remaining_days, 1)
    return SpendTrend(
        trailing_days=used,
        trailing_median_daily=median,
        month_to_date=month.credits,
        month_to_date_exact=month.exact,
        projected_month_end=projected,
    )


GroupBy = Literal["day", "hour", "endpoint"]


@dataclass(frozen=True)
class HistoryParts:
    period_start: int
    buckets: list[SpendBucket]
    totals: SpendBucket
    coverage: HistoryCoverage
    trend: SpendTrend


def history(ledger: Ledger, first_snapshot: int | None, end: int, days: int, group_by: GroupBy) -> HistoryParts:
    """The `days` UTC days up to `end` (exclusive) as day or hour buckets, or per endpoint, with totals, coverage
    and trend."""
    spans = windows(end, days, HOUR_MS if group_by == "hour" else DAY_MS)
    period_start = spans[0][0]
    overall = ledger.spend(period_start, end)
    totals = bucket(period_start, end, overall)
    if group_by == "endpoint":
        buckets = [
            SpendBucket(
                start=from_ms(period_start),
                end=from_ms(end),
                endpoint=name,
                credits=credits,
                credits_max=None if overall.credits_max is None else credits + overall.unattributed,
                exact=overall.exact and overall.unattributed == 0,
                calls_seen=overall.calls_by_endpoint[name],
                attributed=credits,
                unattributed=0,
                by_endpoint=[],
                purchased_credits=0,
            )
            for name, credits in overall.by_endpoint.most_common()
        ]
    else:
        buckets = [bucket(start, stop, ledger.spend(start, stop)) for start, stop in spans]
    gaps = ledger.gaps(period_start, end, int(GAP_LIMIT_HOURS * HOUR_MS))
    longest = sorted(sorted(gaps, key=lambda gap: gap[0] - gap[1])[:MAX_GAPS_SHOWN])
    coverage = HistoryCoverage(
        first_snapshot=None if first_snapshot is None else from_ms(first_snapshot),
        snapshots=ledger.readings_in(period_start, end),
        gap_limit_hours=GAP_LIMIT_HOURS,
        gap_count=len(gaps),
        gaps=[
            SnapshotGap(start=from_ms(start), end=from_ms(stop), hours=round((stop - start) / HOUR_MS, 2))
            for start, stop in longest
        ],
    )
    return HistoryParts(period_start, buckets, totals, coverage, trend(ledger, end))


def bucket(start: int, end: int, figure: Figure) -> SpendBucket:
    """A Figure as a result bucket: the endpoints with the most credits (TOP_ENDPOINTS), then the rest as 'other'."""
    ranked = figure.by_endpoint.most_common()
    rows = [
        EndpointSpend(endpoint=name, credits=credits, calls=figure.calls_by_endpoint[name])
        for name, credits in ranked[:TOP_ENDPOINTS]
    ]
    if len(ranked) > TOP_ENDPOINTS:
        rest = [name for name, _ in ranked[TOP_ENDPOINTS:]]
        rows.append(
            EndpointSpend(
                endpoint="other",
                credits=sum(figure.by_endpoint[name] for name in rest),
                calls=sum(figure.calls_by_endpoint[name] for name in rest),
            )
        )
    return SpendBucket(
        start=from_ms(start),
        end=from_ms(end),
        endpoint=None,
        credits=figure.credits,
        credits_max=figure.credits_max,
        exact=figure.exact,
        calls_seen=figure.calls_seen,
        attributed=figure.attributed,
        unattributed=figure.unattributed,
        by_endpoint=rows,
        purchased_credits=figure.purchased,
    )
