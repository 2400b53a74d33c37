"""What every store backend shares: the Store interface, its limits and the pure decisions both backends make
(so they cannot drift apart)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple, Protocol

from tensorfeed_mcp.core.ledger import Ledger, Reading, SeenCall, SeenPurchase
from tensorfeed_mcp.errors import InvalidInputError
from tensorfeed_mcp.limits import MAX_SAVED_RULES
from tensorfeed_mcp.models import AlertRule, AlertStatus

OUTBOX_LEASE_SECONDS = 60.0  # longer than one delivery's attempts take, so only a crashed sender's lease runs out
STATE_FILE_NAME = "alerts.sqlite3"

AlertEvent = Literal["triggered", "resolved"]
Compose = Callable[[str, AlertEvent, datetime | None], str]
"""Makes the message for a rule's transition (rule name, event, since), to queue for sending."""
SaveAction = Literal["created", "updated"]
ChangeListener = Callable[[str], None]
"""Called with a token fingerprint whose stored alert statuses changed (on whichever process changed them)."""


class Store(Protocol):
    """What the service needs from storage. Every method is one transaction; a store that cannot be used raises
    StateStoreError with a message that says what to do."""

    async def list_rules(self, fingerprint: str) -> list[AlertRule]:
        """The token's saved rules, by name."""
        ...

    async def save_rule(
        self, fingerprint: str, rule: AlertRule, limit: int = MAX_SAVED_RULES
    ) -> tuple[SaveAction, int]:
        """Create the rule or replace the one with its name; what happened and how many rules the token now has.
        A changed kind or threshold forgets its trigger state. A new rule beyond `limit` is refused."""
        ...

    async def delete_rule(self, fingerprint: str, name: str) -> tuple[AlertRule, int] | None:
        """Delete a saved rule and its state; it and how many rules remain, or None when there was none."""
        ...

    async def record_statuses(
        self, fingerprint: str, statuses: dict[str, AlertStatus], now: datetime, compose: Compose | None = None
    ) -> dict[str, datetime | None]:
        """Store this check's statuses (see `next_statuses`) and return each rule's `since`. With `compose`, each
        transition into or out of triggered queues its message in the same transaction, so across processes each
        transition is queued exactly once; the token's queue then keeps its newest MAX_QUEUED_MESSAGES, the older
        ones dropped and counted. When a stored status changed, every watcher hears of it."""
        ...

    async def claim_message(self, fingerprint: str, now: float) -> tuple[int, str] | None:
        """The token's oldest queued message (id, body) that no live sender holds, now held by the caller for
        OUTBOX_LEASE_SECONDS (`now` in epoch seconds), so a crashed sender's message is retried; None when none."""
        ...

    async def settle_message(self, message_id: int, *, done: bool) -> None:
        """Remove a sent (or undeliverable) message, or release it for the next run to retry."""
        ...

    async def outbox(self, fingerprint: str) -> Outbox:
        """How many of the token's messages wait to be sent, and how many were ever dropped unsent."""
        ...

    async def record_snapshot(
        self,
        fingerprint: str,
        readings: Sequence[Reading],
        calls: Sequence[SeenCall],
        purchases: Sequence[tuple[str, SeenPurchase]],
    ) -> None:
        """Add what a look at the account found. A call seen again is stored once; `count` keeps the most calls
        ever seen at once with the same time, endpoint and credits, so concurrent writers agree."""
        ...

    async def load_ledger(self, fingerprint: str, start: int) -> tuple[Ledger, int | None]:
        """The token's ledger from the last reading at or before `start` on, and the time of its first reading ever
        (None when there is none)."""
        ...

    async def forget_calls_before(self, fingerprint: str, cutoff: int) -> int:
        """Delete the token's seen calls older than `cutoff`; how many rows went. Readings stay: they alone keep
        every day's total exact."""
        ...

    async def check_ready(self) -> None:
        """Return when the store can be used now (reachable, schema current); else raise StateStoreError."""
        ...

    def watch(self, listener: ChangeListener) -> Callable[[], None]:
        """Call `listener` on this process's event loop whenever any process changes a token's stored alert
        statuses; return the way to stop. Listeners must not raise or block."""
        ...


class Outbox(NamedTuple):
    pending: int
    dropped: int


def rule_limit_error(count: int, limit: int) -> InvalidInputError:
    return InvalidInputError(
        f"This token already has {count} saved alert rules, the most allowed ({limit}). Delete one "
        "(delete_spend_alert) or change an existing rule by saving it under its name."
    )


def saved_rule(name: str, kind: str, threshold: float, unit: str) -> AlertRule:
    """A rule as a store row holds it."""
    return AlertRule.model_validate(
        {"name": name, "kind": kind, "threshold": threshold, "unit": unit, "source": "user"}
    )


@dataclass
class StatusUpdate:
    """What one check changes in the stored state: the rows to write, each rule's `since`, the transitions to
    queue and whether any stored status changed."""

    rows: list[tuple[str, str, str | None]] = field(default_factory=list)  # (name, status, since as ISO text)
    since: dict[str, datetime | None] = field(default_factory=dict)
    transitions: list[tuple[str, AlertEvent]] = field(default_factory=list)
    changed: bool = False


def next_statuses(
    stored: dict[str, tuple[str, str | None]], statuses: dict[str, AlertStatus], now: datetime
) -> StatusUpdate:
    """The state after a check, from the stored (status, since) per rule.

    A rule that becomes triggered gets `since = now`; one that stays triggered keeps its time; ok and not_applicable
    clear it; unknown changes nothing (a failed read is not evidence either way). A rule never stored counts as ok,
    so a first evaluation that finds it triggered is a transition.
    """
    update = StatusUpdate()
    for name, verdict in statuses.items():
        old_status, old_since = stored.get(name, ("ok", None))
        status: str = verdict
        if status == "unknown":
            status, since = old_status, old_since
        elif status == "triggered":
            since = old_since if old_status == "triggered" and old_since else now.isoformat()
        else:
            since = None
        update.rows.append((name, status, since))
        update.since[name] = datetime.fromisoformat(since) if status == "triggered" and since else None
        update.changed = update.changed or status != old_status
        if (old_status == "triggered") != (status == "triggered"):
            update.transitions.append((name, "triggered" if status == "triggered" else "resolved"))
    return update


class Watchers:
    """The listeners of one store, for backends to call."""

    def __init__(self) -> None:
        self._listeners: dict[object, ChangeListener] = {}

    def add(self, listener: ChangeListener) -> Callable[[], None]:
        key = object()
        self._listeners[key] = listener
        return lambda: self._listeners.pop(key, None) and None

    def tell(self, fingerprint: str) -> None:
        for listener in list(self._listeners.values()):
            listener(fingerprint)
