"""Admission: may a stack move to a new revision now? (the engine's one question to a fleet)

Used by :class:`setpoint.engine.controller.Controller` before a full pass whose
fetched revision differs from the revision in force. An :class:`Admission` (the
fleet's rollout gate, :mod:`setpoint.fleetbus.rollout`) answers; the engine knows
nothing of how. Until a revision is admitted the pass enforces the last good one,
drift correction included: only a *change of revision* is ever held, and
drift-triggered partial passes never ask (they reuse the last answer).

Journal events written by the controller: ``revision.held`` (when the reason a
revision waits changes) and ``revision.admitted`` (when it may be applied, with
the admission's detail, e.g. the wave and lease slot), so an operator, or a test,
can tell from the journal alone when each host started to move.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from setpoint.engine.outcome import PassResult
from setpoint.state import JournalEntry, StateDB

log = logging.getLogger("setpoint.admission")


@dataclass(frozen=True)
class Verdict:
    """The answer for one (stack, revision): admitted, or held with the reason why."""

    allowed: bool
    reason: str = ""  # why it waits ("waiting for wave canary: host-3 Stalled at abc123")
    detail: dict[str, Any] = field(default_factory=dict)  # journaled with the verdict


class Admission(Protocol):
    def admit(self, stack: str, revision: str, current: str | None) -> Verdict:
        """May ``stack`` move from ``current`` to ``revision``? Called in a pass thread,
        outside the pass gate (it may wait on the network, bounded by the admission)."""
        ...

    def settled(self, stack: str, result: PassResult) -> None:
        """A full pass of ``stack`` ended with ``result`` (e.g. to free a lease once Ready)."""
        ...


@dataclass(frozen=True)
class Hold:
    """A fetched revision the stack may not move to yet, and why."""

    revision: str
    reason: str


class Admissions:
    """The controller's side of admission: asks, remembers the answers, journals them.

    ``admission`` is None unless the agent runs with a fleet store (then nothing is
    ever held). A revision once admitted stays admitted for its stack (the host has
    started to move): only a newer fetched revision is asked about again.
    """

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self.admission: Admission | None = None
        self.admitted: dict[str, str] = {}  # stack -> the revision it may move to
        self.holds: dict[str, Hold] = {}  # stack -> the revision held and why (status)
        self._journaled: dict[str, tuple[Any, ...]] = {}

    def ask(self, stack: str, fetched: str | None, current: str | None) -> None:
        """Before a full pass: ask whether ``stack`` may move to ``fetched`` (pass thread)."""
        gate = self.admission
        if gate is None or fetched is None or fetched == current:
            return
        if self.admitted.get(stack) == fetched:
            return
        try:
            verdict = gate.admit(stack, fetched, current)
        except Exception as exc:  # a bug in the gate must hold the revision, not apply it
            log.exception("stack %s: the admission check failed", stack)
            verdict = Verdict(False, f"the admission check failed: {exc!r}", {"error": "bug"})
        key = (fetched, verdict.allowed, *sorted(verdict.detail.items()))
        if verdict.allowed:
            self.admitted[stack] = fetched
            self.holds.pop(stack, None)
        else:
            self.holds[stack] = Hold(fetched, verdict.reason)
        if self._journaled.get(stack) != key:
            # Once per change of state, not per re-check: a wait can last hours.
            self._journaled[stack] = key
            event = "revision.admitted" if verdict.allowed else "revision.held"
            msg = (
                f"revision {fetched[:12]} may be applied"
                + (f": {verdict.reason}" if verdict.reason else "")
                if verdict.allowed
                else f"revision {fetched[:12]} waits: {verdict.reason}"
            )
            self.db.append(
                JournalEntry(time.time(), stack, event, fetched, None, msg, dict(verdict.detail))
            )

    def hold_reason(self, stack: str, fetched: str | None, current: str | None) -> str | None:
        """Under the pass gate: why ``fetched`` may not be enforced now (None: it may)."""
        if self.admission is None or fetched is None or fetched == current:
            return None
        if self.admitted.get(stack) == fetched:
            return None
        hold = self.holds.get(stack)
        if hold is not None and hold.revision == fetched:
            return hold.reason
        return "not admitted yet"

    def settled(self, stack: str, result: PassResult) -> None:
        if self.admission is not None and not result.partial:
            try:
                self.admission.settled(stack, result)
            except Exception:
                log.exception("stack %s: the admission's after-pass hook failed", stack)
