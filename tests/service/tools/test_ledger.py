"""Spend history from the local ledger (issue 10), through the installed server over stdio, against ground truth.

The sandbox generates traffic on its own clock and reports every call it ever charged; a snapshot is one
`check_spend_alerts` call. Every figure `get_spend_history` gives is checked against that truth: exact figures
equal it, bounds hold it, and attribution never exceeds it.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import stdio_client

from tensorfeed_mcp.errors import ConfigurationError
from tensorfeed_mcp.sandbox import RunningSandbox, SandboxControl
from tensorfeed_mcp.settings.environment import load_settings
from tests.support.cli import EXIT_CANNOT_RUN, EXIT_OK, run
from tests.support.clients import Caller
from tests.support.env import SANDBOX_START, server_env, settings_for
from tests.support.records import WATCHED_TOKENS, read_recorded
from tests.support.servers import stdio_params

pytestmark = pytest.mark.anyio

ACCOUNT = "new"
"""No calls and no cap: only the ledger can know its spend."""
MINUTE, HOUR = 60, 3600
SPIKE_THRESHOLD_PCT = 50.0
UNKNOWN_TOKEN = "tf_live_" + "e7" * 32
WATCHED_TOKENS.append(UNKNOWN_TOKEN)
BAR_BLOCKS = frozenset("▏▎▍▌▋▊▉█▁▂▃▄▅▆▇")
NAMED_ENDPOINT_ROWS = 3
"""A bucket's by_endpoint names the three endpoints with the most credits, then "other" for the rest."""
BOUND_MARKS = ("≥", " to ", "unknown")
"""How `history` marks a day that is a bound: at least, a range, or nothing known."""
SEVEN_ENDPOINTS = [
    ("/api/premium/routing", 1),
    ("/api/premium/news/search", 1),
    ("/api/premium/models/compare", 1),
    ("/api/premium/agents/directory", 5),
    ("/api/premium/benchmarks", 5),
    ("/api/premium/whats-new", 10),
    ("/api/premium/monitor/bulk", 50),
]
"""More endpoints than a bucket names, so its "other" row carries credits too."""


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def midnight_after(moment: datetime) -> datetime:
    return datetime.combine(moment.date() + timedelta(days=1), time(0), tzinfo=UTC)


def move_clock_to(control: SandboxControl, moment: datetime) -> None:
    """Move the sandbox's clock forward to `moment`."""
    control.advance_clock((moment - control.now()).total_seconds())


def move_clock_before_midnight(control: SandboxControl, seconds: float) -> datetime:
    """Move the clock to `seconds` before the next UTC midnight; returns that midnight."""
    midnight = midnight_after(control.now())
    move_clock_to(control, midnight - timedelta(seconds=seconds))
    return midnight


class Truth:
    """An account's ground truth from the sandbox, summed over any window."""

    def __init__(self, control: SandboxControl, account: str = ACCOUNT) -> None:
        data = control.truth(account)
        self.by_day: dict[str, dict[str, Any]] = data["by_day"]
        self.calls = [(when(call["at"]), call["endpoint"], int(call["credits"])) for call in data["calls"]]
        self.purchases = [(when(p["confirmed_at"]), int(p["credits_added"])) for p in data["purchases"]]

    def calls_in(self, start: datetime, end: datetime, endpoint: str | None = None) -> list[tuple[str, int]]:
        return [
            (path, credits)
            for at, path, credits in self.calls
            if start <= at < end and (endpoint is None or path == endpoint)
        ]

    def spent(self, start: datetime, end: datetime, endpoint: str | None = None) -> int:
        return sum(credits for _, credits in self.calls_in(start, end, endpoint))

    def endpoint_credits(self, start: datetime, end: datetime) -> Counter[str]:
        credits: Counter[str] = Counter()
        for path, charged in self.calls_in(start, end):
            credits[path] += charged
        return credits

    def endpoint_calls(self, start: datetime, end: datetime) -> Counter[str]:
        return Counter(path for path, _ in self.calls_in(start, end))

    def purchased(self, start: datetime, end: datetime) -> int:
        return sum(credits for at, credits in self.purchases if start <= at < end)

    def day_credits(self, day: date) -> int:
        return int(self.by_day.get(day.isoformat(), {}).get("credits", 0))


