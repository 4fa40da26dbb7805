"""Outcome values of a pass: per resource and per stack. No I/O.

Produced by :mod:`setpoint.engine.reconciler`; read by the status writer, the
CLI (plan/apply output, exit codes) and the agent's scheduler (retry or not).
:func:`result_json` is the JSON form the CLI (``--json``) and the agent's
``/sync`` answer share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from setpoint.model.plan import Change

# ResourceOutcome.state values
IN_SYNC = "in_sync"
CHANGED = "changed"  # a new or changed declaration was applied
REVERTED = "reverted"  # drift found and undone
DRIFTED = "drifted"  # drift found and left (report mode, or plan)
PENDING = "pending"  # plan only: a change would be made
FAILED = "failed"
WAITING = "waiting"  # a dependency failed or is not in place


@dataclass
class ResourceOutcome:
    resource: str
    state: str
    change: Change | None = None
    error: str | None = None
    stall: str = ""  # a failure that stalls the stack (a Reason, e.g. RolledBack)


@dataclass
class PassResult:
    """What one pass over one stack found and did."""

    stack: str
    fetched: str | None = None
    fetch_error: str | None = None
    revision: str | None = None  # the revision enforced (fetched, or the last good one)
    refused: str | None = None  # a fetched revision that was refused
    refused_reason: str = ""
    errors: list[str] = field(default_factory=list)
    outcomes: list[ResourceOutcome] = field(default_factory=list)
    prunes: list[Change] = field(default_factory=list)
    prune_failures: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0
    partial: bool = False  # only some resources were re-checked (a watch event)
    health: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (health, message)
    # A fetched revision the stack may not move to yet (engine/admission.py), and why.
    held: str | None = None
    held_reason: str = ""

    def count(self, *states: str) -> int:
        return sum(1 for o in self.outcomes if o.state in states)

    @property
    def changes(self) -> list[Change]:
        """Every non-noop change of the pass (applied, or pending in a dry run)."""
        out = [o.change for o in self.outcomes if o.change is not None and not o.change.is_noop]
        return out + [p for p in self.prunes if not p.is_noop]

    @property
    def converged(self) -> bool:
        """The host matches a valid, current revision and nothing is left to do."""
        return (
            self.revision is not None
            and self.refused is None
            and self.fetch_error is None
            and not self.errors
            and not self.prune_failures
            and self.count(FAILED, WAITING, DRIFTED, PENDING) == 0
        )


def change_json(c: Change) -> dict[str, Any]:
    """A planned change as JSON data (also the API's live diff, :mod:`setpoint.api.diff`)."""
    return {
        "action": c.action.value,
        "path": c.path,
        "fields": [{"field": f.field, "old": f.old, "new": f.new} for f in c.fields],
        "diff": c.diff,
        "reason": c.reason,
        "purge": list(c.extra),
    }


def result_json(r: PassResult) -> dict[str, Any]:
    """A pass's result as JSON data (``plan/apply --json``, the agent's ``POST /sync``)."""

    def change(c: Change) -> dict[str, Any]:
        return {"resource": c.resource} | change_json(c)

    return {
        "stack": r.stack,
        "revision": r.revision,
        "fetched": r.fetched,
        "refused": r.refused,
        "fetchError": r.fetch_error,
        "errors": r.errors,
        "converged": r.converged,
        "resources": [
            {
                "id": o.resource,
                "state": o.state,
                "error": o.error,
                "change": change(o.change) if o.change else None,
            }
            for o in r.outcomes
        ],
        "prune": [change(p) | {"error": r.prune_failures.get(p.resource)} for p in r.prunes],
    }
