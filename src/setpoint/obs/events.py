"""The event stream behind ``GET /events``: journal entries as typed, numbered events.

Every journal entry the agent stores becomes an :class:`Event` whose id is the
entry's journal id (ids only grow), so a client that reconnects with
``Last-Event-ID`` gets exactly what it missed: from the ring buffer if it still
holds it, else from the journal itself (see :mod:`setpoint.api.events`).

``publish`` is called from whichever thread wrote the journal (in id order, under
the state DB's lock); subscribers live in an asyncio loop and are woken with
``call_soon_threadsafe``. A subscriber that falls ``QUEUE`` events behind is cut
off; it reconnects and resumes from its last id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from setpoint.state import JournalEntry
from setpoint.state.journal import cap_text, encode_detail

RING = 2000  # events kept in memory for resuming clients
QUEUE = 1000  # events a slow subscriber may lag before it is cut off

# Journal event name -> stream event type (the SSE ``event:`` field). Others keep their name.
TYPES = {
    "pass": "pass",
    "apply": "apply",
    "drift": "drift",
    "revert": "revert",
    "failure": "failure",
    "source.failed": "failure",
    "fleet.refused": "failure",
    "revision.refused": "stall",
}


def event_type(entry: JournalEntry) -> str:
    return TYPES.get(str(entry.event), str(entry.event))


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: str  # JSON text of :func:`entry_json`


def entry_json(entry: JournalEntry) -> dict[str, Any]:
    """An entry as the API and the stream show it (strings capped like the journal's)."""
    detail = json.loads(encode_detail(entry)) if entry.detail else {}
    return {
        "id": entry.id,
        "ts": entry.ts,
        "type": event_type(entry),
        "event": str(entry.event),
        "stack": entry.stack,
        "resource": entry.resource,
        "revision": entry.revision,
        "message": cap_text(entry.message),
        "detail": detail,
        "count": entry.count,  # > 1: a failure repeated on every retry, journaled once
        "lastAt": entry.last_at,
    }


def to_event(entry: JournalEntry) -> Event:
    assert entry.id is not None
    data = json.dumps(entry_json(entry), separators=(",", ":"), ensure_ascii=False)
    return Event(entry.id, event_type(entry), data)


class Subscription:
    """One client's queue; ``closed`` once it fell too far behind."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE)
        self.closed = asyncio.Event()

    def _put(self, ev: Event) -> None:  # in the subscriber's loop
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            self.closed.set()


class EventBus:
    def __init__(self, size: int = RING) -> None:
        self._ring: collections.deque[Event] = collections.deque(maxlen=size)
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self.published = 0

    def publish(self, entries: Iterable[JournalEntry]) -> None:
        """Any thread: add stored entries (ids set) to the ring and wake the subscribers."""
        events = [to_event(e) for e in entries if e.id is not None]
        with self._lock:
            self._ring.extend(events)
            self.published += len(events)
            subs = list(self._subs)
        for sub in subs:
            for ev in events:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    sub.loop.call_soon_threadsafe(sub._put, ev)

    def subscribe(self) -> Subscription:
        sub = Subscription(asyncio.get_running_loop())
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def since(self, after: int) -> list[Event] | None:
        """The events after id ``after`` if the ring still holds them all, else None."""
        with self._lock:
            if not self._ring:
                return None
            first = self._ring[0].id
            if after < first - 1:
                return None
            return [e for e in self._ring if e.id > after]

    @property
    def last_id(self) -> int | None:
        with self._lock:
            return self._ring[-1].id if self._ring else None
