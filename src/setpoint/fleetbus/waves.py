"""Rollout waves, the pure part: which wave a host is in, and may it move now?

Used by :mod:`setpoint.fleetbus.rollout` (the agent's gate, which reads the fleet
status and the leases from NATS) and by ``setpoint fleet rollout`` (which shows the
same picture). No I/O: every input is a value, ``now`` included, so each decision
is unit-tested on its own (``tests/test_rollout_waves.py``).

The rule: a host of wave k may apply a new revision R of a stack when every host of
waves < k that runs the stack reports Ready and Healthy at R, and has for
``healthyFor`` seconds (``ready_since + healthyFor <= now``), with a fresh heartbeat.
A host of an earlier wave that is Stalled, not at R, or silent holds the rollout:
later waves keep the last good revision. Within the wave, at most ``maxParallel``
hosts move at once (leases, counted by the caller).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from setpoint.render.fleet import Rollout

STALE_PERIODS = 3  # a heartbeat older than this many periods: the host is unknown


@dataclass(frozen=True)
class HostState:
    """One host's status for one stack, as the fleet status bucket holds it."""

    host: str
    labels: Mapping[str, str]
    revision: str | None  # the revision in force on the host
    ready: bool
    healthy: bool
    stalled: bool = False
    reason: str = ""
    ready_since: float | None = None  # when Ready+Healthy at ``revision`` began
    heartbeat: float = 0.0
    fetched: str | None = None  # the newest revision it fetched (the one it stalled on)
    period: float = 0.0  # its heartbeat period (0: unknown)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> HostState:
        """From the status bucket's JSON value; ValueError if it is not one."""
        try:
            labels = doc.get("labels") or {}
            return cls(
                host=str(doc["host"]),
                labels={str(k): str(v) for k, v in labels.items()},
                revision=doc.get("revision") or None,
                ready=bool(doc.get("ready")),
                healthy=bool(doc.get("healthy", doc.get("ready"))),
                stalled=bool(doc.get("stalled")),
                reason=str(doc.get("reason") or ""),
                ready_since=_float(doc.get("ready_since")),
                heartbeat=_float(doc.get("heartbeat")) or 0.0,
                fetched=doc.get("fetched") or None,
                period=_float(doc.get("period")) or 0.0,
            )
        except (KeyError, AttributeError, TypeError) as exc:
            raise ValueError(f"not a host status: {exc}") from None


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


@dataclass(frozen=True)
class Decision:
    """May this host move to ``revision``? If so, how many hosts of its wave may at once."""

    allowed: bool
    wave: int
    wave_name: str
    reason: str = ""
    slots: int | None = None  # lease slots of the wave (None: no bound)
    wave_hosts: int = 0  # hosts of the wave that run the stack (this one included)
    recheck_at: float | None = None  # when waiting on time alone would end
    detail: dict[str, Any] = field(default_factory=dict)


def short(sha: str | None) -> str:
    return sha[:12] if sha else "(none)"


def members(rollout: Rollout, hosts: Iterable[HostState]) -> dict[int, list[HostState]]:
    """The hosts of each wave (index; ``len(waves)`` = taken by no wave), by host name."""
    out: dict[int, list[HostState]] = {}
    for h in sorted(hosts, key=lambda h: h.host):
        out.setdefault(rollout.wave_of(h.labels), []).append(h)
    return out


def host_state(
    h: HostState, revision: str, healthy_for: float, now: float, heartbeat: float
) -> tuple[str, str]:
    """(state, words) of an earlier-wave host with respect to ``revision``.

    state is one of: done, soaking, stalled, unknown, behind, not-ready.
    """
    age = now - h.heartbeat
    period = h.period or heartbeat
    if period > 0 and age > STALE_PERIODS * period:
        return "unknown", f"{h.host} unknown (no heartbeat for {age:.0f} s)"
    if h.stalled:
        why = f" ({h.reason})" if h.reason else ""
        # The revision it stalled on: a refused one is fetched but never in force.
        return "stalled", f"{h.host} Stalled at {short(h.fetched or h.revision)}{why}"
    if h.revision != revision:
        return "behind", f"{h.host} at {short(h.revision)}, not yet at {short(revision)}"
    if not (h.ready and h.healthy) or h.ready_since is None:
        what = "not Ready" if not h.ready else "not Healthy"
        return "not-ready", f"{h.host} {what} at {short(revision)}"
    soaked = now - h.ready_since
    if soaked < healthy_for:
        return (
            "soaking",
            f"{h.host} Ready at {short(revision)} for {max(soaked, 0):.1f} s of {healthy_for:g}",
        )
    return "done", f"{h.host} Ready at {short(revision)}"


def decide(
    rollout: Rollout,
    me: str,
    labels: Mapping[str, str],
    revision: str,
    hosts: Iterable[HostState],
    now: float,
    heartbeat: float = 0.0,
) -> Decision:
    """May host ``me`` (with ``labels``) apply ``revision``, given the others' states?

    ``hosts`` are the status entries of the stack (``me`` among them or not; its own
    entry is ignored: this host's wave is judged from ``labels``). ``heartbeat`` is the
    status period used when an entry does not give its own (0: never stale).
    """
    k = rollout.wave_of(labels)
    others = [h for h in hosts if h.host != me]
    by_wave = members(rollout, others)
    for j in range(min(k, len(rollout.waves))):
        name = rollout.waves[j].name
        soon: float | None = None
        for h in by_wave.get(j, []):
            state, words = host_state(h, revision, rollout.healthy_for, now, heartbeat)
            if state == "done":
                continue
            if state == "soaking" and h.ready_since is not None:
                soon = h.ready_since + rollout.healthy_for
            return Decision(
                False,
                k,
                rollout.wave_name(k),
                f"waiting for wave {name}: {words}",
                recheck_at=soon,
                detail={
                    "wave": rollout.wave_name(k),
                    "waitingFor": name,
                    "host": h.host,
                    "state": state,
                },
            )
    if k < len(rollout.waves):
        wave = rollout.waves[k]
        count = len(by_wave.get(k, [])) + 1
        slots = wave.slots(count)
    else:  # taken by no wave: after every wave, unbounded
        count = len(by_wave.get(k, [])) + 1
        slots = None
    return Decision(
        True,
        k,
        rollout.wave_name(k),
        f"wave {rollout.wave_name(k)}: every earlier wave is Ready at {short(revision)}",
        slots=slots,
        wave_hosts=count,
        detail={"wave": rollout.wave_name(k)},
    )
