"""The MCP App dashboard (issue 11) in real headless Chromium, fed by the installed server over stdio.

A test host page embeds the `ui://tensorfeed/dashboard` resource in a sandboxed iframe and plays the host's side
of the MCP Apps bridge: it answers ui/initialize, sends the tool result, and forwards the page's tools/call
requests to the real server through the SDK's Client. Every figure the page shows is compared with the tool's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import stdio_client
from playwright.async_api import ConsoleMessage, FrameLocator, Page, async_playwright, expect

from tensorfeed_mcp.demo import CHEAP_ENDPOINTS
from tensorfeed_mcp.sandbox import RunningSandbox
from tests.support import ROOT
from tests.support.app_host import CHROMIUM, CHROMIUM_ARGS, DASHBOARD_URI, HOST_PAGE, HOST_URL
from tests.support.env import settings_for
from tests.support.records import read_recorded, record
from tests.support.servers import stdio_params

pytestmark = [pytest.mark.anyio, pytest.mark.chromium]

MCP_APP_MIME = "text/html;profile=mcp-app"
SCREENSHOT = ROOT / ".cache" / "dashboard.png"
"""Where each run saves what it saw (ignored by git: its dates change every run); docs/dashboard.png is one of these."""
STEPS, GAP_STEP, GAP_HOURS, GAP_CALLS = 40, 4, 16, 60
"""A snapshot every two hours, except one 16-hour stretch across a UTC midnight whose 60 calls outrun the 25 the
service lists: the days it crosses become bounds and the stretch a snapshot gap."""
HISTORY_START = datetime(2026, 5, 13, 6, 0, tzinfo=UTC)
"""Where the history begins on the sandbox's clock: the 16-hour stretch then runs from 14:00 to 06:00 the next day,
across a midnight, whatever the hour the test runs at."""

Foreign = Callable[[str, dict[str, Any]], dict[str, Any]]
"""What a host makes of a tool's structured result before passing it to the app (by the tool's name)."""


def as_is(tool: str, structured: dict[str, Any]) -> dict[str, Any]:
    return structured


def as_sent(result: Any) -> dict[str, Any]:
    """A CallToolResult as JSON on the wire, which is what a host passes to the app."""
    wire: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    record(json.dumps(wire))
    return wire


@dataclass
class Host:
    """A browser page hosting the dashboard, with every tools/call it forwarded to the server."""

    page: Page
    app: FrameLocator
    client: Client
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The last structured result of each tool the page called."""
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    foreign: Foreign = as_is
    """Applied to every structured result the page is given; the server's answer as it is, unless a test says."""

    async def forward(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The host forwarding the app's tools/call to the server: what the page gets is the server's answer."""
        self.calls.append((name, arguments))
        return {"result": self.passed_on(name, as_sent(await self.client.call_tool(name, arguments)))}

    def passed_on(self, name: str, wire: dict[str, Any]) -> dict[str, Any]:
        """A result as the page gets it, its structured content made `foreign`; that is what `answers` keeps."""
        wire = wire | {"structuredContent": self.foreign(name, wire["structuredContent"])}
        self.answers[name] = wire["structuredContent"]
        return wire


async def build_history(client: Client, sandbox: RunningSandbox) -> None:
    """About three days of generated traffic with a snapshot (a check_spend_alerts call) every two hours."""
    sandbox.control.set_clock(HISTORY_START)
    for step in range(STEPS):
        if step == GAP_STEP:
            sandbox.control.traffic("busy", GAP_CALLS, GAP_HOURS * 3600, endpoints=CHEAP_ENDPOINTS, seed=step)
        else:
            sandbox.control.traffic("busy", 5, 2 * 3600, endpoints=CHEAP_ENDPOINTS, seed=step)
        as_sent(await client.call_tool("check_spend_alerts", {}))
    for kind, threshold in [("daily_spend_above", 10), ("balance_below", 100_000)]:
        as_sent(await client.call_tool("set_spend_alert", {"kind": kind, "threshold": threshold}))


@asynccontextmanager
async def dashboard(
    fresh_sandbox: RunningSandbox,
    tmp_path: Path,
    theme: str = "light",
    *,
    arguments: dict[str, Any] | None = None,
    endpoints: Sequence[str] = (),
    foreign: Foreign = as_is,
) -> AsyncIterator[Host]:
    """The installed server with a history (plus a call to each of `endpoints`, seen by one more snapshot), Chromium
    on the test host page, and the dashboard started in it with get_spend_history's result for `arguments` (7 days
    by default), the host passing every result on through `foreign`."""
    stderr = tmp_path / "stderr.log"
    params = stdio_params(settings_for(fresh_sandbox, tmp_path / "state", cache_seconds=0.0))
    try:
        with stderr.open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client, async_playwright() as playwright:
                await build_history(client, fresh_sandbox)
                for endpoint in endpoints:
                    assert fresh_sandbox.control.add_calls("busy", endpoint, 1) == 1
                if endpoints:
                    as_sent(await client.call_tool("check_spend_alerts", {}))
                tools = {tool.name: tool for tool in (await client.list_tools()).tools}
                assert (tools["get_spend_history"].meta or {})["ui"]["resourceUri"] == DASHBOARD_URI
                contents = (await client.read_resource(DASHBOARD_URI)).contents[0]
                assert contents.mime_type == MCP_APP_MIME
                html = getattr(contents, "text", "")
                record(html)
                arguments = arguments or {"days": 7}
                first = as_sent(await client.call_tool("get_spend_history", arguments))

                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = await browser.new_context(viewport={"width": 800, "height": 1200})
                page = await context.new_page()
                host = Host(page, page.frame_locator("#app"), client, foreign=foreign)
                first = host.passed_on("get_spend_history", first)
                page.on("request", lambda request: host.requests.append(request.url))
                page.on("console", lambda message: _console(host, message))
                page.on("pageerror", lambda error: host.console_errors.append(str(error)))
                await page.route(HOST_URL, lambda route: route.fulfill(body=HOST_PAGE, content_type="text/html"))
                await page.expose_function("mcpCall", host.forward)
                await page.goto(HOST_URL)
                await page.evaluate("(a) => window.startApp(...a)", [html, first, arguments, theme])
                await expect(host.app.locator("#balance")).not_to_have_text("…")
                await expect(host.app.locator("#cap")).not_to_have_text("…")
                try:
                    yield host
                finally:
                    await browser.close()
    finally:
        read_recorded(stderr)


def _console(host: Host, message: ConsoleMessage) -> None:
    record(message.text)
    if message.type == "error":
        host.console_errors.append(message.text)


def spent_text(bucket: dict[str, Any]) -> str:
    """How the page writes a bucket's credits: exact, a range, or at least."""
    if bucket["exact"]:
        return f"{bucket['credits']:,}"
    if bucket["credits_max"] is None:
        return f"≥ {bucket['credits']:,}"
    return f"{bucket['credits']:,} to {bucket['credits_max']:,}"


