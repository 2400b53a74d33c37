"""The MCP Apps host the dashboard is shown in, by the tests and the benchmark: Debian's Chromium, headless, and a
test host page (app_host.html, beside this file) served from memory."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]
DASHBOARD_URI = "ui://tensorfeed/dashboard"
HOST_URL = "https://host.invalid/"
"""The test host page, served from memory by a route: the only request the page may make."""
HOST_PAGE = Path(__file__).with_name("app_host.html").read_text()
"""The host's side of the MCP Apps bridge; the embedding page supplies window.mcpCall to answer the app's
tools/call."""
