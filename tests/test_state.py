"""setpoint.state: inventory, journal and status in the SQLite state database."""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from setpoint.model.errors import SetpointError
from setpoint.model.status import Reason, StackStatus
from setpoint.state import (
    MAX_TEXT_BYTES,
    SCHEMA_VERSION,
    Event,
    InventoryRecord,
    JournalEntry,
    StateDB,
)
from setpoint.state.journal import cap_text

REV = "a" * 40


def rec(
    name: str, stack: str = "base", path: str | None = None, at: float = 1.0
) -> InventoryRecord:
    return InventoryRecord(
        stack=stack,
        resource=f"File/{name}",
        kind="File",
        path=f"/etc/{name}" if path is None else path,
        location="base/files.yaml:3",
        digest="d" * 64,
        revision=REV,
        applied_at=at,
    )


def entry(event: str = Event.APPLY, stack: str = "base", **kw: object) -> JournalEntry:
    return JournalEntry(ts=time.time(), stack=stack, event=event, **kw)  # type: ignore[arg-type]


@pytest.fixture
def db(state_dir: Path) -> Iterator[StateDB]:
    d = StateDB(state_dir)
    yield d
    d.close()


# -- files, modes, pragmas ----------------------------------------------------------


def test_creates_dir_and_file_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "deep" / "state"
    with StateDB(state_dir) as db:
        db.append(entry())  # makes SQLite create the -wal and -shm files
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((state_dir / "setpoint.db").stat().st_mode) == 0o600
        wal = state_dir / "setpoint.db-wal"
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_tightens_an_existing_db_file(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    (state_dir / "setpoint.db").touch(mode=0o644)
    (state_dir / "setpoint.db").chmod(0o644)
    StateDB(state_dir).close()
    assert stat.S_IMODE((state_dir / "setpoint.db").stat().st_mode) == 0o600


def test_pragmas_and_schema_version(db: StateDB) -> None:
    conn = sqlite3.connect(db.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_refuses_a_newer_schema(state_dir: Path) -> None:
    StateDB(state_dir).close()
    conn = sqlite3.connect(state_dir / "setpoint.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SetpointError, match="newer than this setpoint"):
        StateDB(state_dir)


def test_closed_db_refuses_calls(state_dir: Path) -> None:
    db = StateDB(state_dir)
    db.close()
    db.close()  # idempotent
    with pytest.raises(sqlite3.ProgrammingError):
        db.inventory("base")


# -- inventory ----------------------------------------------------------------------


def test_inventory_round_trip_upsert_and_remove(db: StateDB) -> None:
    a, b = rec("a"), rec("b")
    db.record_outcome(records=[a, b])
    assert db.inventory("base") == {"File/a": a, "File/b": b}
    assert db.inventory("other") == {}

    newer = InventoryRecord(
        **{**a.__dict__, "digest": "e" * 64, "revision": "b" * 40, "applied_at": 2.0}
    )
    db.record_outcome(records=[newer], removed=[("base", "File/b")])
    assert db.inventory("base") == {"File/a": newer}


def test_removed_applies_after_records(db: StateDB) -> None:
    db.record_outcome(records=[rec("a")], removed=[("base", "File/a")])
    assert db.inventory("base") == {}


def test_remove_only_touches_its_stack(db: StateDB) -> None:
    db.record_outcome(records=[rec("a", stack="s1"), rec("a", stack="s2", path="/etc/a2")])
    db.record_outcome(removed=[("s1", "File/a"), ("s1", "File/never-there")])
    assert db.inventory("s1") == {}
    assert list(db.inventory("s2")) == ["File/a"]


def test_owners_by_path(db: StateDB) -> None:
    db.record_outcome(
        records=[
            rec("a", stack="s1"),
            rec("b", stack="s2"),
            rec("svc", stack="s2", path=""),  # claims no path
            rec("dup-late", stack="s3", path="/etc/a", at=5.0),
        ]
    )
    owners = db.owners_by_path()
    assert set(owners) == {"/etc/a", "/etc/b"}
    assert owners["/etc/a"].stack == "s1"  # the first to apply it
    assert owners["/etc/b"].resource == "File/b"


# -- atomicity ----------------------------------------------------------------------


def test_non_serialisable_detail_writes_nothing(db: StateDB) -> None:
    bad = entry(detail={"when": object()})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        db.record_outcome(records=[rec("a")], removed=[], entries=[entry(), bad])
    assert db.inventory("base") == {}
    assert db.history() == []


def test_nan_detail_is_refused(db: StateDB) -> None:
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        db.append(entry(detail={"x": float("nan")}))


def test_failure_mid_transaction_rolls_back(db: StateDB) -> None:
    db.record_outcome(records=[rec("keep")])
    # The second record cannot be bound by SQLite: the first one was already
    # inserted inside the transaction when that fails, and must be rolled back.
    unbindable = InventoryRecord(**{**rec("b").__dict__, "revision": object()})
    with pytest.raises(sqlite3.Error):
        db.record_outcome(
            records=[rec("a"), unbindable], removed=[("base", "File/keep")], entries=[entry()]
        )
    assert list(db.inventory("base")) == ["File/keep"]
    assert db.history() == []
    # and the connection is usable again afterwards
    db.record_outcome(records=[rec("a")])
    assert set(db.inventory("base")) == {"File/a", "File/keep"}


# -- journal ------------------------------------------------------------------------


def test_journal_round_trip(db: StateDB) -> None:
    e = JournalEntry(
        ts=123.5,
        stack="base",
        event=Event.DRIFT,
        revision=REV,
        resource="File/motd",
        message="content changed on the host",
        detail={
            "diff": "-a\n+b\n",
            "fields": ["content", "mode"],
            "n": 2,
            "ok": True,
            "none": None,
        },
    )
    db.append(e)
    (got,) = db.history()
    assert got.id is not None
    assert got == JournalEntry(**{**e.__dict__, "id": got.id})
    assert got.event == "drift"


def test_history_order_limit_and_filters(db: StateDB) -> None:
    for i in range(10):
        db.append(entry(Event.APPLY if i % 2 else Event.DRIFT, stack=f"s{i % 3}", message=str(i)))
    all_ = db.history()
    assert [e.message for e in all_] == [str(i) for i in range(10)]  # newest last
    ids = [e.id or 0 for e in all_]
    assert ids == sorted(ids)

    assert [e.message for e in db.history(limit=3)] == ["7", "8", "9"]  # the latest three
    assert [e.message for e in db.history(stack="s1")] == ["1", "4", "7"]
    assert [e.message for e in db.history(events={"apply"})] == ["1", "3", "5", "7", "9"]
    assert [e.message for e in db.history(stack="s0", events=["drift"])] == ["0", "6"]
    assert db.history(events=[]) == []
    assert db.history(limit=0) == []


def test_history_after_id_pages_forward(db: StateDB) -> None:
    for i in range(7):
        db.append(entry(message=str(i)))
    seen: list[str] = []
    cursor = 0
    while page := db.history(limit=3, after_id=cursor):
        seen += [e.message for e in page]
        cursor = page[-1].id or 0
    assert seen == [str(i) for i in range(7)]
    assert db.history(after_id=cursor) == []


def test_huge_detail_strings_are_capped(db: StateDB) -> None:
    big = "x" * (5 * MAX_TEXT_BYTES)
    db.append(entry(message=big, detail={"diff": big, "nested": {"list": [big, "small"]}}))
    (got,) = db.history()
    for text in (got.message, got.detail["diff"], got.detail["nested"]["list"][0]):
        assert len(text.encode()) <= MAX_TEXT_BYTES
        assert text.startswith("x" * 1000)
        assert "truncated" in text
    assert got.detail["nested"]["list"][1] == "small"
    row = sqlite3.connect(db.path).execute("SELECT length(detail) FROM journal").fetchone()
    assert row[0] < 3 * MAX_TEXT_BYTES


def test_cap_text_never_splits_a_character() -> None:
    text = "é" * MAX_TEXT_BYTES  # 2 bytes each
    capped = cap_text(text)
    assert len(capped.encode()) <= MAX_TEXT_BYTES
    assert capped.startswith("é" * 100)
    assert cap_text("short") == "short"
    exact = "y" * MAX_TEXT_BYTES
    assert cap_text(exact) == exact


# -- status -------------------------------------------------------------------------


def test_status_round_trip(db: StateDB) -> None:
    assert db.load_status("base") is None
    st = StackStatus(stack="base", source="main", path="hosts/web", fetched_revision=REV)
    st.set_condition("Ready", False, Reason.APPLY_FAILED, "File/motd: permission denied", now=10.0)
    st.counts = {"total": 3, "failed": 1}
    st.resources = {"File/motd": "failed"}
    db.save_status(st)
    assert db.load_status("base") == st

    st.applied_revision = REV
    db.save_status(st)
    db.save_status(StackStatus(stack="aaa"))
    assert [s.stack for s in db.all_status()] == ["aaa", "base"]
    assert db.load_status("base") == st

    db.delete_status("aaa")
    assert [s.stack for s in db.all_status()] == ["base"]


def test_status_ignores_unknown_fields(db: StateDB) -> None:
    db.save_status(StackStatus(stack="base"))
    conn = sqlite3.connect(db.path)
    doc = json.loads(conn.execute("SELECT doc FROM status").fetchone()[0])
    doc["from_the_future"] = 1
    with conn:
        conn.execute("UPDATE status SET doc = ?", (json.dumps(doc),))
    conn.close()
    assert db.load_status("base") == StackStatus(stack="base")


# -- persistence and threads ----------------------------------------------------------


def test_everything_persists_across_reopen(state_dir: Path) -> None:
    with StateDB(state_dir) as db:
        db.record_outcome(records=[rec("a")], entries=[entry(message="applied")])
        db.save_status(StackStatus(stack="base", applied_revision=REV))
    with StateDB(state_dir) as db:
        assert list(db.inventory("base")) == ["File/a"]
        assert [e.message for e in db.history()] == ["applied"]
        status = db.load_status("base")
        assert status is not None
        assert status.applied_revision == REV


def test_second_connection_sees_commits(state_dir: Path) -> None:
    with StateDB(state_dir) as writer, StateDB(state_dir) as reader:
        writer.record_outcome(records=[rec("a")])
        assert list(reader.inventory("base")) == ["File/a"]


def test_shared_between_two_threads(db: StateDB) -> None:
    n = 300
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker() -> None:
        try:
            start.wait()
            for i in range(n):
                db.record_outcome(records=[rec(f"f{i}")], entries=[entry(message=f"w{i}")])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def api() -> None:
        try:
            start.wait()
            for _ in range(n):
                db.history(limit=5)
                db.inventory("base")
                db.save_status(StackStatus(stack="base"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker), threading.Thread(target=api)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(db.inventory("base")) == n
    assert [e.message for e in db.history(limit=n)] == [f"w{i}" for i in range(n)]


def test_record_outcome_is_cheap(db: StateDB) -> None:
    # Not a benchmark (see the report for figures): a generous bound that catches
    # an fsync per commit (which would cost milliseconds per call, not microseconds).
    t0 = time.perf_counter()
    for i in range(1000):
        db.record_outcome(records=[rec(f"f{i}")], entries=[entry()])
    assert time.perf_counter() - t0 < 2.0
