"""The journal stays small: retention (age, count, old diffs), repeated failures counted on
one entry, provider events past a queue bound counted, and trims reported by history."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import test_watch
from api_support import call
from conftest import GitRepo
from helpers import cli, docs, manifest, one_stack, wait_for
from setpoint.config import AgentConfig
from setpoint.engine.controller import Controller
from setpoint.providers.base import EventQueue, ProviderContext, ProviderEvent
from setpoint.providers.services.service import ServiceProvider
from setpoint.state import SCHEMA_VERSION, JournalEntry, StateDB
from setpoint.state.retention import DAY, Retention, due, last_trim, trim

run_agent = test_watch.run_agent  # the shared fixture: a real agent process

NOW = time.time()
INSERT = (
    "INSERT INTO journal (ts, stack, event, revision, resource, message, detail) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


@pytest.fixture
def db(state_dir: Path) -> Any:
    d = StateDB(state_dir)
    yield d
    d.close()


def fill(db: StateDB, n: int, *, first_ts: float, step: float, diff: bool = False) -> None:
    """``n`` generated entries in one transaction, ``step`` seconds apart from ``first_ts``."""
    detail = json.dumps({"action": "update", "path": "/etc/f", "diff": "-a\n+b\n"} if diff else {})
    rows = (
        (first_ts + i * step, "web", "apply", "r" * 40, f"File/f{i % 50}", f"updated {i}", detail)
        for i in range(n)
    )
    db.run_batch(lambda conn: conn.executemany(INSERT, rows))


def count(db: StateDB) -> int:
    return int(db.use(lambda c: c.execute("SELECT count(*) FROM journal").fetchone()[0]))


def ids(db: StateDB) -> list[int]:
    return [e.id for e in db.history(limit=10**9) if e.id is not None]


def db_bytes(state: Path) -> int:
    return sum(os.path.getsize(state / f) for f in os.listdir(state) if f.startswith("setpoint.db"))


# -- retention ------------------------------------------------------------------------


def test_trims_by_age_oldest_first_in_batches(db: StateDB) -> None:
    # 100 entries a day apart: the oldest 10 are older than 90 days.
    fill(db, 100, first_ts=NOW - 99.5 * DAY, step=DAY)
    assert due(db, Retention(), now=NOW)
    r = trim(db, Retention(max_age_days=90), now=NOW, batch=3)
    assert r.removed == 10 and r.finished and r.batches > 3  # several short transactions
    left = db.history(limit=1000)
    assert len(left) == 90 and min(e.ts for e in left) >= NOW - 90 * DAY
    assert not due(db, Retention(), now=NOW)
    assert trim(db, Retention(), now=NOW).removed == 0  # nothing more to do


def test_trims_by_count_and_never_the_newest_entry(db: StateDB) -> None:
    fill(db, 1000, first_ts=NOW - 1000, step=1)
    newest = max(ids(db))
    r = trim(db, Retention(max_entries=250), now=NOW, batch=100)
    assert r.removed == 750 and r.batches >= 8
    assert ids(db) == list(range(newest - 249, newest + 1))  # the newest 250, ids kept
    # Everything is older than maxAgeDays: all go but the newest, so ids keep growing.
    trim(db, Retention(max_age_days=1), now=NOW + 10 * DAY)
    assert ids(db) == [newest]
    db.append(JournalEntry(NOW + 10 * DAY, "web", "apply", message="next"))
    assert ids(db) == [newest, newest + 1]


def test_old_diffs_are_dropped_and_their_entries_stay(db: StateDB) -> None:
    fill(db, 40, first_ts=NOW - 39.5 * DAY, step=DAY, diff=True)  # 10 diffs older than 30 days
    r = trim(db, Retention(), now=NOW, batch=7)
    assert r.removed == 0 and r.diffs_dropped == 10
    entries = db.history(limit=100)
    assert len(entries) == 40
    old = [e for e in entries if e.ts < NOW - 30 * DAY]
    assert len(old) == 10
    for e in old:
        assert "diff" not in e.detail and e.detail["diff_dropped"] is True
        assert e.detail["path"] == "/etc/f"  # the rest of the detail stays
    assert all(e.detail["diff"] == "-a\n+b\n" for e in entries if e not in old)
    # A cursor: the next trim looks at nothing again.
    assert trim(db, Retention(), now=NOW).diffs_dropped == 0
    assert not due(db, Retention(), now=NOW)


def test_history_says_when_entries_were_trimmed(state_dir: Path, db: StateDB) -> None:
    fill(db, 1200, first_ts=NOW - 100 * DAY, step=60)  # 1,200 entries 100 days old
    fill(db, 5, first_ts=time.time() - 50, step=1)
    trim(db, Retention(max_age_days=90), batch=500)
    trimmed = db.use(last_trim)
    assert trimmed is not None and trimmed.removed == 1200
    assert trimmed.reason == "maxAgeDays 90"
    out = cli("history", "--state", state_dir, check=0).stdout
    first = out.splitlines()[0]
    assert first.startswith("entries before ") and first.endswith(
        "were trimmed (maxAgeDays 90): 1,200 removed"
    ), out
    assert len(out.splitlines()) == 6


def test_a_pass_completes_while_a_trim_is_in_progress(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    files = [manifest("File", f"f{i}", path=f"/etc/f{i}", content=f"{i}\n") for i in range(20)]
    git_repo.commit({"m/a.yaml": docs(*files)})
    ctl = Controller(one_stack(git_repo.url, root, state_dir))
    try:
        fill(ctl.db, 50_000, first_ts=NOW - 200 * DAY, step=1)
        in_trim, pass_done = threading.Event(), threading.Event()
        passes_seen: list[bool] = []

        def between(took: float) -> bool:
            # After the first batch: the trim is under way, and waits here for the pass.
            if not in_trim.is_set():
                in_trim.set()
                passes_seen.append(pass_done.wait(timeout=60))
            return True

        result: dict[str, Any] = {}
        trimmer = threading.Thread(
            target=lambda: result.update(r=trim(ctl.db, Retention(), batch=1000, between=between))
        )
        trimmer.start()
        assert in_trim.wait(timeout=60)
        ctl.fetch("repo")
        r = ctl.reconcile("web")  # a whole pass (20 applies, status) with the trim half-way
        assert r.converged and len(r.changes) == 20
        pass_done.set()
        trimmer.join(timeout=120)
        assert passes_seen == [True]  # the pass finished while the trim was in progress
        assert result["r"].removed == 50_000 and result["r"].finished
        applies = [e for e in ctl.db.history(limit=1000) if e.event == "apply"]
        assert len(applies) == 20  # the pass's own entries are young: kept
    finally:
        ctl.close()


def test_apply_trims_a_little_when_a_trim_is_due(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="hi\n")})
    with StateDB(state_dir) as db:
        fill(db, 30_000, first_ts=time.time() - 200 * DAY, step=1)  # all past maxAgeDays
    cfg = one_stack(git_repo.url, root, state_dir)
    for left in (10_000, 0):  # at most 40 batches of 500 per apply
        ctl = Controller(cfg)
        try:
            (r,) = ctl.run_once()
            assert r.converged
            old = ctl.db.use(
                lambda c: c.execute(
                    "SELECT count(*) FROM journal WHERE ts < ?", (time.time() - 90 * DAY,)
                ).fetchone()[0]
            )
            assert old == left
        finally:
            ctl.close()


def test_a_million_entries_trimmed_to_the_bound_keep_the_db_small(state_dir: Path) -> None:
    """1,000,000 entries (~140 MB with the WAL); trimmed to 10,000, the files take < 16 MB."""
    db = StateDB(state_dir)
    try:
        n = 1_000_000

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?) "
                "INSERT INTO journal (ts, stack, event, revision, resource, message, detail) "
                "SELECT ? + i, 'web', 'apply', 'abc123def456', 'File/f' || (i % 5000), "
                "'updated /etc/f' || (i % 5000) || ': content', "
                '\'{"action":"update","path":"/etc/f","ms":1.2}\' FROM n',
                (n, NOW - n),
            )

        db.run_batch(write)
        assert count(db) == n and db_bytes(state_dir) > 100e6
        r = trim(db, Retention(max_entries=10_000), now=NOW, batch=20_000)
        assert r.removed == n - 10_000 and r.finished
        assert count(db) == 10_000
    finally:
        db.close()
    size = db_bytes(state_dir)
    assert size < 16e6, f"{size / 1e6:.1f} MB"


def test_schema_1_state_db_is_migrated(state_dir: Path) -> None:
    state_dir.mkdir()
    conn = sqlite3.connect(state_dir / "setpoint.db")
    conn.executescript(
        "CREATE TABLE journal (id INTEGER PRIMARY KEY, ts REAL NOT NULL, stack TEXT NOT NULL, "
        "event TEXT NOT NULL, revision TEXT, resource TEXT, message TEXT NOT NULL, "
        "detail TEXT NOT NULL); CREATE TABLE inventory (stack TEXT, resource TEXT, kind TEXT, "
        "path TEXT, location TEXT, digest TEXT, revision TEXT, applied_at REAL, prune INTEGER, "
        "PRIMARY KEY (stack, resource)) WITHOUT ROWID; CREATE TABLE status (stack TEXT "
        "PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID; "
        "INSERT INTO journal VALUES (1, 1.0, 'web', 'failure', NULL, 'File/x', 'no', '{}'); "
        "PRAGMA user_version = 1;"
    )
    conn.close()
    with StateDB(state_dir) as db:
        (e,) = db.history()
        assert (e.count, e.last_at) == (1, None)
        assert db.use(last_trim) is None
        assert db.use(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION


def test_journal_config_defaults_and_limits(tmp_path: Path) -> None:
    base = {"sources": [{"name": "s", "url": str(tmp_path)}]}
    base["stacks"] = [{"name": "web", "source": "s"}]
    j = AgentConfig.model_validate(base).journal
    assert Retention.of(j) == Retention(max_age_days=90, max_entries=1_000_000,
                                        diff_max_age_days=30)  # fmt: skip
    j = AgentConfig.model_validate(base | {"journal": {"maxEntries": 5, "maxAgeDays": 7}}).journal
    assert (j.max_entries, j.max_age_days, j.diff_max_age_days) == (5, 7, 30)
    for bad in ({"maxEntries": 0}, {"maxAgeDays": -1}, {"keepDays": 3}):
        with pytest.raises(ValueError, match="journal"):
            AgentConfig.model_validate(base | {"journal": bad})


# -- repeated failures ---------------------------------------------------------------


def test_repeats_count_on_one_entry_until_the_message_changes(db: StateDB) -> None:
    def fail(ts: float, msg: str = "cannot write", follows: bool = True) -> JournalEntry:
        return db.record_repeat(
            JournalEntry(ts, "web", "failure", "r", "File/x", msg), follows=follows
        )

    first = fail(100.0, follows=False)
    for t in (110.0, 120.0, 130.0):
        again = fail(t)
    assert again.id == first.id and again.count == 4 and again.last_at == 130.0
    fail(140.0, "another error")  # a different message: a new entry
    fail(150.0)  # and back: new again (the newest failure said something else)
    fail(160.0, follows=False)  # something succeeded between: new
    db.append(JournalEntry(170.0, "web", "apply", "r", "File/y", "ok"))  # other resources
    fail(180.0)
    got = [(e.event, e.resource, e.message, e.count, e.last_at) for e in db.history()]
    assert got == [
        ("failure", "File/x", "cannot write", 4, 130.0),
        ("failure", "File/x", "another error", 1, None),
        ("failure", "File/x", "cannot write", 1, None),
        ("failure", "File/x", "cannot write", 2, 180.0),
        ("apply", "File/y", "ok", 1, None),
    ]
    with pytest.raises(ValueError, match="not one that may repeat"):
        db.record_repeat(JournalEntry(1.0, "web", "apply"), follows=True)


def test_a_failure_on_every_retry_is_journaled_once_with_a_count(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    (root / "blocker").write_text("a file where a directory is needed")
    git_repo.commit({"m/a.yaml": docs(manifest("File", "bad", path="/blocker/x/bad.txt",
                                               content="x"))})  # fmt: skip
    ctl = Controller(one_stack(git_repo.url, root, state_dir))
    try:
        for _ in range(5):  # the first try and four retries
            (r,) = ctl.run_once()
            assert not r.converged
        failures = [e for e in ctl.db.history() if e.event == "failure"]
        assert len(failures) == 1 and failures[0].count == 5, failures
        assert failures[0].last_at is not None and failures[0].last_at > failures[0].ts
        passes = [e for e in ctl.db.history() if e.event == "pass"]
        assert len(passes) == 1 and passes[0].count == 5 and "1 failed" in passes[0].message
        out = cli("history", "--state", state_dir, check=0).stdout
        assert "failure ×5, last " in out and "pass ×5, last " in out, out
        # Fixed, then broken again: a success between starts a new entry.
        (root / "blocker").unlink()
        assert ctl.run_once()[0].converged
        (root / "blocker/x/bad.txt").unlink()
        (root / "blocker/x").rmdir()
        (root / "blocker").rmdir()
        (root / "blocker").write_text("in the way again")
        ctl.run_once()
        failures = [e for e in ctl.db.history() if e.event == "failure"]
        assert [f.count for f in failures] == [5, 1]
    finally:
        ctl.close()


# -- provider events past a bound ------------------------------------------------------


def test_a_full_event_queue_counts_what_it_lost() -> None:
    q = EventQueue(1000)
    for i in range(1537):
        q.put(ProviderEvent("Service/web", "revert", f"restarted {i}", at=float(i)))
    q.put(ProviderEvent("Service/db", "revert", "restarted"))
    got = q.drain({"Service/web"})
    assert got[0].event == "events.lost" and got[0].resource == "Service/web"
    assert got[0].message == "538 provider events were lost (queue bound 1,000)"
    assert got[0].detail == {"lost": 538, "bound": 1000}
    assert [e.message for e in got[1:]] == [f"restarted {i}" for i in range(538, 1537)]
    assert [e.resource for e in q.drain({"Service/db"})] == ["Service/db"]  # kept for its stack
    assert q.drain({"Service/web"}) == []  # the count is told once


def test_the_service_provider_journals_lost_events(root: Path, state_dir: Path) -> None:
    prov = ServiceProvider(ProviderContext(root, state_dir=state_dir))
    for i in range(1537):
        prov.emit(ProviderEvent("Service/web", "drift", f"killed {i}"))
    events = prov.drain_events({"Service/web"})
    assert events[0].message == "537 provider events were lost (queue bound 1,000)"
    assert len(events) == 1001


# -- the agent --------------------------------------------------------------------------


def test_the_agent_trims_in_the_background_and_history_says_so(
    git_repo: GitRepo, state_dir: Path, run_agent: Any
) -> None:
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="hi\n")})
    with StateDB(state_dir) as db:
        fill(db, 5000, first_ts=time.time() - 5000, step=1)
    agent = run_agent(journal={"maxEntries": 100})

    def trimmed() -> dict[str, Any] | None:
        page: dict[str, Any] = call(agent.url + "/api/v1/journal?limit=5")[1]
        return page["trimmed"] if page["trimmed"] and page["trimmed"]["removed"] >= 4900 else None

    t = wait_for(trimmed, what="the agent's trim")
    assert t["reason"] == "maxEntries 100"
    assert len(agent.journal()) <= 100 + 10
    out = cli("history", "--state", state_dir, "-n", "3", check=0).stdout  # through the API
    assert "were trimmed (maxEntries 100): " in out.splitlines()[0], out
    entry = call(agent.url + "/api/v1/journal?limit=1")[1]["entries"][0]
    assert entry["count"] == 1 and entry["lastAt"] is None


def test_a_second_connection_in_the_process_leaves_the_first_ones_wal_alone(
    state_dir: Path,
) -> None:
    """The agent trims on a StateDB of its own: opening and closing it must not drop the
    POSIX locks of the pass thread's connection, else the next reader in another process
    (``setpoint history``) takes itself for the last one and deletes the live WAL."""

    def count_elsewhere() -> int:
        code = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "print(c.execute('SELECT count(*) FROM journal').fetchone()[0]); c.close()"
        )
        out = subprocess.run([sys.executable, "-c", code, str(state_dir / "setpoint.db")],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return int(out.stdout)

    main = StateDB(state_dir)
    try:
        main.append(JournalEntry(1.0, "web", "apply"))
        StateDB(state_dir).close()
        assert count_elsewhere() == 1
        main.append(JournalEntry(2.0, "web", "apply"))
        assert count_elsewhere() == 2
        assert (state_dir / "setpoint.db-wal").exists()
    finally:
        main.close()
