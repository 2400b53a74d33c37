"""The sandbox answers as the contract page says TensorFeed does, so tests against it mean something."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx2
import pytest

from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox, running_sandbox

READS = ["payment/balance", "payment/usage", "payment/history", "payment/spend-cap"]


@pytest.fixture
def api(fresh_sandbox: RunningSandbox) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=fresh_sandbox.api_url + "/") as client:
        yield client


def bearer(account: str = "busy") -> dict[str, str]:
    return {"Authorization": f"Bearer {DEMO_TOKENS[account]}"}


def error_of(response: httpx2.Response) -> tuple[int, str]:
    body = response.json()
    assert body["ok"] is False
    return response.status_code, body["error"]


def test_demo_tokens_have_the_services_format() -> None:
    for token in DEMO_TOKENS.values():
        assert token.startswith("tf_live_") and len(token) == 8 + 64
        int(token[8:], 16)


@pytest.mark.parametrize("path", READS)
def test_auth_failures_use_the_contracts_codes(api: httpx2.Client, path: str) -> None:
    assert error_of(api.get(path)) == (401, "token_required")
    assert error_of(api.get(path, headers=bearer() | {"Authorization": "Bearer tf_live_" + "0" * 64})) == (
        404,
        "token_not_found",
    )
    wrong_prefix = api.get(path, headers={"Authorization": "Bearer sk_live_abc"})
    expected = "token_not_found" if path == "payment/usage" else "invalid_token_format"
    assert error_of(wrong_prefix) == (404, expected)


@pytest.mark.parametrize("path", READS)
def test_reads_are_uncached_json_dated_by_the_service_clock(fresh_sandbox: RunningSandbox, path: str) -> None:
    with httpx2.Client(base_url=fresh_sandbox.api_url + "/") as api:
        response = api.get(path, headers=bearer())
    assert response.status_code == 200 and response.json()["ok"] is True
    assert response.headers["cache-control"] == "public, max-age=0"
    assert response.headers["content-type"].startswith("application/json")
    assert abs(parsedate_to_datetime(response.headers["date"]) - fresh_sandbox.control.now()) < timedelta(seconds=5)


def test_balance_and_usage_shapes(api: httpx2.Client) -> None:
    balance = api.get("payment/balance", headers=bearer()).json()
    assert balance["credits_remaining"] == balance["balance"]
    usage = api.get("payment/usage", headers=bearer()).json()
    assert usage["token_balance"] == balance["balance"]
    assert usage["total_calls"] == 100 and len(usage["recent"]) == 25
    times = [entry["at"] for entry in usage["recent"]]
    assert times == sorted(times, reverse=True)
    assert sum(agg["calls"] for agg in usage["by_endpoint"].values()) == 100
    assert sum(agg["credits"] for agg in usage["by_endpoint"].values()) == usage["total_credits_spent"]
    assert {entry["credits"] for entry in usage["recent"]} <= {1, 5, 10, 50}
    days = {entry["at"][:10] for entry in usage["recent"]}
    oldest_visible = datetime.fromisoformat(usage["recent"][-1]["at"].replace("Z", "+00:00"))
    assert len(days) >= 1 and oldest_visible < datetime.now(UTC)


def test_the_busy_buffer_spans_more_than_one_utc_day(fresh_sandbox: RunningSandbox) -> None:
    calls = fresh_sandbox.control.account("busy")["calls"]
    assert len({call["at"][:10] for call in calls}) >= 2
    account = fresh_sandbox.control.account("busy")
    assert account["spent_today"] < account["daily_cap"] == 200


def test_history_shape(api: httpx2.Client) -> None:
    history = api.get("payment/history", headers=bearer()).json()
    assert history["token_short"] == DEMO_TOKENS["busy"][:16] + "..."
    assert history["purchase_count"] == len(history["purchases"]) == 3
    assert history["total_credits_added"] == sum(p["credits_added"] for p in history["purchases"])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"daily_cap": "200"}, "cap_must_be_number_or_null"),
        ({"daily_cap": True}, "cap_must_be_number_or_null"),
        ({}, "cap_must_be_number_or_null"),
        ({"daily_cap": 12.5}, "cap_must_be_integer"),
        ({"daily_cap": -1}, "cap_out_of_range_1_to_1000000"),
        ({"daily_cap": 1_000_001}, "cap_out_of_range_1_to_1000000"),
    ],
)
def test_spend_cap_validation_codes(api: httpx2.Client, body: dict[str, Any], code: str) -> None:
    response = api.post("payment/spend-cap", headers=bearer(), json=body)
    assert error_of(response) == (400, code) and response.json()["message"]


def test_spend_cap_set_clear_and_methods(api: httpx2.Client, fresh_sandbox: RunningSandbox) -> None:
    assert error_of(api.post("payment/spend-cap", headers=bearer(), content=b"{not json")) == (
        400,
        "invalid_request_body",
    )
    assert error_of(api.put("payment/spend-cap", headers=bearer(), json={"daily_cap": 5})) == (
        405,
        "method_not_allowed",
    )
    spent = fresh_sandbox.control.account("busy")["spent_today"]
    capped = api.post("payment/spend-cap", headers=bearer(), json={"daily_cap": 1_000_000}).json()
    assert (capped["daily_cap"], capped["daily_spent"], capped["remaining"]) == (1_000_000, spent, 1_000_000 - spent)
    cleared = api.post("payment/spend-cap", headers=bearer(), json={"daily_cap": 0}).json()
    assert (cleared["daily_cap"], cleared["daily_spent"], cleared["remaining"]) == (None, 0, None)
    reset_at = datetime.fromisoformat(cleared["reset_at"].replace("Z", "+00:00"))
    assert reset_at.time() == datetime.min.time() and timedelta(
        0
    ) < reset_at - fresh_sandbox.control.now() <= timedelta(days=1)


def test_the_service_enforces_the_cap_and_the_balance(fresh_sandbox: RunningSandbox) -> None:
    control = fresh_sandbox.control
    spent = control.account("busy")["spent_today"]
    assert control.add_calls("busy", "/api/premium/whats-new", 10, count=100) == (200 - spent) // 10
    assert control.account("busy")["spent_today"] <= 200
    assert control.add_calls("low", "/api/premium/agents/directory", 5, count=10) == 2  # 12 credits buy two


def test_revoke_burns_the_token(api: httpx2.Client) -> None:
    assert error_of(api.get("payment/revoke", headers=bearer("new"))) == (405, "method_not_allowed")
    revoked = api.post("payment/revoke", headers=bearer("new")).json()
    assert revoked["balance_at_revoke"] == 100
    assert error_of(api.get("payment/balance", headers=bearer("new"))) == (404, "token_not_found")


def test_the_clock_moves_the_day(fresh_sandbox: RunningSandbox) -> None:
    control = fresh_sandbox.control
    before = control.now()
    after = control.advance_clock(86_400)
    assert timedelta(days=1) <= after - before < timedelta(days=1, seconds=5)
    with httpx2.Client(base_url=fresh_sandbox.api_url + "/") as api:
        cap = api.get("payment/spend-cap", headers=bearer()).json()
    assert cap["daily_spent"] == 0  # yesterday's spend does not count against today's cap


def test_requests_are_counted_and_faults_switch_on_and_off(fresh_sandbox: RunningSandbox) -> None:
    control = fresh_sandbox.control
    with httpx2.Client(base_url=fresh_sandbox.api_url + "/") as api:
        api.get("payment/balance", headers=bearer())
        control.set_fault("503", count=2)
        statuses = [api.get("payment/balance", headers=bearer()).status_code for _ in range(3)]
        control.set_fault("flaky")
        flaky = [api.get("payment/balance", headers=bearer()).status_code for _ in range(4)]
        control.clear_fault()
    assert statuses == [503, 503, 200]
    assert flaky == [503, 200, 503, 200]
    assert control.stats()["by_path"] == {"/api/payment/balance": 8}


def test_a_sandbox_releases_its_port() -> None:
    with running_sandbox() as first:
        url = first.url
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(url + "/api/payment/balance", timeout=2)
