"""Spend guards through real MCP clients against the sandbox: rules, transitions, runway, shared state, the watcher."""

from __future__ import annotations

import json
import math
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import LoggingMessageNotificationParams, ResourceUpdatedNotification

from tensorfeed_mcp.sandbox import RunningSandbox
from tensorfeed_mcp.settings.environment import load_settings
from tests.support.clients import Caller, in_memory
from tests.support.env import settings_for
from tests.support.records import read_recorded
from tests.support.servers import stdio_params

pytestmark = pytest.mark.anyio

ALERTS_URI = "tensorfeed://account/alerts"


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def by_name(check: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {alert["name"]: alert for alert in check["alerts"]}


async def test_a_rule_goes_ok_triggered_ok_with_since_set_kept_and_cleared(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    control = fresh_sandbox.control
    async with in_memory(settings_for(fresh_sandbox, tmp_path, account="new")) as client:
        caller = Caller(client)
        await caller.ok("set_spend_alert", kind="daily_spend_above", threshold=20, name="today")

        first = await caller.ok("check_spend_alerts")
        assert by_name(first)["today"] | {"observed": 0.0, "status": "ok", "since": None} == by_name(first)["today"]
        assert (first["daily_spent"], first["daily_spent_source"], first["daily_spent_complete"]) == (
            0,
            "usage_buffer",
            True,
        )

        assert control.add_calls("new", "/api/premium/agents/directory", 5, count=5) == 5
        second = await caller.ok("check_spend_alerts")
        today = by_name(second)["today"]
        assert (today["status"], today["observed"], today["severity"]) == ("triggered", 25.0, "warning")
        assert when(today["since"]) == when(second["as_of"])
        assert second["triggered"] == 1

        control.advance_clock(90)
        third = await caller.ok("check_spend_alerts")
        assert by_name(third)["today"]["since"] == today["since"]  # kept while it stays triggered
        assert when(third["as_of"]) >= when(second["as_of"]) + timedelta(seconds=90)

        now = control.now()
        control.advance_clock(
            (datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo) - now).total_seconds()
            + 60
        )
        fourth = await caller.ok("check_spend_alerts")
        assert by_name(fourth)["today"] | {"status": "ok", "since": None, "observed": 0.0} == by_name(fourth)["today"]
        assert fourth["triggered"] == 0


async def test_runway_and_burn_rate_match_hand_computed_values(fresh_sandbox: RunningSandbox, tmp_path: Path) -> None:
    control = fresh_sandbox.control
    control.add_purchase("new", credits=900, amount_usd=18.0)  # balance 1000
    now = control.now()
    control.add_calls("new", "/api/premium/whats-new", 10, count=4, at=now - timedelta(hours=30))
    control.add_calls("new", "/api/premium/agents/directory", 5, count=20, at=now - timedelta(hours=10))
    # Visible calls reach back 30 h, so the look-back is the full 24 h; the calls in it spent 20 x 5 = 100.
    # Burn rate 100 / 24 = 4.1667 credits/h; balance 1000 - 40 - 100 = 860; runway 860 / (100 / 24) = 206.4 h.
    async with in_memory(settings_for(fresh_sandbox, tmp_path, account="new")) as client:
        caller = Caller(client)
        await caller.ok("set_spend_alert", kind="runway_below_hours", threshold=300, name="runway")
        await caller.ok("set_spend_alert", kind="balance_below", threshold=860, name="at 860")
        check = await caller.ok("check_spend_alerts")
    assert check["balance"] == 860
    assert check["burn_rate_lookback_hours"] == 24
    assert check["burn_rate_credits_per_hour"] == pytest.approx(100 / 24, abs=1e-4)
    assert check["runway_hours"] == pytest.approx(206.4, abs=0.01)
    runway = by_name(check)["runway"]
    assert (runway["status"], runway["observed"]) == ("triggered", pytest.approx(206.4, abs=0.01))
    assert by_name(check)["at 860"]["status"] == "ok"  # strictly below: 860 is not below 860


async def test_runway_of_the_fast_spending_account(sandbox: RunningSandbox, tmp_path: Path) -> None:
    calls = sandbox.control.account("low")["calls"]
    async with in_memory(settings_for(sandbox, tmp_path, account="low")) as client:
        caller = Caller(client)
        await caller.ok("set_spend_alert", kind="runway_below_hours", threshold=2)
        check = await caller.ok("check_spend_alerts")
    # as_of is the oldest of the three reads' times, whole seconds from their Date headers; the rules use the newest,
    # which may be a second later when the reads straddle a second.
    now = when(check["as_of"])
    oldest = min(when(call["at"]) for call in calls)
    span = max(1.0, (now - oldest).total_seconds() / 3600)  # 20 calls over the last two hours: under 24 h
    lookback = check["burn_rate_lookback_hours"]
    assert span - 1e-3 <= lookback <= span + 1 / 3600 + 1e-3
    rate = sum(call["credits"] for call in calls) / lookback
    assert check["burn_rate_credits_per_hour"] == pytest.approx(rate, rel=1e-4)  # the lookback is rounded to 4 places
    assert check["runway_hours"] == pytest.approx(12 / rate, abs=0.01)
    alert = check["alerts"][0]
    assert (alert["name"], alert["status"], alert["severity"]) == ("runway_below_hours", "triggered", "critical")


async def test_cap_percentage_follows_the_cap_set_and_cleared(fresh_sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with in_memory(settings_for(fresh_sandbox, tmp_path, account="new")) as client:
        caller = Caller(client)
        await caller.ok("set_spend_alert", kind="daily_cap_used_pct_above", threshold=40, name="cap")
        no_cap = by_name(await caller.ok("check_spend_alerts"))["cap"]
        assert (no_cap["status"], no_cap["observed"], no_cap["severity"]) == ("not_applicable", None, "info")

        await caller.ok("set_spend_cap", daily_cap=100)
        assert fresh_sandbox.control.add_calls("new", "/api/premium/whats-new", 10, count=5) == 5
        check = await caller.ok("check_spend_alerts")
        assert (check["daily_spent"], check["daily_spent_source"]) == (50, "service")
        assert by_name(check)["cap"] | {"status": "triggered", "observed": 50.0} == by_name(check)["cap"]

        await caller.ok("clear_spend_cap")
        cleared = await caller.ok("check_spend_alerts")
        assert by_name(cleared)["cap"] | {"status": "not_applicable", "since": None} == by_name(cleared)["cap"]
        assert (cleared["daily_spent"], cleared["daily_spent_source"]) == (50, "usage_buffer")


async def test_a_full_buffer_of_todays_calls_makes_daily_spend_a_lower_bound(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    assert fresh_sandbox.control.add_calls("new", "/api/premium/routing", 1, count=100) == 100
    async with in_memory(settings_for(fresh_sandbox, tmp_path, account="new")) as client:
        caller = Caller(client)
        await caller.ok("set_spend_alert", kind="daily_spend_above", threshold=50, name="high")
        await caller.ok("set_spend_alert", kind="daily_spend_above", threshold=10, name="low")
        check = await caller.ok("check_spend_alerts")
    assert (check["daily_spent"], check["daily_spent_complete"]) == (25, False)  # only the newest 25 are visible
    assert by_name(check)["high"]["status"] == "unknown"  # 25 or more: cannot say it is under 50
    assert "At least 25" in by_name(check)["high"]["message"]
    assert by_name(check)["low"]["status"] == "triggered"  # a lower bound above 10 is enough


async def test_environment_rules_are_listed_and_cannot_be_deleted(sandbox: RunningSandbox, tmp_path: Path) -> None:
    env = {
        "TENSORFEED_TOKEN": "tf_live_" + "0" * 64,
        "TENSORFEED_API_URL": sandbox.api_url,
        "TENSORFEED_ALERT_BALANCE_BELOW": "5000",
        "TENSORFEED_ALERT_RUNWAY_BELOW_HOURS": "1",
    }
    settings = settings_for(sandbox, tmp_path, env_alert_rules=load_settings(env).env_alert_rules)
    async with in_memory(settings) as client:
        caller = Caller(client)
        check = await caller.ok("check_spend_alerts")
        rules = by_name(check)
        assert set(rules) == {"env:balance_below", "env:runway_below_hours"}
        assert (
            rules["env:balance_below"] | {"source": "env", "threshold": 5000.0, "status": "triggered"}
            == (rules["env:balance_below"])
        )
        assert rules["env:runway_below_hours"]["status"] == "ok"
        message = await caller.error("delete_spend_alert", name="env:balance_below")
        assert "TENSORFEED_ALERT_" in message
        assert "reserved" in await caller.error("set_spend_alert", kind="balance_below", threshold=1, name="env:mine")
        saved = await caller.ok("set_spend_alert", kind="balance_below", threshold=10)
        assert (saved["rule"]["name"], saved["rule"]["source"], saved["rule_count"]) == ("balance_below", "user", 3)
        assert [rule["name"] for rule in (await caller.ok("check_spend_alerts"))["alerts"]] == [
            "env:balance_below",
            "env:runway_below_hours",
            "balance_below",
        ]


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"kind": "balance_over", "threshold": 10}, "Unknown alert kind 'balance_over'. Use one of: balance_below"),
        ({"kind": "balance_below", "threshold": -5}, "more than 0"),
        ({"kind": "balance_below", "threshold": 0}, "more than 0"),
        ({"kind": "balance_below", "threshold": 1e12}, "at most 100,000,000 credits"),
        ({"kind": "balance_below", "threshold": "ten"}, "threshold"),
        ({"kind": "daily_cap_used_pct_above", "threshold": 150}, "from 1 to 100"),
        ({"kind": "daily_cap_used_pct_above", "threshold": 0.5}, "from 1 to 100"),
        ({"kind": "balance_below", "threshold": 10, "name": "x" * 65}, "at most 64 characters"),
        ({"kind": "balance_below", "threshold": 10, "name": "bad\x1b[2Jname"}, "control"),
        ({"kind": "balance_below", "threshold": 10, "name": "   "}, "empty"),
    ],
)
async def test_bad_rules_are_refused_and_saved_rules_survive(
    sandbox: RunningSandbox, tmp_path: Path, arguments: dict[str, Any], fragment: str
) -> None:
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        caller = Caller(client)
        await caller.ok("set_spend_alert", kind="balance_below", threshold=100, name="keep")
        assert fragment in await caller.error("set_spend_alert", **arguments)
        check = await caller.ok("check_spend_alerts")
    assert [(a["name"], a["threshold"]) for a in check["alerts"]] == [("keep", 100.0)]


