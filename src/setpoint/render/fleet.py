"""The select stage: a Fleet file says which stacks each host runs.

A ``Fleet`` document lists stacks, each with an optional label ``selector``; a host
runs the stacks whose selector matches its labels (facts included). Called by
:mod:`setpoint.engine.fleet` with each fetched revision of the fleet source. Pure
given (tree, labels): reading the file is the only I/O.

Example (``fleet.yaml`` at the repository root)::

    apiVersion: setpoint/v1
    kind: Fleet
    metadata: {name: infra}
    stacks:
      - {name: base, path: base}
      - {name: web, path: envs/prod/web, selector: {matchLabels: {role: web, env: prod}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from setpoint.config import NAME, StackPolicy
from setpoint.model.errors import ManifestError, ManifestErrors
from setpoint.render.document import load_document
from setpoint.render.loader import Limits
from setpoint.render.selector import Selector

KIND = "Fleet"


class FleetStack(StackPolicy):
    """One stack of a Fleet: a config stack's policy fields, a path, a selector."""

    selector: Selector = Selector()

    @model_validator(mode="before")
    @classmethod
    def _no_source(cls, value: Any) -> Any:
        if isinstance(value, dict) and "source" in value:
            raise ValueError(
                "a Fleet stack takes no source: every Fleet stack reads the repository of the "
                "config's fleet.source; remove source:"
            )
        return value


class FleetMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME)


class Fleet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metadata: FleetMetadata
    stacks: tuple[FleetStack, ...] = ()


@dataclass(frozen=True)
class LoadedFleet:
    """A checked Fleet file and the line of each of its stacks (for errors naming them)."""

    fleet: Fleet
    path: str
    lines: dict[str, int]

    def error(self, name: str, message: str) -> ManifestError:
        return ManifestError(
            self.path, self.lines.get(name, 1), f"Fleet: stack {name!r}: {message}"
        )


def load_fleet(tree: Path, path: str, limits: Limits) -> LoadedFleet:
    """Read and check the Fleet file; ManifestErrors (file:line) if it is broken."""
    fleet, at = load_document(tree, path, KIND, Fleet, limits)
    lines: dict[str, int] = {}
    errors = []
    for i, st in enumerate(fleet.stacks):
        line = at(["stacks", i])
        if st.name in lines:
            errors.append(
                ManifestError(
                    path,
                    line,
                    f"Fleet: stack {st.name!r} is declared twice (first at line {lines[st.name]})",
                )
            )
        lines.setdefault(st.name, line)
    if errors:
        raise ManifestErrors(errors)
    return LoadedFleet(fleet, path, lines)


def select(fleet: Fleet, labels: Mapping[str, str]) -> list[FleetStack]:
    """The Fleet's stacks that a host with ``labels`` runs, in the file's order."""
    return [st for st in fleet.stacks if st.selector.matches(labels)]
