"""The dashboard's render time in headless Chromium for 90 days of history, as a host would show it."""

from __future__ import annotations

import statistics
from typing import Any

from mcp import Client
from playwright.async_api import async_playwright

from tests.support.app_host import CHROMIUM, CHROMIUM_ARGS, DASHBOARD_URI, HOST_PAGE, HOST_URL

RENDER_RUNS = 10


def as_sent(result: Any) -> dict[str, Any]:
    wire: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return wire


async def dashboard_render(client: Client) -> dict[str, Any]:
    """Median of the page's own render time (performance.now() around drawing, in body[data-render-ms]) when
    a host hands it get_spend_history(days=90), over RENDER_RUNS fresh loads; the page's tool calls are answered
    by `client`."""
    contents = (await client.read_resource(DASHBOARD_URI)).contents[0]
    html = getattr(contents, "text", "")
    arguments = {"days": 90}
    history = as_sent(await client.call_tool("get_spend_history", arguments))

    async def forward(name: str, tool_arguments: dict[str, Any]) -> dict[str, Any]:
        return {"result": as_sent(await client.call_tool(name, tool_arguments))}

    samples = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(RENDER_RUNS):
            page = await browser.new_page(viewport={"width": 800, "height": 1200})
            await page.route(HOST_URL, lambda route: route.fulfill(body=HOST_PAGE, content_type="text/html"))
            await page.expose_function("mcpCall", forward)
            await page.goto(HOST_URL)
            await page.evaluate("(a) => window.startApp(...a)", [html, history, arguments, "light"])
            body = page.frame_locator("#app").locator("body[data-render-ms]")
            await body.wait_for(state="attached")
            samples.append(float(await body.get_attribute("data-render-ms") or "nan"))
            await page.close()
        await browser.close()
    return {"days": 90, "runs": RENDER_RUNS, "render_p50_ms": statistics.median(samples), "samples_ms": samples}
