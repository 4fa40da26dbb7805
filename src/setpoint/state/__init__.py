"""Persistent state: the inventory, the journal and per-stack status, in SQLite.

The engine records confirmed outcomes here; the CLI and the API read them.
See :class:`StateDB` for the threading and durability rules.
"""

from setpoint.state.db import SCHEMA_VERSION, InventoryRecord, StateDB
from setpoint.state.journal import MAX_TEXT_BYTES, Event, JournalEntry

__all__ = [
    "MAX_TEXT_BYTES",
    "SCHEMA_VERSION",
    "Event",
    "InventoryRecord",
    "JournalEntry",
    "StateDB",
]
