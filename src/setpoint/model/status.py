"""Conditions and health: how a stack and its resources report their state.

Conditions follow Flux (Ready / Reconciling / Stalled with a reason constant),
health follows Argo CD. Written by the engine, read by the CLI and the API.

:class:`Condition` and :class:`StackStatus` are plain classes, not dataclasses:
``setpoint status`` builds them from the state DB and must start in <= 80 ms, and
``dataclasses`` (with ``inspect``, ``ast``) alone cost it ~10 ms. They keep what the
dataclasses gave: keyword or positional construction, ``==``, ``repr``, ``__dict__``
(the API reads ``c.__dict__``); ``StackStatus.FIELDS`` is the field order (checked
against ``__init__`` by ``tests/test_status_start.py``).
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
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


class _Fields:
    """What the dataclasses these were gave: ``==`` and ``repr`` over ``FIELDS``."""

    FIELDS: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _values(self, self.FIELDS) == _values(other, self.FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        return _repr(self, self.FIELDS)


class Condition(_Fields):
    """One condition of a stack (``Ready``, ``Reconciling``, ``Stalled``), since when it holds."""

    FIELDS = ("type", "status", "reason", "message", "since")

    type: str  # Ready | Reconciling | Stalled
    status: bool
    reason: str
    message: str
    since: float

    def __init__(self, type: str, status: bool, reason: str, message: str, since: float) -> None:
        self.type = type
        self.status = status
        self.reason = reason
        self.message = message
        self.since = since

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}


class StackStatus(_Fields):
    """What ``setpoint status`` shows for one stack; stored as JSON in the state DB."""

    # The stored document's keys, in order (to_json); __init__ takes them in this order too.
    FIELDS = (
        "stack", "source", "path", "fetched_revision", "applied_revision",
        "last_good_revision", "conditions", "counts", "last_pass", "next_retry", "failures",
        "refused_message", "resources", "health", "stalls", "applied_tag",
    )  # fmt: skip

    stack: str
    source: str
    path: str
    fetched_revision: str | None
    applied_revision: str | None
    last_good_revision: str | None
    conditions: list[Condition]
    counts: dict[str, int]  # in_sync / drifted / failed / total
    last_pass: float | None
    next_retry: float | None
    failures: int
    refused_message: str
    resources: dict[str, str]  # id -> in_sync|drifted|failed|waiting
    health: dict[str, dict[str, str]]  # id -> {health, message}
    stalls: dict[str, list[str]]  # id -> [reason, message, rev]
    applied_tag: str | None  # the tag of the applied revision (ref: {semver: RANGE})

    def __init__(
        self,
        stack: str,
        source: str = "",
        path: str = "",
        fetched_revision: str | None = None,
        applied_revision: str | None = None,
        last_good_revision: str | None = None,
        conditions: list[Condition] | None = None,
        counts: dict[str, int] | None = None,
        last_pass: float | None = None,
        next_retry: float | None = None,
        failures: int = 0,
        refused_message: str = "",
        resources: dict[str, str] | None = None,
        health: dict[str, dict[str, str]] | None = None,
        stalls: dict[str, list[str]] | None = None,
        applied_tag: str | None = None,
    ) -> None:
        # None for a container: a new empty one per object (the dataclass's default_factory).
        self.stack = stack
        self.source = source
        self.path = path
        self.fetched_revision = fetched_revision
        self.applied_revision = applied_revision
        self.last_good_revision = last_good_revision
        self.conditions = [] if conditions is None else conditions
        self.counts = {} if counts is None else counts
        self.last_pass = last_pass
        self.next_retry = next_retry
        self.failures = failures
        self.refused_message = refused_message
        self.resources = {} if resources is None else resources
        self.health = {} if health is None else health
        self.stalls = {} if stalls is None else stalls
        self.applied_tag = applied_tag

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

    def replace(self, **changes: Any) -> StackStatus:
        """A copy with ``changes`` (shallow, as ``dataclasses.replace``)."""
        return StackStatus(**({name: getattr(self, name) for name in self.FIELDS} | changes))

    def to_json(self) -> dict[str, Any]:
        """The JSON document (a deep copy: changing it leaves this object as it was)."""
        return {name: _plain(getattr(self, name)) for name in self.FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackStatus:
        conds = [Condition(**c) for c in data.pop("conditions", [])]
        return cls(conditions=conds, **data)


def _values(obj: object, fields: tuple[str, ...]) -> list[Any]:
    return [getattr(obj, name) for name in fields]


def _repr(obj: object, fields: tuple[str, ...]) -> str:
    inner = ", ".join(f"{name}={getattr(obj, name)!r}" for name in fields)
    return f"{obj.__class__.__qualname__}({inner})"


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data, copied as ``dataclasses.asdict`` copies a field."""
    if isinstance(value, Condition):
        return value.to_json()
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value
