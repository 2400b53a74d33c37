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

from bisect import bisect_left, bisect_right
from calendar import monthrange
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, pairwise
from typing import Any, Literal, NamedTuple

from tensorfeed_mcp.models import HistoryCoverage, SnapshotGap, SpendBucket, SpendTrend

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
GAP_LIMIT_HOURS = 6.0
TRAILING_DAYS = 7
MIN_TRAILING_DAYS = 3
TOP_ENDPOINTS = 3
MAX_GAPS_SHOWN = 10


class Reading(NamedTuple):
    """The account at one moment: lifetime spend and lifetime purchases, in credits."""

    at: int
    spent: int
    purchased: int


class SeenCall(NamedTuple):
    """`calls` calls with the same time, endpoint and credits (two such calls are two calls)."""

    at: int
    endpoint: str
    credits: int
    calls: int = 1


class SeenPurchase(NamedTuple):
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
    """A token's readings, seen calls and purchases, indexed for spend questions over any window.

    Every question costs a few binary searches, plus one pass over the seen calls in the window when their
    per-endpoint detail is wanted.
    """

    def __init__(
        self,
        readings: Sequence[tuple[int, int, int]],
        calls: Sequence[tuple[int, str, int, int]],
        purchases: Sequence[tuple[int, int]],
    ) -> None:
        """Rows shaped like Reading, SeenCall and SeenPurchase, each kind in time order (plain tuples do: the store
        hands over its rows), kept as columns, since a year of a busy account holds tens of thousands of them."""
        self._reading_at: list[int]
        self._call_at: list[int]
        self._call_endpoint: list[str]
        self._call_count: list[int]
        self._purchase_at: list[int]
        self._purchase_credits: list[int]
        self._reading_at, spent, _ = _columns(readings, 3)
        steps = [later - earlier for earlier, later in pairwise(spent)]
        # Lifetime spend never decreases, so an interval in which it does holds a wrong reading (a balance that rose
        # without a purchase, purchases that shrank, an absurd figure). Either of its readings may be the wrong one,
        # so the intervals on both sides are in doubt too: all three count as unknown, never as spend.
        falls = [step < 0 for step in steps]
        doubtful = [any(falls[max(0, k - 1) : k + 2]) for k in range(len(steps))]
        self._doubtful: list[int] = [k for k, in_doubt in enumerate(doubtful) if in_doubt]
        # _spend_before[k]: the spend from the first reading to reading k over the intervals not in doubt.
        self._spend_before: list[int] = list(
            accumulate((0 if in_doubt else step for step, in_doubt in zip(steps, doubtful, strict=True)), initial=0)
        )
        self._call_at, self._call_endpoint, credits, self._call_count = _columns(calls, 4)
        self._call_credits: list[int] = [each * count for each, count in zip(credits, self._call_count, strict=True)]
        self._credits_before: list[int] = list(accumulate(self._call_credits, initial=0))
        self._purchase_at, self._purchase_credits = _columns(purchases, 2)

    @property
    def last_reading(self) -> int | None:
        return self._reading_at[-1] if self._reading_at else None

    def seen_credits(self, first: int, last: int) -> int:
        """Credits of the seen calls with first <= at <= last."""
        if last < first:
            return 0
        return (
            self._credits_before[bisect_right(self._call_at, last)]
            - self._credits_before[bisect_left(self._call_at, first)]
        )

    def _doubtful_between(self, first_interval: int, stop_interval: int) -> list[int]:
        """The intervals in doubt among first_interval <= k < stop_interval."""
        return self._doubtful[bisect_left(self._doubtful, first_interval) : bisect_left(self._doubtful, stop_interval)]

    def doubtful_in(self, start: int, end: int) -> int:
        """How many intervals in doubt (see __init__) overlap [start, end)."""
        at = self._reading_at
        return sum(1 for k in self._doubtful if at[k + 1] >= start and at[k] < end)

    def _interval_part(self, k: int, first: int, last: int) -> tuple[int, int | None]:
        """The least and most (None: unknown) of interval k's spend (between readings k and k+1) that fell in
        [first, last]."""
        opens, closes = self._reading_at[k] + 1, self._reading_at[k + 1]
        if max(first, opens) > min(last, closes):  # the window only touches the interval's edge
            return 0, 0
        seen_inside = self.seen_credits(max(first, opens), min(last, closes))
        if self._doubtful_between(k, k + 1):
            return seen_inside, None
        spend = self._spend_before[k + 1] - self._spend_before[k]
        seen_all = self.seen_credits(opens, closes)
        if seen_all == spend:  # every call of the interval was seen: their times split it exactly
            return seen_inside, seen_inside
        return min(seen_inside, spend), min(spend, seen_inside + max(0, spend - seen_all))

    def spend(self, start: int, end: int, *, detail: bool = True) -> Figure:
        """What was spent with start <= time < end; with `detail`, also which seen calls and purchases fall
        there."""
        first, last = start, end - 1
        figure = Figure(attributed=self.seen_credits(first, last))
        if detail:
            begin, stop = bisect_left(self._call_at, first), bisect_right(self._call_at, last)
            by_endpoint, calls_by_endpoint = figure.by_endpoint, figure.calls_by_endpoint
            for endpoint, credits, count in zip(
                self._call_endpoint[begin:stop],
                self._call_credits[begin:stop],
                self._call_count[begin:stop],
                strict=True,
            ):
                by_endpoint[endpoint] += credits
                calls_by_endpoint[endpoint] += count
            figure.calls_seen = sum(self._call_count[begin:stop])
            bought = slice(bisect_left(self._purchase_at, first), bisect_right(self._purchase_at, last))
            figure.purchased = sum(self._purchase_credits[bought])
        at = self._reading_at
        if not at:
            figure.credits, figure.credits_max = figure.attributed, None
            return figure
        low = 0
        high: int | None = 0
        bounded = first > at[0] and last <= at[-1]
        if first <= at[0]:  # before the first reading only the seen calls are known
            low += self.seen_credits(first, min(last, at[0]))
        if last > at[-1]:
            low += self.seen_credits(max(first, at[-1] + 1), last)
        # Readings i..j lie in [first - 1, last]: the intervals between them are wholly inside the window.
        i, j = bisect_left(at, first - 1), bisect_right(at, last) - 1
        if i <= j:
            known = self._spend_before[j] - self._spend_before[i]
            low, high = low + known, known
            for k in self._doubtful_between(i, j):  # wholly inside, but only its seen calls are known
                low += self.seen_credits(at[k] + 1, at[k + 1])
                high = None
        edges = {i - 1, j} if i <= j else {j}  # the intervals the window's edges cut (the same one when i > j)
        for k in edges:
            if 0 <= k < len(at) - 1:
                least, most = self._interval_part(k, first, last)
                low += least
                high = None if high is None or most is None else high + most
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


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as `width` column lists (empty lists when there are no rows)."""
    return [[row[index] for row in rows] for index in range(width)]


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def day_start(moment: int) -> int:
    return moment - moment % DAY_MS


def month_start(moment: int) -> int:
    first = from_ms(moment).date().replace(day=1)
    return to_ms(datetime(first.year, first.month, 1, tzinfo=UTC))


def next_month_start(moment: int) -> int:
    day = from_ms(moment).date()
    return month_start(moment) + monthrange(day.year, day.month)[1] * DAY_MS  # no date past year 9999 is made


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
            ledger.spend(today_start - back * DAY_MS, today_start - (back - 1) * DAY_MS, detail=False)
            for back in range(1, TRAILING_DAYS + 1)
        )
        if figure.exact
    ]
    if len(exact) < MIN_TRAILING_DAYS:
        return None, len(exact)
    import statistics  # deferred: a start-up need not pay for it

    return float(statistics.median(exact)), len(exact)


def trend(ledger: Ledger, end: int) -> SpendTrend:
    """Trailing daily median, month to date and a projection to month end at the median's rate."""
    median, used = trailing_median(ledger, day_start(end - 1))
    month = ledger.spend(month_start(end - 1), end, detail=False)
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
    overall = ledger.spend(period_start, end, detail=group_by == "endpoint")
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
                by_endpoint={},
                purchased_credits=0,
            )
            for name, credits in overall.by_endpoint.most_common()
        ]
    else:
        figures = [ledger.spend(start, stop) for start, stop in spans]
        buckets = [bucket(start, stop, figure) for (start, stop), figure in zip(spans, figures, strict=True)]
        for figure in figures:  # the buckets partition the period: its detail is theirs added up
            overall.by_endpoint.update(figure.by_endpoint)
            overall.calls_by_endpoint.update(figure.calls_by_endpoint)
            overall.calls_seen += figure.calls_seen
            overall.purchased += figure.purchased
    totals = bucket(period_start, end, overall)
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
    rows = dict(ranked[:TOP_ENDPOINTS])
    if len(ranked) > TOP_ENDPOINTS:
        rows["other"] = sum(credits for _, credits in ranked[TOP_ENDPOINTS:])
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
