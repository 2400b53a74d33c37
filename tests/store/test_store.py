"""The state store on real storage: every behaviour test runs on both backends (a SQLite file and a database on a
private PostgreSQL server), then what is particular to each: SQLite's damaged files and processes sharing one
file; PostgreSQL's migrations, replicas writing at once, the change feed, and its error messages."""

from __future__ import annotations

import multiprocessing
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import psycopg
import pytest

from tensorfeed_mcp.core.alerts import make_rule
from tensorfeed_mcp.core.ledger import Reading, SeenCall, SeenPurchase
from tensorfeed_mcp.errors import InvalidInputError, StateStoreError
from tensorfeed_mcp.limits import MAX_QUEUED_MESSAGES
from tensorfeed_mcp.models import AlertStatus
from tensorfeed_mcp.store import OUTBOX_LEASE_SECONDS, AlertEvent, Store
from tensorfeed_mcp.store.postgres import SCHEMA_VERSION, STATEMENT_TIMEOUT_MS, TOKEN_LOCK_CLASS, PostgresStore
from tensorfeed_mcp.store.sqlite import SqliteStore
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
NOTICE_SECONDS = 5.0  # the bound on a change notice's trip through PostgreSQL
PASSWORD = "pw-that-must-not-show"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        yield SqliteStore(tmp_path / "alerts.sqlite3")
        return
    async with PostgresStore.open(request.getfixturevalue("database_url")) as opened:
        yield opened


def composed(name: str, event: AlertEvent, since: datetime | None) -> str:
    return f"{name} {event} {since.isoformat() if since else '-'}"


async def claimed_all(store: Store, fingerprint: str) -> AsyncIterator[tuple[int, str]]:
    """Claim the token's messages one by one, as a sender does, until none is left."""
    while (message := await store.claim_message(fingerprint, 0.0)) is not None:
        yield message


# ---- Both backends ---------------------------------------------------------------------------------------------


async def test_rules_are_saved_updated_deleted_and_kept_apart_per_token(store: Store) -> None:
    assert await store.save_rule("fp-a", make_rule("balance_below", 100, "floor")) == ("created", 1)
    assert await store.save_rule("fp-a", make_rule("balance_below", 50, "floor")) == ("updated", 1)
    assert await store.save_rule("fp-b", make_rule("runway_below_hours", 12)) == ("created", 1)
    assert [(r.name, r.threshold, r.source) for r in await store.list_rules("fp-a")] == [("floor", 50.0, "user")]
    assert [r.name for r in await store.list_rules("fp-b")] == ["runway_below_hours"]
    assert await store.delete_rule("fp-a", "floor") == (make_rule("balance_below", 50, "floor"), 0)
    assert await store.delete_rule("fp-a", "floor") is None
    assert await store.list_rules("fp-a") == []
    assert await store.list_rules("fp-b") == [make_rule("runway_below_hours", 12)]


async def test_rules_are_listed_by_name_in_code_point_order(store: Store) -> None:
    names = ["b", "B", "a", "ä", "A-2", "a_1", "Z"]
    for number, name in enumerate(names):
        await store.save_rule("fp", make_rule("balance_below", 1 + number, name))
    assert [rule.name for rule in await store.list_rules("fp")] == sorted(names)


async def test_a_new_rule_beyond_the_limit_is_refused_but_a_saved_one_still_changes(store: Store) -> None:
    for count, name in enumerate("ab", start=1):
        assert await store.save_rule("fp", make_rule("balance_below", 10, name), limit=2) == ("created", count)
    with pytest.raises(InvalidInputError, match=r"already has 2 saved alert rules, the most allowed \(2\)"):
        await store.save_rule("fp", make_rule("balance_below", 10, "c"), limit=2)
    assert await store.save_rule("fp", make_rule("balance_below", 20, "a"), limit=2) == ("updated", 2)
    assert await store.save_rule("fp-other", make_rule("balance_below", 10, "c"), limit=2) == ("created", 1)
    assert [(rule.name, rule.threshold) for rule in await store.list_rules("fp")] == [("a", 20.0), ("b", 10.0)]


