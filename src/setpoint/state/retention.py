"""Journal retention: old entries and old diffs trimmed in short batches, in the background.

Callers: the agent (a timer task on a thread of its own, :mod:`setpoint.engine.agent`)
and the CLI's one-shot ``apply`` (a bounded trim when one is due,
:meth:`setpoint.engine.controller.Controller.trim_journal`); ``setpoint history`` and
the API read :func:`last_trim` to say what was trimmed.

Rules:

- Entries go oldest first (by id) and the newest entry never goes: ids keep
  growing, so an id stays a safe cursor for readers following the journal (the
  event stream's ``Last-Event-ID``).
- An entry goes when it is older than ``maxAgeDays`` (trimming stops at the first
  younger entry) or when ``maxEntries`` newer ones exist. Ids are dense (rows are
  only deleted oldest first, and a rolled-back insert takes no id), so the count
  is ``max(id) - min(id) + 1``, read from the rowid b-tree without a scan.
- Each batch is one short write transaction (``StateDB.run_batch``): a pass on
  another thread waits for one batch at most, never for a whole trim. The agent
  trims on a connection of its own (:func:`trim_apart`): the WAL checkpoints its
  commits cause then run outside the lock its passes' connection uses.
- Diffs older than ``diffMaxAgeDays`` are removed from their entries' detail
  (which then says ``diff_dropped``); the entries stay. A cursor
  (``journal_marks.diffs_through``) makes each entry looked at once.
- Freed pages go back to the file system (incremental auto-vacuum: state DBs
  created since schema 2; an older file reuses its free pages instead of growing).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from setpoint.state.db import StateDB

log = logging.getLogger("setpoint.retention")

DAY = 86_400.0
#: Rows per batch (one write transaction): 5-10 ms on a busy 2-core machine.
BATCH = 500
#: Free pages given back per batch, at most (a batch of BATCH entries frees ~50).
VACUUM_PAGES = 1_000
#: Trim runs remembered in ``journal_trims`` (the total removed is kept apart).
KEEP_TRIM_ROWS = 100
_DIFFS_THROUGH = "diffs_through"
_DIFFS_DROPPED = "diffs_dropped"
_REMOVED = "removed_total"
# Two subqueries: SQLite answers a lone min() or max() of the rowid from the b-tree's
# ends, but scans the whole table for "SELECT min(id), max(id)".
_BOUNDS = "SELECT (SELECT min(id) FROM journal), (SELECT max(id) FROM journal)"


# A one-shot apply trims at most this many batches (a few ms each); the agent trims all.
ONE_SHOT_TRIM_BATCHES = 40


class _JournalConfig(Protocol):
    @property
    def max_age_days(self) -> float: ...
    @property
    def max_entries(self) -> int: ...
    @property
    def diff_max_age_days(self) -> float: ...


@dataclass(frozen=True)
class Retention:
    """The ``journal:`` config: how long and how much the journal keeps."""

    max_age_days: float = 90
    max_entries: int = 1_000_000
    diff_max_age_days: float = 30

    @classmethod
    def of(cls, cfg: _JournalConfig) -> Retention:
        return cls(cfg.max_age_days, cfg.max_entries, cfg.diff_max_age_days)


@dataclass(frozen=True)
class Trimmed:
    """What trimming has removed so far: shown by ``setpoint history`` and the API."""

    at: float  # when the last trim ran
    before: float  # the time of the oldest entry it kept: older ones were trimmed
    removed: int  # entries removed, in all
    reason: str  # the bound(s) the last trim applied, e.g. "maxAgeDays 90"

    def describe(self, when: Callable[[float], str]) -> str:
        return (
            f"entries before {when(self.before)} were trimmed ({self.reason}): "
            f"{self.removed:,} removed"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at,
            "before": self.before,
            "removed": self.removed,
            "reason": self.reason,
        }


@dataclass
class TrimResult:
    removed: int = 0
    diffs_dropped: int = 0
    batches: int = 0
    finished: bool = True  # False: ``max_batches`` stopped it; the rest waits for the next


@dataclass
class _Run:
    """One trim run's row in ``journal_trims`` (created at its first removal)."""

    at: float
    row: int | None = None
    reasons: list[str] = field(default_factory=list)


