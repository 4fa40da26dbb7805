"""What the API, the web UI and the metrics show of stacks and resources. Reads only.

A :class:`StateReader` has its own read-only SQLite connection to the state DB,
so the API's reads never wait on the lock the pass thread holds (WAL lets readers
run beside the writer). Resource sync states follow Argo CD: ``Synced``,
``OutOfSync`` (drifted, or a change pending), ``Missing`` (declared, never
applied), ``Failed``, ``Waiting`` (a dependency is not in place); health is the
provider's (services) or derived from the sync state.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from setpoint.model.status import StackStatus
from setpoint.state import JournalEntry
from setpoint.state.db import _SELECT_RECORDS, InventoryRecord, _record
from setpoint.state.retention import Trimmed, last_trim
from setpoint.state.status_read import DB_NAME, all_statuses

if TYPE_CHECKING:
    from setpoint.engine.controller import Controller

SYNC = {"drifted": "OutOfSync", "pending": "OutOfSync", "failed": "Failed", "waiting": "Waiting"}
SYNC_STATES = ("Synced", "OutOfSync", "Missing", "Failed", "Waiting")
PAGE_MAX = 500


class StateReader:
    """Read-only queries on ``STATE/setpoint.db`` (one connection, any thread, serialised)."""

    def __init__(self, state: Path) -> None:
        uri = (Path(state) / DB_NAME).resolve().as_uri() + "?mode=ro"
        self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def statuses(self) -> list[StackStatus]:
        with self._lock:
            return all_statuses(self._conn)

    def trimmed(self) -> Trimmed | None:
        """What journal retention removed so far (state/retention.py)."""
        with self._lock:
            return last_trim(self._conn)

    def inventory(self, stack: str) -> dict[str, InventoryRecord]:
        with self._lock:
            rows = self._conn.execute(_SELECT_RECORDS + " WHERE stack = ?", (stack,)).fetchall()
        return {r[1]: _record(r) for r in rows}

    def journal(
        self,
        *,
        stack: str | None = None,
        resource: str | None = None,
        events: list[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[JournalEntry]:
        """Entries matching every filter given: newest first, ids below ``before`` (a cursor);
        with ``after``: oldest first, ids above it (a stream catching up)."""
        # Each filter is a constant fragment with a bound parameter; NULL turns it off.
        sql = (
            "SELECT id, ts, stack, event, revision, resource, message, detail, count, last_at "
            "FROM journal "
            "WHERE (?1 IS NULL OR stack = ?1) AND (?2 IS NULL OR resource = ?2) "
            "AND (?3 IS NULL OR event IN (SELECT value FROM json_each(?3))) "
            "AND (?4 IS NULL OR ts >= ?4) AND (?5 IS NULL OR ts < ?5) "
            "AND (?6 IS NULL OR id < ?6) AND (?7 IS NULL OR id > ?7) "
        )
        sql += "ORDER BY id ASC LIMIT ?8" if after is not None else "ORDER BY id DESC LIMIT ?8"
        params = (
            stack,
            resource,
            json.dumps(events) if events else None,
            since,
            until,
            before,
            after,
            max(1, min(limit, PAGE_MAX)),
        )
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [
            JournalEntry(
                id=r[0], ts=r[1], stack=r[2], event=r[3], revision=r[4], resource=r[5],
                message=r[6], detail=json.loads(r[7]), count=r[8], last_at=r[9],
            )
            for r in rows
        ]  # fmt: skip


def stack_sync(st: StackStatus | None) -> str:
    if st is None or st.last_pass is None:
        return "Unknown"
    bad = set(st.resources.values())
    if "failed" in bad or "waiting" in bad:
        return "Failed"
    if bad:
        return "OutOfSync"
    stalled = st.condition("Stalled")
    return "OutOfSync" if stalled is not None and stalled.status else "Synced"


def stack_health(st: StackStatus | None) -> str:
    if st is None or st.last_pass is None:
        return "Unknown"
    healths = {h.get("health", "Unknown") for h in st.health.values()}
    ready = st.condition("Ready")
    if "Degraded" in healths or "failed" in st.resources.values():
        return "Degraded"
    if "Missing" in healths:
        return "Missing"
    if "Progressing" in healths:
        return "Progressing"
    return "Healthy" if ready is not None and ready.status else "Degraded"


def resource_views(
    ctl: Controller, reader: StateReader, stack: str, st: StackStatus | None
) -> list[dict[str, Any]]:
    """Every resource of ``stack``: declared (the desired state in force) and owned."""
    owned = reader.inventory(stack)
    desired = ctl.reconciler.enforced(stack)
    states = st.resources if st is not None else {}
    healths = st.health if st is not None else {}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    declared = list(desired.ordered.order) if desired is not None else []
    for r in declared:
        rec = owned.get(r.id)
        seen.add(r.id)
        out.append(
            _view(r.id, r.kind, r.name, rec, states.get(r.id), healths.get(r.id), str(r.location))
        )
    for rid, rec in sorted(owned.items()):
        if rid not in seen:
            # Owned but not in the desired state at hand: no pass yet in this agent, or a
            # prune that failed.
            kind, _, name = rid.partition("/")
            state = states.get(rid) or ("in_sync" if desired is None else "pending")
            out.append(_view(rid, kind, name, rec, state, healths.get(rid), rec.location))
    return out


def _view(
    rid: str,
    kind: str,
    name: str,
    rec: InventoryRecord | None,
    state: str | None,
    health: dict[str, str] | None,
    location: str,
) -> dict[str, Any]:
    if state in SYNC:
        sync = SYNC[state]
    elif rec is None or not rec.digest:
        sync = "Missing"
    else:
        sync = "Synced"
    if health is not None:
        h, msg = health.get("health", "Unknown"), health.get("message", "")
    else:
        h = {"Synced": "Healthy", "OutOfSync": "Healthy", "Missing": "Missing"}.get(
            sync, "Degraded" if sync == "Failed" else "Progressing"
        )
        msg = ""
    return {
        "id": rid,
        "kind": kind,
        "name": name,
        "path": rec.path if rec else "",
        "sync": sync,
        "health": h,
        "healthMessage": msg,
        "location": location,
        "revision": rec.revision if rec else None,
        "appliedAt": rec.applied_at if rec and rec.digest else None,
    }
