"""Pure code: the alert-kind registry and evaluation, ledger arithmetic, rate limiting. Snapshots in, verdicts out."""