async def test_since_is_set_on_trigger_kept_while_triggered_and_cleared_when_ok(store: Store) -> None:
    await store.save_rule("fp", make_rule("balance_below", 100, "floor"))
    assert await store.record_statuses("fp", {"floor": "ok"}, T0) == {"floor": None}
    minute = timedelta(minutes=1)
    assert await store.record_statuses("fp", {"floor": "triggered"}, T0 + minute) == {"floor": T0 + minute}
    assert await store.record_statuses("fp", {"floor": "triggered"}, T0 + 5 * minute) == {"floor": T0 + minute}
    # A failed read says nothing either way: the trigger time survives it.
    assert await store.record_statuses("fp", {"floor": "unknown"}, T0 + 6 * minute) == {"floor": T0 + minute}
    assert await store.record_statuses("fp", {"floor": "ok"}, T0 + 7 * minute) == {"floor": None}
    assert await store.record_statuses("fp", {"floor": "triggered"}, T0 + 8 * minute) == {"floor": T0 + 8 * minute}


async def test_changing_a_rules_threshold_forgets_its_trigger_time(store: Store) -> None:
    await store.save_rule("fp", make_rule("balance_below", 100, "floor"))
    await store.record_statuses("fp", {"floor": "triggered"}, T0)
    await store.save_rule("fp", make_rule("balance_below", 100, "floor"))  # same rule: state kept
    assert await store.record_statuses("fp", {"floor": "triggered"}, T0 + timedelta(hours=1)) == {"floor": T0}
    await store.save_rule("fp", make_rule("balance_below", 200, "floor"))
    later = T0 + timedelta(hours=2)
    assert await store.record_statuses("fp", {"floor": "triggered"}, later) == {"floor": later}


async def test_each_transition_queues_one_message_held_by_its_claimer_for_a_lease(store: Store) -> None:
    minute = timedelta(minutes=1)
    await store.record_statuses("fp", {"floor": "triggered", "cap": "ok"}, T0, composed)
    await store.record_statuses("fp", {"floor": "triggered", "cap": "triggered"}, T0 + minute, composed)
    await store.record_statuses("fp", {"floor": "ok", "cap": "unknown"}, T0 + 2 * minute, composed)
    await store.record_statuses("fp", {"floor": "ok"}, T0 + 3 * minute)  # without compose nothing is queued
    assert (await store.outbox("fp"), await store.outbox("fp-other")) == ((3, 0), (0, 0))
    now = 1_800_000_000.0
    claimed = [await store.claim_message("fp", now) for _ in range(3)]
    assert [message[1] for message in claimed if message] == [
        f"floor triggered {T0.isoformat()}",
        f"cap triggered {(T0 + minute).isoformat()}",
        "floor resolved -",
    ]
    first, second, third = (message for message in claimed if message)
    assert first[0] < second[0] < third[0]
    assert await store.claim_message("fp", now + 1) is None  # all held by their claims
    assert await store.claim_message("fp-other", now + 1) is None
    await store.settle_message(first[0], done=True)
    await store.settle_message(second[0], done=False)
    assert await store.claim_message("fp", now + 2) == second  # released; the third is still held
    assert await store.claim_message("fp", now + OUTBOX_LEASE_SECONDS + 1) == third  # its lease ran out
    assert await store.outbox("fp") == (2, 0)


async def test_a_tokens_queue_keeps_its_newest_messages_and_counts_those_dropped(store: Store) -> None:
    """Only transitions queue messages, so each round flips every rule: the queue keeps the newest
    MAX_QUEUED_MESSAGES of the token's messages, counts the rest, and leaves other tokens' alone."""
    rules = [f"rule-{number:02d}" for number in range(30)]
    await store.record_statuses("fp-other", {"floor": "triggered"}, T0, composed)
    statuses: tuple[AlertStatus, ...] = ("triggered", "ok", "triggered")
    for round_number, status in enumerate(statuses):
        at = T0 + timedelta(minutes=round_number)
        await store.record_statuses("fp", dict.fromkeys(rules, status), at, composed)
    made = 3 * len(rules)
    assert await store.outbox("fp") == (MAX_QUEUED_MESSAGES, made - MAX_QUEUED_MESSAGES)
    assert await store.outbox("fp-other") == (1, 0)
    oldest = await store.claim_message("fp", 0.0)
    assert oldest is not None and oldest[1].startswith(f"rule-{made - MAX_QUEUED_MESSAGES - len(rules):02d} resolved")


B = 1_790_000_000_000  # a time in milliseconds, beyond 32 bits as every real one is