def trim(
    db: StateDB,
    policy: Retention,
    *,
    now: float | None = None,
    batch: int = BATCH,
    max_batches: int | None = None,
    between: Callable[[float], bool] | None = None,
) -> TrimResult:
    """Trim the journal to ``policy``, one short transaction per ``batch`` rows.

    ``between(seconds the batch took)`` runs after each batch, outside any
    transaction (the agent pauses there so that a waiting pass gets the write
    lock); it returns False to stop (the rest waits for the next trim).
    ``max_batches`` bounds the work (a one-shot ``apply`` trims a little, the
    agent all of it).
    """
    now = time.time() if now is None else now
    result = TrimResult()
    run = _Run(at=now)
    steps: list[Callable[[sqlite3.Connection], tuple[int, bool]]] = [
        functools.partial(_trim_entries, policy=policy, cut=now - policy.max_age_days * DAY,
                          batch=batch, run=run),
        functools.partial(_drop_diffs, cut=now - policy.diff_max_age_days * DAY, batch=batch),
    ]  # fmt: skip
    for i, step in enumerate(steps):
        more = True
        while more:
            if max_batches is not None and result.batches >= max_batches:
                result.finished = False
                return result
            t0 = time.monotonic()
            n, more = db.run_batch(step)
            if n:
                db.use(_vacuum)
            took = time.monotonic() - t0
            result.batches += 1
            if i == 0:
                result.removed += n
            else:
                result.diffs_dropped += n
            if more and between is not None and not between(took):
                result.finished = False
                return result
    return result


def trim_if_due(
    db: StateDB,
    policy: Retention,
    *,
    max_batches: int | None = None,
    between: Callable[[float], bool] | None = None,
) -> TrimResult | None:
    """:func:`trim` if :func:`due`; ``None`` if not due or it failed.

    Never raises a database error: trimming must never fail a pass or an apply
    (it is logged, and tried again next time).
    """
    try:
        if not due(db, policy):
            return None
        result = trim(db, policy, max_batches=max_batches, between=between)
    except sqlite3.Error as exc:
        log.warning("trimming the journal failed (tried again later): %s", exc)
        return None
    if result.removed or result.diffs_dropped:
        log.info(
            "journal trimmed: %d entries removed, %d diffs dropped%s",
            result.removed,
            result.diffs_dropped,
            "" if result.finished else " (more at the next trim)",
        )
    return result


def trim_apart(
    state_dir: Path, policy: Retention, *, between: Callable[[float], bool] | None = None
) -> TrimResult | None:
    """:func:`trim_if_due` on a connection of its own (the agent's trim thread).

    Never raises: a background job that failed is logged and runs again next time.
    """
    from setpoint.state.db import StateDB  # state.db does not import this module back

    try:
        with StateDB(state_dir) as db:
            return trim_if_due(db, policy, between=between)
    except Exception:
        log.exception("trimming the journal failed (tried again later)")
        return None


def due(db: StateDB, policy: Retention, now: float | None = None) -> bool:
    """Whether :func:`trim` has anything to do (a few index lookups, no scan)."""
    return db.use(functools.partial(_due, policy=policy, now=time.time() if now is None else now))


def last_trim(conn: sqlite3.Connection) -> Trimmed | None:
    """What trimming removed so far (``None``: never anything, or a schema before trims)."""
    try:
        row = conn.execute(
            "SELECT at, before_ts, reason FROM journal_trims ORDER BY id DESC LIMIT 1"
        ).fetchone()
        total = _mark(conn, _REMOVED)
    except sqlite3.OperationalError:  # no such table: a state DB of an older setpoint
        return None
    if row is None:
        return None
    return Trimmed(at=row[0], before=row[1], removed=int(total), reason=row[2])


# -- batches (each runs inside one write transaction) -----------------------------------


