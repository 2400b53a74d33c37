"""`make bench`: start-up, per-call overhead, burst load, memory, context cost, the ledger at scale and the hosted
mode (many tenants over replicas), measured against the sandbox."""