async def test_the_ledger_stores_a_call_once_keeps_the_most_seen_and_loads_from_the_anchor(store: Store) -> None:
    readings = [Reading(B + 1000, 0, 50), Reading(B + 2000, 10, 50), Reading(B + 3000, 25, 150)]
    calls = [SeenCall(B + 1500, "/b", 6), SeenCall(B + 1500, "/a", 4), SeenCall(B + 2500, "/a", 5, 3)]
    purchases = [("tx-0", SeenPurchase(B + 900, 50)), ("tx-1", SeenPurchase(B + 2200, 100))]
    await store.record_snapshot("fp", readings, calls, purchases)
    # Seen again, with fewer of the identical calls at once, plus a later reading: nothing doubles, nothing shrinks.
    await store.record_snapshot("fp", [*readings, Reading(B + 4000, 25, 150)], [SeenCall(B + 2500, "/a", 5, 1)], [])
    await store.record_snapshot("fp-other", [Reading(B, 7, 7)], [SeenCall(B, "/a", 7)], [])

    ledger, first = await store.load_ledger("fp", 0)
    whole = ledger.spend(0, B + 4001)
    assert (first, ledger.readings_in(0, B + 5000), ledger.last_reading) == (B + 1000, 4, B + 4000)
    assert (whole.credits, whole.calls_seen, whole.purchased) == (25, 5, 150)
    assert whole.by_endpoint == {"/a": 4 + 15, "/b": 6}

    # From a start between readings: the reading before it anchors the ledger; purchases begin at the start.
    ledger, first = await store.load_ledger("fp", B + 2100)
    window = ledger.spend(B + 2100, B + 4001)
    assert (first, ledger.readings_in(0, B + 5000)) == (B + 1000, 3)
    assert (window.credits, window.credits_max, window.calls_seen, window.purchased) == (15, 15, 3, 100)

    assert await store.forget_calls_before("fp", B + 2000) == 2
    assert await store.forget_calls_before("fp", B + 2000) == 0
    ledger, _ = await store.load_ledger("fp", 0)
    assert (ledger.spend(0, B + 4001).credits, ledger.spend(0, B + 4001).calls_seen) == (25, 3)  # readings stay

    nothing, never = await store.load_ledger("fp-none", 0)
    assert (nothing.last_reading, never) == (None, None)


async def test_watchers_hear_each_change_of_stored_statuses_once(store: Store) -> None:
    send, receive = anyio.create_memory_object_stream[str](10)
    send_later, receive_later = anyio.create_memory_object_stream[str](10)
    stop = store.watch(send.send_nowait)
    store.watch(send_later.send_nowait)
    await store.record_statuses("fp-a", {"floor": "triggered"}, T0)
    await store.record_statuses("fp-a", {"floor": "triggered"}, T0 + timedelta(minutes=1))  # no change
    await store.record_statuses("fp-a", {"floor": "unknown"}, T0 + timedelta(minutes=2))  # no change
    await store.record_statuses("fp-b", {"floor": "ok"}, T0)  # a rule never stored counts as ok: no change
    await store.record_statuses("fp-b", {"floor": "triggered"}, T0)
    with anyio.fail_after(NOTICE_SECONDS):
        # Notices arrive in the order of the changes, so the second one proves none came in between.
        assert [await receive.receive(), await receive.receive()] == ["fp-a", "fp-b"]
        assert [await receive_later.receive(), await receive_later.receive()] == ["fp-a", "fp-b"]
    stop()
    await store.record_statuses("fp-a", {"floor": "ok"}, T0 + timedelta(minutes=3))
    with anyio.fail_after(NOTICE_SECONDS):
        assert await receive_later.receive() == "fp-a"
    with pytest.raises(anyio.WouldBlock):  # the stopped listener heard nothing (both are told at the same moment)
        receive.receive_nowait()


async def test_a_store_is_ready_once_open(store: Store) -> None:
    await store.check_ready()


# ---- Concurrent writers of one ledger, on either backend ---------------------------------------------------------

LEDGER_CALLS = [SeenCall(1_000 + 10 * i, f"/api/premium/e{i % 3}", 1 + i % 5) for i in range(200)]
LEDGER_CALLS.append(SeenCall(5_000, "/api/premium/e0", 5, 2))  # two calls alike: two calls


async def record_ledger(store: Store, offset: int) -> None:
    """Record every call, each overlapping window of 25 as a usage list shows it, with a reading after each."""
    for first in range(offset, len(LEDGER_CALLS), 7):
        listed = LEDGER_CALLS[first : first + 25]
        reading = Reading(listed[-1].at + 1, sum(c.credits * c.calls for c in LEDGER_CALLS[: first + 25]), 9_999)
        await store.record_snapshot("fp", [reading], listed, [])


