"""StateStore: alert rules, their trigger state, queued alert messages and the spend ledger, in one SQLite file,
keyed by token fingerprint.

Every operation opens its own connection and runs in one transaction, so several server processes can share
the file (WAL mode, a busy timeout, BEGIN IMMEDIATE for writes). A file that is not a database is never
rewritten or replaced: it is copied aside once and every operation says where the file and the copy are.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from tensorfeed_mcp.errors import InvalidInputError, StateStoreError
from tensorfeed_mcp.ledger import Ledger, Reading, SeenCall, SeenPurchase
from tensorfeed_mcp.models import AlertRule, AlertStatus

if TYPE_CHECKING:
    import sqlite3

MAX_SAVED_RULES = 100
SCHEMA_VERSION = 3  # 2: alert_outbox; 3: the ledger_* tables
OUTBOX_LEASE_SECONDS = 60.0  # longer than one delivery's attempts take, so only a crashed sender's lease runs out
BUSY_TIMEOUT_MS = 5000
SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_rules (
    fingerprint TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    threshold REAL NOT NULL,
    unit TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (fingerprint, name)
);
CREATE TABLE IF NOT EXISTS alert_state (
    fingerprint TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    since TEXT,
    PRIMARY KEY (fingerprint, name)
);
CREATE TABLE IF NOT EXISTS alert_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,
    body TEXT NOT NULL,
    claimed_until REAL
);
CREATE TABLE IF NOT EXISTS ledger_readings (
    fingerprint TEXT NOT NULL,
    at INTEGER NOT NULL,
    spent INTEGER NOT NULL,
    purchased INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_calls (
    fingerprint TEXT NOT NULL,
    at INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    credits INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, at, endpoint, credits)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_purchases (
    fingerprint TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    at INTEGER NOT NULL,
    credits INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, tx_hash)
) WITHOUT ROWID;
"""
# Times in the ledger tables are integer milliseconds since the epoch (UTC), as in ledger.py.

AlertEvent = Literal["triggered", "resolved"]
Compose = Callable[[str, AlertEvent, datetime | None], str]
"""Makes the message for a rule's transition (rule name, event, since), to queue for sending."""

T = TypeVar("T")


def _rule(name: str, kind: str, threshold: float, unit: str) -> AlertRule:
    return AlertRule.model_validate(
        {"name": name, "kind": kind, "threshold": threshold, "unit": unit, "source": "user"}
    )


