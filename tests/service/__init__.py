"""The MCP service: its tools, resources and what they drive (alerts, ledger, dashboard, webhooks)."""
