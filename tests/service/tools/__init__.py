"""Every tool through real clients: account tools, alert tools, the ledger, the dashboard app, webhooks."""