def _trim_entries(
    conn: sqlite3.Connection, *, policy: Retention, cut: float, batch: int, run: _Run
) -> tuple[int, bool]:
    lo, hi = conn.execute(_BOUNDS).fetchone()
    if lo is None:
        return 0, False
    window = lo + batch
    # Keep ids >= count_cut: the newest max_entries.
    count_cut = hi - policy.max_entries + 1
    (young,) = conn.execute(
        "SELECT min(id) FROM journal WHERE id >= ? AND id < ? AND ts >= ?", (lo, window, cut)
    ).fetchone()
    age_front = window if young is None else young
    end = min(window, max(age_front, count_cut), hi)  # remove ids < end; never the newest
    if end <= lo:
        return 0, False
    for reason, applies in (
        (f"maxAgeDays {policy.max_age_days:g}", age_front > lo),
        (f"maxEntries {policy.max_entries:,}", count_cut > lo),
    ):
        if applies and reason not in run.reasons:
            run.reasons.append(reason)
    removed = conn.execute("DELETE FROM journal WHERE id < ?", (end,)).rowcount
    (before,) = conn.execute(
        "SELECT ts FROM journal WHERE id >= ? ORDER BY id LIMIT 1", (end,)
    ).fetchone()
    reason = ", ".join(run.reasons)
    if run.row is None:
        cur = conn.execute(
            "INSERT INTO journal_trims (at, before_ts, through_id, removed, reason) "
            "VALUES (?, ?, ?, ?, ?)",
            (run.at, before, end - 1, removed, reason),
        )
        run.row = cur.lastrowid
        conn.execute("DELETE FROM journal_trims WHERE id <= ?", ((run.row or 0) - KEEP_TRIM_ROWS,))
    else:
        conn.execute(
            "UPDATE journal_trims SET before_ts = ?, through_id = ?, removed = removed + ?, "
            "reason = ? WHERE id = ?",
            (before, end - 1, removed, reason, run.row),
        )
    _add_mark(conn, _REMOVED, removed)
    return removed, end < hi and (young is None or end < count_cut)


def _drop_diffs(conn: sqlite3.Connection, *, cut: float, batch: int) -> tuple[int, bool]:
    lo, hi = conn.execute(_BOUNDS).fetchone()
    if lo is None:
        return 0, False
    start = max(int(_mark(conn, _DIFFS_THROUGH)) + 1, lo)
    if start > hi:
        return 0, False
    window = start + batch
    (young,) = conn.execute(
        "SELECT min(id) FROM journal WHERE id >= ? AND id < ? AND ts >= ?", (start, window, cut)
    ).fetchone()
    end = min(window, hi + 1) if young is None else young
    if end <= start:
        return 0, False
    # instr() first: only entries that may hold a diff are parsed as JSON.
    dropped = conn.execute(
        "UPDATE journal SET detail = json_set(json_remove(detail, '$.diff'), "
        "'$.diff_dropped', json('true')) WHERE id >= ? AND id < ? "
        "AND instr(detail, '\"diff\"') > 0 AND json_type(detail, '$.diff') IS NOT NULL",
        (start, end),
    ).rowcount
    _set_mark(conn, _DIFFS_THROUGH, end - 1)
    _add_mark(conn, _DIFFS_DROPPED, dropped)
    return dropped, young is None and end <= hi


def _vacuum(conn: sqlite3.Connection) -> None:
    """Give the pages a batch freed back to the file system, in a transaction of its own.

    A no-op on a file without incremental auto-vacuum. executescript, not execute:
    the pragma frees one page per step, and execute() steps it only once.
    """
    conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES:d})")


def _due(conn: sqlite3.Connection, *, policy: Retention, now: float) -> bool:
    lo, hi = conn.execute(_BOUNDS).fetchone()
    if lo is None:
        return False
    if hi - lo + 1 > policy.max_entries:
        return True
    (oldest,) = conn.execute("SELECT ts FROM journal WHERE id = ?", (lo,)).fetchone()
    if lo < hi and oldest < now - policy.max_age_days * DAY:
        return True
    start = max(int(_mark(conn, _DIFFS_THROUGH)) + 1, lo)
    row = conn.execute(
        "SELECT ts FROM journal WHERE id >= ? ORDER BY id LIMIT 1", (start,)
    ).fetchone()
    return row is not None and row[0] < now - policy.diff_max_age_days * DAY


def _mark(conn: sqlite3.Connection, name: str) -> float:
    row = conn.execute("SELECT value FROM journal_marks WHERE name = ?", (name,)).fetchone()
    return 0.0 if row is None else float(row[0])


def _set_mark(conn: sqlite3.Connection, name: str, value: float) -> None:
    conn.execute(
        "INSERT INTO journal_marks (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def _add_mark(conn: sqlite3.Connection, name: str, add: float) -> None:
    conn.execute(
        "INSERT INTO journal_marks (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, add),
    )
