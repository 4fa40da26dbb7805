"""The agent's state database: inventory, journal and status in one SQLite file.

Callers: the engine writes (``record_outcome`` after every confirmed apply or
delete, ``append`` for events that change no inventory, ``save_status`` at the
end of a pass) and reads the inventory (what prune may delete, who owns a
path); the CLI and the API read ``history`` and ``all_status``. Failures a retry
repeats go through ``record_repeat`` (counted on one entry); journal retention
(:mod:`setpoint.state.retention`) trims through ``run_batch`` and ``use``.

Durability: the file runs in WAL mode with ``synchronous=NORMAL``. A commit is
atomic and survives a crash of the process; after a power loss the last few
commits may be missing, but never half of one. Because ``record_outcome``
writes the inventory change and its journal entries in one transaction, the
journal and the inventory always agree, whatever was lost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from setpoint.model.errors import SetpointError
from setpoint.model.status import StackStatus
from setpoint.state.journal import REPEATABLE, JournalEntry, cap_text, encode_detail
from setpoint.state.status_read import (
    DB_NAME,
    SCHEMA_VERSION,
    SELECT_ONE,
    all_statuses,
    status_from_doc,
    too_new,
    user_version,
)

__all__ = ["DB_NAME", "SCHEMA_VERSION", "InventoryRecord", "StateDB"]
# How long a writer waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 10_000
# The WAL file is cut back to this size after a checkpoint (a big transaction grew it).
WAL_SIZE_LIMIT = 8 << 20
_T = TypeVar("_T")

# _MIGRATIONS[v] takes the schema from version v-1 to v. Version 0 is an empty
# file. Append new versions; never edit a released one.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE inventory (
            stack      TEXT NOT NULL,
            resource   TEXT NOT NULL,
            kind       TEXT NOT NULL,
            path       TEXT NOT NULL,
            location   TEXT NOT NULL,
            digest     TEXT NOT NULL,
            revision   TEXT NOT NULL,
            applied_at REAL NOT NULL,
            prune      INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (stack, resource)
        ) WITHOUT ROWID""",
        # id is the rowid: max + 1, so ids only grow as long as the newest entry
        # is never deleted (any future trimming must delete oldest first), which
        # makes an id a safe cursor for readers following the journal. Not
        # AUTOINCREMENT: its bookkeeping row made every append 30% slower.
        """CREATE TABLE journal (
            id       INTEGER PRIMARY KEY,
            ts       REAL NOT NULL,
            stack    TEXT NOT NULL,
            event    TEXT NOT NULL,
            revision TEXT,
            resource TEXT,
            message  TEXT NOT NULL,
            detail   TEXT NOT NULL
        )""",
        "CREATE INDEX journal_stack ON journal (stack, id)",
        """CREATE TABLE status (
            stack TEXT PRIMARY KEY,
            doc   TEXT NOT NULL
        ) WITHOUT ROWID""",
    ),
    # The provider seam (issue 11): every claim of a resource, what its provider needs to
    # delete it, and its resolved dependencies (prune order). "" in a row written before:
    # claims = (path,), record = {"path": path}, deps = () (see _record).
    2: (
        "ALTER TABLE inventory ADD COLUMN claims TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE inventory ADD COLUMN record TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE inventory ADD COLUMN deps TEXT NOT NULL DEFAULT ''",
    ),
}

# -- schema for journal retention and repeated entries (state/retention.py) -------------
# The events that may repeat (journal.REPEATABLE), as SQL; a constant, never formatted.
_REPEAT_WHERE = "event IN ('failure', 'source.failed', 'pass')"
# Self-contained, so it composes with other migrations: renumber it if another lands first.
_RETENTION_SCHEMA: tuple[str, ...] = (
    # A failure repeated on every retry is one entry: how many times, and the last time.
    "ALTER TABLE journal ADD COLUMN count INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE journal ADD COLUMN last_at REAL",
    # Finds the entry a repeat counts on; partial (only repeatable events), so small.
    # Queries repeat _REPEAT_WHERE word for word: SQLite matches it as a term to use it.
    "CREATE INDEX journal_repeats ON journal (stack, event, resource, id) WHERE "
    + _REPEAT_WHERE,
    # One row per trim run (bounded): what `setpoint history` says was trimmed.
    """CREATE TABLE journal_trims (
        id         INTEGER PRIMARY KEY,
        at         REAL NOT NULL,
        before_ts  REAL NOT NULL,
        through_id INTEGER NOT NULL,
        removed    INTEGER NOT NULL,
        reason     TEXT NOT NULL
    )""",
    # Named counters of the trimmer (how far diffs were dropped, ...).
    "CREATE TABLE journal_marks (name TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID",
)
_MIGRATIONS[3] = _RETENTION_SCHEMA

