"""Resource: one declared object after rendering (``Kind/name`` + validated spec).

Built by :mod:`setpoint.render`, consumed by the engine and the providers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")
ID_RE = re.compile(r"^([A-Z][A-Za-z0-9]*)/(.+)$")


def parse_resource_id(value: str) -> tuple[str, str]:
    """Split ``Kind/name`` into its parts; raise ``ValueError`` if malformed."""
    match = ID_RE.match(value)
    if not match or not NAME_RE.match(match.group(2)):
        raise ValueError(f"{value!r} is not a resource id of the form Kind/name (e.g. File/motd)")
    return match.group(1), match.group(2)


@dataclass(frozen=True, order=True)
class Location:
    """Where a resource was declared: a path relative to the repository, and a line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Resource:
    """A desired resource.

    ``spec`` is the kind's validated pydantic model. ``blob`` holds data the
    renderer resolved from the repository (a ``File``'s ``source``), so that
    providers never read the repository themselves.
    """

    kind: str
    name: str
    spec: BaseModel
    location: Location
    labels: Mapping[str, str] = field(default_factory=dict)
    blob: bytes | None = None
    digest: str = ""
    # The stack it belongs to, set by the engine after rendering (a render may serve two
    # stacks of one path); "" outside a stack (validate). Not part of the digest: a
    # provider reads the stack's settings with it (ProviderContext.settings).
    stack: str = ""

    @cached_property
    def id(self) -> str:
        # Cached: the drift check looks ids up several times per resource per pass.
        return f"{self.kind}/{self.name}"

    @property
    def depends_on(self) -> tuple[str, ...]:
        return tuple(getattr(self.spec, "dependsOn", ()) or ())

    @property
    def prune_disabled(self) -> bool:
        return self.labels.get("setpoint/prune") == "disabled"

    @staticmethod
    def compute_digest(kind: str, spec: BaseModel, blob: bytes | None) -> str:
        """A stable hash of what is declared: same declaration, same digest.

        The engine compares it with the inventory's to tell drift (declaration
        unchanged, target changed) from a new declaration.
        """
        h = hashlib.sha256()
        h.update(kind.encode())
        h.update(b"\0")
        h.update(spec.model_dump_json(exclude={"dependsOn"}).encode())
        if blob is not None:
            h.update(b"\0")
            h.update(hashlib.sha256(blob).digest())
        return h.hexdigest()


def dump_spec(spec: BaseModel) -> dict[str, Any]:
    """The spec as plain data, for the journal and the JSON outputs."""
    return spec.model_dump(mode="json", exclude_none=True)
