"""`make bench`: start-up, per-call overhead, burst load and memory, measured against the sandbox."""
