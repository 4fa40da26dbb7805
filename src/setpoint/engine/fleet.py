"""This host's stacks from the Fleet file: selection, last good choice, what left.

Used by :class:`setpoint.engine.controller.Controller` after each fetch of the
fleet source (in the pass thread). The selection is pure (render.fleet); this
module keeps what must survive it: the last good selection (a broken Fleet file
keeps it in force), and, persisted in ``STATE/fleet.json``, the names of the
stacks the Fleet gave this host, so that a stack which stops applying is pruned
even across a restart, and is not mistaken for a stack removed from the config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from setpoint.atomic import write_atomic
from setpoint.config import AgentConfig, FleetConfig, StackConfig
from setpoint.model.errors import ManifestErrors
from setpoint.render.fleet import Rollout, load_fleet, select
from setpoint.render.loader import Limits

STATE_FILE = "fleet.json"


@dataclass
class FleetChange:
    """What one selection changed: stacks to start, stacks to prune and stop."""

    revision: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class FleetView:
    """The Fleet's stacks for one host: the last good selection and its revision."""

    def __init__(
        self,
        ref: FleetConfig,
        local: list[StackConfig],
        labels: Mapping[str, str],
        state_dir: Path,
        limits: Limits,
    ) -> None:
        self.ref = ref
        self.local = {s.name for s in local}
        self.labels = dict(labels)
        self.limits = limits
        self.file = state_dir / STATE_FILE
        self.refused: tuple[str, ManifestErrors] | None = None  # (commit, why)
        self.seen: str | None = None  # the last commit judged (selected or refused)
        # The last good selection survives a restart: a Fleet file broken meanwhile
        # must not leave this host without its stacks.
        saved = self._load()
        self.revision: str | None = saved.revision  # the commit the selection came from
        self.stacks: list[StackConfig] = saved.stacks
        # The rollout (waves) of each selected stack that declares one, by name.
        self.rollouts: dict[str, Rollout] = saved.rollouts
        # Stacks the Fleet gave this host before (pruned if no longer given), by name.
        self.owned: dict[str, StackConfig] = {s.name: s for s in saved.stacks + saved.removing}
        self.removing = saved.removing  # still to prune (a prune failed before)

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.stacks}

    def select(self, sha: str, tree: Path) -> FleetChange:
        """Choose this host's stacks at ``sha``; ManifestErrors (file:line) refuse it.

        A refused revision leaves the selection as it was (the last good one).
        """
        self.seen = sha
        try:
            loaded = load_fleet(tree, self.ref.path, self.limits)
        except ManifestErrors as exc:
            self.refused = (sha, exc)
            raise
        chosen = select(loaded.fleet, self.labels)
        clash = [
            loaded.error(
                st.name,
                "a stack of this name is in the host's config too; rename one of them",
            )
            for st in chosen
            if st.name in self.local
        ]
        if clash:
            self.refused = (sha, ManifestErrors(clash))
            raise self.refused[1]
        self.refused = None
        before = self.names | set(self.owned)
        self.stacks = [
            StackConfig(
                name=st.name,
                source=self.ref.source,
                path=st.path,
                prune=st.prune,
                drift=st.drift,
                resync=st.resync,
                suspend=st.suspend,
                notifications=st.notifications,
                provider_settings=st.provider_settings,
            )
            for st in chosen
        ]
        self.rollouts = {st.name: st.rollout for st in chosen if st.rollout is not None}
        self.revision = sha
        now = self.names
        return FleetChange(sha, sorted(now - before), sorted(before - now))

    def refusal(self, sha: str) -> ManifestErrors | None:
        """Why the Fleet file at ``sha`` was refused, if it was."""
        if self.refused is not None and self.refused[0] == sha:
            return self.refused[1]
        return None

    def gone(self, name: str) -> StackConfig:
        """The last known config of a stack the Fleet no longer gives this host."""
        return self.owned.get(name) or StackConfig(name=name, source=self.ref.source)

    def save(self, removing: list[StackConfig]) -> None:
        """Persist the selection (atomically) with the stacks still being pruned."""
        self.owned = {s.name: s for s in [*self.stacks, *removing]}
        doc = {
            "revision": self.revision,
            "stacks": [s.model_dump(by_alias=True) for s in self.stacks],
            "removing": [s.model_dump(by_alias=True) for s in removing],
            "rollouts": {n: r.model_dump(by_alias=True) for n, r in self.rollouts.items()},
        }
        write_atomic(self.file, json.dumps(doc).encode(), mode=0o600)

    def _load(self) -> _Saved:
        try:
            doc = json.loads(self.file.read_text())
            return _Saved(
                doc.get("revision"),
                [StackConfig.model_validate(s) for s in doc.get("stacks", ())],
                [StackConfig.model_validate(s) for s in doc.get("removing", ())],
                {n: Rollout.model_validate(r) for n, r in doc.get("rollouts", {}).items()},
            )
        except (OSError, ValueError, AttributeError, TypeError):
            # Missing or damaged: nothing known (never a reason to delete more).
            return _Saved(None, [], [], {})


@dataclass(frozen=True)
class _Saved:
    revision: str | None
    stacks: list[StackConfig]
    removing: list[StackConfig]
    rollouts: dict[str, Rollout]


def with_stacks(base: AgentConfig, fleet: list[StackConfig]) -> AgentConfig:
    """``base`` with the Fleet's stacks after its own (names were checked not to clash)."""
    return base.model_copy(update={"stacks": [*base.stacks, *fleet]})

