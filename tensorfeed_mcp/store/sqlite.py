"""SqliteStore: the state store in one SQLite file on this machine (the default backend).

Every operation opens its own connection and runs in one transaction, so several server processes can share
the file (WAL mode, a busy timeout, BEGIN IMMEDIATE for writes). A file that is not a database is never
rewritten or replaced: it is copied aside once and every operation says where the file and the copy are.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio

from tensorfeed_mcp.core.ledger import Ledger, Reading, SeenCall, SeenPurchase
from tensorfeed_mcp.errors import StateStoreError
from tensorfeed_mcp.limits import MAX_QUEUED_MESSAGES, MAX_SAVED_RULES
from tensorfeed_mcp.models import AlertRule, AlertStatus
from tensorfeed_mcp.store.base import (
    OUTBOX_LEASE_SECONDS,
    ChangeListener,
    Compose,
    Outbox,
    SaveAction,
    Watchers,
    next_statuses,
    rule_limit_error,
    saved_rule,
)

if TYPE_CHECKING:
    import sqlite3

# 2: alert_outbox; 3: the ledger_* tables; 4: the ledger repaired of rows dated in the future; 5: alert_outbox_dropped
SCHEMA_VERSION = 5
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
CREATE TABLE IF NOT EXISTS alert_outbox_dropped (
    fingerprint TEXT PRIMARY KEY,
    dropped INTEGER NOT NULL
) WITHOUT ROWID;
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
FUTURE_MS = "(CAST(strftime('%s', 'now') AS INTEGER) * 1000 + 300000)"  # five minutes past this machine's now
UPGRADES: dict[int, tuple[str, ...]] = {
    # Before version 4 an answer with a lying clock (a Date in 2100, say) went into the ledger and moved it into
    # the future for good; such rows are removed once. Since then none can be written.
    4: tuple(
        f"DELETE FROM {table} WHERE at > {FUTURE_MS}"
        for table in ("ledger_readings", "ledger_calls", "ledger_purchases")
    ),
}
"""Statements run once, when a file older than the version (the key) is opened; after SCHEMA's tables exist."""

T = TypeVar("T")