async def assert_whole_ledger(store: Store, stored_calls: int) -> None:
    """Every call counted once: as rows, as calls and as credits."""
    ledger, _ = await store.load_ledger("fp", 0)
    everything = ledger.spend(0, 10_000)
    assert everything.calls_seen == sum(call.calls for call in LEDGER_CALLS) == 202
    assert everything.credits == everything.attributed == sum(call.credits * call.calls for call in LEDGER_CALLS)
    assert stored_calls == len(LEDGER_CALLS)


# ---- SQLite only -------------------------------------------------------------------------------------------------


def test_creating_a_sqlite_store_touches_no_file(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "deep" / "alerts.sqlite3")
    assert list(tmp_path.iterdir()) == []


async def test_the_sqlite_file_is_in_wal_mode_and_rows_are_keyed_by_fingerprint(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "alerts.sqlite3")
    await store.save_rule("fp-a", make_rule("balance_below", 100, "floor"))
    await store.save_rule("fp-b", make_rule("runway_below_hours", 12))
    await store.delete_rule("fp-a", "floor")
    with closing(sqlite3.connect(tmp_path / "alerts.sqlite3")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {row[0] for row in db.execute("SELECT fingerprint FROM alert_rules")} == {"fp-b"}


def in_processes(target: Callable[..., None], path: Path, count: int) -> None:
    """Run `target(path, number, barrier)` in `count` fresh processes that start work together; all must succeed."""
    context = multiprocessing.get_context("spawn")  # no fork: the test process has threads
    start = context.Barrier(count)
    workers = [context.Process(target=target, args=(str(path), number, start)) for number in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0] * count


def _save_rules(path: str, number: int, start: Any) -> None:
    async def save(store: SqliteStore) -> None:
        for i in range(25):
            await store.save_rule("fp", make_rule("balance_below", 10 + i, f"{number}-{i}"))
            await store.record_statuses("fp", {f"{number}-{i}": "triggered"}, T0)

    store = SqliteStore(Path(path))
    start.wait()
    anyio.run(save, store)


async def test_processes_writing_at_once_on_a_new_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite3"
    in_processes(_save_rules, path, 4)
    assert len(await SqliteStore(path).list_rules("fp")) == 100


def _record_ledger(path: str, offset: int, start: Any) -> None:
    store = SqliteStore(Path(path))
    start.wait()
    anyio.run(record_ledger, store, offset)


async def test_processes_recording_the_ledger_at_once_lose_nothing_and_store_nothing_twice(tmp_path: Path) -> None:
    """Three writers (two servers and a cron `record`, say) that all see the same calls and readings."""
    path = tmp_path / "alerts.sqlite3"
    in_processes(_record_ledger, path, 3)
    with closing(sqlite3.connect(path)) as db:
        stored_calls = db.execute("SELECT count(*) FROM ledger_calls").fetchone()[0]
    await assert_whole_ledger(SqliteStore(path), stored_calls)


async def test_a_file_that_is_not_a_database_is_kept_and_copied_once(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite3"
    path.write_bytes(b"\x00garbage" * 512)
    store = SqliteStore(path)
    operations: list[Callable[[], Awaitable[object]]] = [
        lambda: store.list_rules("fp"),
        lambda: store.save_rule("fp", make_rule("balance_below", 1)),
    ]
    for operation in operations:
        with pytest.raises(StateStoreError, match="not a readable SQLite database") as raised:
            await operation()
        assert str(path) in str(raised.value) and "A copy is kept at" in str(raised.value)
    assert path.read_bytes() == b"\x00garbage" * 512
    assert len(list(tmp_path.glob("alerts.sqlite3.corrupt-*"))) == 1


async def test_a_folder_where_the_file_should_be_is_reported(tmp_path: Path) -> None:
    (tmp_path / "alerts.sqlite3").mkdir()
    with pytest.raises(StateStoreError, match="is a folder"):
        await SqliteStore(tmp_path / "alerts.sqlite3").list_rules("fp")


async def test_a_state_folder_that_cannot_be_created_is_reported(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(StateStoreError, match="Cannot create the alert state folder"):
        await SqliteStore(tmp_path / "blocker" / "alerts.sqlite3").list_rules("fp")


FUTURE = datetime(2100, 12, 5, tzinfo=UTC)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def poisoned_rows(fingerprint: str) -> dict[str, list[tuple[Any, ...]]]:
    """A ledger as an answer dated 2100 left it before the repair: a reading, a call and a purchase in 2100 after
    the true ones at T0."""
    true, lying = ms(T0), ms(FUTURE)
    return {
        "ledger_readings": [(fingerprint, true, 10, 100), (fingerprint, lying, 15, 100)],
        "ledger_calls": [(fingerprint, true - 1, "/api/premium/routing", 1, 1), (fingerprint, lying - 1, "/x", 5, 1)],
        "ledger_purchases": [(fingerprint, "0xtrue", true - 5, 100), (fingerprint, "0xlying", lying - 5, 100)],
    }


def sqlite_before_the_repair(path: Path, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """A state file at schema version 3 (the tables as they are now, nothing repaired) holding `rows`."""
    from tensorfeed_mcp.store.sqlite import SCHEMA

    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(SCHEMA)
        for table, values in rows.items():
            db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(values[0]))})", values)
        db.execute("PRAGMA user_version = 3")


def postgres_before_the_repair(url: str, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """A database migrated to version 1 only, holding `rows`."""
    from tensorfeed_mcp.store.postgres import MIGRATIONS

    query(url, "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz DEFAULT now())")
    query(url, MIGRATIONS[0])
    query(url, "INSERT INTO schema_migrations (version) VALUES (1)")
    for table, values in rows.items():
        for row in values:
            query(url, f"INSERT INTO {table} VALUES ({', '.join(['%s'] * len(row))})", *row)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_a_ledger_moved_into_the_future_by_a_lying_clock_is_repaired_on_upgrade(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Rows dated far past this machine's now (left by an answer with a Date in 2100 before the fix) are removed
    when the store is first opened by this version; the true rows stay."""
    rows = poisoned_rows("fp")
    async with AsyncExitStack() as stack:
        if backend == "sqlite":
            sqlite_before_the_repair(tmp_path / "alerts.sqlite3", rows)
            store: Store = SqliteStore(tmp_path / "alerts.sqlite3")
        else:
            url = request.getfixturevalue("database_url")
            postgres_before_the_repair(url, rows)
            store = await stack.enter_async_context(PostgresStore.open(url))
        ledger, first = await store.load_ledger("fp", ms(T0 - timedelta(days=1)))
    assert (first, ledger.last_reading) == (ms(T0), ms(T0))
    assert ledger.seen_credits(0, ms(FUTURE)) == 1
    assert ledger.spend(ms(T0 - timedelta(days=1)), ms(FUTURE)).purchased == 100


# ---- PostgreSQL only ---------------------------------------------------------------------------------------------


async def opened(stack: AsyncExitStack, url: str, count: int) -> list[PostgresStore]:
    """`count` stores on one database, as `count` replicas would have, closed with `stack`."""
    return [await stack.enter_async_context(PostgresStore.open(url)) for _ in range(count)]


def query(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows as the database holds them, read past the store."""
    with psycopg.connect(url, autocommit=True) as db:
        cursor = db.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


async def test_stores_opening_an_empty_database_at_once_migrate_it_once(database_url: str) -> None:
    async def open_and_check() -> None:
        async with PostgresStore.open(database_url) as replica:
            await replica.check_ready()

    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(open_and_check)
    await open_and_check()  # and a later start finds nothing to do
    versions = query(database_url, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(version,) for version in range(1, SCHEMA_VERSION + 1)]


async def test_stores_recording_the_ledger_at_once_lose_nothing_and_store_nothing_twice(database_url: str) -> None:
    async with AsyncExitStack() as stack:
        replicas = await opened(stack, database_url, 3)
        async with anyio.create_task_group() as tasks:
            for offset, replica in enumerate(replicas):
                tasks.start_soon(record_ledger, replica, offset)
        [(stored_calls,)] = query(database_url, "SELECT count(*) FROM ledger_calls")
        await assert_whole_ledger(replicas[0], stored_calls)


async def test_stores_checking_one_token_at_once_queue_each_transition_once(database_url: str) -> None:
    rounds = 8
    async with AsyncExitStack() as stack:
        first, second = await opened(stack, database_url, 2)
        for number in range(rounds):
            status: AlertStatus = "triggered" if number % 2 == 0 else "ok"
            now = T0 + timedelta(minutes=number)
            async with anyio.create_task_group() as tasks:
                for replica in (first, second, first, second):
                    tasks.start_soon(replica.record_statuses, "fp", {"floor": status, "cap": status}, now, composed)
        messages = [message async for message in claimed_all(second, "fp")]
    events = ["triggered" if number % 2 == 0 else "resolved" for number in range(rounds)]
    assert [body.rsplit(" ", 1)[0] for _, body in messages] == [
        f"{name} {event}" for event in events for name in ("floor", "cap")
    ]


async def test_an_error_raised_while_the_store_is_open_comes_out_as_itself(database_url: str) -> None:
    with pytest.raises(InvalidInputError, match="already has 0 saved alert rules"):
        async with PostgresStore.open(database_url) as store:
            await store.save_rule("fp", make_rule("balance_below", 10), limit=0)


async def test_a_watcher_on_one_store_hears_a_change_made_through_another(database_url: str) -> None:
    async with AsyncExitStack() as stack:
        writer, reader = await opened(stack, database_url, 2)
        send, receive = anyio.create_memory_object_stream[str](10)
        reader.watch(send.send_nowait)
        await writer.record_statuses("fp", {"floor": "triggered"}, T0)
        with anyio.fail_after(NOTICE_SECONDS):
            assert await receive.receive() == "fp"


async def test_a_dropped_change_feed_is_reconnected_and_logged_without_the_password(
    postgres_server: PostgresServer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = database_url.replace("postgres@", f"postgres:{PASSWORD}@")  # the server trusts local users: not checked
    async with PostgresStore.open(url) as store:
        send, receive = anyio.create_memory_object_stream[str](10)
        store.watch(send.send_nowait)
        cut = query(  # and wait (up to 5 s) until that server process is gone
            url,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query = %s",
            "LISTEN tensorfeed_alerts",
        )
        assert cut == [(True,)]
        # A change made before the feed is back is not heard; keep changing until one is.
        with anyio.fail_after(10):
            for number in range(1_000):
                flipped: AlertStatus = "triggered" if number % 2 == 0 else "ok"
                await store.record_statuses("fp", {"floor": flipped}, T0)
                with anyio.move_on_after(0.2):
                    assert await receive.receive() == "fp"
                    break
    lost = [record for record in caplog.records if "Lost the alert change feed" in record.getMessage()]
    assert lost and f"127.0.0.1:{postgres_server.port}/" in lost[0].getMessage()
    assert not any(PASSWORD in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("problem", ["nothing listens", "no such database"])
async def test_a_database_that_cannot_be_reached_is_named_by_host_port_and_name_only(
    postgres_server: PostgresServer, problem: str
) -> None:
    with socket.socket() as blocker:  # bound, never listening: connections to it are refused
        blocker.bind(("127.0.0.1", 0))
        port = postgres_server.port if problem == "no such database" else blocker.getsockname()[1]
        url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/tensorfeed"
        with pytest.raises(StateStoreError) as raised:
            async with PostgresStore.open(url):
                pass
    message = str(raised.value)
    said = "Connection refused" if problem == "nothing listens" else 'database "tensorfeed" does not exist'
    assert message.startswith(f"PostgreSQL at 127.0.0.1:{port}/tensorfeed is not reachable: {said}; check")
    assert PASSWORD not in message + repr(raised.value) and raised.value.__cause__ is None


async def test_a_schema_of_another_version_is_not_ready(database_url: str) -> None:
    async with PostgresStore.open(database_url) as store:
        await store.check_ready()
        query(database_url, "INSERT INTO schema_migrations (version) VALUES (%s)", SCHEMA_VERSION + 1)
        with pytest.raises(StateStoreError, match=f"has schema version {SCHEMA_VERSION + 1}, and this server uses"):
            await store.check_ready()
        query(database_url, "DELETE FROM schema_migrations")
        with pytest.raises(StateStoreError, match="has schema version 0"):
            await store.check_ready()


async def test_a_write_held_up_by_a_lock_fails_within_the_statement_timeout_and_the_store_goes_on(
    database_url: str,
) -> None:
    """Another session holds the token's lock (a stuck replica, say): the write gives up with a StateStoreError
    after the statement timeout instead of holding the call, and works again once the lock is gone."""
    rule = make_rule("balance_below", 100, "floor")
    async with PostgresStore.open(database_url) as store:
        with psycopg.connect(database_url) as blocker:
            blocker.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (TOKEN_LOCK_CLASS, "fp"))
            with anyio.fail_after(STATEMENT_TIMEOUT_MS / 1000 + 5):
                with pytest.raises(StateStoreError, match="statement timeout") as raised:
                    await store.save_rule("fp", rule)
            assert str(raised.value).startswith(f"PostgreSQL at 127.0.0.1:{urlsplit(database_url).port}/")
            assert await store.list_rules("fp") == []  # reads take no lock
        assert await store.save_rule("fp", rule) == ("created", 1)
