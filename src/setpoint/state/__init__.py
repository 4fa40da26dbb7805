"""Persistent state: the inventory, the journal and per-stack status, in SQLite.

The engine records confirmed outcomes here; the CLI and the API read them.
See :class:`StateDB` for the threading and durability rules. The names load on
first use (PEP 562), so that ``setpoint status`` can import
:mod:`setpoint.state.status_read` alone (its start-up budget is 80 ms).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from setpoint.state.db import InventoryRecord, StateDB
    from setpoint.state.journal import MAX_TEXT_BYTES, Event, JournalEntry
    from setpoint.state.status_read import SCHEMA_VERSION

_LAZY = {
    "MAX_TEXT_BYTES": "journal",
    "SCHEMA_VERSION": "status_read",
    "Event": "journal",
    "InventoryRecord": "db",
    "JournalEntry": "journal",
    "StateDB": "db",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        return getattr(__import__(f"setpoint.state.{module}", fromlist=[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAX_TEXT_BYTES",
    "SCHEMA_VERSION",
    "Event",
    "InventoryRecord",
    "JournalEntry",
    "StateDB",
]
