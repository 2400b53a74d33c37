"""The sandbox answers as the contract page says TensorFeed does, so tests against it mean something."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from itertools import pairwise
from typing import Any

import httpx2
import pytest

from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox, SandboxControl, running_sandbox, sandbox_token
from tests.support.answers import timestamps_in

READS = ["payment/balance", "payment/usage", "payment/history", "payment/spend-cap"]
MiB = 1024 * 1024
# The fields the number-rewriting modes reach, by the answer that carries them (spelled out, not imported).
NUMBERS_IN = {
    "payment/balance": {"balance", "credits_remaining", "total_purchased"},
    "payment/usage": {"token_balance", "total_calls", "total_credits_spent", "calls", "credits"},
    "payment/history": {"credits_added", "amount_usd"},
    "payment/spend-cap": {"daily_spent", "balance"},
}


@pytest.fixture
def api(fresh_sandbox: RunningSandbox) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=fresh_sandbox.api_url + "/") as client:
        yield client


def bearer(account: str = "busy") -> dict[str, str]:
    return {"Authorization": f"Bearer {sandbox_token(account)}"}


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


def test_balance_and_usage_shapes(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
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
    assert len(days) >= 1 and oldest_visible < fresh_sandbox.control.now()


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


def test_the_clock_starts_where_asked_and_is_set_forward_or_back() -> None:
    """A sandbox started at an instant reads it (and runs on from there), with its seeded history just before it;
    the control API sets the clock to any instant, forward or back."""
    start = datetime(2027, 2, 28, 23, 59, tzinfo=UTC)
    with running_sandbox(start=start) as running:
        control = running.control
        now = control.now()
        assert start <= now < start + timedelta(seconds=5)
        newest = max(
            datetime.fromisoformat(call["at"].replace("Z", "+00:00")) for call in control.account("busy")["calls"]
        )
        assert start - timedelta(hours=1) < newest < start
        later = start + timedelta(days=40, hours=3)
        assert later <= control.set_clock(later) < later + timedelta(seconds=5)
        assert start <= control.set_clock(start) < start + timedelta(seconds=5)
        with httpx2.Client(base_url=running.api_url + "/") as api:
            dated = parsedate_to_datetime(api.get("payment/balance", headers=bearer()).headers["date"])
        assert abs(dated - start) < timedelta(seconds=5)


def test_a_sandbox_releases_its_port() -> None:
    with running_sandbox() as first:
        url = first.url
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(url + "/api/payment/balance", timeout=2)


def fields_named(value: Any, names: set[str]) -> list[tuple[str, Any]]:
    """Every (name, value) pair in a JSON value whose name is in `names`, at any depth."""
    if isinstance(value, list):
        return [pair for item in value for pair in fields_named(item, names)]
    if not isinstance(value, dict):
        return []
    own = [(name, item) for name, item in value.items() if name in names]
    return own + [pair for item in value.values() for pair in fields_named(item, names)]


def parsed(stamp: str) -> datetime:
    """A service timestamp as an aware datetime; fails on anything else."""
    moment = datetime.fromisoformat(stamp)
    assert stamp.endswith("Z") and moment.tzinfo is not None
    return moment


def test_nested_answers_json_too_deep_to_parse_once(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
    fresh_sandbox.control.set_fault("nested", count=1)
    deep = api.get("payment/balance", headers=bearer())
    assert deep.status_code == 200 and deep.headers["content-type"] == "application/json"
    assert len(deep.content) < MiB and deep.content.startswith(b'{"ok": true, "balance": [[[')
    with pytest.raises(RecursionError):
        json.loads(deep.content)
    assert api.get("payment/balance", headers=bearer()).json()["ok"] is True  # count=1: the next one is real


def test_gzip_labels_bytes_that_are_not_gzip(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
    fresh_sandbox.control.set_fault("gzip")
    with pytest.raises(httpx2.DecodingError):
        api.get("payment/balance", headers=bearer())
    with api.stream("GET", "payment/balance", headers=bearer()) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.headers["content-encoding"] == "gzip"
    assert not raw.startswith(b"\x1f\x8b")
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(raw)


def test_redirect_points_away_from_the_service(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
    fresh_sandbox.control.set_fault("redirect")
    response = api.get("payment/balance", headers=bearer(), follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "https://elsewhere.example.net/steal?from=tensorfeed"
    assert response.json() == {"ok": True, "balance": 1}


def test_naive_time_strips_the_zone_from_every_timestamp(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
    real = [stamp for path in READS for stamp in timestamps_in(api.get(path, headers=bearer()).json())]
    fresh_sandbox.control.set_fault("naive_time")
    naive = [stamp for path in READS for stamp in timestamps_in(api.get(path, headers=bearer()).json())]
    assert len(real) > 25 and all(parsed(stamp) for stamp in real)
    assert naive == [stamp.removesuffix("Z") for stamp in real]
    assert all(datetime.fromisoformat(stamp).tzinfo is None for stamp in naive)
    assert fresh_sandbox.control.account("busy")["created"].removesuffix("Z") in naive


@pytest.mark.parametrize(
    ("mode", "token", "is_rewritten"),
    [
        ("nan", b"NaN", lambda v: isinstance(v, float) and math.isnan(v)),
        ("infinity", b"Infinity", lambda v: v == math.inf),
        ("bool_number", b"true", lambda v: v is True),
        ("string_number", b'"', lambda v: isinstance(v, str) and float(v) >= 0),
    ],
)
def test_number_modes_rewrite_the_named_fields_only(
    fresh_sandbox: RunningSandbox, api: httpx2.Client, mode: str, token: bytes, is_rewritten: Callable[[Any], bool]
) -> None:
    real = {path: api.get(path, headers=bearer()).json() for path in READS}
    fresh_sandbox.control.set_fault(mode)
    for path, names in NUMBERS_IN.items():
        response = api.get(path, headers=bearer())
        assert response.status_code == 200 and token in response.content
        body = json.loads(response.content)
        rewritten = fields_named(body, names)
        assert {name for name, _ in rewritten} == names
        assert all(is_rewritten(value) for _, value in rewritten), (path, rewritten)
        untouched = set(real[path]) - names - {"by_endpoint", "recent", "purchases", "reset_at"}
        assert {name: body[name] for name in untouched} == {name: real[path][name] for name in untouched}


def test_string_number_stringifies_the_accounts_real_values(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
    account = fresh_sandbox.control.account("busy")
    fresh_sandbox.control.set_fault("string_number")
    balance = api.get("payment/balance", headers=bearer()).json()
    assert (balance["balance"], balance["credits_remaining"]) == (str(account["balance"]),) * 2
    assert balance["total_purchased"] == str(account["total_purchased"])
    cap = api.get("payment/spend-cap", headers=bearer()).json()
    assert (cap["daily_spent"], cap["balance"]) == (str(account["spent_today"]), str(account["balance"]))
    assert cap["daily_cap"] == account["daily_cap"]  # not a named field: still a number
    usage = api.get("payment/usage", headers=bearer()).json()
    assert usage["token_balance"] == str(account["balance"]) and usage["total_calls"] == str(len(account["calls"]))
    assert usage["total_credits_spent"] == str(sum(call["credits"] for call in account["calls"]))
    assert [entry["credits"] for entry in usage["recent"]] == [str(call["credits"]) for call in account["calls"][:25]]
    assert sum(int(entry["calls"]) for entry in usage["by_endpoint"].values()) == len(account["calls"])
    purchases = api.get("payment/history", headers=bearer()).json()["purchases"]
    expected = [(str(p["amount_usd"]), str(p["credits_added"])) for p in account["purchases"]]
    assert [(p["amount_usd"], p["credits_added"]) for p in purchases] == expected


def test_body_rewrites_keep_the_real_status_and_headers_and_honour_count(
    fresh_sandbox: RunningSandbox, api: httpx2.Client
) -> None:
    real_balance = fresh_sandbox.control.account("busy")["balance"]
    fresh_sandbox.control.set_fault("nan", count=3)
    assert error_of(api.get("payment/balance")) == (401, "token_required")  # rewritten too (nothing to rewrite)
    rewritten = api.get("payment/balance", headers=bearer())
    assert rewritten.headers["cache-control"] == "public, max-age=0" and "date" in rewritten.headers
    assert int(rewritten.headers["content-length"]) == len(rewritten.content)
    assert math.isnan(json.loads(rewritten.content)["balance"])
    assert math.isnan(json.loads(api.get("payment/usage", headers=bearer()).content)["token_balance"])
    assert api.get("payment/balance", headers=bearer()).json()["balance"] == real_balance  # count=3 used up


def test_huge_lists_pad_usage_and_history_with_valid_entries(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
    real_endpoints = set(api.get("payment/usage", headers=bearer()).json()["by_endpoint"])
    fresh_sandbox.control.set_fault("huge_lists")
    for account in ("busy", "new"):  # `new` has no calls: its padding cannot follow on from an oldest entry
        usage_answer = api.get("payment/usage", headers=bearer(account))
        history_answer = api.get("payment/history", headers=bearer(account))
        assert len(usage_answer.content) < MiB and len(history_answer.content) < MiB
        usage, history = usage_answer.json(), history_answer.json()
        assert len(usage["recent"]) == len(history["purchases"]) == 5_000
        padding = {name for name in usage["by_endpoint"] if name.startswith("/api/premium/padding/")}
        assert len(padding) == 5_000
        if account == "busy":
            assert set(usage["by_endpoint"]) == real_endpoints | padding
        for entry in usage["by_endpoint"].values():
            assert entry["calls"] >= 1 and entry["credits"] >= 1 and parsed(entry["last_seen"])
        assert all(
            set(entry) == {"endpoint", "credits", "at"} and entry["credits"] == 1 for entry in usage["recent"][25:]
        )
        times = [parsed(entry["at"]) for entry in usage["recent"]]
        assert times == sorted(times, reverse=True)
        assert len({p["tx_hash"] for p in history["purchases"]}) == 5_000
        confirmed = [parsed(p["confirmed_at"]) for p in history["purchases"]]
        assert confirmed == sorted(confirmed, reverse=True)


def test_cap_apply_500_applies_the_cap_then_fails(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
    control = fresh_sandbox.control
    control.set_fault("cap_apply_500", count=1)
    assert api.get("payment/spend-cap", headers=bearer()).json()["daily_cap"] == 200  # GETs pass and keep the count
    assert api.get("payment/balance", headers=bearer()).status_code == 200
    assert error_of(api.post("payment/spend-cap", headers=bearer(), json={"daily_cap": 500})) == (500, "internal_error")
    assert control.account("busy")["daily_cap"] == 500
    assert api.get("payment/spend-cap", headers=bearer()).json()["daily_cap"] == 500
    after = api.post("payment/spend-cap", headers=bearer(), json={"daily_cap": 600})
    assert after.status_code == 200 and after.json()["daily_cap"] == 600  # count=1 was spent by the one POST


def test_custom_serves_exactly_the_spec(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
    control = fresh_sandbox.control
    body = '{"ok": true, "balance": "zwölf ✓"}'
    extra = {"X-Upstream": "teapot", "Retry-After": "7"}
    control.set_fault("custom", count=1, status=418, body=body, content_type="text/plain; charset=utf-8", headers=extra)
    served = api.get("payment/balance", headers=bearer())
    assert (served.status_code, served.content) == (418, body.encode())
    assert served.headers["content-type"] == "text/plain; charset=utf-8"
    assert (served.headers["x-upstream"], served.headers["retry-after"]) == ("teapot", "7")
    assert api.get("payment/balance", headers=bearer()).status_code == 200
    control.set_fault("custom", body="[]")
    default = api.get("payment/usage", headers=bearer())
    assert (default.status_code, default.headers["content-type"], default.json()) == (200, "application/json", [])
    control.set_fault("custom", status=503, content_type="")
    bare = api.get("payment/usage", headers=bearer())
    assert (bare.status_code, bare.content, "content-type" in bare.headers) == (503, b"", False)


@pytest.mark.parametrize(
    "options",
    [
        {"status": 99},
        {"status": "200"},
        {"body": {"ok": True}},
        {"headers": {"Content-Length": "1"}},
        {"headers": {"Content-Type": "text/html"}},
        {"headers": {"X-Bad": "line\r\nbreak"}},
        {"status": 204, "body": "x"},
        {"bogus": 1},
    ],
)
def test_custom_refuses_what_http_cannot_carry(fresh_sandbox: RunningSandbox, options: dict[str, Any]) -> None:
    with pytest.raises(httpx2.HTTPStatusError) as refused:
        fresh_sandbox.control.set_fault("custom", **options)
    assert refused.value.response.status_code == 400


# Issue 10, item 6: generated traffic, purchases at a time and the ground truth.

SERVICE_TIERS = {  # the service's tiers and how often generated traffic draws each (percent), spelled out
    ("/api/premium/routing", 1): 40,
    ("/api/premium/news/search", 1): 30,
    ("/api/premium/agents/directory", 5): 15,
    ("/api/premium/whats-new", 10): 10,
    ("/api/premium/monitor/bulk", 50): 5,
}
PLENTY = 1_000_000  # credits enough that no generated call is refused for want of them


def calls_since(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """The calls in truth `after` that truth `before` did not have (both oldest first)."""
    earlier: list[dict[str, Any]] = before["calls"]
    assert after["calls"][: len(earlier)] == earlier
    later: list[dict[str, Any]] = after["calls"][len(earlier) :]
    return later


def endpoints_of(calls: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(call["endpoint"], call["credits"]) for call in calls]


def test_traffic_spreads_calls_evenly_moves_the_clock_and_rolls_the_buffer_over(
    fresh_sandbox: RunningSandbox, api: httpx2.Client
) -> None:
    control = fresh_sandbox.control
    control.add_purchase("new", PLENTY, 20_000.0)
    before, balance_before = control.truth("new"), control.account("new")["balance"]
    calls, seconds = 240, 3600.0
    start = control.now()
    answer = control.traffic("new", calls, seconds, seed=7)
    now = parsed(answer["now"])
    assert (answer["made"], answer["refused_no_credits"], answer["refused_by_cap"]) == (calls, 0, 0)
    assert timedelta(seconds=seconds) <= now - start < timedelta(seconds=seconds + 5)
    assert control.now() >= now
    made = calls_since(before, control.truth("new"))
    times = [parsed(call["at"]) for call in made]
    step = timedelta(seconds=seconds / calls)
    assert len(made) == calls and {later - earlier for earlier, later in pairwise(times)} == {step}
    assert start + step <= times[0] < start + step + timedelta(seconds=5)  # the first at start + S/N
    assert times[-1] - times[0] == timedelta(seconds=seconds) - step and times[-1] <= now  # the last at start + S
    newest_first = list(reversed(made))
    assert control.account("new")["calls"] == newest_first[:100]
    usage = api.get("payment/usage", headers=bearer("new")).json()
    assert usage["recent"] == newest_first[:25]
    assert (usage["total_calls"], usage["total_credits_spent"]) == (100, sum(c["credits"] for c in newest_first[:100]))
    assert usage["token_balance"] == balance_before - sum(call["credits"] for call in made)


def test_traffic_refuses_what_the_balance_cannot_cover(fresh_sandbox: RunningSandbox) -> None:
    control = fresh_sandbox.control
    balance = control.account("low")["balance"]
    before = control.truth("low")
    answer = control.traffic("low", 10, 600, endpoints=[("/api/premium/agents/directory", 5)])
    affordable = balance // 5
    assert (answer["made"], answer["refused_no_credits"], answer["refused_by_cap"]) == (affordable, 10 - affordable, 0)
    assert len(calls_since(before, control.truth("low"))) == affordable
    assert control.account("low")["balance"] == balance - 5 * affordable


def test_traffic_refuses_calls_past_each_days_cap(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
    control = fresh_sandbox.control
    control.add_purchase("new", PLENTY, 20_000.0)
    cap = api.post("payment/spend-cap", headers=bearer("new"), json={"daily_cap": 35}).json()["daily_cap"]
    start = control.now()
    # Every 30 minutes from 12:30 to 12:00 the next day: 23 calls fall on the first UTC day, 25 on the second.
    answer = control.traffic("new", 48, 86_400, endpoints=[("/api/premium/whats-new", 10)])
    per_day = cap // 10
    made = 2 * per_day
    assert (answer["made"], answer["refused_by_cap"], answer["refused_no_credits"]) == (made, 48 - made, 0)
    days = [start.date(), start.date() + timedelta(days=1)]
    by_day = control.truth("new")["by_day"]
    assert by_day.keys() == {day.isoformat() for day in days}
    assert all((day["calls"], day["credits"]) == (per_day, 10 * per_day) for day in by_day.values())
    assert api.get("payment/spend-cap", headers=bearer("new")).json()["daily_spent"] == 10 * per_day


def generated(
    control: SandboxControl, account: str, seed: int, endpoints: list[tuple[str, int]] | None = None
) -> list[tuple[str, int]]:
    """The (endpoint, credits) of 1000 calls generated for `account`, which gets the credits for all of them."""
    control.add_purchase(account, PLENTY, 20_000.0)
    before = control.truth(account)
    assert control.traffic(account, 1000, 3600, endpoints, seed)["made"] == 1000
    return endpoints_of(calls_since(before, control.truth(account)))


def test_the_same_seed_draws_the_same_endpoints_by_the_tiers_weights(fresh_sandbox: RunningSandbox) -> None:
    control = fresh_sandbox.control
    drawn = generated(control, "new", 42)
    assert generated(control, "low", 42) == drawn
    assert generated(control, "new", 43) != drawn
    counts = Counter(drawn)
    assert set(counts) == set(SERVICE_TIERS)
    for tier, weight in SERVICE_TIERS.items():  # within five standard deviations of 1000 draws at its weight
        share = weight / 100
        assert abs(counts[tier] - 1000 * share) <= 5 * math.sqrt(1000 * share * (1 - share)), (tier, counts)
    chosen = [("/api/premium/x", 1), ("/api/premium/y", 50)]
    assert set(generated(control, "low", 42, chosen)) == set(chosen)


def test_truth_holds_every_call_ever_made_by_day(fresh_sandbox: RunningSandbox, api: httpx2.Client) -> None:
    control = fresh_sandbox.control
    seeded = control.truth("busy")
    assert seeded["calls"] == list(reversed(control.account("busy")["calls"]))  # the seeded ring buffer
    api.post("payment/spend-cap", headers=bearer(), json={"daily_cap": None})
    assert control.add_calls("busy", "/api/premium/routing", 1, count=3) == 3
    answer = control.traffic("busy", 600, 3 * 86_400, seed=3)
    assert answer["made"] > 0 and answer["refused_no_credits"] > 0  # busy runs out of credits on the way
    truth = control.truth("busy")
    made = calls_since(seeded, truth)
    assert len(made) == 3 + answer["made"]
    assert truth["spent_lifetime"] - seeded["spent_lifetime"] == sum(call["credits"] for call in made)
    assert truth["balance"] == control.account("busy")["balance"] == truth["total_purchased"] - truth["spent_lifetime"]
    times = [parsed(call["at"]) for call in truth["calls"]]
    assert times == sorted(times)
    days: dict[str, dict[str, Any]] = {}
    for call in truth["calls"]:
        day = days.setdefault(call["at"][:10], {"calls": 0, "credits": 0, "by_endpoint": Counter()})
        day["calls"] += 1
        day["credits"] += call["credits"]
        day["by_endpoint"][call["endpoint"]] += call["credits"]
    assert truth["by_day"] == days
    assert control.account("busy")["calls"] == list(reversed(truth["calls"]))[:100]


def test_purchases_at_a_time_are_confirmed_then_and_credited_at_once(
    fresh_sandbox: RunningSandbox, api: httpx2.Client
) -> None:
    control = fresh_sandbox.control
    before = control.truth("busy")
    at = control.now() - timedelta(days=10)
    control.add_purchase("busy", 550, 10.0, at=at)
    after_dated = control.truth("busy")
    control.add_purchase("busy", 65, 1.0)
    now = control.now()
    truth = control.truth("busy")
    assert truth["balance"] == before["balance"] + 550 + 65
    assert truth["total_purchased"] == before["total_purchased"] + 550 + 65
    assert truth["spent_lifetime"] == before["spent_lifetime"]
    dated = next(p for p in after_dated["purchases"] if p not in before["purchases"])
    assert (dated["credits_added"], dated["amount_usd"], parsed(dated["confirmed_at"])) == (550, 10.0, at)
    latest = truth["purchases"][-1]
    assert latest["credits_added"] == 65 and now - timedelta(seconds=5) < parsed(latest["confirmed_at"]) <= now
    history = api.get("payment/history", headers=bearer()).json()
    listed = [(p["tx_hash"], p["confirmed_at"]) for p in history["purchases"]]
    assert listed == [(p["tx_hash"], p["confirmed_at"]) for p in reversed(truth["purchases"])]
    assert dated["confirmed_at"] in {confirmed for _, confirmed in listed}
    confirmed = [parsed(stamp) for _, stamp in listed]
    assert confirmed == sorted(confirmed, reverse=True)
    assert history["current_balance"] == truth["balance"]


@pytest.mark.parametrize(
    "spec",
    [
        {"calls": 0, "seconds": 60},
        {"calls": 100_001, "seconds": 60},
        {"calls": True, "seconds": 60},
        {"calls": 1.5, "seconds": 60},
        {"seconds": 60},
        {"calls": 10, "seconds": 0},
        {"calls": 10, "seconds": -1},
        {"calls": 10, "seconds": 400 * 86_400 + 1},
        {"calls": 10, "seconds": "60"},
        {"calls": 10, "seconds": math.nan},
        {"calls": 10, "seconds": 60, "endpoints": []},
        {"calls": 10, "seconds": 60, "endpoints": [["/api/premium/routing"]]},
        {"calls": 10, "seconds": 60, "endpoints": [["/api/premium/routing", 3]]},
        {"calls": 10, "seconds": 60, "endpoints": [["routing", 1]]},
        {"calls": 10, "seconds": 60, "seed": "7"},
        {"calls": 10, "seconds": 60, "speed": 2},
        [10, 60],
    ],
)
def test_bad_traffic_specs_are_refused_with_a_message(sandbox: RunningSandbox, spec: Any) -> None:
    before = sandbox.control.truth("new")
    body = json.dumps(spec).encode()  # json.dumps writes NaN, which httpx2's json= refuses to send
    refused = httpx2.post(sandbox.url + "/_sandbox/accounts/new/traffic", content=body)
    assert refused.status_code == 400 and refused.json()["error"]
    assert sandbox.control.truth("new") == before


def test_traffic_for_no_such_account_or_a_body_not_json_is_refused(sandbox: RunningSandbox) -> None:
    traffic = sandbox.url + "/_sandbox/accounts/{}/traffic"
    unknown = httpx2.post(traffic.format("nobody"), json={"calls": 1, "seconds": 1})
    assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]
    assert httpx2.post(traffic.format("new"), content=b"{calls: 1").status_code == 400
    with pytest.raises(httpx2.HTTPStatusError) as refused:
        sandbox.control.traffic("new", 0, 60)
    assert refused.value.response.status_code == 400


# Accounts on demand: the hosted mode's tenants, each with the token its name derives.


def test_the_demo_tokens_are_the_sandbox_tokens_of_their_names() -> None:
    assert {name: sandbox_token(name) for name in ("busy", "new", "low")} == DEMO_TOKENS
    assert len({sandbox_token(f"tenant-{i}") for i in range(1000)}) == 1000


def test_a_created_account_answers_with_its_own_values_through_the_api(
    fresh_sandbox: RunningSandbox, api: httpx2.Client
) -> None:
    control = fresh_sandbox.control
    busy_balance = control.account("busy")["balance"]
    before = control.now()
    described = control.create_account("tenant-7", 4321, daily_cap=250)
    assert sandbox_token("tenant-7")[8:] not in json.dumps(described)
    assert (described["name"], described["balance"], described["total_purchased"]) == ("tenant-7", 4321, 4321)
    assert (described["daily_cap"], described["spent_today"], described["calls"]) == (250, 0, [])
    assert (described["last_used"], described["revoked"]) == (None, False)
    assert before <= parsed(described["created"]) <= control.now()
    [purchase] = described["purchases"]
    assert (purchase["credits_added"], purchase["amount_usd"], purchase["confirmed_at"]) == (
        4321,
        round(4321 / 50, 2),  # the service's base rate
        described["created"],
    )
    balance = api.get("payment/balance", headers=bearer("tenant-7")).json()
    assert (balance["balance"], balance["total_purchased"]) == (4321, 4321)
    assert (balance["created"], balance["last_used"]) == (described["created"], None)
    history = api.get("payment/history", headers=bearer("tenant-7")).json()
    assert (history["purchases"], history["total_credits_added"]) == (described["purchases"], 4321)
    usage = api.get("payment/usage", headers=bearer("tenant-7")).json()
    assert (usage["total_calls"], usage["recent"], usage["token_balance"]) == (0, [], 4321)
    cap = api.get("payment/spend-cap", headers=bearer("tenant-7")).json()
    assert (cap["daily_cap"], cap["daily_spent"], cap["remaining"]) == (250, 0, 250)
    assert control.add_calls("tenant-7", "/api/premium/whats-new", 10, count=30) == 25  # the cap stops it at 250
    assert api.get("payment/balance", headers=bearer("tenant-7")).json()["balance"] == 4321 - 250
    with pytest.raises(httpx2.HTTPStatusError) as taken:
        control.create_account("tenant-7", 99)
    assert taken.value.response.status_code == 400 and "not yet used" in taken.value.response.json()["error"]
    assert api.get("payment/balance", headers=bearer("tenant-7")).json()["balance"] == 4321 - 250
    assert api.get("payment/balance", headers=bearer()).json()["balance"] == busy_balance


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"name": "Tenant", "balance": 10}, "1 to 40 characters of a-z, 0-9 and -"),
        ({"name": "", "balance": 10}, "1 to 40 characters of a-z, 0-9 and -"),
        ({"name": "a" * 41, "balance": 10}, "1 to 40 characters of a-z, 0-9 and -"),
        ({"name": "a_b", "balance": 10}, "1 to 40 characters of a-z, 0-9 and -"),
        ({"name": "a\nb", "balance": 10}, "1 to 40 characters of a-z, 0-9 and -"),
        ({"name": 7, "balance": 10}, "1 to 40 characters of a-z, 0-9 and -"),
        ({"name": "busy", "balance": 10}, "choose a name not yet used"),
        ({"name": "t", "balance": 0}, "whole number of credits from 1 to 1000000000"),
        ({"name": "t", "balance": -5}, "whole number of credits from 1 to 1000000000"),
        ({"name": "t", "balance": True}, "whole number of credits from 1 to 1000000000"),
        ({"name": "t", "balance": 2.0}, "whole number of credits from 1 to 1000000000"),
        ({"name": "t", "balance": "10"}, "whole number of credits from 1 to 1000000000"),
        ({"name": "t", "balance": 1_000_000_001}, "whole number of credits from 1 to 1000000000"),
        ({"name": "t", "balance": 10, "daily_cap": 0}, "null or a whole number from 1 to 1000000"),
        ({"name": "t", "balance": 10, "daily_cap": 1_000_001}, "null or a whole number from 1 to 1000000"),
        ({"name": "t", "balance": 10, "daily_cap": 12.5}, "null or a whole number from 1 to 1000000"),
        ({"name": "t"}, "missing field 'balance'"),
        ({"balance": 10}, "missing field 'name'"),
        ({"name": "t", "balance": 10, "token": "x"}, "unknown fields: token; send name, balance and daily_cap"),
        (["t", 10], "send a JSON object"),
    ],
)
def test_account_creation_refuses_with_what_is_accepted(sandbox: RunningSandbox, body: Any, accepted: str) -> None:
    busy = sandbox.control.truth("busy")
    refused = httpx2.post(sandbox.url + "/_sandbox/accounts", json=body)
    assert refused.status_code == 400 and accepted in refused.json()["error"]
    name = body.get("name") if isinstance(body, dict) else None
    if isinstance(name, str) and name != "busy":
        with httpx2.Client(base_url=sandbox.api_url + "/") as api:
            assert error_of(api.get("payment/balance", headers=bearer(name))) == (404, "token_not_found")
    assert sandbox.control.truth("busy") == busy


def test_a_couple_hundred_accounts_each_open_with_their_own_token(fresh_sandbox: RunningSandbox) -> None:
    names = [f"tenant-{i:03d}" for i in range(200)]
    caps = {name: None if i % 2 else 100 + i for i, name in enumerate(names)}
    for i, name in enumerate(names):
        fresh_sandbox.control.create_account(name, 1000 + i, caps[name])
    revoked = names[17]
    with httpx2.Client(base_url=fresh_sandbox.api_url + "/") as api:
        assert api.post("payment/revoke", headers=bearer(revoked)).json()["balance_at_revoke"] == 1017
        for i, name in enumerate(names):
            balance = api.get("payment/balance", headers=bearer(name))
            cap = api.get("payment/spend-cap", headers=bearer(name))
            if name == revoked:
                assert error_of(balance) == error_of(cap) == (404, "token_not_found")
            else:
                assert (balance.json()["balance"], cap.json()["daily_cap"]) == (1000 + i, caps[name])
        assert api.get("payment/balance", headers=bearer("low")).json()["balance"] == 12
