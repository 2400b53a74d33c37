"""Every limit the server holds to, declared once: the service's own (from its contract) and ours on what comes in
from outside (arguments, upstream lists, stored rules and messages)."""

from __future__ import annotations

# The service's contract.
SERVICE_CALL_MEMORY = 100  # the service remembers a token's last 100 premium calls, no more
MIN_DAILY_CAP = 1
MAX_DAILY_CAP = 1_000_000  # credits per UTC day
MAX_RECENT_LIMIT = 25  # the service lists at most 25 recent calls
DEFAULT_RECENT_LIMIT = 5

# What we accept from upstream answers: longer text is cut, longer lists are refused.
MAX_UPSTREAM_TEXT = 200
MAX_UPSTREAM_ENDPOINTS = 1000
MAX_UPSTREAM_PURCHASES = 1000

# Arguments and what the server keeps.
MAX_HISTORY_DAYS = 90
MAX_HOUR_DAYS = 7
MAX_NAME_LENGTH = 64  # an alert rule's name (and a kind given as text)
MAX_SAVED_RULES = 100  # per token
MAX_QUEUED_MESSAGES = 50  # webhook messages kept per token; beyond it the oldest are dropped (and counted)

DAILY_CAP_RANGE = f"a whole number of credits from {MIN_DAILY_CAP:,} to {MAX_DAILY_CAP:,}"