class StateStore:
    """Saved alert rules and when each went from ok to triggered. Creating one touches no file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def list_rules(self, fingerprint: str) -> list[AlertRule]:
        """The token's saved rules, by name."""
        rows = self._run(
            lambda db: db.execute(
                "SELECT name, kind, threshold, unit FROM alert_rules WHERE fingerprint = ? ORDER BY name",
                (fingerprint,),
            ).fetchall(),
            write=False,
        )
        return [_rule(*row) for row in rows]

    def save_rule(
        self, fingerprint: str, rule: AlertRule, limit: int = MAX_SAVED_RULES
    ) -> tuple[Literal["created", "updated"], int]:
        """Create the rule or replace the one with its name, and return what happened and how many rules the token
        now has. A changed kind or threshold forgets its trigger state. A new rule beyond `limit` is refused."""

        def save(db: sqlite3.Connection) -> tuple[Literal["created", "updated"], int]:
            old = db.execute(
                "SELECT kind, threshold FROM alert_rules WHERE fingerprint = ? AND name = ?",
                (fingerprint, rule.name),
            ).fetchone()
            count = self._count(db, fingerprint)
            if old is None and count >= limit:
                raise InvalidInputError(
                    f"This token already has {count} saved alert rules, the most allowed ({limit}). Delete one "
                    "(delete_spend_alert) or change an existing rule by saving it under its name."
                )
            db.execute(
                "INSERT INTO alert_rules (fingerprint, name, kind, threshold, unit) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (fingerprint, name) DO UPDATE SET kind = excluded.kind, "
                "threshold = excluded.threshold, unit = excluded.unit, updated_at = excluded.updated_at",
                (fingerprint, rule.name, rule.kind, rule.threshold, rule.unit),
            )
            if old is not None and tuple(old) != (rule.kind, rule.threshold):
                db.execute("DELETE FROM alert_state WHERE fingerprint = ? AND name = ?", (fingerprint, rule.name))
            return ("created", count + 1) if old is None else ("updated", count)

        return self._run(save, write=True)

    def delete_rule(self, fingerprint: str, name: str) -> tuple[AlertRule, int] | None:
        """Delete a saved rule and its state; return it and how many rules remain, or None when there was none."""

        def delete(db: sqlite3.Connection) -> tuple[AlertRule, int] | None:
            row = db.execute(
                "DELETE FROM alert_rules WHERE fingerprint = ? AND name = ? RETURNING name, kind, threshold, unit",
                (fingerprint, name),
            ).fetchone()
            db.execute("DELETE FROM alert_state WHERE fingerprint = ? AND name = ?", (fingerprint, name))
            if row is None:
                return None
            return _rule(*row), self._count(db, fingerprint)

        return self._run(delete, write=True)

    @staticmethod
    def _count(db: sqlite3.Connection, fingerprint: str) -> int:
        return int(db.execute("SELECT count(*) FROM alert_rules WHERE fingerprint = ?", (fingerprint,)).fetchone()[0])

    def record_statuses(
        self, fingerprint: str, statuses: dict[str, AlertStatus], now: datetime, compose: Compose | None = None
    ) -> dict[str, datetime | None]:
        """Store this check's statuses and return each rule's `since`.

        A rule that becomes triggered gets `since = now`; one that stays triggered keeps its time; ok and
        not_applicable clear it; unknown changes nothing (a failed read is not evidence either way). With
        `compose`, each change into or out of triggered (a first evaluation that finds a rule triggered counts)
        queues its message in the same transaction: the stored status decides, so across processes each
        transition is queued exactly once.
        """

        def record(db: sqlite3.Connection) -> dict[str, datetime | None]:
            stored = {
                name: (status, since)
                for name, status, since in db.execute(
                    "SELECT name, status, since FROM alert_state WHERE fingerprint = ?", (fingerprint,)
                )
            }
            result: dict[str, datetime | None] = {}
            for name, status in statuses.items():
                old_status, old_since = stored.get(name, ("ok", None))
                if status == "unknown":
                    status, since = old_status, old_since
                elif status == "triggered":
                    since = old_since if old_status == "triggered" and old_since else now.isoformat()
                else:
                    since = None
                db.execute(
                    "INSERT INTO alert_state (fingerprint, name, status, since) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (fingerprint, name) DO UPDATE SET status = excluded.status, since = excluded.since",
                    (fingerprint, name, status, since),
                )
                result[name] = datetime.fromisoformat(since) if status == "triggered" and since else None
                if compose is not None and (old_status == "triggered") != (status == "triggered"):
                    event: AlertEvent = "triggered" if status == "triggered" else "resolved"
                    db.execute(
                        "INSERT INTO alert_outbox (fingerprint, body) VALUES (?, ?)",
                        (fingerprint, compose(name, event, result[name])),
                    )
            return result

        return self._run(record, write=True)

    def claim_messages(self, fingerprint: str, now: float) -> list[tuple[int, str]]:
        """The token's queued messages (id, body), oldest first, that no live sender holds; each is now held by
        the caller for OUTBOX_LEASE_SECONDS (`now` in epoch seconds), so a crashed sender's message is retried."""

        def claim(db: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = db.execute(
                "SELECT id, body FROM alert_outbox WHERE fingerprint = ? AND (claimed_until IS NULL OR "
                "claimed_until < ?) ORDER BY id",
                (fingerprint, now),
            ).fetchall()
            db.executemany(
                "UPDATE alert_outbox SET claimed_until = ? WHERE id = ?",
                [(now + OUTBOX_LEASE_SECONDS, row[0]) for row in rows],
            )
            return [(int(row[0]), str(row[1])) for row in rows]

        return self._run(claim, write=True)

    def settle_message(self, message_id: int, *, done: bool) -> None:
        """Remove a sent (or undeliverable) message, or release it for the next run to retry."""
        if done:
            statement = "DELETE FROM alert_outbox WHERE id = ?"
        else:
            statement = "UPDATE alert_outbox SET claimed_until = NULL WHERE id = ?"
        self._run(lambda db: db.execute(statement, (message_id,)), write=True)

    def queued_messages(self, fingerprint: str) -> int:
        """How many of the token's messages wait to be sent."""
        return self._run(
            lambda db: int(
                db.execute("SELECT count(*) FROM alert_outbox WHERE fingerprint = ?", (fingerprint,)).fetchone()[0]
            ),
            write=False,
        )

    def record_snapshot(
        self,
        fingerprint: str,
        readings: Sequence[Reading],
        calls: Sequence[SeenCall],
        purchases: Sequence[tuple[str, SeenPurchase]],
    ) -> None:
        """Add what a look at the account found, in one transaction. A call seen again is stored once; `count`
        keeps the most calls ever seen at once with the same time, endpoint and credits, so concurrent writers
        agree."""

        def record(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO ledger_readings (fingerprint, at, spent, purchased) VALUES (?, ?, ?, ?)",
                [(fingerprint, reading.at, reading.spent, reading.purchased) for reading in readings],
            )
            db.executemany(
                "INSERT INTO ledger_calls (fingerprint, at, endpoint, credits, count) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (fingerprint, at, endpoint, credits) DO UPDATE SET count = max(count, excluded.count)",
                [(fingerprint, call.at, call.endpoint, call.credits, call.calls) for call in calls],
            )
            db.executemany(
                "INSERT OR IGNORE INTO ledger_purchases (fingerprint, tx_hash, at, credits) VALUES (?, ?, ?, ?)",
                [(fingerprint, tx_hash, purchase.at, purchase.credits) for tx_hash, purchase in purchases],
            )

        self._run(record, write=True)

    def load_ledger(self, fingerprint: str, start: int) -> tuple[Ledger, int | None]:
        """The token's ledger from the last reading at or before `start` on, and the time of its first reading
        ever (None when there is none)."""

        def load(db: sqlite3.Connection) -> tuple[Ledger, int | None]:
            first, anchor = db.execute(
                "SELECT min(at), (SELECT max(at) FROM ledger_readings WHERE fingerprint = ?1 AND at <= ?2) "
                "FROM ledger_readings WHERE fingerprint = ?1",
                (fingerprint, start),
            ).fetchone()
            since = start if anchor is None else anchor
            readings = db.execute(
                "SELECT at, spent, purchased FROM ledger_readings WHERE fingerprint = ? AND at >= ? ORDER BY at",
                (fingerprint, since),
            ).fetchall()
            calls = db.execute(
                "SELECT at, endpoint, credits, count FROM ledger_calls WHERE fingerprint = ? AND at >= ? ORDER BY at",
                (fingerprint, min(since, start)),
            ).fetchall()
            purchases = db.execute(
                "SELECT at, credits FROM ledger_purchases WHERE fingerprint = ? AND at >= ? ORDER BY at",
                (fingerprint, start),
            ).fetchall()
            return Ledger(readings, calls, purchases), first

        return self._run(load, write=False)

    def forget_calls_before(self, fingerprint: str, cutoff: int) -> int:
        """Delete the token's seen calls older than `cutoff`; return how many rows went. Readings stay: they
        alone keep every day's total exact."""
        return self._run(
            lambda db: (
                db.execute("DELETE FROM ledger_calls WHERE fingerprint = ? AND at < ?", (fingerprint, cutoff)).rowcount
            ),
            write=True,
        )

    def _run(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        import sqlite3  # imported here: start-up does not need it, and most processes never touch alerts

        try:
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = operation(db)
                except BaseException:
                    db.rollback()
                    raise
                db.commit()
                return result
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StateStoreError(
                    f"The alert state file {self.path} is locked by another process; try again in a moment."
                ) from None
            raise StateStoreError(f"The alert state file {self.path} cannot be used: {exc}.") from None
        except sqlite3.DatabaseError:
            raise StateStoreError(self._set_aside_message()) from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        import sqlite3

        if self.path.is_dir():
            raise StateStoreError(f"The alert state path {self.path} is a folder; it must be a file.")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateStoreError(f"Cannot create the alert state folder {self.path.parent}: {exc.strerror}.") from None
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # In WAL mode this still survives a crash of the process; only a power cut may lose the last commits.
            db.execute("PRAGMA synchronous = NORMAL")
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                self._initialise(db)
            yield db
        finally:
            db.close()

    @staticmethod
    def _initialise(db: sqlite3.Connection) -> None:
        """Create the tables and switch to WAL, even when several processes open a new file at once.

        The version is recorded only once WAL is on: switching fails at once (no busy wait) while another process
        has the file open, and then a later open tries again.
        """
        import sqlite3

        db.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("COMMIT")
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError:
            return
        if mode == "wal":
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _set_aside_message(self) -> str:
        """Keep one copy of an unreadable state file (named by its content hash) and say where both are."""
        try:
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
            copy = self.path.with_name(f"{self.path.name}.corrupt-{digest}")
            if not copy.exists():
                shutil.copy2(self.path, copy)
            kept = f"A copy is kept at {copy}. "
        except OSError as exc:
            kept = f"It could not be copied ({exc.strerror}). "
        return (
            f"The alert state file {self.path} is not a readable SQLite database, so saved alert rules cannot be "
            f"read; it was left as it is. {kept}Move the file away to start with no saved rules, or restore it "
            "from a backup."
        )
