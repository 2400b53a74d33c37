"""StateStore on real files: rules per token fingerprint, trigger state, concurrent processes, damaged files."""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tensorfeed_mcp.alerts import make_rule
from tensorfeed_mcp.errors import StateStoreError
from tensorfeed_mcp.ledger import Reading, SeenCall
from tensorfeed_mcp.store import StateStore

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_creating_a_store_touches_no_file(tmp_path: Path) -> None:
    StateStore(tmp_path / "deep" / "alerts.sqlite3")
    assert list(tmp_path.iterdir()) == []


def test_rules_are_saved_updated_deleted_and_kept_apart_per_token(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "alerts.sqlite3")
    assert store.save_rule("fp-a", make_rule("balance_below", 100, "floor")) == ("created", 1)
    assert store.save_rule("fp-a", make_rule("balance_below", 50, "floor")) == ("updated", 1)
    assert store.save_rule("fp-b", make_rule("runway_below_hours", 12)) == ("created", 1)
    assert [(r.name, r.threshold, r.source) for r in store.list_rules("fp-a")] == [("floor", 50.0, "user")]
    assert [r.name for r in store.list_rules("fp-b")] == ["runway_below_hours"]
    assert store.delete_rule("fp-a", "floor") == (make_rule("balance_below", 50, "floor"), 0)
    assert store.delete_rule("fp-a", "floor") is None
    assert store.list_rules("fp-a") == []
    with sqlite3.connect(tmp_path / "alerts.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        fingerprints = {row[0] for row in db.execute("SELECT fingerprint FROM alert_rules")}
    assert fingerprints == {"fp-b"}


def test_since_is_set_on_trigger_kept_while_triggered_and_cleared_when_ok(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "alerts.sqlite3")
    store.save_rule("fp", make_rule("balance_below", 100, "floor"))
    assert store.record_statuses("fp", {"floor": "ok"}, T0) == {"floor": None}
    assert store.record_statuses("fp", {"floor": "triggered"}, T0 + timedelta(minutes=1)) == {
        "floor": T0 + timedelta(minutes=1)
    }
    assert store.record_statuses("fp", {"floor": "triggered"}, T0 + timedelta(minutes=5)) == {
        "floor": T0 + timedelta(minutes=1)
    }
    # A failed read says nothing either way: the trigger time survives it.
    assert store.record_statuses("fp", {"floor": "unknown"}, T0 + timedelta(minutes=6)) == {
        "floor": T0 + timedelta(minutes=1)
    }
    assert store.record_statuses("fp", {"floor": "ok"}, T0 + timedelta(minutes=7)) == {"floor": None}
    assert store.record_statuses("fp", {"floor": "triggered"}, T0 + timedelta(minutes=8)) == {
        "floor": T0 + timedelta(minutes=8)
    }


def test_changing_a_rules_threshold_forgets_its_trigger_time(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "alerts.sqlite3")
    store.save_rule("fp", make_rule("balance_below", 100, "floor"))
    store.record_statuses("fp", {"floor": "triggered"}, T0)
    store.save_rule("fp", make_rule("balance_below", 100, "floor"))  # same rule: state kept
    assert store.record_statuses("fp", {"floor": "triggered"}, T0 + timedelta(hours=1)) == {"floor": T0}
    store.save_rule("fp", make_rule("balance_below", 200, "floor"))
    later = T0 + timedelta(hours=2)
    assert store.record_statuses("fp", {"floor": "triggered"}, later) == {"floor": later}


def _save_rules(path: str, prefix: str, start: Any) -> None:
    store = StateStore(Path(path))
    start.wait()
    for i in range(25):
        store.save_rule("fp", make_rule("balance_below", 10 + i, f"{prefix}-{i}"))
        store.record_statuses("fp", {f"{prefix}-{i}": "triggered"}, T0)


def test_processes_writing_at_once_on_a_new_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite3"
    context = multiprocessing.get_context("spawn")  # no fork: the test process has threads
    start = context.Barrier(4)
    workers = [context.Process(target=_save_rules, args=(str(path), name, start)) for name in "abcd"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert len(StateStore(path).list_rules("fp")) == 100


def test_a_file_that_is_not_a_database_is_kept_and_copied_once(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite3"
    path.write_bytes(b"\x00garbage" * 512)
    store = StateStore(path)
    for operation in (lambda: store.list_rules("fp"), lambda: store.save_rule("fp", make_rule("balance_below", 1))):
        with pytest.raises(StateStoreError, match="not a readable SQLite database") as raised:
            operation()
        assert str(path) in str(raised.value) and "A copy is kept at" in str(raised.value)
    assert path.read_bytes() == b"\x00garbage" * 512
    assert len(list(tmp_path.glob("alerts.sqlite3.corrupt-*"))) == 1


def test_a_folder_where_the_file_should_be_is_reported(tmp_path: Path) -> None:
    (tmp_path / "alerts.sqlite3").mkdir()
    with pytest.raises(StateStoreError, match="is a folder"):
        StateStore(tmp_path / "alerts.sqlite3").list_rules("fp")


def test_a_state_folder_that_cannot_be_created_is_reported(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(StateStoreError, match="Cannot create the alert state folder"):
        StateStore(tmp_path / "blocker" / "alerts.sqlite3").list_rules("fp")


LEDGER_CALLS = [SeenCall(1_000 + 10 * i, f"/api/premium/e{i % 3}", 1 + i % 5) for i in range(200)]
LEDGER_CALLS.append(SeenCall(5_000, "/api/premium/e0", 5, 2))  # two calls alike: two calls


def _record_ledger(path: str, offset: int, start: Any) -> None:
    """Record every call, each overlapping window of 25 as a usage list shows it, with a reading after each."""
    store = StateStore(Path(path))
    start.wait()
    for first in range(offset, len(LEDGER_CALLS), 7):
        listed = LEDGER_CALLS[first : first + 25]
        reading = Reading(listed[-1].at + 1, sum(c.credits * c.calls for c in LEDGER_CALLS[: first + 25]), 9_999)
        store.record_snapshot("fp", [reading], listed, [])


def test_processes_recording_the_ledger_at_once_lose_nothing_and_store_nothing_twice(tmp_path: Path) -> None:
    """Three writers (two servers and a cron `record`, say) that all see the same calls and readings."""
    path = tmp_path / "alerts.sqlite3"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    workers = [context.Process(target=_record_ledger, args=(str(path), offset, start)) for offset in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    ledger, _ = StateStore(path).load_ledger("fp", 0)
    everything = ledger.spend(0, 10_000)
    assert everything.calls_seen == sum(call.calls for call in LEDGER_CALLS) == 202
    assert everything.credits == everything.attributed == sum(call.credits * call.calls for call in LEDGER_CALLS)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM ledger_calls").fetchone()[0] == len(LEDGER_CALLS)