class SqliteStore:
    """The Store in one SQLite file. Creating one touches no file; `path` may be a function that finds it on first
    use (finding the platform's state folder imports platformdirs, which start-up need not)."""

    def __init__(self, path: Path | Callable[[], Path]) -> None:
        self._locate = path if callable(path) else lambda: path
        self._watchers = Watchers()

    @functools.cached_property
    def path(self) -> Path:
        return self._locate()

    def watch(self, listener: ChangeListener) -> Callable[[], None]:
        """Only this process's changes are heard: the file has no way to tell other processes."""
        return self._watchers.add(listener)

    async def check_ready(self) -> None:
        await self._run(lambda db: None, write=False)

    async def list_rules(self, fingerprint: str) -> list[AlertRule]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT name, kind, threshold, unit FROM alert_rules WHERE fingerprint = ? ORDER BY name",
                (fingerprint,),
            ).fetchall(),
            write=False,
        )
        return [saved_rule(*row) for row in rows]

    async def save_rule(
        self, fingerprint: str, rule: AlertRule, limit: int = MAX_SAVED_RULES
    ) -> tuple[SaveAction, int]:
        def save(db: sqlite3.Connection) -> tuple[SaveAction, int]:
            old = db.execute(
                "SELECT kind, threshold FROM alert_rules WHERE fingerprint = ? AND name = ?",
                (fingerprint, rule.name),
            ).fetchone()
            count = self._count(db, fingerprint)
            if old is None and count >= limit:
                raise rule_limit_error(count, limit)
            db.execute(
                "INSERT INTO alert_rules (fingerprint, name, kind, threshold, unit) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (fingerprint, name) DO UPDATE SET kind = excluded.kind, "
                "threshold = excluded.threshold, unit = excluded.unit, updated_at = excluded.updated_at",
                (fingerprint, rule.name, rule.kind, rule.threshold, rule.unit),
            )
            if old is not None and tuple(old) != (rule.kind, rule.threshold):
                db.execute("DELETE FROM alert_state WHERE fingerprint = ? AND name = ?", (fingerprint, rule.name))
            return ("created", count + 1) if old is None else ("updated", count)

        return await self._run(save, write=True)

    async def delete_rule(self, fingerprint: str, name: str) -> tuple[AlertRule, int] | None:
        def delete(db: sqlite3.Connection) -> tuple[AlertRule, int] | None:
            row = db.execute(
                "DELETE FROM alert_rules WHERE fingerprint = ? AND name = ? RETURNING name, kind, threshold, unit",
                (fingerprint, name),
            ).fetchone()
            db.execute("DELETE FROM alert_state WHERE fingerprint = ? AND name = ?", (fingerprint, name))
            if row is None:
                return None
            return saved_rule(*row), self._count(db, fingerprint)

        return await self._run(delete, write=True)

    @staticmethod
    def _count(db: sqlite3.Connection, fingerprint: str) -> int:
        return int(db.execute("SELECT count(*) FROM alert_rules WHERE fingerprint = ?", (fingerprint,)).fetchone()[0])

    async def record_statuses(
        self, fingerprint: str, statuses: dict[str, AlertStatus], now: datetime, compose: Compose | None = None
    ) -> dict[str, datetime | None]:
        def record(db: sqlite3.Connection) -> tuple[dict[str, datetime | None], bool]:
            stored = {
                name: (status, since)
                for name, status, since in db.execute(
                    "SELECT name, status, since FROM alert_state WHERE fingerprint = ?", (fingerprint,)
                )
            }
            update = next_statuses(stored, statuses, now)
            db.executemany(
                "INSERT INTO alert_state (fingerprint, name, status, since) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (fingerprint, name) DO UPDATE SET status = excluded.status, since = excluded.since",
                [(fingerprint, *row) for row in update.rows],
            )
            if compose is not None and update.transitions:
                db.executemany(
                    "INSERT INTO alert_outbox (fingerprint, body) VALUES (?, ?)",
                    [(fingerprint, compose(name, event, update.since[name])) for name, event in update.transitions],
                )
                dropped = db.execute(
                    "DELETE FROM alert_outbox WHERE fingerprint = ? AND id NOT IN "
                    "(SELECT id FROM alert_outbox WHERE fingerprint = ? ORDER BY id DESC LIMIT ?)",
                    (fingerprint, fingerprint, MAX_QUEUED_MESSAGES),
                ).rowcount
                if dropped:
                    db.execute(
                        "INSERT INTO alert_outbox_dropped (fingerprint, dropped) VALUES (?, ?) "
                        "ON CONFLICT (fingerprint) DO UPDATE SET dropped = dropped + excluded.dropped",
                        (fingerprint, dropped),
                    )
            return update.since, update.changed

        since, changed = await self._run(record, write=True)
        if changed:
            self._watchers.tell(fingerprint)
        return since

    async def claim_message(self, fingerprint: str, now: float) -> tuple[int, str] | None:
        def claim(db: sqlite3.Connection) -> tuple[int, str] | None:
            row = db.execute(
                "SELECT id, body FROM alert_outbox WHERE fingerprint = ? AND (claimed_until IS NULL OR "
                "claimed_until < ?) ORDER BY id LIMIT 1",
                (fingerprint, now),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE alert_outbox SET claimed_until = ? WHERE id = ?", (now + OUTBOX_LEASE_SECONDS, row[0]))
            return int(row[0]), str(row[1])

        return await self._run(claim, write=True)

    async def settle_message(self, message_id: int, *, done: bool) -> None:
        if done:
            statement = "DELETE FROM alert_outbox WHERE id = ?"
        else:
            statement = "UPDATE alert_outbox SET claimed_until = NULL WHERE id = ?"
        await self._run(lambda db: db.execute(statement, (message_id,)), write=True)

    async def outbox(self, fingerprint: str) -> Outbox:
        def read(db: sqlite3.Connection) -> Outbox:
            [pending] = db.execute("SELECT count(*) FROM alert_outbox WHERE fingerprint = ?", (fingerprint,)).fetchone()
            dropped = db.execute(
                "SELECT dropped FROM alert_outbox_dropped WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
            return Outbox(int(pending), int(dropped[0]) if dropped else 0)

        return await self._run(read, write=False)

    async def record_snapshot(
        self,
        fingerprint: str,
        readings: Sequence[Reading],
        calls: Sequence[SeenCall],
        purchases: Sequence[tuple[str, SeenPurchase]],
    ) -> None:
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

        await self._run(record, write=True)

    async def load_ledger(self, fingerprint: str, start: int) -> tuple[Ledger, int | None]:
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

        return await self._run(load, write=False)

    async def forget_calls_before(self, fingerprint: str, cutoff: int) -> int:
        return await self._run(
            lambda db: (
                db.execute("DELETE FROM ledger_calls WHERE fingerprint = ? AND at < ?", (fingerprint, cutoff)).rowcount
            ),
            write=True,
        )

    async def _run(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run `operation` in one transaction on a worker thread (sqlite3 blocks)."""
        return await anyio.to_thread.run_sync(functools.partial(self._run_now, operation, write=write))

    def _run_now(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
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
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        for upgrade in range(version + 1, SCHEMA_VERSION + 1):
            for statement in UPGRADES.get(upgrade, ()):
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
