"""Plan types: what a provider proposes to change for one resource.

Providers build :class:`Change` values in ``plan()``; the engine orders them,
the CLI renders them and the journal records them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"  # the path exists with another type (file where a dir is declared, ...)
    DELETE = "delete"
    NOOP = "noop"


@dataclass(frozen=True)
class FieldChange:
    """One attribute that differs: ``mode``, ``owner``, ``group``, ``target``, ``content``..."""

    field: str
    old: str | None
    new: str | None

    def __str__(self) -> str:
        return f"{self.field}: {self.old or '(none)'} → {self.new or '(none)'}"


@dataclass(frozen=True)
class Change:
    """The change one resource needs (or a no-op with a reason).

    ``diff`` is a unified diff of text content (size-capped), when relevant.
    ``path`` is the target path the change acts on, as declared (not under the root).
    ``fields``, ``diff``, ``reason`` and ``extra`` are for people (plans, the journal);
    ``payload`` is for the provider's own ``apply``: a typed value of its choosing
    (e.g. the release provider's ``ReleaseWork``) saying what to do, so apply never
    parses display fields. The engine never reads it.
    """

    resource: str
    action: Action
    path: str = ""
    fields: tuple[FieldChange, ...] = ()
    diff: str | None = None
    reason: str = ""
    extra: tuple[str, ...] = field(default=())  # e.g. purged entries of a Directory
    payload: object = field(default=None, compare=False, repr=False)

    @property
    def is_noop(self) -> bool:
        return self.action is Action.NOOP

    def summary(self) -> str:
        parts = [f"{self.action.value} {self.resource}"]
        if self.path:
            parts.append(self.path)
        if self.fields:
            parts.append("(" + ", ".join(str(f) for f in self.fields) + ")")
        if self.reason:
            parts.append(f"[{self.reason}]")
        return " ".join(parts)