async def test_nan_and_infinite_thresholds_are_refused(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with in_memory(settings_for(sandbox, tmp_path), mode="legacy") as client:
        caller = Caller(client)
        for value in (math.nan, math.inf):  # JSON has neither: they arrive as null, refused as not a number
            assert "threshold" in await caller.error("set_spend_alert", kind="balance_below", threshold=value)
        assert (await caller.ok("check_spend_alerts"))["alerts"] == []


async def test_updating_and_deleting_rules(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        caller = Caller(client)
        created = await caller.ok("set_spend_alert", kind="balance_below", threshold=5000, name="floor")
        updated = await caller.ok("set_spend_alert", kind="balance_below", threshold=10, name="floor")
        assert (created["action"], updated["action"]) == ("created", "updated")
        assert (updated["rule"]["threshold"], updated["rule_count"]) == (10.0, 1)
        assert by_name(await caller.ok("check_spend_alerts"))["floor"]["status"] == "ok"
        missing = await caller.error("delete_spend_alert", name="ceiling")
        assert "No alert named 'ceiling'" in missing and "floor" in missing
        deleted = await caller.ok("delete_spend_alert", name="floor")
        assert (deleted["deleted"]["name"], deleted["deleted"]["threshold"]) == ("floor", 10.0)
        assert deleted["rule_count"] == 0


async def test_a_corrupt_state_file_is_reported_kept_and_copied(sandbox: RunningSandbox, tmp_path: Path) -> None:
    state = tmp_path / "alerts.sqlite3"
    garbage = b"this is not a database, but it is the user's file\n" * 100
    state.write_bytes(garbage)
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        caller = Caller(client)
        for _ in range(2):
            message = await caller.error("set_spend_alert", kind="balance_below", threshold=10)
            assert str(state) in message and "not a readable SQLite database" in message
            assert "A copy is kept at" in message
        check = await caller.ok("check_spend_alerts")  # evaluates what needs no file, and says what is wrong
        assert check["alerts"] == [] and str(state) in check["state_error"]
        assert (await caller.ok("get_account_balance"))["balance"] == 1840  # still serving
    assert state.read_bytes() == garbage
    copies = list(tmp_path.glob("alerts.sqlite3.corrupt-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == garbage


async def test_a_state_path_that_is_a_folder_is_reported(sandbox: RunningSandbox, tmp_path: Path) -> None:
    (tmp_path / "alerts.sqlite3").mkdir()
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        message = await Caller(client).error("set_spend_alert", kind="balance_below", threshold=10)
    assert "is a folder" in message and str(tmp_path) in message


async def test_two_server_processes_share_rules_and_since(sandbox: RunningSandbox, tmp_path: Path) -> None:
    params = stdio_params(settings_for(sandbox, tmp_path / "state"))
    with (tmp_path / "a.log").open("w") as log_a, (tmp_path / "b.log").open("w") as log_b:
        async with (
            Client(stdio_client(params, errlog=log_a)) as first,
            Client(stdio_client(params, errlog=log_b)) as second,
        ):
            a, b = Caller(first), Caller(second)

            async def save_many(caller: Caller, prefix: str) -> None:
                for i in range(8):
                    await caller.ok("set_spend_alert", kind="balance_below", threshold=5000 + i, name=f"{prefix}{i}")

            async with anyio.create_task_group() as group:  # both processes write at once
                group.start_soon(save_many, a, "a")
                group.start_soon(save_many, b, "b")

            seen_by_a = await a.ok("check_spend_alerts")
            seen_by_b = await b.ok("check_spend_alerts")
    names = {f"{prefix}{i}" for prefix in "ab" for i in range(8)}
    assert set(by_name(seen_by_a)) == set(by_name(seen_by_b)) == names
    assert all(alert["status"] == "triggered" for alert in seen_by_b["alerts"])
    assert {a["name"]: a["since"] for a in seen_by_b["alerts"]} == {a["name"]: a["since"] for a in seen_by_a["alerts"]}
    read_recorded(tmp_path / "a.log")
    read_recorded(tmp_path / "b.log")


POLL_SECONDS = 0.3
DELIVERY_BOUND_SECONDS = POLL_SECONDS + 2.0  # one interval, plus time for one check against the sandbox


async def test_the_watcher_notifies_a_listening_client(fresh_sandbox: RunningSandbox, tmp_path: Path) -> None:
    settings = settings_for(fresh_sandbox, tmp_path, account="new", alert_poll_seconds=POLL_SECONDS)
    async with in_memory(settings, mode="2026-07-28") as client:
        caller = Caller(client)
        await caller.ok("set_spend_alert", kind="balance_below", threshold=50)
        assert (await caller.ok("check_spend_alerts"))["alerts"][0]["status"] == "ok"  # the baseline
        async with client.listen(resource_subscriptions=[ALERTS_URI]) as subscription:
            fresh_sandbox.control.add_calls("new", "/api/premium/whats-new", 10, count=6)  # balance 100 -> 40
            with anyio.fail_after(DELIVERY_BOUND_SECONDS):
                event = await subscription.__aiter__().__anext__()
        assert ALERTS_URI in str(event)
        contents = (await client.read_resource(ALERTS_URI)).contents
        assert json.loads(getattr(contents[0], "text", ""))["alerts"][0]["status"] == "triggered"


async def test_the_watcher_notifies_a_legacy_subscriber_and_logs_a_warning(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    updated, warned = anyio.Event(), anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification) and str(message.params.uri) == ALERTS_URI:
            updated.set()

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        if params.level == "warning" and str(params.data).startswith("Alert balance_below triggered"):
            warned.set()

    settings = settings_for(fresh_sandbox, tmp_path, account="new", alert_poll_seconds=POLL_SECONDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)  # resources/subscribe is the 2025-era way
        async with in_memory(settings, mode="legacy", message_handler=on_message, logging_callback=on_log) as client:
            caller = Caller(client)
            await caller.ok("set_spend_alert", kind="balance_below", threshold=50)
            assert (await caller.ok("check_spend_alerts"))["alerts"][0]["status"] == "ok"  # the baseline
            await client.subscribe_resource(ALERTS_URI)
            fresh_sandbox.control.add_calls("new", "/api/premium/whats-new", 10, count=6)
            # The two messages may arrive in either order.
            with anyio.fail_after(DELIVERY_BOUND_SECONDS):
                await updated.wait()
                await warned.wait()
