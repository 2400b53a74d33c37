"""The ledger's arithmetic on its own (pure functions, no I/O): readings that cannot be right, and edge dates."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from tensorfeed_mcp.core.ledger import DAY_MS, HOUR_MS, Ledger, history, month_start, next_month_start, to_ms

T = to_ms(datetime(2026, 5, 12, tzinfo=UTC))


def ledger_of(spent: list[int], calls: Sequence[tuple[int, int]] = ()) -> Ledger:
    """Readings an hour apart from T with these lifetime spends, and seen calls (hour offset, credits)."""
    readings = [(T + hour * HOUR_MS, value, 1_000) for hour, value in enumerate(spent)]
    return Ledger(readings, [(T + hour * HOUR_MS - 1, "/x", credits, 1) for hour, credits in calls], [])


def test_an_interval_in_which_lifetime_spend_goes_down_and_its_neighbours_are_unknown() -> None:
    """0 -> 50 -> -500 (a balance that rose without a purchase) -> 50 -> 80 -> 90: the dip's recovery is no spend;
    the intervals beside the fall are unknown (only their seen calls count); the rest stay exact."""
    ledger = ledger_of([0, 50, -500, 50, 80, 90], calls=[(1, 20), (3, 7)])
    whole = ledger.spend(T + 1, T + 5 * HOUR_MS + 1)
    assert (whole.credits, whole.credits_max) == (20 + 7 + 30 + 10, None)
    late = ledger.spend(T + 4 * HOUR_MS + 1, T + 5 * HOUR_MS + 1)  # 80 -> 90, two intervals after the fall
    assert (late.credits, late.credits_max) == (10, 10)
    assert ledger.doubtful_in(T, T + 6 * HOUR_MS) == 3
    assert ledger.doubtful_in(T + 4 * HOUR_MS + 1, T + 6 * HOUR_MS) == 0


def test_an_absurd_figure_between_true_ones_is_no_spend() -> None:
    """10 -> 10**12 -> 20 -> 30: the spike is in doubt with both its intervals and the next; nothing absurd counts."""
    ledger = ledger_of([10, 10**12, 20, 30, 40])
    whole = ledger.spend(T + 1, T + 4 * HOUR_MS + 1)
    assert (whole.credits, whole.credits_max) == (10, None)  # only 30 -> 40 is known


def test_a_lifetime_spend_that_never_falls_is_exact_across_every_interval() -> None:
    ledger = ledger_of([0, 5, 5, 12])
    whole = ledger.spend(T + 1, T + 3 * HOUR_MS + 1)
    assert (whole.credits, whole.credits_max, ledger.doubtful_in(T, T + DAY_MS)) == (12, 12, 0)


def test_month_edges_hold_at_the_end_of_the_calendar() -> None:
    """December 9999 has a next month start (31 days on), without making a date past datetime's range."""
    late = to_ms(datetime(9999, 12, 15, 8, tzinfo=UTC))
    assert next_month_start(late) == month_start(late) + 31 * DAY_MS
    assert next_month_start(to_ms(datetime(2028, 2, 10, tzinfo=UTC))) == to_ms(datetime(2028, 3, 1, tzinfo=UTC))


def test_history_on_a_ledger_ending_late_in_9999_does_not_raise() -> None:
    end = to_ms(datetime(9999, 12, 31, 22, tzinfo=UTC))
    ledger = Ledger([(end - HOUR_MS, 0, 0), (end - 1, 3, 0)], [], [])
    parts = history(ledger, end - HOUR_MS, end, 7, "day")
    assert parts.totals.credits == 3 and len(parts.buckets) == 7
