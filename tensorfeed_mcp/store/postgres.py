"""PostgresStore: the state store in PostgreSQL, shared by every replica of a hosted server.

Each operation is one transaction on a pooled connection. Writes for one token take that token's advisory lock,
so replicas checking the same token at once see each other's work (each transition is queued once). A change of
alert statuses is announced with NOTIFY, and every store LISTENs, so each replica's watchers hear it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tensorfeed_mcp.core.ledger import Ledger, Reading, SeenCall, SeenPurchase
from tensorfeed_mcp.errors import StateStoreError
from tensorfeed_mcp.limits import MAX_QUEUED_MESSAGES, MAX_SAVED_RULES
from tensorfeed_mcp.models import AlertRule, AlertStatus
from tensorfeed_mcp.settings.policy import DATABASE_URL_EXAMPLE, checked_database_url
from tensorfeed_mcp.settings.redaction import redact_secrets
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

Connection = psycopg.AsyncConnection[TupleRow]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_MS = 5_000
POOL_SIZE = (1, 10)
CHANGES_CHANNEL = "tensorfeed_alerts"
LISTEN_RETRY_SECONDS = (0.5, 5.0)  # the first pause before reconnecting the change feed, and the longest
MIGRATION_LOCK = 0x7465_6E73_6F72_6D63  # any constant no other application uses: "tensormc"
TOKEN_LOCK_CLASS = 0x7466_6D63  # with hashtext(fingerprint): one token's writes ("tfmc")

# Migration n is MIGRATIONS[n - 1]; a migration, once released, never changes (add the next one instead). Text is
# compared byte by byte (COLLATE "C"), as SQLite does, so both backends list rules in the same order. Times in the
# ledger tables are integer milliseconds since the epoch (UTC), as in ledger.py.
MIGRATIONS = (
    """
    CREATE TABLE alert_rules (
        fingerprint text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        kind text NOT NULL,
        threshold double precision NOT NULL,
        unit text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (fingerprint, name)
    );
    CREATE TABLE alert_state (
        fingerprint text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        status text NOT NULL,
        since text,
        PRIMARY KEY (fingerprint, name)
    );
    CREATE TABLE alert_outbox (
        id bigserial PRIMARY KEY,
        fingerprint text COLLATE "C" NOT NULL,
        body text NOT NULL,
        claimed_until double precision
    );
    CREATE INDEX alert_outbox_by_token ON alert_outbox (fingerprint, id);
    CREATE TABLE ledger_readings (
        fingerprint text COLLATE "C" NOT NULL,
        at bigint NOT NULL,
        spent bigint NOT NULL,
        purchased bigint NOT NULL,
        PRIMARY KEY (fingerprint, at)
    );
    CREATE TABLE ledger_calls (
        fingerprint text COLLATE "C" NOT NULL,
        at bigint NOT NULL,
        endpoint text COLLATE "C" NOT NULL,
        credits bigint NOT NULL,
        count bigint NOT NULL,
        PRIMARY KEY (fingerprint, at, endpoint, credits)
    );
    CREATE TABLE ledger_purchases (
        fingerprint text COLLATE "C" NOT NULL,
        tx_hash text COLLATE "C" NOT NULL,
        at bigint NOT NULL,
        credits bigint NOT NULL,
        PRIMARY KEY (fingerprint, tx_hash)
    );
    """,
    # 2: before it, an answer with a lying clock (a Date in 2100, say) went into the ledger and moved it into the
    # future for good; rows dated more than five minutes past the database's now are removed once.
    """
    DELETE FROM ledger_readings WHERE at > (extract(epoch FROM now()) * 1000)::bigint + 300000;
    DELETE FROM ledger_calls WHERE at > (extract(epoch FROM now()) * 1000)::bigint + 300000;
    DELETE FROM ledger_purchases WHERE at > (extract(epoch FROM now()) * 1000)::bigint + 300000;
    """,
    # 3: each token's queue is bounded (MAX_QUEUED_MESSAGES); what was dropped unsent is counted here.
    """
    CREATE TABLE alert_outbox_dropped (
        fingerprint text COLLATE "C" PRIMARY KEY,
        dropped bigint NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class PostgresStore:
    """The Store in a PostgreSQL database; use `PostgresStore.open`, which migrates it and listens for changes."""

    def __init__(self, url: str) -> None:
        self._url = url
        params = _connection_params(url)
        self._password = params.get("password")
        database = params.get("dbname") or params.get("user", "")  # libpq's default database is the user's
        self._where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{database}"
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            # A statement (a lock wait included) that takes longer is cancelled, so a stuck database fails a call
            # with a StateStoreError instead of holding it.
            kwargs={
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            },
            min_size=POOL_SIZE[0],
            max_size=POOL_SIZE[1],
            timeout=CONNECT_TIMEOUT_SECONDS,
            check=AsyncConnectionPool.check_connection,  # a connection the server dropped is replaced, not used
            open=False,
        )
        self._watchers = Watchers()

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str) -> AsyncIterator[PostgresStore]:
        """The store at `url`, its schema migrated and its change feed heard until exit; StateStoreError when the
        database cannot be reached."""
        store = cls(url)
        await store._migrate()
        feed = await store._listen()
        # A plain asyncio task (psycopg's async API needs asyncio anyway) rather than a task group, which would wrap
        # any exception raised in the caller's block in an ExceptionGroup.
        relay = asyncio.create_task(store._relay(feed))
        try:
            async with store._pool:
                yield store
        finally:
            relay.cancel()
            await asyncio.wait([relay])
            await feed.close()  # the relay closes it, unless it was cancelled before it began

    def watch(self, listener: ChangeListener) -> Callable[[], None]:
        """Changes made by any process using this database are heard, this one's included (through the feed)."""
        return self._watchers.add(listener)

    async def check_ready(self) -> None:
        async with self._connection() as conn:
            version = await _value(conn, "SELECT coalesce(max(version), 0) FROM schema_migrations")
        if version != SCHEMA_VERSION:
            raise StateStoreError(
                f"PostgreSQL at {self._where} has schema version {version}, and this server uses version "
                f"{SCHEMA_VERSION}; restart it to migrate the database, or run the version that migrated it."
            )

    async def list_rules(self, fingerprint: str) -> list[AlertRule]:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT name, kind, threshold, unit FROM alert_rules WHERE fingerprint = %s ORDER BY name",
                (fingerprint,),
            )
            return [saved_rule(*row) for row in await cursor.fetchall()]

    async def save_rule(
        self, fingerprint: str, rule: AlertRule, limit: int = MAX_SAVED_RULES
    ) -> tuple[SaveAction, int]:
        async with self._token_transaction(fingerprint) as conn:
            cursor = await conn.execute(
                "SELECT kind, threshold FROM alert_rules WHERE fingerprint = %s AND name = %s",
                (fingerprint, rule.name),
            )
            old = await cursor.fetchone()
            count = await _rule_count(conn, fingerprint)
            if old is None and count >= limit:
                raise rule_limit_error(count, limit)
            await conn.execute(
                "INSERT INTO alert_rules (fingerprint, name, kind, threshold, unit) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (fingerprint, name) DO UPDATE SET kind = excluded.kind, "
                "threshold = excluded.threshold, unit = excluded.unit, updated_at = excluded.updated_at",
                (fingerprint, rule.name, rule.kind, rule.threshold, rule.unit),
            )
            if old is not None and tuple(old) != (rule.kind, rule.threshold):
                await conn.execute(
                    "DELETE FROM alert_state WHERE fingerprint = %s AND name = %s", (fingerprint, rule.name)
                )
            return ("created", count + 1) if old is None else ("updated", count)

    async def delete_rule(self, fingerprint: str, name: str) -> tuple[AlertRule, int] | None:
        async with self._token_transaction(fingerprint) as conn:
            cursor = await conn.execute(
                "DELETE FROM alert_rules WHERE fingerprint = %s AND name = %s RETURNING name, kind, threshold, unit",
                (fingerprint, name),
            )
            row = await cursor.fetchone()
            await conn.execute("DELETE FROM alert_state WHERE fingerprint = %s AND name = %s", (fingerprint, name))
            if row is None:
                return None
            return saved_rule(*row), await _rule_count(conn, fingerprint)

    async def record_statuses(
        self, fingerprint: str, statuses: dict[str, AlertStatus], now: datetime, compose: Compose | None = None
    ) -> dict[str, datetime | None]:
        async with self._token_transaction(fingerprint) as conn:
            cursor = await conn.execute(
                "SELECT name, status, since FROM alert_state WHERE fingerprint = %s", (fingerprint,)
            )
            stored = {name: (status, since) for name, status, since in await cursor.fetchall()}
            update = next_statuses(stored, statuses, now)
            async with conn.cursor() as writer:
                await writer.executemany(
                    "INSERT INTO alert_state (fingerprint, name, status, since) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (fingerprint, name) DO UPDATE SET status = excluded.status, since = excluded.since",
                    [(fingerprint, *row) for row in update.rows],
                )
                if compose is not None and update.transitions:
                    await writer.executemany(
                        "INSERT INTO alert_outbox (fingerprint, body) VALUES (%s, %s)",
                        [(fingerprint, compose(name, event, update.since[name])) for name, event in update.transitions],
                    )
                    await writer.execute(
                        "DELETE FROM alert_outbox WHERE fingerprint = %s AND id NOT IN "
                        "(SELECT id FROM alert_outbox WHERE fingerprint = %s ORDER BY id DESC LIMIT %s)",
                        (fingerprint, fingerprint, MAX_QUEUED_MESSAGES),
                    )
                    if writer.rowcount > 0:
                        await writer.execute(
                            "INSERT INTO alert_outbox_dropped (fingerprint, dropped) VALUES (%s, %s) ON CONFLICT "
                            "(fingerprint) DO UPDATE SET dropped = alert_outbox_dropped.dropped + excluded.dropped",
                            (fingerprint, writer.rowcount),
                        )
            if update.changed:  # delivered to every listener when this transaction commits, and only then
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANGES_CHANNEL, fingerprint))
            return update.since

    async def claim_message(self, fingerprint: str, now: float) -> tuple[int, str] | None:
        async with self._connection() as conn:
            # A row another sender is claiming right now is skipped, not waited for: it is that sender's to send.
            cursor = await conn.execute(
                "UPDATE alert_outbox SET claimed_until = %s WHERE id = (SELECT id FROM alert_outbox "
                "WHERE fingerprint = %s AND (claimed_until IS NULL OR claimed_until < %s) ORDER BY id LIMIT 1 "
                "FOR UPDATE SKIP LOCKED) RETURNING id, body",
                (now + OUTBOX_LEASE_SECONDS, fingerprint, now),
            )
            row = await cursor.fetchone()
            return None if row is None else (int(row[0]), str(row[1]))

    async def settle_message(self, message_id: int, *, done: bool) -> None:
        if done:
            statement = "DELETE FROM alert_outbox WHERE id = %s"
        else:
            statement = "UPDATE alert_outbox SET claimed_until = NULL WHERE id = %s"
        async with self._connection() as conn:
            await conn.execute(statement, (message_id,))

    async def outbox(self, fingerprint: str) -> Outbox:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT (SELECT count(*) FROM alert_outbox WHERE fingerprint = %s), "
                "(SELECT dropped FROM alert_outbox_dropped WHERE fingerprint = %s)",
                (fingerprint, fingerprint),
            )
            pending, dropped = await cursor.fetchone() or (0, None)
            return Outbox(int(pending), int(dropped or 0))

    async def record_snapshot(
        self,
        fingerprint: str,
        readings: Sequence[Reading],
        calls: Sequence[SeenCall],
        purchases: Sequence[tuple[str, SeenPurchase]],
    ) -> None:
        async with self._token_transaction(fingerprint) as conn, conn.cursor() as writer:
            await writer.executemany(
                "INSERT INTO ledger_readings (fingerprint, at, spent, purchased) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [(fingerprint, reading.at, reading.spent, reading.purchased) for reading in readings],
            )
            await writer.executemany(
                "INSERT INTO ledger_calls (fingerprint, at, endpoint, credits, count) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (fingerprint, at, endpoint, credits) "
                "DO UPDATE SET count = GREATEST(ledger_calls.count, excluded.count)",
                [(fingerprint, call.at, call.endpoint, call.credits, call.calls) for call in calls],
            )
            await writer.executemany(
                "INSERT INTO ledger_purchases (fingerprint, tx_hash, at, credits) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [(fingerprint, tx_hash, purchase.at, purchase.credits) for tx_hash, purchase in purchases],
            )

    async def load_ledger(self, fingerprint: str, start: int) -> tuple[Ledger, int | None]:
        async with self._connection() as conn:
            # One snapshot for all four reads, so a writer committing in between cannot split a reading from its calls.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor = await conn.execute(
                "SELECT min(at), (SELECT max(at) FROM ledger_readings WHERE fingerprint = %(fp)s AND at <= %(start)s) "
                "FROM ledger_readings WHERE fingerprint = %(fp)s",
                {"fp": fingerprint, "start": start},
            )
            first, anchor = await cursor.fetchone() or (None, None)
            since = start if anchor is None else anchor
            cursor = await conn.execute(
                "SELECT at, spent, purchased FROM ledger_readings WHERE fingerprint = %s AND at >= %s ORDER BY at",
                (fingerprint, since),
            )
            readings = await cursor.fetchall()
            cursor = await conn.execute(
                "SELECT at, endpoint, credits, count FROM ledger_calls WHERE fingerprint = %s AND at >= %s "
                "ORDER BY at, endpoint, credits",
                (fingerprint, min(since, start)),
            )
            calls = await cursor.fetchall()
            cursor = await conn.execute(
                "SELECT at, credits FROM ledger_purchases WHERE fingerprint = %s AND at >= %s ORDER BY at",
                (fingerprint, start),
            )
            return Ledger(readings, calls, await cursor.fetchall()), first

    async def forget_calls_before(self, fingerprint: str, cutoff: int) -> int:
        async with self._token_transaction(fingerprint) as conn:
            cursor = await conn.execute(
                "DELETE FROM ledger_calls WHERE fingerprint = %s AND at < %s", (fingerprint, cutoff)
            )
            return cursor.rowcount

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection in one transaction, committed on exit; any database error becomes StateStoreError."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise self._failure(exc) from None

    @asynccontextmanager
    async def _token_transaction(self, fingerprint: str) -> AsyncIterator[Connection]:
        """A transaction holding the token's lock: one token's writes happen one after another, as in SQLite, which
        keeps the rule limit and the transitions exact and concurrent ledger writers free of deadlocks."""
        async with self._connection() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (TOKEN_LOCK_CLASS, fingerprint))
            yield conn

    async def _migrate(self) -> None:
        """Apply the migrations the database lacks, in order, in one transaction. The lock makes replicas starting
        at once take turns: the first migrates, the others then find nothing left to do."""
        try:
            async with await self._connect(autocommit=False) as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                applied = await _value(conn, "SELECT coalesce(max(version), 0) FROM schema_migrations")
                for version, migration in enumerate(MIGRATIONS[applied:], start=applied + 1):
                    await conn.execute(migration)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        except psycopg.Error as exc:
            raise self._failure(exc) from None

    async def _listen(self) -> Connection:
        """A connection subscribed to the change feed."""
        try:
            conn = await self._connect(autocommit=True)
            try:
                await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
            except BaseException:
                await conn.close()
                raise
        except psycopg.Error as exc:
            raise self._failure(exc) from None
        return conn

    async def _connect(self, *, autocommit: bool) -> Connection:
        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )

    async def _relay(self, feed: Connection) -> None:
        """Tell the watchers of each notice on the change feed, for as long as the store is open. A dropped feed is
        reconnected; notices sent while it was down are lost."""
        while True:
            try:
                async with aclosing(feed.notifies()) as notices:
                    async for notice in notices:
                        self._watchers.tell(notice.payload)
            except psycopg.Error as exc:
                logger.warning(
                    "Lost the alert change feed from PostgreSQL at %s (%s); reconnecting.",
                    self._where,
                    self._reason(exc),
                )
            except Exception:  # the feed must outlive any failure, or replicas stop hearing each other unnoticed
                logger.exception("The alert change feed from PostgreSQL at %s failed; reconnecting.", self._where)
            finally:
                await feed.close()
            feed = await self._relisten()

    async def _relisten(self) -> Connection:
        """Reconnect the change feed, pausing longer after each failure (up to LISTEN_RETRY_SECONDS[1])."""
        pause, longest = LISTEN_RETRY_SECONDS
        while True:
            await anyio.sleep(pause)
            try:
                feed = await self._listen()
            except StateStoreError as exc:
                logger.warning("Cannot reconnect the alert change feed: %s", exc)
                pause = min(2 * pause, longest)
                continue
            logger.info("Reconnected the alert change feed from PostgreSQL at %s.", self._where)
            return feed

    def _failure(self, exc: psycopg.Error) -> StateStoreError:
        """What went wrong, naming the database by host, port and name only, and what to do."""
        if isinstance(exc, PoolTimeout):
            return StateStoreError(
                f"PostgreSQL at {self._where} gave no connection within {CONNECT_TIMEOUT_SECONDS} s; check that the "
                "server is up and not overloaded."
            )
        reason = self._reason(exc)
        if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:  # no answer from the server
            return StateStoreError(
                f"PostgreSQL at {self._where} is not reachable: {reason}; check TENSORFEED_MCP_DATABASE_URL and that "
                "the server is up."
            )
        return StateStoreError(
            f"PostgreSQL at {self._where} could not do what was asked: {reason}; try again, and check the server's "
            "log if it keeps happening."
        )

    def _reason(self, exc: psycopg.Error) -> str:
        return redact_secrets(_reason(exc), [self._password])


