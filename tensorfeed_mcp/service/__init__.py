"""The service layer: one tenant's account (reads, the cap, rules, the alert check, ledger recording) and the
webhook outbox sender. Knows nothing of MCP, nor whether there is one tenant or many."""