# -- schema for the settled record (engine/settled.py) ---------------------------------
# A counter that every change of the inventory moves, whoever makes it (a pass, prune,
# forget, a hand-over): a one-shot run compares it with the one its settled record
# saw, which costs one row read instead of reading the whole inventory.
_GENERATION_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE generations (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO generations VALUES ('inventory', 0)",
    # Whole statements spelled out (as everywhere here): no SQL is ever formatted.
    "CREATE TRIGGER inventory_insert AFTER INSERT ON inventory BEGIN "
    "UPDATE generations SET value = value + 1 WHERE name = 'inventory'; END",
    "CREATE TRIGGER inventory_update AFTER UPDATE ON inventory BEGIN "
    "UPDATE generations SET value = value + 1 WHERE name = 'inventory'; END",
    "CREATE TRIGGER inventory_delete AFTER DELETE ON inventory BEGIN "
    "UPDATE generations SET value = value + 1 WHERE name = 'inventory'; END",
)
_MIGRATIONS[4] = _GENERATION_SCHEMA
# SCHEMA_VERSION lives in status_read.py (which `setpoint status` loads alone): bump it there.
assert max(_MIGRATIONS) == SCHEMA_VERSION, "status_read.SCHEMA_VERSION is not the last migration"

# Whole statements spelled out (no formatting): every value is a bound parameter.
_SELECT_RECORDS = (
    "SELECT stack, resource, kind, path, location, digest, revision, applied_at, prune, "
    "claims, record, deps FROM inventory"
)
_UPSERT_RECORD = (
    "INSERT INTO inventory (stack, resource, kind, path, location, digest, revision, applied_at, "
    "prune, claims, record, deps) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (stack, resource) DO UPDATE SET kind = excluded.kind, path = excluded.path, "
    "location = excluded.location, digest = excluded.digest, revision = excluded.revision, "
    "applied_at = excluded.applied_at, prune = excluded.prune, claims = excluded.claims, "
    "record = excluded.record, deps = excluded.deps"
)
_DELETE_RECORD = "DELETE FROM inventory WHERE stack = ? AND resource = ?"
_INSERT_ENTRY = (
    "INSERT INTO journal (ts, stack, event, revision, resource, message, detail) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# The newest repeatable entry of (stack, event, resource); the first term selects the
# partial index journal_repeats.
_LAST_REPEATABLE = (
    "SELECT id, message, ts, count FROM journal WHERE " + _REPEAT_WHERE + " "  # noqa: S608
    "AND stack = ? AND event = ? AND resource IS ? ORDER BY id DESC LIMIT 1"
)


@dataclass(frozen=True)
class InventoryRecord:
    """One resource a stack has applied, and therefore owns (what prune may delete).

    ``resource`` is the id ``Kind/name``; ``path`` is its first claim (shown to
    operators; "" if none) and ``claims`` every key it owns (paths, ``release:NAME``,
    ``postgres://...``: conflicts are checked on each); ``location`` is
    ``file.yaml:12`` where it was declared; ``digest`` is the :attr:`Resource.digest`
    of the declaration applied and ``revision`` the commit that last changed that
    declaration; ``prune`` is false when the declaration was labelled
    ``setpoint/prune: disabled`` (kept, not deleted, when it leaves Git); ``record``
    is what its provider needs to delete it (``Provider.record``, JSON, no secrets);
    ``deps`` the ids it depended on when applied (prune deletes dependents first).
    """

    stack: str
    resource: str
    kind: str
    path: str
    location: str
    digest: str
    revision: str
    applied_at: float
    prune: bool = True
    claims: tuple[str, ...] = ()
    record: dict[str, Any] = field(default_factory=dict)
    deps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Built without claims or a delete record (old callers, rows from before schema
        # 2): it claims its path, and its provider deletes from ``{"path": path}``.
        if self.path:
            if not self.claims:
                object.__setattr__(self, "claims", (self.path,))
            if not self.record:
                object.__setattr__(self, "record", {"path": self.path})


class StateDB:
    """The state database in ``state_dir/setpoint.db``, created (with its directory) if missing.

    The directory is created with mode 0700 and the file with mode 0600: the
    journal holds diffs of managed files, which may be secrets.

    Threads: one object owns one SQLite connection, and that connection is used
    by one thread at a time. Every method holds an internal lock for its whole
    duration, so the agent's worker thread and the API thread may share one
    ``StateDB``; a call waits while another thread's call runs (they are short).
    Other processes (``setpoint history`` while the agent runs) may open the
    same file: WAL lets them read while the agent writes.

    Example::

        db = StateDB(Path("/var/lib/setpoint"))
        db.record_outcome(records=[rec], entries=[JournalEntry(time.time(), "base", "apply")])
        db.inventory("base")["File/motd"].digest
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        if not self.state_dir.is_dir():
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.state_dir, 0o700)  # mkdir's mode is filtered by the umask
        self.path = self.state_dir / DB_NAME
        # Create the file ourselves so SQLite never creates it with the umask's
        # mode; SQLite gives the -wal and -shm files the database file's mode.
        # O_EXCL: never open (and close) an existing file here, as closing any descriptor
        # of it drops every POSIX lock this process holds on it, those of another
        # connection of this process too (the agent's retention trim has its own).
        with suppress(FileExistsError):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        # Told of the journal entries of each commit (ids filled in), in id order, after
        # the commit and still under the lock (the agent's event stream, logs and
        # metrics). It must be quick and must not call back into this object.
        self.on_journal: Callable[[list[JournalEntry]], None] | None = None
        # isolation_level=None: no implicit transactions; _write() issues
        # BEGIN IMMEDIATE/COMMIT itself so a transaction is exactly one call.
        self._conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            # Before WAL (which writes the header): a new file gives trimmed pages back to
            # the file system (state/retention.py); an existing file keeps its mode.
            self._conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SetpointError(f"{self.path}: cannot switch the database to WAL mode")
            # NORMAL in WAL mode: no fsync per commit, still never corrupt.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT:d}")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; later calls raise ``sqlite3.ProgrammingError``."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _migrate(self) -> None:
        version = user_version(self._conn)
        problem = too_new(self.path, version)
        if problem is not None:
            raise SetpointError(problem)
        if version == SCHEMA_VERSION:
            return
        with self._write():
            # Read again under the write lock: another process may have migrated meanwhile.
            version = user_version(self._conn)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    self._conn.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer constant.
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or none of it.

        IMMEDIATE takes the write lock up front, so a concurrent writer in another
        process makes us wait (busy_timeout) instead of failing half-way.
        """
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- inventory -------------------------------------------------------------

    def changed_elsewhere(self) -> int:
        """A counter that moves when another connection commits (SQLite's data_version).

        The engine keeps an in-memory copy of the inventory and reloads it only
        when this moves: its own writes do not move it.
        """
        with self._lock:
            row = self._conn.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def inventory_generation(self) -> int:
        """A counter every committed change of the inventory moves (schema triggers)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM generations WHERE name = 'inventory'"
            ).fetchone()
        return int(row[0])

    def inventory(self, stack: str) -> dict[str, InventoryRecord]:
        """What ``stack`` owns, keyed by resource id."""
        with self._lock:
            rows = self._conn.execute(
                _SELECT_RECORDS + " WHERE stack = ? ORDER BY resource", (stack,)
            ).fetchall()
        return {row[1]: _record(row) for row in rows}

    def owners_by_path(self) -> dict[str, InventoryRecord]:
        """Every claimed key (every claim of every record), across all stacks, with its owner.

        For the engine's cross-stack conflict check. Records without a claim are
        left out. Should two records claim one key (the conflict check exists to
        prevent that), the one applied first is returned.
        """
        with self._lock:
            rows = self._conn.execute(
                _SELECT_RECORDS + " WHERE path != '' ORDER BY applied_at, stack, resource"
            ).fetchall()
        owners: dict[str, InventoryRecord] = {}
        for row in rows:
            rec = _record(row)
            for key in rec.claims:
                owners.setdefault(key, rec)
        return owners

    def stack_sizes(self) -> dict[str, int]:
        """Every stack this state DB knows (inventory or status rows): how many resources it owns.

        For the engine's orphan check (stacks the config no longer names). A stack
        with a status row and no inventory owns 0.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT stack, COUNT(*) FROM inventory GROUP BY stack "
                "UNION ALL SELECT stack, 0 FROM status"
            ).fetchall()
        sizes: dict[str, int] = {}
        for stack, count in rows:
            sizes[stack] = max(sizes.get(stack, 0), int(count))
        return sizes

    def record_outcome(
        self,
        records: Sequence[InventoryRecord] = (),
        removed: Sequence[tuple[str, str]] = (),
        entries: Sequence[JournalEntry] = (),
    ) -> None:
        """In one transaction: upsert ``records``, delete the ``removed`` (stack, resource)
        pairs, append ``entries`` to the journal.

        Called after each confirmed apply or delete, so that after a crash the
        journal and the inventory never disagree. Deletions run after the upserts
        (a pair in both ends up removed). If anything fails (an entry whose detail
        is not JSON, a value SQLite cannot store), nothing is written.
        """
        # Encode before taking the lock: a bad detail fails here, before any write,
        # and the JSON work does not block the other thread.
        journal_rows = [_entry_row(e) for e in entries]
        last = 0
        with self._lock:
            with self._write() as conn:
                if records:
                    conn.executemany(_UPSERT_RECORD, [_record_row(r) for r in records])
                if removed:
                    conn.executemany(_DELETE_RECORD, removed)
                if journal_rows:
                    conn.executemany(_INSERT_ENTRY, journal_rows)
                    # Ids are max + 1 under our write lock: this commit's rows are consecutive.
                    last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
            if journal_rows and self.on_journal is not None:
                first = last - len(journal_rows) + 1
                self.on_journal(
                    [dataclasses.replace(e, id=first + i) for i, e in enumerate(entries)]
                )

    # -- journal ---------------------------------------------------------------

    def append(self, *entries: JournalEntry) -> None:
        """Append entries to the journal (all or none)."""
        self.record_outcome(entries=entries)

    def history(
        self,
        stack: str | None = None,
        limit: int = 100,
        events: Collection[str] | None = None,
        after_id: int | None = None,
    ) -> list[JournalEntry]:
        """Journal entries, oldest first (newest last), filtered by stack and event names.

        Without ``after_id``: the latest ``limit`` entries. With ``after_id``: the
        first ``limit`` entries after that id, so a reader following the journal
        pages forward without gaps (pass the last id it got).
        """
        if limit <= 0:
            return []
        params: list[Any] = []
        if stack is not None:
            params.append(stack)
        if events is not None:
            params.append(json.dumps(sorted(events)))
        if after_id is not None:
            params.append(after_id)
        params.append(limit)
        sql = _history_sql(stack is not None, events is not None, after_id is not None)
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        if after_id is None:
            rows.reverse()
        return [
            JournalEntry(
                id=row[0],
                ts=row[1],
                stack=row[2],
                event=row[3],
                revision=row[4],
                resource=row[5],
                message=row[6],
                detail=json.loads(row[7]),
                count=row[8],
                last_at=row[9],
            )
            for row in rows
        ]

    # -- repeated entries and retention (state/retention.py) --------------------

    def record_repeat(self, entry: JournalEntry, *, follows: bool) -> JournalEntry:
        """Journal ``entry``, or count it on the entry it repeats; return the stored entry.

        ``follows`` is the caller's word that nothing succeeded for this stack and
        resource since the last such entry (the previous pass failed it too). Then,
        if the newest entry of the same stack, event and resource has the same
        message, that entry's ``count`` goes up by one and its ``last_at`` becomes
        ``entry.ts`` (observers are not told again); otherwise ``entry`` is appended.
        Only the events in :data:`REPEATABLE` (failures, failed passes) may repeat.
        """
        if entry.event not in REPEATABLE:
            raise ValueError(f"journal event {entry.event!r} is not one that may repeat")
        row = _entry_row(entry)
        with self._lock:
            with self._write() as conn:
                found = (
                    conn.execute(_LAST_REPEATABLE, (entry.stack, row[2], entry.resource)).fetchone()
                    if follows
                    else None
                )
                if found is not None and found[1] == row[5]:
                    conn.execute(
                        "UPDATE journal SET count = count + 1, last_at = ? WHERE id = ?",
                        (entry.ts, found[0]),
                    )
                    return dataclasses.replace(
                        entry, id=found[0], ts=found[2], count=found[3] + 1, last_at=entry.ts
                    )
                conn.execute(_INSERT_ENTRY, row)
                stored = dataclasses.replace(
                    entry, id=int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
                )
            if self.on_journal is not None:
                self.on_journal([stored])
        return stored

    def run_batch(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` in one write transaction, under this object's lock.

        For :mod:`setpoint.state.retention`, whose trimming is many such short
        batches: another thread's call (a pass) waits for one batch at most.
        """
        with self._lock, self._write() as conn:
            return work(conn)

    def use(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` on this connection under this object's lock, outside a transaction
        (a read, or a statement in autocommit mode such as a vacuum step)."""
        with self._lock:
            return work(self._conn)

    # -- status ----------------------------------------------------------------

    def save_status(self, status: StackStatus) -> None:
        """Store ``status`` as its stack's one status document (replacing the previous one)."""
        doc = json.dumps(status.to_json(), separators=(",", ":"))
        with self._lock, self._write() as conn:
            conn.execute(
                "INSERT INTO status (stack, doc) VALUES (?, ?) "
                "ON CONFLICT (stack) DO UPDATE SET doc = excluded.doc",
                (status.stack, doc),
            )

    def load_status(self, stack: str) -> StackStatus | None:
        with self._lock:
            row = self._conn.execute(SELECT_ONE, (stack,)).fetchone()
        return None if row is None else status_from_doc(row[0])

    def all_status(self) -> list[StackStatus]:
        """Every stored stack status, sorted by stack name."""
        with self._lock:
            return all_statuses(self._conn)

    def delete_status(self, stack: str) -> None:
        """Forget a stack's status (the stack was removed from the configuration)."""
        with self._lock, self._write() as conn:
            conn.execute("DELETE FROM status WHERE stack = ?", (stack,))


def _record_row(r: InventoryRecord) -> tuple[Any, ...]:
    # Spelled out: dataclasses.astuple deep-copies and was half the cost of a call.
    # The common rows cost no JSON: one claim equal to the path, no deps, the record
    # {"path": path} are stored as "" (what rows written before version 2 hold too).
    claims = "" if r.claims == (r.path,) or not r.claims else json.dumps(list(r.claims))
    record = "" if r.record == {"path": r.path} else json.dumps(r.record, sort_keys=True)
    deps = json.dumps(list(r.deps)) if r.deps else ""
    return (
        r.stack, r.resource, r.kind, r.path, r.location, r.digest, r.revision, r.applied_at,
        int(r.prune), claims, record, deps,
    )


def _entry_row(entry: JournalEntry) -> tuple[Any, ...]:
    return (
        entry.ts,
        entry.stack,
        str(entry.event),
        entry.revision,
        entry.resource,
        cap_text(entry.message),
        encode_detail(entry),
    )


@cache
def _history_sql(by_stack: bool, by_events: bool, after: bool) -> str:
    """The history query for one combination of filters.

    Built only from the constant fragments below; every value is a bound
    parameter. One query per combination (rather than ``? IS NULL OR ...``) lets
    SQLite use the (stack, id) index.
    """
    where = ["1"]
    if by_stack:
        where.append("stack = ?")
    if by_events:
        where.append("event IN (SELECT value FROM json_each(?))")
    if after:
        where.append("id > ?")
    order = "ASC" if after else "DESC"
    return (
        "SELECT id, ts, stack, event, revision, resource, message, detail, count, last_at "
        "FROM journal WHERE " + " AND ".join(where) + f" ORDER BY id {order} LIMIT ?"
    )


def _record(row: tuple[Any, ...]) -> InventoryRecord:
    stack, resource, kind, path, location, digest, revision, applied_at, prune = row[:9]
    claims, record, deps = row[9:]
    return InventoryRecord(
        stack,
        resource,
        kind,
        path,
        location,
        digest,
        revision,
        applied_at,
        bool(prune),
        tuple(json.loads(claims)) if claims else ((path,) if path else ()),
        # A row written before records existed: its provider derives what to delete from
        # the path it claimed (``release:NAME`` -> the release NAME).
        json.loads(record) if record else {"path": path},
        tuple(json.loads(deps)) if deps else (),
    )