def _connection_params(url: str) -> dict[str, str]:
    """libpq's reading of `url`, once checked_database_url has made sure its host, port and database (shown in
    errors) hold no part of the password. libpq's own complaint is not passed on: it quotes the URL's text."""
    try:
        return {name: str(value) for name, value in conninfo_to_dict(checked_database_url(url)).items()}
    except psycopg.Error:
        raise StateStoreError(
            "TENSORFEED_MCP_DATABASE_URL cannot be read by PostgreSQL's client library (libpq): check the host, "
            "port, database name and percent-encoding (%XX), and that every query parameter is one libpq knows "
            f"(such as ?sslmode=require); give one like {DATABASE_URL_EXAMPLE}."
        ) from None


def _reason(exc: psycopg.Error) -> str:
    """The first line of the error, without libpq's preamble ("connection to server at ... failed: FATAL: ")."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^(connection failed: )?(connection to server .*? failed: )?(FATAL: +)?", "", first_line)


async def _rule_count(conn: Connection, fingerprint: str) -> int:
    return int(await _value(conn, "SELECT count(*) FROM alert_rules WHERE fingerprint = %s", fingerprint))


async def _value(conn: Connection, query: str, *params: object) -> Any:
    """The first column of the first row a query returns."""
    cursor = await conn.execute(query, params or None)
    row = await cursor.fetchone()
    return None if row is None else row[0]
