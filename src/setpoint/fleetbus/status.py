"""The fleet's status in the JetStream key-value bucket ``setpoint-status``.

One entry per (host, stack), key ``HOST.STACK``. Key tokens may hold only
``[A-Za-z0-9_-]`` here, so HOST is escaped reversibly: ``_`` becomes ``__`` and every
other character outside ``[A-Za-z0-9-]`` (the dots of a domain name above all) becomes
``_XX`` (its hex code, upper case): ``web-1.eu.example`` → ``web-1_2Eeu_2Eexample``.
Stack names (``[a-z0-9_-]``) are used as they are. The value is JSON (:class:`Entry`).

Written by :class:`setpoint.fleetbus.bus.FleetBus` (each agent, its own stacks: on every
change and at least every ``heartbeatSeconds``); read by ``setpoint fleet status|watch``
(:mod:`setpoint.fleetbus.table`) and by whatever waits on other hosts (a rollout's
waves). An entry whose heartbeat is older than :data:`STALE_PERIODS` of its own period
is *unknown*: its agent, or its link to NATS, is gone.

The JetStream context is passed in (:func:`read_all`), so this module never imports
``nats`` itself.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from setpoint.model.status import Health, StackStatus

BUCKET = "setpoint-status"
STALE_PERIODS = 3
_KEEP = re.compile(r"[A-Za-z0-9-]")


def escape_host(host: str) -> str:
    """A host name as one key token (reversible, see the module docstring)."""
    out = []
    for ch in host:
        if ch == "_":
            out.append("__")
        elif _KEEP.fullmatch(ch):
            out.append(ch)
        else:
            out.append("".join(f"_{b:02X}" for b in ch.encode()))
    return "".join(out)


def unescape_host(token: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == "_" and token[i + 1 : i + 2] == "_":
            raw += b"_"
            i += 2
        elif ch == "_":
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += ch.encode()
            i += 1
    return raw.decode()


def status_key(host: str, stack: str) -> str:
    return f"{escape_host(host)}.{stack}"


def parse_key(key: str) -> tuple[str, str]:
    """``(host, stack)`` of a key (ValueError if it is not one of ours)."""
    token, sep, stack = key.partition(".")
    if not sep or not token or not stack:
        raise ValueError(f"not a status key: {key!r}")
    return unescape_host(token), stack


@dataclass
class Entry:
    """One stack on one host, as the fleet sees it."""

    host: str
    stack: str
    labels: dict[str, str] = field(default_factory=dict)
    revision: str | None = None  # the revision in force (applied)
    fetched: str | None = None  # the newest revision fetched (may be refused or waiting)
    ready: bool = False
    healthy: bool = False
    stalled: bool = False
    reason: str = ""
    message: str = ""
    drifted: int = 0
    failed: int = 0
    last_pass: float | None = None
    ready_since: float | None = None  # Ready and Healthy at ``revision`` since then
    heartbeat: float = 0.0
    period: float = 30.0  # the writer's heartbeatSeconds

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    def same_state(self, other: Entry | None) -> bool:
        """Equal but for the heartbeat and the last pass's time: no need to write before the
        next heartbeat (a pass that found nothing to do, such as the re-check after the
        agent's own write, changes only ``last_pass``)."""
        if other is None:
            return False
        a, b = asdict(self), asdict(other)
        for key in ("heartbeat", "last_pass"):
            a.pop(key)
            b.pop(key)
        return a == b

    def age(self, now: float) -> float:
        return max(now - self.heartbeat, 0.0)

    def stale(self, now: float) -> bool:
        """Unknown: no heartbeat for :data:`STALE_PERIODS` of the writer's period."""
        return self.age(now) > STALE_PERIODS * self.period


def decode_entry(data: bytes) -> Entry | None:
    """The entry in a bucket value, or None if it is not one (a foreign or damaged value)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    known = Entry.__dataclass_fields__
    try:
        return Entry(**{k: v for k, v in obj.items() if k in known})
    except TypeError:
        return None


def entry_for(
    host: str,
    labels: Mapping[str, str],
    st: StackStatus,
    prev: Entry | None,
    now: float,
    period: float,
) -> Entry:
    """The entry for a stack's stored status; ``prev`` (ours, last written) keeps ready_since."""
    ready_c = st.condition("Ready")
    stalled_c = st.condition("Stalled")
    ready = bool(ready_c and ready_c.status)
    healthy = all(h.get("health") == Health.HEALTHY for h in st.health.values())
    reason = (stalled_c.reason if stalled_c and stalled_c.status else None) or (
        ready_c.reason if ready_c else ""
    )
    message = ready_c.message if ready_c and not ready else ""
    revision = st.applied_revision
    since: float | None = None
    if ready and healthy and revision:
        if prev is not None and prev.revision == revision and prev.ready_since is not None:
            since = prev.ready_since
        else:
            # Not the Ready condition's ``since``: it does not move when a new revision
            # is applied without a failure in between. The bus seeds ``prev`` from the
            # bucket at start, so an agent restart does not restart the clock.
            since = now
    return Entry(
        host=host,
        stack=st.stack,
        labels=dict(labels),
        revision=revision,
        fetched=st.fetched_revision,
        ready=ready,
        healthy=healthy,
        stalled=bool(stalled_c and stalled_c.status),
        reason=str(reason or ""),
        message=message[:500],
        drifted=int(st.counts.get("drifted", 0)),
        failed=int(st.counts.get("failed", 0)),
        last_pass=st.last_pass,
        ready_since=since,
        heartbeat=now,
        period=period,
    )


async def read_all(js: Any, keys: str = ">", timeout: float = 10.0) -> dict[str, Entry]:
    """Every entry whose key matches ``keys`` (a subject pattern), by key: all or an error.

    One ordered consumer, not one request per key. The read does not stop at the
    client's "initial values done" marker, nor trust the server's pending count: while
    hosts keep writing, a key rewritten during the read loses its older message and
    both come early (the rollout work measured 15% short reads). So the stream is
    asked which keys exist, and the read goes on until each has been seen.
    ``KeyValue.keys(filters=...)`` is not used: nats-server 2.9 ignores the filter.
    Raises nats errors (``nats.errors.TimeoutError`` when the server is too slow).
    """
    prefix = f"$KV.{BUCKET}."
    info = await js.stream_info(f"KV_{BUCKET}", subjects_filter=prefix + keys)
    expected = {s[len(prefix):] for s in info.state.subjects or {}}
    out: dict[str, Entry] = {}
    if not expected:
        return out
    kv = await js.key_value(BUCKET)
    watcher = await kv.watch(keys)
    try:
        while expected:
            e = await watcher.updates(timeout=timeout)
            if e is None:
                continue  # the client's own marker: not trusted (see above)
            expected.discard(e.key)
            if e.value is None or e.operation is not None:
                out.pop(e.key, None)  # deleted or purged
                continue
            entry = decode_entry(e.value)
            if entry is not None:
                out[e.key] = entry
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
    return out