async def table_rows(app: FrameLocator) -> list[dict[str, str]]:
    rows = app.locator("#days tbody tr")
    return [
        {
            "day": await row.get_attribute("data-day") or "",
            "credits": await row.get_attribute("data-credits") or "",
            "credits_max": await row.get_attribute("data-credits-max") or "",
            "kind": await row.get_attribute("data-kind") or "",
            "gap": await row.get_attribute("data-gap") or "",
            "text": await row.locator("td").first.inner_text(),
        }
        for row in await rows.all()
    ]


def expected_rows(history: dict[str, Any]) -> list[dict[str, str]]:
    """The table the page must show for a get_spend_history result."""
    gaps = [(gap["start"], gap["end"]) for gap in history["coverage"]["gaps"]]
    rows = []
    for bucket in history["buckets"]:
        kind = "exact" if bucket["exact"] else "open" if bucket["credits_max"] is None else "range"
        in_gap = any(start < bucket["end"] and end > bucket["start"] for start, end in gaps)
        maximum = bucket["credits_max"]
        rows.append(
            {
                "day": bucket["start"][:10],
                "credits": str(bucket["credits"]),
                "credits_max": "" if maximum is None else str(maximum),
                "kind": kind,
                "gap": str(in_gap).lower(),
                "text": spent_text(bucket),
            }
        )
    return rows


def assert_no_request_left(host: Host) -> None:
    strays = [url for url in host.requests if url != HOST_URL and not url.startswith(("data:", "blob:", "about:"))]
    assert not strays, strays