@asynccontextmanager
async def ledger_session(
    sandbox: RunningSandbox, tmp_path: Path, account: str = ACCOUNT, **extra_env: str
) -> AsyncIterator[Caller]:
    """A stdio server for `account` whose state (the ledger) lives in tmp_path/state; its stderr is recorded."""
    stderr = tmp_path / f"stderr-{account}.log"
    params = stdio_params(settings_for(sandbox, tmp_path / "state", account=account), **extra_env)
    try:
        with stderr.open("a") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                yield Caller(client)
    finally:
        read_recorded(stderr)


async def traffic_then_snapshot(
    caller: Caller,
    control: SandboxControl,
    calls: int,
    seconds: float,
    seed: int,
    endpoints: Sequence[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """Have the sandbox make `calls` calls over the next `seconds`, all paid for, then take a snapshot."""
    made = control.traffic(ACCOUNT, calls, seconds, endpoints=endpoints, seed=seed)
    assert made["made"] == calls, made
    return await caller.ok("check_spend_alerts")


def endpoint_rows(bucket: dict[str, Any]) -> list[dict[str, Any]]:
    """A bucket's by_endpoint (the published shape: endpoint -> credits) as rows of {endpoint, credits}."""
    mapping = bucket["by_endpoint"]
    assert isinstance(mapping, dict) and all(isinstance(credits, int) for credits in mapping.values()), mapping
    return [{"endpoint": endpoint, "credits": credits} for endpoint, credits in mapping.items()]


def assert_rows_equal_truth(rows: list[dict[str, Any]], credits: Counter[str]) -> None:
    """by_endpoint names the endpoints with the most credits, exactly as charged, then "other" with all the rest."""
    named = [row for row in rows if row["endpoint"] != "other"]
    other = [row for row in rows if row["endpoint"] == "other"]
    assert len(named) == min(NAMED_ENDPOINT_ROWS, len(credits)) and len(other) <= 1, rows
    for row in named:
        assert row["credits"] == credits[row["endpoint"]], row
    rest = set(credits) - {row["endpoint"] for row in named}
    assert all(credits[path] <= min(row["credits"] for row in named) for path in rest), (rows, credits)
    assert sum(row["credits"] for row in other) == sum(credits[path] for path in rest)


def assert_holds_truth(bucket: dict[str, Any], truth: Truth) -> None:
    """An exact bucket equals the truth; a bound holds it; seen calls never exceed what was charged."""
    start, end = when(bucket["start"]), when(bucket["end"])
    spent = truth.spent(start, end, bucket["endpoint"])
    if bucket["exact"]:
        assert bucket["credits"] == bucket["credits_max"] == spent, (bucket, spent)
    else:
        assert bucket["credits"] <= spent, (bucket, spent)
        assert bucket["credits_max"] is None or spent <= bucket["credits_max"], (bucket, spent)
    assert bucket["attributed"] <= spent and bucket["calls_seen"] <= len(truth.calls_in(start, end, bucket["endpoint"]))
    assert bucket["unattributed"] == bucket["credits"] - bucket["attributed"] >= 0, bucket
    credits = truth.endpoint_credits(start, end)
    for row in endpoint_rows(bucket):
        if row["endpoint"] != "other":
            assert row["credits"] <= credits[row["endpoint"]], row
    if bucket["endpoint"] is None:
        assert sum(row["credits"] for row in endpoint_rows(bucket)) == bucket["attributed"], bucket
        assert bucket["purchased_credits"] == truth.purchased(start, end), bucket


def assert_exact_and_fully_attributed(bucket: dict[str, Any], truth: Truth) -> None:
    """The bucket is exact, equal to the truth, every call seen, and its endpoint rows are the truth's."""
    start, end = when(bucket["start"]), when(bucket["end"])
    assert bucket["exact"], bucket
    assert_holds_truth(bucket, truth)
    assert (bucket["attributed"], bucket["unattributed"]) == (bucket["credits"], 0), bucket
    assert bucket["calls_seen"] == len(truth.calls_in(start, end)), bucket
    assert_rows_equal_truth(endpoint_rows(bucket), truth.endpoint_credits(start, end))


def day_buckets(history: dict[str, Any]) -> dict[date, dict[str, Any]]:
    return {when(bucket["start"]).date(): bucket for bucket in history["buckets"]}


async def test_a_week_snapshotted_every_ten_minutes_is_exact_per_day_and_per_endpoint(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Seven days of over 3,000 calls, a purchase midway, a snapshot every 10 minutes: every day exact and true,
    100 % attributed, per endpoint equal to the truth; the week by endpoint too."""
    control = fresh_sandbox.control
    control.add_purchase(ACCOUNT, 20_000, 400.0)
    chunks = 7 * 24 * 6
    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        first_day = move_clock_before_midnight(control, MINUTE)
        await caller.ok("check_spend_alerts")  # the snapshot before the first day begins
        move_clock_to(control, first_day)
        for chunk in range(chunks):
            if chunk == chunks // 2:
                control.add_purchase(ACCOUNT, 20_000, 400.0)
            await traffic_then_snapshot(caller, control, 3, 10 * MINUTE, seed=chunk, endpoints=SEVEN_ENDPOINTS)
        control.advance_clock(2 * MINUTE)  # so the answer's own snapshot is not skipped as a repeat of the last
        week = await caller.ok("get_spend_history", days=8)
        by_endpoint = await caller.ok("get_spend_history", days=8, group_by="endpoint")
    truth = Truth(control)
    assert len(truth.calls) >= 3000

    days = day_buckets(week)
    assert sorted(days) == [first_day.date() + timedelta(days=n) for n in range(8)]
    for day, bucket in days.items():
        assert bucket["credits"] == truth.day_credits(day)
        assert_exact_and_fully_attributed(bucket, truth)
    assert sum(bucket["purchased_credits"] for bucket in days.values()) == 20_000  # the midway purchase only
    period_start, period_end = when(week["period_start"]), when(week["period_end"])
    assert week["totals"] | {"exact": True, "unattributed": 0, "purchased_credits": 20_000} == week["totals"]
    assert week["totals"]["credits"] == week["totals"]["attributed"] == truth.spent(period_start, period_end)
    assert (week["coverage"]["snapshots"], week["coverage"]["gaps"]) == (chunks + 1, [])

    credits, calls = truth.endpoint_credits(period_start, period_end), truth.endpoint_calls(period_start, period_end)
    assert {bucket["endpoint"]: bucket["credits"] for bucket in by_endpoint["buckets"]} == dict(credits)
    for bucket in by_endpoint["buckets"]:
        assert (bucket["exact"], bucket["calls_seen"], bucket["unattributed"]) == (True, calls[bucket["endpoint"]], 0)


async def test_snapshots_three_hours_apart_give_exact_figures_and_bounds_that_hold_the_truth(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """With the buffer rolling over between snapshots, exact days still equal the truth, days whose edge fell in
    an unattributed interval are bounds that hold it, by day, by hour and by endpoint."""
    control = fresh_sandbox.control
    control.add_purchase(ACCOUNT, 60_000, 1200.0)
    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        first_day = move_clock_before_midnight(control, 90 * MINUTE)
        await caller.ok("check_spend_alerts")
        heavy_midnight = first_day + timedelta(days=2)  # the one midnight crossed by an interval of unseen calls
        for interval in range(28):
            start, end = control.now(), control.now() + timedelta(hours=3)
            seen_midnight = start.date() != end.date() != heavy_midnight.date()
            calls = 20 if seen_midnight else 130  # 130 roll the 100-call buffer over; 20 are all listed
            await traffic_then_snapshot(caller, control, calls, 3 * HOUR, seed=interval, endpoints=SEVEN_ENDPOINTS)
        by_day = await caller.ok("get_spend_history", days=4)
        by_hour = await caller.ok("get_spend_history", days=4, group_by="hour")
        by_endpoint = await caller.ok("get_spend_history", days=4, group_by="endpoint")
    truth = Truth(control)

    days = day_buckets(by_day)
    assert sorted(days) == [first_day.date() + timedelta(days=n) for n in range(4)]
    exact_days = {day for day, bucket in days.items() if bucket["exact"]}
    assert exact_days == {first_day.date(), first_day.date() + timedelta(days=3)}
    for day, bucket in days.items():
        assert_holds_truth(bucket, truth)
        assert bucket["credits_max"] is not None, bucket  # every day lies between snapshots
        if day in exact_days:
            assert bucket["unattributed"] == truth.day_credits(day) - bucket["attributed"] > 0
    assert len(by_hour["buckets"]) > 72
    for bucket in by_hour["buckets"] + by_endpoint["buckets"]:
        assert_holds_truth(bucket, truth)
    totals, spent = by_day["totals"], truth.spent(when(by_day["period_start"]), when(by_day["period_end"]))
    assert totals["exact"] and totals["credits"] == spent  # the unattributed intervals lie inside the period
    assert totals["unattributed"] == spent - totals["attributed"] > 0
    assert not any(bucket["exact"] for bucket in by_endpoint["buckets"])  # exact needs every call seen


async def test_twelve_hours_without_a_snapshot_are_a_gap_and_the_total_across_them_is_exact(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A stretch of 12 hours with no snapshot is listed as a gap of about 12 hours; the day's total stays exact."""
    control = fresh_sandbox.control
    control.add_purchase(ACCOUNT, 20_000, 400.0)
    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        move_clock_before_midnight(control, 2 * HOUR)
        await caller.ok("check_spend_alerts")
        for hour in range(4):
            await traffic_then_snapshot(caller, control, 10, HOUR, seed=hour)
        gap_start = control.now()
        await traffic_then_snapshot(caller, control, 300, 12 * HOUR, seed=4)
        gap_end = control.now()
        for hour in range(2):
            await traffic_then_snapshot(caller, control, 10, HOUR, seed=5 + hour)
        today = await caller.ok("get_spend_history", days=1)
    truth = Truth(control)

    coverage = today["coverage"]
    assert (coverage["gap_count"], coverage["gap_limit_hours"], len(coverage["gaps"])) == (1, 6, 1)
    gap = coverage["gaps"][0]
    assert abs(when(gap["start"]) - gap_start) < timedelta(seconds=2)
    assert abs(when(gap["end"]) - gap_end) < timedelta(seconds=2)
    assert gap["hours"] == pytest.approx(12, abs=0.05)
    [bucket] = today["buckets"]
    assert_holds_truth(bucket, truth)
    assert bucket["exact"] and bucket["unattributed"] > 0
    assert today["totals"]["exact"] and today["totals"]["credits"] == truth.day_credits(gap_start.date())


async def test_a_midnight_and_a_purchase_between_two_snapshots(fresh_sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Calls seen on both sides of a midnight split the interval exactly by their timestamps; a purchase in it is no
    negative spend and shows on its day; three identical calls count three times."""
    control = fresh_sandbox.control
    control.add_purchase(ACCOUNT, 2_000, 40.0)
    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        first_day = move_clock_before_midnight(control, MINUTE)
        await caller.ok("check_spend_alerts")
        move_clock_to(control, first_day + timedelta(hours=22))
        control.traffic(ACCOUNT, 10, HOUR, seed=1)
        assert control.add_calls(ACCOUNT, "/api/premium/whats-new", 10, count=3) == 3
        control.add_purchase(ACCOUNT, 500, 10.0)
        control.traffic(ACCOUNT, 10, 2 * HOUR, seed=2)
        await caller.ok("check_spend_alerts")
        history = await caller.ok("get_spend_history", days=2)
    truth = Truth(control)

    days = day_buckets(history)
    assert sorted(days) == [first_day.date(), first_day.date() + timedelta(days=1)]
    for day, bucket in days.items():
        assert truth.day_credits(day) > 0
        assert bucket["credits"] == truth.day_credits(day)
        assert_exact_and_fully_attributed(bucket, truth)
    assert days[first_day.date()]["purchased_credits"] == 500
    assert history["totals"]["purchased_credits"] == 500
    assert history["totals"]["credits"] == sum(truth.day_credits(day) for day in days)


async def test_a_new_token_starts_a_new_ledger(fresh_sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Another token on the same state folder sees none of the first one's history, and is told how to start one."""
    control = fresh_sandbox.control
    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        for hour in range(3):
            await traffic_then_snapshot(caller, control, 2, HOUR, seed=hour)
        first = await caller.ok("get_spend_history", days=1)
    async with ledger_session(fresh_sandbox, tmp_path, account="low") as caller:
        other = await caller.ok("get_spend_history", days=1, group_by="endpoint")
    control.advance_clock(MINUTE)  # so the next answer's own snapshot is a new one, not a repeat of the last
    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        again = await caller.ok("get_spend_history", days=1)

    assert other["coverage"]["snapshots"] == 1
    assert when(other["coverage"]["first_snapshot"]) + timedelta(milliseconds=1) == when(other["period_end"])
    low_endpoints = {endpoint for _, endpoint, _ in Truth(control, "low").calls}
    assert {bucket["endpoint"] for bucket in other["buckets"]} <= low_endpoints
    assert again["coverage"]["snapshots"] == first["coverage"]["snapshots"] + 1
    assert again["coverage"]["first_snapshot"] == first["coverage"]["first_snapshot"]
    assert first["note"] is None and again["note"] is None
    assert other["note"] is not None and "record" in other["note"]  # its only snapshot is the one just taken


def expected_spike(truth: Truth, today: date, first_exact_day: date) -> tuple[str, float | None]:
    """The spike rule's status and observed percent from the truth, given the first day the ledger has exact."""
    full_days = [today - timedelta(days=back) for back in range(1, 8)]
    exact = [truth.day_credits(day) for day in full_days if day >= first_exact_day]
    if len(exact) < 3:
        return "unknown", None
    median = statistics.median(exact)
    above = (truth.day_credits(today) - median) / median * 100
    return ("triggered" if above > SPIKE_THRESHOLD_PCT else "ok"), above


async def test_the_spike_rule_is_unknown_for_three_days_then_ok_then_triggered_then_ok(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """daily_spend_spike_pct stays unknown until three full exact days exist, then compares today with their median;
    today's daily_spend comes from the ledger, exact though the buffer rolled over."""
    control = fresh_sandbox.control
    control.add_purchase(ACCOUNT, 40_000, 800.0)
    first_day = move_clock_before_midnight(control, 30 * MINUTE)
    statuses: list[str] = []

    def check_spike(check: dict[str, Any], truth: Truth) -> None:
        [spike] = [alert for alert in check["alerts"] if alert["name"] == "spike"]
        status, observed = expected_spike(truth, control.now().date(), first_day.date())
        assert (spike["kind"], spike["unit"], spike["status"]) == ("daily_spend_spike_pct", "percent", status)
        assert spike["observed"] == (None if observed is None else pytest.approx(observed, abs=0.1))
        statuses.append(status)

    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        await caller.ok("set_spend_alert", kind="daily_spend_spike_pct", threshold=SPIKE_THRESHOLD_PCT, name="spike")
        check_spike(await caller.ok("check_spend_alerts"), Truth(control))
        move_clock_to(control, first_day)
        for hour in range(3 * 24):
            check = await traffic_then_snapshot(caller, control, 4 + hour // 24, HOUR, seed=hour)
            check_spike(check, Truth(control))
        for chunk in range(14):
            check = await traffic_then_snapshot(caller, control, 25, 10 * MINUTE, seed=100 + chunk)
            truth = Truth(control)
            check_spike(check, truth)
        assert (check["daily_spent"], check["daily_spent_source"]) == (
            truth.day_credits(control.now().date()),
            "ledger",
        )
        assert check["daily_spent_complete"]
        move_clock_to(control, midnight_after(control.now()) + timedelta(minutes=1))
        check_spike(await caller.ok("check_spend_alerts"), Truth(control))

    transitions = [status for n, status in enumerate(statuses) if n == 0 or statuses[n - 1] != status]
    assert transitions == ["unknown", "ok", "triggered", "ok"]


def assert_fails_with_one_line(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == EXIT_CANNOT_RUN and done.stdout == "", done
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


async def test_record_and_history_on_the_command_line(fresh_sandbox: RunningSandbox, tmp_path: Path) -> None:
    """`record` takes a snapshot and prints one line; `history` prints one row per day with a bar, bounds and gaps
    marked; both exit 0, or 2 with one line on stderr for an unknown token or an unreachable API."""
    control = fresh_sandbox.control
    env = server_env(settings_for(fresh_sandbox, tmp_path / "state", account=ACCOUNT))
    control.add_purchase(ACCOUNT, 2_000, 40.0)
    midnight = move_clock_before_midnight(control, HOUR)
    for seed, hours in enumerate((1, 1, 7)):  # the last stretch, over the 6-hour limit, is a gap
        recorded = run("record", env=env)
        assert recorded.returncode == EXIT_OK and len(recorded.stdout.strip().splitlines()) == 1, recorded
        control.traffic(ACCOUNT, 10, hours * HOUR, seed=seed)
    assert run("record", env=env).returncode == EXIT_OK

    as_json = run("history", "--days", "3", "--json", env=env)
    assert as_json.returncode == EXIT_OK, as_json.stderr
    history = json.loads(as_json.stdout)
    table = run("history", "--days", "3", env=env)
    assert table.returncode == EXIT_OK, table.stderr
    truth = Truth(control)
    assert [bucket["exact"] for bucket in history["buckets"]] == [False, False, True]  # before the first record
    for bucket in history["buckets"]:
        assert_holds_truth(bucket, truth)
        day = when(bucket["start"]).date()
        [row] = [line for line in table.stdout.splitlines() if line.lstrip().startswith(day.isoformat())]
        assert bucket["credits"] == 0 or any(block in row for block in BAR_BLOCKS), row
        assert any(mark in row for mark in BOUND_MARKS) == (not bucket["exact"]), row
        assert ("gap" in row) == (day == midnight.date()), row

    for command in ("record", "history"):
        assert_fails_with_one_line(run(command, env=env | {"TENSORFEED_TOKEN": UNKNOWN_TOKEN}))
        assert_fails_with_one_line(run(command, env=env | {"TENSORFEED_API_URL": "http://127.0.0.1:9"}))


LYING_CLOCKS = [datetime(2100, 12, 5, 12, 0, tzinfo=UTC), datetime(9999, 12, 31, 23, 0, tzinfo=UTC)]
"""Dates the sandbox answers with while it lies about its clock: far in this machine's future, and at datetime's end."""
EXPENSIVE = ("/api/premium/monitor/bulk", 50)


def by_name(check: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {alert["name"]: alert for alert in check["alerts"]}


def days_listed(history: dict[str, Any]) -> list[date]:
    return [when(bucket["start"]).date() for bucket in history["buckets"]]


async def test_a_service_clock_far_ahead_is_not_believed_and_the_ledger_stays_on_the_true_days(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Answers dated 2100, or late on 31 December 9999, are timed by this machine's clock, kept out of the ledger,
    and say so; back on the true clock, today's 500 credits trigger their rule and history covers the true days,
    after a restart too."""
    control = fresh_sandbox.control
    control.add_purchase(ACCOUNT, 1_000, 20.0)
    true_week = [SANDBOX_START.date() - timedelta(days=back) for back in reversed(range(7))]
    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        await caller.ok("set_spend_alert", kind="daily_spend_above", threshold=100, name="today")
        await caller.ok("check_spend_alerts")
        for lie in LYING_CLOCKS:
            control.set_clock(lie)
            check = await caller.ok("check_spend_alerts")
            history = await caller.ok("get_spend_history", days=7)
            for answer in (check, history):
                assert f"dated {lie:%Y-%m-%d %H:%M} UTC" in answer["note"], answer["note"]
                assert "kept out of the spend ledger" in answer["note"], answer["note"]
            assert abs(when(check["as_of"]) - datetime.now(UTC)) < timedelta(minutes=1)  # this machine's clock
            assert days_listed(history) == true_week
        control.set_clock(SANDBOX_START + timedelta(minutes=10))
        assert control.add_calls(ACCOUNT, *EXPENSIVE, count=10) == 10
        check = await caller.ok("check_spend_alerts")
        assert check["note"] is None
        today = by_name(check)["today"]
        assert (today["status"], today["observed"]) == ("triggered", 500), today
    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        history = await caller.ok("get_spend_history", days=7)
    assert days_listed(history) == true_week
    assert history["totals"]["credits"] >= 500 and history["note"] is None
    assert_holds_truth(history["totals"], Truth(control))


async def test_a_call_dated_after_the_answer_that_lists_it_is_kept_out_of_the_ledger(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A call the service dates in 2100 is listed as sent but never recorded, so the ledger's end stays at the
    true now; the answer says why."""
    control = fresh_sandbox.control
    control.add_purchase(ACCOUNT, 1_000, 20.0)
    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        await caller.ok("check_spend_alerts")
        assert control.add_calls(ACCOUNT, *EXPENSIVE, at=LYING_CLOCKS[0]) == 1
        assert control.add_calls(ACCOUNT, "/api/premium/routing", 1, count=3) == 3
        usage = await caller.ok("get_account_usage")
        history = await caller.ok("get_spend_history", days=2)
    assert usage["note"] is not None and "1 call dated after its own answer" in usage["note"]
    assert "1 call dated after its own answer" in history["note"]
    assert when(history["period_end"]) < control.now() + timedelta(seconds=2)
    assert days_listed(history) == [SANDBOX_START.date() - timedelta(days=1), SANDBOX_START.date()]
    assert history["totals"]["attributed"] == 3  # the routing calls; the one dated 2100 is not attributed


async def test_lifetime_spend_that_goes_down_counts_as_unknown_never_as_spend(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A balance that rose without a purchase, and one absurd figure, each between true snapshots: the day's figure
    is a bound that holds the truth (no phantom spend from the dip's recovery or the spike), and the note says why."""
    control = fresh_sandbox.control
    control.add_purchase(ACCOUNT, 1_000, 20.0)
    lies = [
        {"ok": True, "balance": 1_600, "total_purchased": 1_100},  # 500 more than bought, with no purchase
        {"ok": True, "balance": 0, "total_purchased": 10**12},  # the most the server believes of a figure
    ]
    async with ledger_session(fresh_sandbox, tmp_path) as caller:
        await caller.ok("check_spend_alerts")
        for seed, lie in enumerate(lies):
            await traffic_then_snapshot(caller, control, 5, 10 * MINUTE, seed=seed)
            control.set_fault("custom", count=1, body=json.dumps(lie))  # the balance read alone meets it
            assert (await caller.ok("get_account_balance"))["balance"] == lie["balance"]
            control.advance_clock(MINUTE)
            await traffic_then_snapshot(caller, control, 5, 10 * MINUTE, seed=10 + seed)
        history = await caller.ok("get_spend_history", days=1)
    truth = Truth(control)
    assert "lifetime spend went down" in history["note"], history["note"]
    [today] = history["buckets"]
    for bucket in (today, history["totals"]):
        assert_holds_truth(bucket, truth)
        assert bucket["credits"] <= truth.day_credits(SANDBOX_START.date()) and not bucket["exact"]


REFUSED_ARGUMENTS: list[tuple[dict[str, Any], str, str]] = [
    ({"days": 0}, "days", "90"),
    ({"days": 91}, "days", "90"),
    ({"days": 8, "group_by": "hour"}, "hour", "7"),
    ({"group_by": "week"}, "group_by", "endpoint"),
]
"""Arguments get_spend_history refuses, a word its message must name, and a part of what it accepts."""


async def test_out_of_range_history_arguments_are_refused_in_words(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """days outside 1..90, hours over more than 7 days and an unknown grouping are tool errors saying what is
    accepted."""
    async with ledger_session(sandbox, tmp_path) as caller:
        for arguments, named, accepted in REFUSED_ARGUMENTS:
            message = await caller.error("get_spend_history", **arguments)
            assert named in message and accepted in message, (arguments, message)


async def test_calls_older_than_the_retention_are_forgotten_and_daily_totals_stay(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """With TENSORFEED_LEDGER_CALL_DAYS=7, ten days later the first days' calls are gone from the file, while
    their totals still hold the truth (from the balance snapshots, which are kept)."""
    control = fresh_sandbox.control
    control.add_purchase(ACCOUNT, 20_000, 400.0)
    move_clock_to(control, midnight_after(control.now()) + timedelta(hours=1))
    async with ledger_session(fresh_sandbox, tmp_path, TENSORFEED_LEDGER_CALL_DAYS="7") as caller:
        await caller.ok("check_spend_alerts")
        for step in range(10 * 4):
            await traffic_then_snapshot(caller, control, 10, 6 * HOUR, seed=step)
        history = await caller.ok("get_spend_history", days=10)
    truth = Truth(control)
    with sqlite3.connect(tmp_path / "state" / "alerts.sqlite3") as db:
        oldest_call, readings = db.execute(
            "SELECT (SELECT min(at) FROM ledger_calls), (SELECT count(*) FROM ledger_readings)"
        ).fetchone()
    # Forgetting runs with the first snapshot of each UTC day, so the oldest call kept is at most 8 days old.
    newest = when(history["period_end"])
    assert (newest - timedelta(days=8)).timestamp() * 1000 <= oldest_call
    assert truth.calls[0][0] < newest - timedelta(days=9)  # so there were older calls to forget
    assert readings == 10 * 4 + 1
    for bucket in [*history["buckets"], history["totals"]]:
        assert_holds_truth(bucket, truth)


def test_the_watcher_interval_has_a_new_name_and_the_old_one_still_works() -> None:
    assert load_settings({"TENSORFEED_POLL_SECONDS": "45"}).alert_poll_seconds == 45
    assert load_settings({"TENSORFEED_ALERT_POLL_SECONDS": "60"}).alert_poll_seconds == 60
    assert (
        load_settings({"TENSORFEED_POLL_SECONDS": "45", "TENSORFEED_ALERT_POLL_SECONDS": "60"}).alert_poll_seconds == 45
    )
    with pytest.raises(ConfigurationError, match="TENSORFEED_POLL_SECONDS=5 is too frequent"):
        load_settings({"TENSORFEED_POLL_SECONDS": "5"})
