"""The fleet table: status entries → rows (selector, staleness) → text or JSON. No I/O.

Used by ``setpoint fleet status`` and ``setpoint fleet watch``
(:mod:`setpoint.cli_fleetbus`). An entry whose heartbeat is older than three of its
writer's periods is *unknown* (its Ready is shown as ``?`` and given as null in JSON):
what it last said may no longer be true.

``--selector`` takes ``key=value``, ``key!=value``, ``key`` (exists) and ``!key``
(does not exist), comma-separated, all of which must hold; the labels are the host's
(configured labels and ``setpoint.io/`` facts) as its agent wrote them.

Example::

    rows = fleet_rows(entries.values(), now=time.time(), selector=parse_selector("role=web"))
    print(format_table(rows))
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from setpoint.fleetbus.status import Entry
from setpoint.render.selector import Selector


def parse_selector(text: str) -> Selector:
    """``role=web,wave!=3,canary,!drain`` → a :class:`Selector` (ValueError if malformed)."""
    labels: dict[str, str] = {}
    exprs: list[dict[str, Any]] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        if "!=" in part:
            key, _, value = part.partition("!=")
            exprs.append({"key": key.strip(), "operator": "NotIn", "values": [value.strip()]})
        elif "=" in part:
            key, _, value = part.partition("=")
            labels[key.strip()] = value.strip()
        elif part.startswith("!"):
            exprs.append({"key": part[1:].strip(), "operator": "DoesNotExist"})
        else:
            exprs.append({"key": part, "operator": "Exists"})
    try:
        return Selector.model_validate({"matchLabels": labels, "matchExpressions": exprs})
    except ValueError as exc:
        raise ValueError(
            f"--selector {text!r}: {exc}; give key=value, key!=value, key or !key, "
            "comma-separated"
        ) from None


@dataclass(frozen=True)
class Row:
    host: str
    stack: str
    revision: str | None
    ready: bool | None  # None: unknown (stale heartbeat)
    healthy: bool | None
    stalled: bool
    drifted: int
    failed: int
    age: float  # seconds since the entry's heartbeat
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "stack": self.stack,
            "revision": self.revision,
            "ready": self.ready,
            "drifted": self.drifted,
            "failed": self.failed,
            "age": round(self.age, 1),
            "healthy": self.healthy,
            "stalled": self.stalled,
            "unknown": self.ready is None,
            "reason": self.reason,
        }


def row_of(e: Entry, now: float) -> Row:
    unknown = e.stale(now)
    return Row(
        host=e.host,
        stack=e.stack,
        revision=e.revision,
        ready=None if unknown else e.ready,
        healthy=None if unknown else e.healthy,
        stalled=e.stalled,
        drifted=e.drifted,
        failed=e.failed,
        age=e.age(now),
        reason="no heartbeat for 3 periods: unknown" if unknown else e.reason,
    )


def fleet_rows(
    entries: Iterable[Entry], now: float | None = None, selector: Selector | None = None
) -> list[Row]:
    now = time.time() if now is None else now
    picked = [e for e in entries if selector is None or selector.matches(e.labels)]
    return sorted((row_of(e, now) for e in picked), key=lambda r: (r.host, r.stack))


def _ready_text(r: Row) -> str:
    if r.ready is None:
        return "?"
    if r.stalled:
        return "Stalled"
    return "True" if r.ready else "False"


def format_age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def format_row(r: Row) -> list[str]:
    return [r.host, r.stack, (r.revision or "(none)")[:12], _ready_text(r), str(r.drifted),
            str(r.failed), format_age(r.age), r.reason if r.ready is not True else ""]


HEADER = ["HOST", "STACK", "REVISION", "READY", "DRIFTED", "FAILED", "AGE", "REASON"]


def format_table(rows: list[Row]) -> str:
    """The hosts x stacks table, then one summary line per stack."""
    if not rows:
        return "no status in the fleet bucket (yet): no agent with nats: has reported"
    cells = [HEADER] + [format_row(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER) - 1)]
    lines = [
        "  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1]
        for c in cells
    ]
    lines = [ln.rstrip() for ln in lines]
    lines.append("")
    for stack in sorted({r.stack for r in rows}):
        mine = [r for r in rows if r.stack == stack]
        ready = sum(1 for r in mine if r.ready)
        unknown = sum(1 for r in mine if r.ready is None)
        revs: dict[str, int] = {}
        for r in mine:
            revs[(r.revision or "(none)")[:12]] = revs.get((r.revision or "(none)")[:12], 0) + 1
        at = ", ".join(f"{n} at {rev}" for rev, n in sorted(revs.items(), key=lambda x: -x[1]))
        lines.append(f"stack {stack}: {ready}/{len(mine)} Ready, {unknown} unknown; {at}")
    return "\n".join(lines)