async def test_dashboard_shows_the_tools_numbers(fresh_sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Balance, runway, cap, alerts, daily bars with bounds and gaps, top endpoints: all the tools' own figures."""
    async with dashboard(fresh_sandbox, tmp_path) as host:
        app = host.app
        history = host.answers["get_spend_history"]
        alerts = host.answers["check_spend_alerts"]
        cap = host.answers["get_spend_cap"]

        rows = await table_rows(app)
        assert rows == expected_rows(history)
        kinds = {row["kind"] for row in rows}
        assert {"exact", "range", "open"} <= kinds, kinds  # the history was built to have all three
        assert any(row["gap"] == "true" for row in rows)
        assert await app.locator("svg .gapband").count() == len(history["coverage"]["gaps"]) >= 1
        bars = app.locator("svg g.bar")
        assert [await bar.get_attribute("data-kind") for bar in await bars.all()] == [row["kind"] for row in rows]
        assert await app.locator("svg .bound").count() == kinds_count(rows, "range")
        assert await app.locator("svg .open").count() == kinds_count(rows, "open")

        assert await app.locator("#balance").get_attribute("data-value") == str(alerts["balance"])
        await expect(app.locator("#balance")).to_have_text(f"{alerts['balance']:,}")
        assert float(await app.locator("#runway").get_attribute("data-value") or "nan") == alerts["runway_hours"]
        await expect(app.locator("#cap")).to_have_text(f"{cap['daily_spent']:,} / {cap['daily_cap']:,}")
        assert await app.locator("[role=meter]").get_attribute("aria-valuenow") == str(cap["daily_spent"])
        triggered = [alert["name"] for alert in alerts["alerts"] if alert["status"] == "triggered"]
        assert triggered
        assert [await item.get_attribute("data-alert") for item in await app.locator("[data-alert]").all()] == triggered

        top = sorted(history["totals"]["by_endpoint"].items(), key=lambda item: -item[1])
        shown = app.locator("#endpoints li")
        assert [
            (await li.get_attribute("data-endpoint"), await li.get_attribute("data-credits"))
            for li in await shown.all()
        ] == [(name, str(credits)) for name, credits in top]
        await expect(app.locator("#total")).to_have_text(spent_text(history["totals"]))
        assert await app.locator("#days caption").count() == 1

        await expect(app.locator(":root")).to_have_attribute("data-theme", "light")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await host.page.locator("#app").screenshot(path=SCREENSHOT)
        assert host.console_errors == []
        assert_no_request_left(host)


def kinds_count(rows: list[dict[str, str]], kind: str) -> int:
    return sum(row["kind"] == kind for row in rows)


async def test_day_buttons_call_the_tool_through_the_host_and_redraw(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Each of 7, 30 and 90 sends tools/call get_spend_history {"days": N} to the host; the page redraws N days."""
    async with dashboard(fresh_sandbox, tmp_path) as host:
        app = host.app
        for days in (30, 90, 7):
            await app.get_by_role("button", name=f"{days} days").click()
            await expect(app.locator("#days tbody tr")).to_have_count(days)
            await expect(app.get_by_role("button", name=f"{days} days")).to_have_attribute("aria-pressed", "true")
            assert host.calls[-1] == ("get_spend_history", {"days": days})
            assert await table_rows(app) == expected_rows(host.answers["get_spend_history"])
        sent = [entry for entry in await host.page.evaluate("window.hostLog") if entry["method"] == "tools/call"]
        assert [entry["params"]["arguments"] for entry in sent if entry["params"]["name"] == "get_spend_history"] == [
            {"days": 30},
            {"days": 90},
            {"days": 7},
        ]
        assert host.console_errors == []
        assert_no_request_left(host)


async def test_dashboard_follows_the_hosts_theme(fresh_sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Dark when the host starts it dark; light again on ui/notifications/host-context-changed."""
    async with dashboard(fresh_sandbox, tmp_path, theme="dark") as host:
        app = host.app
        await expect(app.locator(":root")).to_have_attribute("data-theme", "dark")
        await expect(app.locator("body")).to_have_css("background-color", "rgb(22, 24, 29)")
        await host.page.evaluate("window.hostNotify('ui/notifications/host-context-changed', {theme: 'light'})")
        await expect(app.locator(":root")).to_have_attribute("data-theme", "light")
        await expect(app.locator("body")).to_have_css("background-color", "rgb(255, 255, 255)")
        assert host.console_errors == []
        assert_no_request_left(host)


MARKUP_ENDPOINTS = ["/api/premium/<b>bold</b>", "/api/premium/a&#62;b&amp;", "/api/premium/q\"'<u>&"]
"""Endpoint names as the service may send them: markup, entities and quotes, which the page must show as written."""


async def test_endpoint_names_with_markup_are_shown_as_written_in_table_list_and_chart(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """group_by="endpoint": each name is the text of its table row and of its bar's axis label (the last five
    characters), as the top endpoints are of their list entries: never markup, never an entity left escaped."""
    arguments = {"days": 7, "group_by": "endpoint"}
    async with dashboard(fresh_sandbox, tmp_path, arguments=arguments, endpoints=MARKUP_ENDPOINTS) as host:
        app = host.app
        history = host.answers["get_spend_history"]
        names = [bucket["endpoint"] for bucket in history["buckets"]]
        assert set(MARKUP_ENDPOINTS) <= set(names)
        await expect(app.locator("#days tbody tr")).to_have_count(len(names))
        assert [await cell.text_content() for cell in await app.locator("#days tbody th").all()] == names
        assert [await row.get_attribute("data-day") for row in await app.locator("#days tbody tr").all()] == names
        listed = app.locator("#endpoints li .name")
        assert {await item.text_content() for item in await listed.all()} == set(history["totals"]["by_endpoint"])
        every = -(-len(names) // 10)
        labels = app.locator("svg g.bar > text.barlabel")
        assert [await label.text_content() for label in await labels.all()] == [name[-5:] for name in names[::every]]
        assert await app.locator("b, u").count() == 0
        assert host.console_errors == []


HANDLER_COUNT = (
    "(body) => [...body.querySelectorAll('*')]"
    ".filter((element) => element.getAttributeNames().some((name) => name.startsWith('on'))).length"
)
"""How many elements under the body carry an event handler attribute (onerror=, onload=, ...)."""


def hostile(where: str) -> str:
    """Text that, written into markup unescaped (in an attribute or not), adds an image whose error handler runs."""
    return f'1"><img src="data:," onerror="(window.injected ??= []).push(\'{where}\')">'


def with_hostile_numbers(tool: str, structured: dict[str, Any]) -> dict[str, Any]:
    """A host's foreign data: strings of markup where the schema promises numbers (and in the cap's reset time)."""
    changed: dict[str, Any] = json.loads(json.dumps(structured))
    if tool == "get_spend_history":
        for bucket in changed["buckets"]:
            bucket["credits"] = hostile("credits")
            if bucket["credits_max"] is not None:
                bucket["credits_max"] = hostile("credits_max")
        for gap in changed["coverage"]["gaps"]:
            gap["hours"] = hostile("gap")
        changed["totals"]["by_endpoint"] = {name: hostile("endpoint") for name in changed["totals"]["by_endpoint"]}
    if tool == "get_spend_cap":
        changed |= {"daily_cap": hostile("cap"), "daily_spent": hostile("spent"), "reset_at": "2026-05-12T<u>0</u>Z"}
    return changed


async def test_strings_of_markup_where_numbers_belong_run_no_script_and_are_kept_as_written(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Unreachable through this server's typed output, but a host may pass the app anything: each hostile value
    ends up as text or as an attribute's value, and no element of it exists."""
    async with dashboard(fresh_sandbox, tmp_path, foreign=with_hostile_numbers) as host:
        app = host.app
        history = host.answers["get_spend_history"]
        await expect(app.locator("#days tbody tr")).to_have_count(len(history["buckets"]))
        await expect(app.locator("[role=meter]")).to_have_count(1)
        assert await app.locator("img").count() == 0
        assert await app.locator("body").evaluate(HANDLER_COUNT) == 0
        assert await app.locator("body").evaluate("() => window.injected ?? []") == []

        rows = await table_rows(app)
        assert {row["credits"] for row in rows} == {hostile("credits")}
        assert {row["credits_max"] for row in rows if row["kind"] == "range"} == {hostile("credits_max")}
        endpoints = await app.locator("#endpoints li").all()
        assert {await item.get_attribute("data-credits") for item in endpoints} == {hostile("endpoint")}
        gap_titles = await app.locator("svg .gapband title").all()
        assert gap_titles and {await title.text_content() for title in gap_titles} == {
            f"No snapshot for {hostile('gap')} h"
        }
        meter = app.locator("[role=meter]")
        assert (await meter.get_attribute("aria-valuemax"), await meter.get_attribute("aria-valuenow")) == (
            hostile("cap"),
            hostile("spent"),
        )
        await expect(app.locator("#cap-gauge .sub")).to_contain_text("resets <u>0< UTC")
