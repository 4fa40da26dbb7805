"""Journal entries: the history of what the agent saw and did.

Entries are appended, never edited, with two exceptions: a failure repeated on
every retry is counted on its entry (``count``, ``last_at``), and retention
(:mod:`setpoint.state.retention`) trims the oldest entries and old diffs.

The engine builds :class:`JournalEntry` values (one per fetched revision,
apply, drift found, revert, prune, failure, pass, ...) and hands them to
:class:`setpoint.state.StateDB`, which stores them; the CLI (``setpoint
history``) and the API read them back with ``StateDB.history``.

This module does no I/O. It owns the event names and the rule that keeps one
entry small: every string in ``detail`` (and the message) is capped, so a huge
diff or a runaway error text cannot bloat the database.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The longest string kept in an entry's message or in any ``detail`` value, in UTF-8 bytes.
MAX_TEXT_BYTES = 64 * 1024


class Event(enum.StrEnum):
    """The journal's event names. Entries store plain strings; these are the ones we write."""

    REVISION_FETCHED = "revision.fetched"
    REVISION_REFUSED = "revision.refused"
    APPLY = "apply"
    DRIFT = "drift"
    REVERT = "revert"
    PRUNE = "prune"
    FAILURE = "failure"
    PASS = "pass"  # noqa: S105 (a reconcile pass, not a password)
    SOURCE_FAILED = "source.failed"
    ORPHANED = "orphaned"  # a stack the config no longer names still owns resources
    HANDOVER = "handover"  # a path moved from one stack to another in one commit
    CLEANUP = "cleanup"  # a crash leftover of ours (a temporary file) removed
    FORGET = "forget"  # `setpoint forget`: a stack's inventory released, pruned or handed over
    EVENTS_LOST = "events.lost"  # a provider's event queue hit its bound: how many were lost


#: Events a retry may repeat: stored once, with a count and the time of the last try
#: (``StateDB.record_repeat``). Must match the partial index in ``state/db.py``.
REPEATABLE = frozenset({Event.FAILURE, Event.SOURCE_FAILED, Event.PASS})


@dataclass(frozen=True)
class JournalEntry:
    """One line of history.

    ``detail`` must be JSON-serialisable (e.g. ``{"diff": "...", "fields": [...]}``);
    ``id`` is ``None`` until the entry is stored, then the database's increasing id
    (usable as a cursor: ``history(after_id=...)``). ``count`` is how many times it
    happened (a failure repeated on every retry is one entry) and ``last_at`` the
    last time, when more than once.
    """

    ts: float
    stack: str
    event: str
    revision: str | None = None
    resource: str | None = None
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    count: int = 1
    last_at: float | None = None


def cap_text(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """``text`` unchanged if it fits in ``limit`` UTF-8 bytes, else cut with a visible marker.

    The result, marker included, never exceeds ``limit`` bytes, and a multi-byte
    character is never split.
    """
    # Cheap exit first: a str can't need more than 4 bytes per character.
    if len(text) * 4 <= limit:
        return text
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    marker = f"\n… [truncated: {len(raw)} bytes in all, first {{kept}} kept]"
    # Reserve room for the marker with its longest possible number filled in.
    room = limit - len(marker.format(kept=limit).encode())
    kept = raw[:room].decode("utf-8", "ignore")
    kept_len = len(kept.encode("utf-8", "surrogatepass"))
    return kept + marker.format(kept=kept_len)


def _cap_values(value: Any) -> Any:
    """A copy of ``value`` with every string capped (dict keys are left as they are)."""
    if isinstance(value, str):
        return cap_text(value)
    if isinstance(value, Mapping):
        return {k: _cap_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cap_values(v) for v in value]
    return value


def encode_detail(entry: JournalEntry) -> str:
    """The entry's ``detail`` as compact JSON with capped strings.

    Raises ``TypeError``/``ValueError`` (naming the event) when the detail is not
    plain JSON data: NaN and infinities are refused too, so every stored
    document is standard JSON that any reader of the database can parse.
    """
    try:
        try:
            # Most details are small: no string in them can need capping when the whole
            # document is that short (a string is no longer in JSON than in the detail).
            raw = json.dumps(
                entry.detail, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            )
            if len(raw) * 4 <= MAX_TEXT_BYTES:
                return raw
        except (TypeError, ValueError):
            pass  # a Mapping that is not a dict (the copy makes it one), NaN, a cycle: below
        return json.dumps(
            _cap_values(entry.detail), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
    except RecursionError as exc:  # a detail that contains itself
        raise ValueError(
            f"journal entry {entry.event!r} for stack {entry.stack!r}: detail is circular"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise type(exc)(
            f"journal entry {entry.event!r} for stack {entry.stack!r}: "
            f"detail is not JSON-serialisable: {exc}"
        ) from exc
