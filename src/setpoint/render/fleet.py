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
      - name: api
        path: api
        rollout:                       # new revisions reach the hosts in waves
          healthyFor: 60               # seconds Ready+Healthy before the next wave starts
          waves:
            - {name: canary, selector: {matchLabels: {canary: "true"}}}
            - {name: rest, maxParallel: "10%"}   # no selector: every host left

A wave takes the hosts its selector matches that no earlier wave took; a wave
without a selector takes every host left (so only the last wave may lack one). A
host no wave takes follows the last wave. ``maxParallel`` (a count, or a
percentage of the wave's hosts that run the stack, rounded down, at least 1)
bounds the hosts of a wave that are applying a new revision at once; without it
there is no bound. The gate that enforces this is :mod:`setpoint.fleetbus.rollout`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from setpoint.config import NAME, StackPolicy
from setpoint.model.errors import ManifestError, ManifestErrors
from setpoint.render.document import load_document
from setpoint.render.loader import Limits
from setpoint.render.selector import Selector

KIND = "Fleet"


_PERCENT = re.compile(r"^([0-9]{1,3})%$")


class Wave(BaseModel):
    """One wave of a rollout: a name, the hosts it takes, how many may apply at once."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=NAME)
    selector: Selector | None = None  # None: every host no earlier wave took
    max_parallel: int | str | None = Field(default=None, alias="maxParallel")

    @field_validator("max_parallel")
    @classmethod
    def _count_or_percent(cls, value: int | str | None) -> int | str | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError("must be a number of hosts (e.g. 2) or a percentage (e.g. \"10%\")")
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"must be at least 1 host (got {value})")
            return value
        m = _PERCENT.match(value.strip())
        if m is None or not 1 <= int(m.group(1)) <= 100:
            raise ValueError(
                f"{value!r} is neither a number of hosts (e.g. 2) nor a percentage from 1% to "
                "100% (e.g. \"10%\")"
            )
        return f"{int(m.group(1))}%"

    def takes(self, labels: Mapping[str, str]) -> bool:
        return self.selector is None or self.selector.matches(labels)

    def slots(self, hosts: int) -> int | None:
        """How many of the wave's ``hosts`` may apply at once (None: no bound).

        A percentage is rounded down (as Kubernetes rounds maxUnavailable) but is
        never below 1: a bound of 0 would stop the wave for ever.
        """
        if self.max_parallel is None:
            return None
        if isinstance(self.max_parallel, int):
            return self.max_parallel
        pct = int(self.max_parallel.rstrip("%"))
        return max(1, math.floor(hosts * pct / 100))


class Rollout(BaseModel):
    """How a new revision of a Fleet stack reaches its hosts: waves, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    waves: tuple[Wave, ...]
    healthy_for: float = Field(default=60.0, ge=0, le=86400, alias="healthyFor")

    @field_validator("waves")
    @classmethod
    def _some(cls, waves: tuple[Wave, ...]) -> tuple[Wave, ...]:
        if not waves:
            raise ValueError("give at least one wave (a rollout without waves has no order)")
        return waves

    @model_validator(mode="after")
    def _waves_fit(self) -> Rollout:
        seen: set[str] = set()
        for i, w in enumerate(self.waves):
            if w.name in seen:
                raise ValueError(f"wave {w.name!r} is declared twice; give each wave its own name")
            seen.add(w.name)
            if w.selector is None and i < len(self.waves) - 1:
                later = self.waves[i + 1].name
                raise ValueError(
                    f"wave {w.name!r} has no selector, so it takes every host left and wave "
                    f"{later!r} after it could never get one; give {w.name!r} a selector or "
                    "make it the last wave"
                )
        return self

    def wave_of(self, labels: Mapping[str, str]) -> int:
        """The index of the first wave that takes a host with ``labels``.

        ``len(waves)`` when none does: such a host follows the last wave.
        """
        return next((i for i, w in enumerate(self.waves) if w.takes(labels)), len(self.waves))

    def wave_name(self, index: int) -> str:
        return self.waves[index].name if index < len(self.waves) else "(after the last wave)"


class FleetStack(StackPolicy):
    """One stack of a Fleet: a config stack's policy fields, a path, a selector, a rollout."""

    selector: Selector = Selector()
    rollout: Rollout | None = None

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
