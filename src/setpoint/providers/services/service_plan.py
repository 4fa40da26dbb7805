"""What the Service kind reads and decides: :class:`ServiceState` and the pure :func:`decide`.

Used by :class:`setpoint.providers.services.service.ServiceProvider`: its ``read`` builds a
``ServiceState`` (from the record, ``/proc`` and the supervisor), its ``plan`` computes
the desired run configuration and calls :func:`decide`, which does no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from setpoint.model.plan import Action, Change, FieldChange
from setpoint.providers.base import StallError
from setpoint.providers.services.service_spec import ServiceSpec
from setpoint.providers.services.service_supervisor import MISSING, digest, supervision_digest

SUPERVISION, RELOAD, LAST_HEALTHY = "supervision", "reload", "last healthy"  # display only

Step = Literal["start", "last healthy", "supervision", "reload"]


@dataclass(frozen=True)
class ServiceWork:
    """What ``apply`` must do for a Service change (``Change.payload``).

    ``start``: (re)start the declared configuration and wait for readiness; ``last
    healthy``: start the last healthy configuration (the declared one failed) and stay
    stalled; ``supervision``: adopt new restart/probe settings without a restart;
    ``reload``: signal the process (a ``reloadOn`` declaration changed).
    """

    step: Step


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What read found: the process, what it runs, and the supervisor's view of it."""

    running: bool
    pid: int | None
    digest: str | None  # of the running (or last run) configuration
    reload_digest: str | None
    supervision: str | None
    release_dir: str | None  # the declared release version's directory (see _release_dir)
    exit: str = ""  # how the last process ended, when not running
    exit_code: int | None = None
    gave_up: bool = False  # exited and the restart policy says not to restart
    restarting_in: float | None = None  # waiting out the back-off
    failed_digest: str | None = None
    failed_message: str = ""
    health: str = MISSING
    message: str = ""
    config: Mapping[str, Any] | None = None  # the recorded run configuration


def decide(
    rid: str,
    path: str,
    spec: ServiceSpec,
    state: ServiceState,
    config: Mapping[str, Any],
    reload: str,
) -> Change:
    """The change from ``state`` to the declared run ``config`` (and ``reload`` digest).

    Raises :class:`StallError` while the declared configuration is the one whose rollout
    failed and the last healthy one runs (reported until the declaration changes).
    """
    want = digest(config)
    if state.failed_digest == want:
        if state.running or state.restarting_in is not None:
            raise StallError(state.failed_message, reason="RolledBack")
        return Change(
            rid, Action.CREATE, path,
            fields=(FieldChange("configuration", "failed rollout", LAST_HEALTHY),),
            reason="start the last healthy configuration (the declared one failed)",
            payload=ServiceWork("last healthy"),
        )  # fmt: skip
    if state.digest != want:
        fields = config_fields(state.config or {}, config)
        action = Action.REPLACE if state.running else Action.CREATE
        return Change(
            rid, action, path, fields=fields, reason="restart", payload=ServiceWork("start")
        )
    if state.restarting_in is not None:
        # The supervisor restarts it by policy; a crash loop shows as health Degraded.
        return Change(
            rid, Action.NOOP, path,
            reason=f"{state.exit}; restarting in {state.restarting_in:.1f}s (back-off)",
        )  # fmt: skip
    if not state.running:
        if state.gave_up:
            return Change(
                rid, Action.NOOP, path,
                reason=f"{state.exit}; not restarted (restart: {spec.restart})",
            )  # fmt: skip
        return Change(
            rid, Action.CREATE, path,
            fields=(FieldChange("process", state.exit, "running"),), reason="start",
            payload=ServiceWork("start"),
        )  # fmt: skip
    if state.supervision != supervision_digest(spec):
        return Change(
            rid, Action.UPDATE, path, fields=(FieldChange(SUPERVISION, "old", "declared"),),
            payload=ServiceWork("supervision"),
        )  # fmt: skip
    if (state.reload_digest or "") != reload:
        return Change(
            rid, Action.UPDATE, path,
            fields=(FieldChange(RELOAD, None, spec.reloadSignal),),
            reason=f"{', '.join(spec.reloadOn)} changed",
            payload=ServiceWork("reload"),
        )  # fmt: skip
    return Change(rid, Action.NOOP, path, reason=f"running (pid {state.pid})")


def config_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    """What differs between two run configurations, as plan fields (env values hidden)."""
    out: list[FieldChange] = []
    for key in ("argv", "env", "cwd", "user", "release_dir", "restart_on"):
        if old.get(key) != new.get(key):
            label = {"restart_on": "restartOn", "release_dir": "release"}.get(key, key)
            o, n = old.get(key), new.get(key)
            if key == "env":
                out += env_fields(o or {}, n or {})
                continue
            if key == "restart_on":
                o, n = ("(old)" if o else None), "(declared)"
            out.append(FieldChange(label, _s(o), _s(n)))
    return tuple(out)


def env_fields(old: Mapping[str, str], new: Mapping[str, str]) -> list[FieldChange]:
    """One field per variable added, removed or changed: its name and size, never its value.

    Every env value is treated as a secret (tokens and passwords are passed this way);
    ``SETPOINT_RELEASE`` is left out: the ``release`` field shows that change.
    """
    out = []
    for name in sorted((set(old) | set(new)) - {"SETPOINT_RELEASE"}):
        o, n = old.get(name), new.get(name)
        if o != n:
            out.append(FieldChange("env", _hidden(name, o), _hidden(name, n)))
    return out


def _hidden(name: str, value: str | None) -> str | None:
    return None if value is None else f"{name}=(hidden, {len(value.encode())} bytes)"


def _s(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)
