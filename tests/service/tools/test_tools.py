"""Every tool in memory, in both protocol eras, with values checked against the sandbox's own account data."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mcp.types import TextResourceContents

from tensorfeed_mcp import __version__
from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox
from tests.support.clients import MODES, TOOL_NAMES, Caller, in_memory
from tests.support.env import settings_for
from tests.support.records import masked, record

pytestmark = pytest.mark.anyio


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("mode", MODES)
async def test_every_tool_is_typed_titled_and_annotated(sandbox: RunningSandbox, tmp_path: Path, mode: str) -> None:
    async with in_memory(settings_for(sandbox, tmp_path), mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOL_NAMES
    for tool in tools.values():
        assert tool.title and tool.description and len(tool.description) > 40
        assert tool.output_schema and tool.output_schema.get("type") == "object"
        assert tool.annotations is not None
        assert tool.annotations.idempotent_hint is True
    for name in ("get_account_usage", "get_account_balance", "get_payment_history", "get_spend_cap"):
        assert tools[name].annotations.read_only_hint is True  # type: ignore[union-attr]
        assert tools[name].annotations.open_world_hint is True  # type: ignore[union-attr]
    cap = tools["set_spend_cap"].annotations
    assert cap is not None and cap.read_only_hint is False and cap.destructive_hint is False
    assert "runway" in tools["check_spend_alerts"].description.lower()  # type: ignore[union-attr]
    burn_rate = tools["check_spend_alerts"].output_schema["properties"]["burn_rate_credits_per_hour"]  # type: ignore[index]
    assert "24 hours" in burn_rate["description"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # a version pin skips discovery, so it has no instructions
async def test_instructions_say_what_the_server_is_for(sandbox: RunningSandbox, tmp_path: Path, mode: str) -> None:
    async with in_memory(settings_for(sandbox, tmp_path), mode) as client:
        assert client.instructions is not None
        assert "TensorFeed" in client.instructions and "spend cap" in client.instructions


@pytest.mark.parametrize("mode", MODES)
async def test_balance_matches_the_account(sandbox: RunningSandbox, tmp_path: Path, mode: str) -> None:
    account = sandbox.control.account("busy")
    async with in_memory(settings_for(sandbox, tmp_path), mode) as client:
        balance = await Caller(client).ok("get_account_balance")
    assert balance["balance"] == account["balance"] == 1840
    assert balance["total_purchased"] == account["total_purchased"] == 4800
    assert balance["spent_lifetime"] == 4800 - 1840
    assert when(balance["created"]) == when(account["created"])
    assert when(balance["last_used"]) == when(account["last_used"])
    assert balance["usd_estimate"]["amount_usd"] == pytest.approx(1840 * 0.02)
    assert "estimate" in balance["usd_estimate"]["note"].lower()
    assert balance["token"] == masked(DEMO_TOKENS["busy"])
    assert abs(when(balance["as_of"]) - sandbox.control.now()) < timedelta(seconds=5)


@pytest.mark.parametrize("mode", MODES)
async def test_usage_aggregates_the_ring_buffer(sandbox: RunningSandbox, tmp_path: Path, mode: str) -> None:
    calls = sandbox.control.account("busy")["calls"]
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for call in calls:
        expected[call["endpoint"]][0] += 1
        expected[call["endpoint"]][1] += call["credits"]
    total = sum(call["credits"] for call in calls)
    async with in_memory(settings_for(sandbox, tmp_path), mode) as client:
        usage = await Caller(client).ok("get_account_usage")

    assert usage["total_calls"] == len(calls) == 100
    assert usage["buffer_full"] is True
    assert usage["total_credits_spent"] == total
    rows = usage["by_endpoint"]
    assert {row["endpoint"]: [row["calls"], row["credits"]] for row in rows} == dict(expected)
    assert [row["credits"] for row in rows] == sorted((row["credits"] for row in rows), reverse=True)
    assert sum(row["share_pct"] for row in rows) == pytest.approx(100, abs=0.5)
    top = rows[0]
    assert top["share_pct"] == pytest.approx(100 * top["credits"] / total, abs=0.05)
    assert listed(usage["recent"]) == listed(calls[:5])  # recent_limit defaults to 5
    assert when(usage["window_end"]) == when(calls[0]["at"])
    assert when(usage["window_start"]) == when(calls[24]["at"])  # the service lists 25, whatever is shown


def listed(calls: list[dict[str, Any]]) -> list[tuple[str, int, datetime]]:
    return [(c["endpoint"], c["credits"], when(c["at"])) for c in calls]


@pytest.mark.parametrize("limit", [0, 1, 25])
async def test_recent_limit_chooses_how_many_calls_are_listed(
    sandbox: RunningSandbox, tmp_path: Path, limit: int
) -> None:
    calls = sandbox.control.account("busy")["calls"]
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        usage = await Caller(client).ok("get_account_usage", recent_limit=limit)
    assert listed(usage["recent"]) == listed(calls[:limit])
    assert usage["total_calls"] == 100 and when(usage["window_start"]) == when(calls[24]["at"])


@pytest.mark.parametrize("limit", [-1, 26, 2.5, "5", None])
async def test_recent_limit_outside_0_to_25_is_refused(sandbox: RunningSandbox, tmp_path: Path, limit: object) -> None:
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        message = await Caller(client).error("get_account_usage", recent_limit=limit)
    assert message == "recent_limit must be a whole number from 0 to 25."


async def test_usage_filters_by_endpoint_text(sandbox: RunningSandbox, tmp_path: Path) -> None:
    calls = [c for c in sandbox.control.account("busy")["calls"] if "routing" in c["endpoint"]]
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        usage = await Caller(client).ok("get_account_usage", endpoint="ROUTING")
        nothing = await Caller(client).ok("get_account_usage", endpoint="no-such-endpoint")
    assert [row["endpoint"] for row in usage["by_endpoint"]] == ["/api/premium/routing"]
    assert usage["total_calls"] == len(calls)
    assert usage["total_credits_spent"] == sum(c["credits"] for c in calls)
    assert usage["by_endpoint"][0]["share_pct"] == 100.0
    assert usage["recent"] and all("routing" in c["endpoint"] for c in usage["recent"])
    assert nothing["by_endpoint"] == [] and nothing["total_calls"] == 0 and nothing["recent"] == []


@pytest.mark.parametrize("mode", MODES)
async def test_payment_history_lists_purchases_newest_first(sandbox: RunningSandbox, tmp_path: Path, mode: str) -> None:
    purchases = sandbox.control.account("busy")["purchases"]
    async with in_memory(settings_for(sandbox, tmp_path), mode) as client:
        history = await Caller(client).ok("get_payment_history")
    assert [(p["tx_hash"], p["credits_added"], p["amount_usd"]) for p in history["purchases"]] == [
        (p["tx_hash"], p["credits_added"], p["amount_usd"]) for p in purchases
    ]
    assert history["purchase_count"] == 3
    assert history["total_credits_added"] == sum(p["credits_added"] for p in purchases) == 4800
    assert history["total_purchased_usd"] == pytest.approx(80.0)
    confirmed = [when(p["confirmed_at"]) for p in history["purchases"]]
    assert confirmed == sorted(confirmed, reverse=True)
    assert history["purchases"][-1]["block_number"] is None  # the contract lets block_number be absent


@pytest.mark.parametrize("mode", MODES)
async def test_spend_cap_reports_the_services_figures(sandbox: RunningSandbox, tmp_path: Path, mode: str) -> None:
    account = sandbox.control.account("busy")
    now = sandbox.control.now()
    async with in_memory(settings_for(sandbox, tmp_path), mode) as client:
        cap = await Caller(client).ok("get_spend_cap")
    assert cap["daily_cap"] == account["daily_cap"] == 200
    assert cap["daily_spent"] == account["spent_today"]
    assert cap["remaining"] == 200 - account["spent_today"]
    assert cap["balance"] == account["balance"]
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo)
    assert when(cap["reset_at"]) == midnight


async def test_set_spend_cap_sets_and_clears_it_upstream(fresh_sandbox: RunningSandbox, tmp_path: Path) -> None:
    spent = fresh_sandbox.control.account("busy")["spent_today"]
    async with in_memory(settings_for(fresh_sandbox, tmp_path)) as client:
        caller = Caller(client)
        raised = await caller.ok("set_spend_cap", daily_cap=spent + 10)
        assert (raised["previous_cap"], raised["daily_cap"], raised["remaining"]) == (200, spent + 10, 10)
        assert fresh_sandbox.control.account("busy")["daily_cap"] == spent + 10

        cleared = await caller.ok("clear_spend_cap")
        assert (cleared["previous_cap"], cleared["daily_cap"], cleared["remaining"]) == (spent + 10, None, None)
        assert cleared["daily_spent"] == 0  # the service does not read today's spend without a cap
        assert fresh_sandbox.control.account("busy")["daily_cap"] is None

        await caller.ok("set_spend_cap", daily_cap=50)
        cleared_again = await caller.ok("clear_spend_cap")
        assert (cleared_again["previous_cap"], cleared_again["daily_cap"]) == (50, None)
        assert (await caller.ok("get_spend_cap"))["daily_cap"] is None


async def test_a_new_account_has_empty_usage_and_no_cap(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with in_memory(settings_for(sandbox, tmp_path, account="new")) as client:
        caller = Caller(client)
        usage = await caller.ok("get_account_usage")
        cap = await caller.ok("get_spend_cap")
        balance = await caller.ok("get_account_balance")
    assert usage["total_calls"] == 0 and usage["by_endpoint"] == [] and usage["recent"] == []
    assert usage["window_start"] is None and usage["buffer_full"] is False
    assert (cap["daily_cap"], cap["remaining"], cap["daily_spent"]) == (None, None, 0)
    assert balance["balance"] == 100 and balance["last_used"] is None
    assert balance["token"] == masked(DEMO_TOKENS["new"])


@pytest.mark.parametrize("mode", MODES)
async def test_summary_resource_gives_the_headline(sandbox: RunningSandbox, tmp_path: Path, mode: str) -> None:
    account = sandbox.control.account("busy")
    async with in_memory(settings_for(sandbox, tmp_path), mode) as client:
        listed = {str(resource.uri) for resource in (await client.list_resources()).resources}
        contents = (await client.read_resource("tensorfeed://account/summary")).contents
    assert listed == {"tensorfeed://account/summary", "tensorfeed://account/alerts", "ui://tensorfeed/dashboard"}
    assert isinstance(contents[0], TextResourceContents) and contents[0].mime_type == "application/json"
    record(contents[0].text)
    summary: dict[str, Any] = json.loads(contents[0].text)
    assert summary["balance"] == account["balance"]
    assert summary["recent_calls"] == 100
    assert summary["recent_credits_spent"] == sum(c["credits"] for c in account["calls"])
    assert summary["token"] == masked(DEMO_TOKENS["busy"])
    assert len(summary["top_endpoints"]) == 3


async def test_spend_review_prompt_asks_for_a_cap_proposal(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        prompts = {prompt.name for prompt in (await client.list_prompts()).prompts}
        prompt = await client.get_prompt("spend_review")
    assert prompts == {"spend_review"}
    text = " ".join(getattr(message.content, "text", "") for message in prompt.messages)
    for tool in ("get_account_usage", "get_spend_cap", "check_spend_alerts", "set_spend_cap"):
        assert tool in text
    assert "propose a daily spend cap" in text


@pytest.mark.parametrize("mode", MODES)
async def test_without_a_token_the_server_lists_tools_and_explains(
    sandbox: RunningSandbox, tmp_path: Path, mode: str
) -> None:
    async with in_memory(settings_for(sandbox, tmp_path, token=None), mode) as client:
        assert len((await client.list_tools()).tools) == len(TOOL_NAMES)
        message = await Caller(client).error("get_account_balance")
    assert "TENSORFEED_TOKEN" in message and "tensorfeed.ai" in message


@pytest.mark.parametrize(
    ("mode", "fragment"),
    [
        ("401", "401 token_required: the request carried no usable token"),
        ("402", "402 payment required (the service said: This call needs 5 credits; 2 left.): the token has no"),
    ],
)
async def test_refusals_by_the_service_are_explained(
    sandbox: RunningSandbox, tmp_path: Path, mode: str, fragment: str
) -> None:
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        caller = Caller(client)
        sandbox.control.reset_stats()
        sandbox.control.set_fault(mode, count=1)
        assert fragment in await caller.error("get_account_balance")
        assert sandbox.control.upstream_requests() == 1  # not retryable: one request
        assert (await caller.ok("get_account_balance"))["balance"] == 1840


async def test_requests_identify_the_client(sandbox: RunningSandbox, tmp_path: Path) -> None:
    sandbox.control.reset_stats()
    async with in_memory(settings_for(sandbox, tmp_path)) as client:
        await Caller(client).ok("get_account_balance")
    assert sandbox.control.stats()["user_agents"] == {f"tensorfeed-mcp/{__version__}": 1}
