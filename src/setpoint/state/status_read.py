"""Reading the stored stack statuses: the status table's queries, the document decoding
and the schema version check, with nothing but ``sqlite3``, ``json`` and ``model.status``.

Callers: :class:`setpoint.state.StateDB` (``load_status``, ``all_status``, and its
version check on open), the API's read-only ``obs.views.StateReader``, and
``setpoint status`` without a running agent (:func:`read_statuses`, from
``setpoint.cli_fast``). That command must start in <= 80 ms, so this module stays
off :mod:`setpoint.state.db` (threading, the journal's dataclasses, the migrations)
and off ``dataclasses``/``typing``/``pathlib``; the schema itself lives in ``db.py``,
which imports :data:`SCHEMA_VERSION` and :data:`DB_NAME` from here.
"""

from __future__ import annotations

import json
import os
import sqlite3

from setpoint.model.status import StackStatus

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

DB_NAME = "setpoint.db"
# The schema version this setpoint writes: db._MIGRATIONS holds one entry per version.
SCHEMA_VERSION = 4

SELECT_ALL = "SELECT doc FROM status ORDER BY stack"
SELECT_ONE = "SELECT doc FROM status WHERE stack = ?"
_STATUS_FIELDS = frozenset(StackStatus.FIELDS)


def too_new(path: object, version: int) -> str | None:
    """What is wrong with a state DB of schema ``version`` for this setpoint, or None."""
    if version <= SCHEMA_VERSION:
        return None
    return (
        f"{path} has schema version {version}, newer than this setpoint "
        f"understands ({SCHEMA_VERSION}); upgrade setpoint or use another state dir"
    )


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def status_from_doc(doc: str) -> StackStatus:
    """One stored status document as a :class:`StackStatus`."""
    data: dict[str, Any] = json.loads(doc)
    # Drop fields this version does not know (a document written by a newer
    # setpoint) rather than failing to show any status at all.
    return StackStatus.from_json({k: v for k, v in data.items() if k in _STATUS_FIELDS})


def all_statuses(conn: sqlite3.Connection) -> list[StackStatus]:
    """Every stored stack status, sorted by stack name (the caller serialises ``conn``)."""
    return [status_from_doc(row[0]) for row in conn.execute(SELECT_ALL).fetchall()]


def read_statuses(state_dir: str | os.PathLike[str]) -> list[StackStatus]:
    """Every stack status stored in ``state_dir``'s DB (which must exist), read and closed.

    A plain connection and no set-up: no WAL switch, no migration (the status table
    is the same since schema 1, and a command that only reads should not write), and
    not read-only (``mode=ro`` would leave ``-wal``/``-shm`` files behind, with this
    user as owner, where an agent of another user would later fail on them). A file
    never initialised (version 0) holds no status. SetpointError for a newer schema.
    """
    path = os.path.join(state_dir, DB_NAME)
    conn = sqlite3.connect(path, timeout=10.0)
    try:
        version = user_version(conn)
        problem = too_new(path, version)
        if problem is not None:
            from pathlib import PurePath

            from setpoint.model.errors import SetpointError

            problem = too_new(PurePath(path), version)  # the path as StateDB names it

            raise SetpointError(problem)
        return all_statuses(conn) if version else []
    finally:
        conn.close()
