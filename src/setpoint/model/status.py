"""Conditions and health: how a stack and its resources report their state.

Conditions follow Flux (Ready / Reconciling / Stalled with a reason constant),
health follows Argo CD. Written by the engine, read by the CLI and the API.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Reason(enum.StrEnum):
    RECONCILIATION_SUCCEEDED = "ReconciliationSucceeded"
    PROGRESSING = "Progressing"
    VALIDATION_FAILED = "ValidationFailed"
    CONFLICT = "Conflict"
    DEPENDENCY_CYCLE = "DependencyCycle"
    SOURCE_FAILED = "SourceFailed"
    APPLY_FAILED = "ApplyFailed"
    DRIFT_DETECTED = "DriftDetected"
    PRUNE_FAILED = "PruneFailed"
    VERIFICATION_FAILED = "VerificationFailed"
    HISTORY_REWRITTEN = "HistoryRewritten"
    ROLLED_BACK = "RolledBack"  # a rollout never became ready; the last healthy one runs
    ROLLOUT_FAILED = "RolloutFailed"  # ... and there was nothing to roll back to
    ROLLOUT_WAITING = "RolloutWaiting"  # a new revision is held (waves); the last good runs


class Health(enum.StrEnum):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    MISSING = "Missing"
    UNKNOWN = "Unknown"


@dataclass
class Condition:
    type: str  # Ready | Reconciling | Stalled
    status: bool
    reason: str
    message: str
    since: float


@dataclass
class StackStatus:
    """What ``setpoint status`` shows for one stack; stored as JSON in the state DB."""

    stack: str
    source: str = ""
    path: str = ""
    fetched_revision: str | None = None
    applied_revision: str | None = None
    last_good_revision: str | None = None
    conditions: list[Condition] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # in_sync / drifted / failed / total
    last_pass: float | None = None
    next_retry: float | None = None
    failures: int = 0
    refused_message: str = ""
    resources: dict[str, str] = field(default_factory=dict)  # id -> in_sync|drifted|failed|waiting
    health: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> {health, message}
    stalls: dict[str, list[str]] = field(default_factory=dict)  # id -> [reason, message, rev]
    applied_tag: str | None = None  # the tag of the applied revision (ref: {semver: RANGE})

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def set_condition(
        self, type_: str, status: bool, reason: str, message: str, now: float
    ) -> None:
        old = self.condition(type_)
        since = old.since if old and old.status == status and old.reason == reason else now
        self.conditions = [c for c in self.conditions if c.type != type_]
        self.conditions.append(Condition(type_, status, reason, message, since))
        self.conditions.sort(key=lambda c: c.type)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackStatus:
        conds = [Condition(**c) for c in data.pop("conditions", [])]
        return cls(conditions=conds, **data)
