"""The project's error types.

Every error a user can see derives from :class:`SetpointError` and carries a
message written for that user. Manifest errors always name ``file:line``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class SetpointError(Exception):
    """Base of every error setpoint raises on purpose."""


@dataclass(frozen=True)
class ManifestError(SetpointError):
    """One problem in one manifest (or a file it refers to), at ``file:line``."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ManifestErrors(SetpointError):
    """All the problems found in a stack's manifests (never just the first)."""

    def __init__(self, errors: Iterable[ManifestError]) -> None:
        self.errors = sorted(set(errors), key=lambda e: (e.file, e.line, e.message))
        super().__init__("\n".join(str(e) for e in self.errors))


class SourceError(SetpointError):
    """Fetching or resolving a Source failed (unreachable remote, missing ref, ...).

    Transient by nature: the engine keeps the last good revision and retries.
    """


class ConfinementError(SetpointError):
    """A path would leave the target root (or the repository)."""


class ProviderError(SetpointError):
    """A provider could not read or change the target.

    ``transient`` errors are retried with back-off; permanent ones stall the
    resource until its declaration changes.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient
