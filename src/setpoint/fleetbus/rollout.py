"""The rollout gate: a Fleet stack's new revision reaches its hosts in waves.

The agent sets a :class:`RolloutGate` as the controller's admission
(:mod:`setpoint.engine.admission`): before a full pass whose fetched revision is new,
the controller asks :meth:`RolloutGate.admit` from its pass thread; the gate runs its
check in the agent's asyncio loop (where the NATS connection lives) and answers
within ``timeout`` seconds. The engine knows nothing of NATS.

The check (pure part in :mod:`setpoint.fleetbus.waves`):

1. read the stack's entries of the fleet status bucket (``setpoint-status``, keys
   ``HOST.STACK``, written by every agent) and decide whether every host of the
   earlier waves is Ready and Healthy at the revision for ``healthyFor`` seconds;
2. if the wave has ``maxParallel``, take a lease: bucket ``setpoint-leases-STACK``
   (``max_age`` = the lease TTL; nats-server 2.9 has no per-key TTL), keys
   ``WAVE.slot-0`` .. ``WAVE.slot-(n-1)``, one taken with create-if-absent, renewed
   every TTL/3 by compare-and-set update, deleted (compare-and-set) once the stack is
   Ready and Healthy at that revision. A host that dies stops renewing: its slot
   frees itself when ``max_age`` expires the key.

Unreachable store, or any error: the revision waits (never applied on a guess), and
the pass enforces the last good revision, drift correction included. A held stack
is re-checked here, in the loop, every few seconds (sooner when only time is
missing); when it may move, the gate asks the agent for a pass (``on_wake``).

Each agent also records the stack's rollout spec in bucket ``setpoint-rollouts``
(key STACK), so ``setpoint fleet rollout STACK`` can group hosts into waves without
reading the repository.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from setpoint.engine.admission import Verdict
from setpoint.engine.outcome import PassResult
from setpoint.fleetbus.status import BUCKET as STATUS_BUCKET
from setpoint.fleetbus.status import decode_entry, read_all
from setpoint.fleetbus.waves import STALE_PERIODS, HostState, decide
from setpoint.render.fleet import Rollout

if TYPE_CHECKING:
    from setpoint.engine.agent import Agent

log = logging.getLogger("setpoint.rollout")

SPEC_BUCKET = "setpoint-rollouts"
LEASE_PREFIX = "setpoint-leases-"
LEASE_TTL = 30.0  # seconds a lease outlives its holder's last renewal
RECHECK_MIN, RECHECK_MAX = 0.5, 5.0  # seconds between re-checks of a held stack

Connection = Callable[[], Any]  # the live nats Client, or None while disconnected


def lease_bucket(stack: str) -> str:
    return LEASE_PREFIX + stack


def slot_key(wave: str, i: int) -> str:
    return f"{wave}.slot-{i}"


class Unreachable(Exception):
    """The fleet store cannot be asked now."""


@dataclass
class Lease:
    stack: str
    key: str
    revision: str
    wave: str
    seq: int  # the KV revision of our last write: the compare-and-set base


async def latest(
    js: JetStreamContext, bucket: str, keys: str, timeout: float = 5.0
) -> dict[str, bytes]:
    """The current value of every key of ``bucket`` matching ``keys``: all of them, or an error.

    A partial picture would be unsafe (a wave whose hosts are missing looks done). Neither
    the client's "initial values done" marker nor the server's pending count can be
    trusted while other hosts keep writing (a key rewritten during the read loses its
    older message: measured, 15% of reads came back short). So the stream is asked
    which keys exist, and the read goes on until each of them has been seen.
    Raises nats errors (TimeoutError when the server is slow): callers then hold.
    """
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + keys)
    expected = {s[len(prefix):] for s in info.state.subjects or {}}
    if not expected:
        return {}
    kv = await js.key_value(bucket)
    watcher = await kv.watch(keys)
    out: dict[str, bytes] = {}
    try:
        while expected:
            entry = await watcher.updates(timeout=timeout)  # type: ignore[no-untyped-call]
            if entry is None:
                continue  # the client's own marker: not trusted (see above)
            expected.discard(entry.key)
            if entry.operation is None and entry.value:
                out[entry.key] = entry.value
            else:
                out.pop(entry.key, None)  # deleted, purged or expired
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]
    return out


async def snapshot_map(
    js: JetStreamContext, stack: str, timeout: float = 5.0
) -> dict[str, HostState]:
    """Every host's status entry for ``stack`` by key (complete or an error: read_all)."""
    entries = await read_all(js, f"*.{stack}", timeout)
    return {k: HostState.from_json(asdict(e)) for k, e in entries.items() if e.stack == stack}


async def snapshot(js: JetStreamContext, stack: str, timeout: float = 5.0) -> list[HostState]:
    """Every host's status entry for ``stack`` (complete, see :func:`latest`)."""
    return list((await snapshot_map(js, stack, timeout)).values())


async def lease_bucket_kv(js: JetStreamContext, stack: str, ttl: float) -> KeyValue:
    try:
        return await js.key_value(lease_bucket(stack))
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(bucket=lease_bucket(stack), history=1, ttl=ttl)
        )


async def holders(js: JetStreamContext, stack: str) -> dict[str, dict[str, Any]]:
    """The leases of ``stack`` held now (key -> value)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in (await latest(js, lease_bucket(stack), ">")).items():
        with contextlib.suppress(ValueError):
            out[key] = json.loads(value)
    return out


class StatusView:
    """A live, complete view of one stack's entries in the status bucket (per agent).

    A re-check of a held stack must not cost the server a consumer and a message per
    host each time (measured: 100 agents re-checking that way kept nats-server too
    busy to answer). So the view reads the stack's entries once, completely
    (:func:`latest`), then follows every write on a plain subscription to the bucket's
    subjects (``$KV.setpoint-status.*.STACK``: no consumer). It reads everything again
    after a reconnect (messages sent meanwhile are lost) and whenever nothing arrived
    for 3 heartbeat periods (every host, this one included, writes at least once a
    period, so silence means the subscription is not delivering).
    """

    def __init__(self, stack: str, heartbeat: float, clock: Callable[[], float]) -> None:
        self.stack = stack
        self.heartbeat = heartbeat
        self.clock = clock
        self.entries: dict[str, HostState] = {}
        self._nc: Any = None
        self._sub: Any = None
        self._reconnects = -1
        self._synced = False
        self._last_message = 0.0
        self.reads = 0  # complete reads (for tests and the bench)

    async def hosts(self, nc: Any, js: JetStreamContext, timeout: float) -> list[HostState]:
        if nc is not self._nc or self._sub is None:
            await self.close()
            self._nc = nc
            subject = f"$KV.{STATUS_BUCKET}.*.{self.stack}"
            self._sub = await nc.subscribe(subject, cb=self._on_message)
            self._synced = False
        reconnects = int(nc.stats.get("reconnects", 0))
        silent = self.clock() - self._last_message > STALE_PERIODS * self.heartbeat
        if not self._synced or reconnects != self._reconnects or silent:
            self._reconnects = reconnects
            fresh = await snapshot_map(js, self.stack, timeout)
            # Writes that arrived while reading: keep whichever is newer, per key.
            for key, h in fresh.items():
                have = self.entries.get(key)
                if have is None or have.heartbeat <= h.heartbeat:
                    self.entries[key] = h
            for key in set(self.entries) - set(fresh):
                del self.entries[key]
            self._synced = True
            self._last_message = self.clock()
            self.reads += 1
        return list(self.entries.values())

    async def _on_message(self, msg: Any) -> None:
        self._last_message = self.clock()
        key = msg.subject[len(f"$KV.{STATUS_BUCKET}.") :]
        op = (msg.headers or {}).get("KV-Operation")
        if op in ("DEL", "PURGE"):
            self.entries.pop(key, None)
            return
        e = decode_entry(msg.data)
        if e is None or e.stack != self.stack:
            return
        h = HostState.from_json(asdict(e))
        have = self.entries.get(key)
        if have is None or have.heartbeat <= h.heartbeat:
            self.entries[key] = h

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class RolloutGate:
    """The controller's admission for Fleet stacks that declare a ``rollout``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connection: Connection,
        host: str,
        labels: Mapping[str, str],
        rollouts: Callable[[str], Rollout | None],
        on_wake: Callable[[str], None],
        *,
        heartbeat: float = 30.0,
        lease_ttl: float = LEASE_TTL,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.loop = loop
        self.connection = connection
        self.host = host
        self.labels = dict(labels)
        self.rollouts = rollouts
        self.on_wake = on_wake
        self.heartbeat = heartbeat
        self.lease_ttl = lease_ttl
        self.timeout = timeout
        self.clock = clock
        self.granted: dict[str, str] = {}  # stack -> revision it may move to
        self.wanted: dict[str, str] = {}  # stack -> the revision last asked about
        self.leases: dict[str, Lease] = {}  # stack -> the lease this host holds
        self._rechecks: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._specs: dict[str, str] = {}  # stack -> spec JSON recorded in SPEC_BUCKET
        self._renewer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._told: dict[str, dict[str, Any]] = {}  # stack -> detail of the last verdict given
        self._granted_verdict: dict[str, Verdict] = {}
        self._rng = random.Random()
        self.views: dict[str, StatusView] = {}  # stack -> its live status view

    # -- the engine's side (pass threads) --------------------------------------------

    def admit(self, stack: str, revision: str, current: str | None) -> Verdict:
        rollout = self.rollouts(stack)
        if rollout is None:
            return Verdict(True)
        self.wanted[stack] = revision
        if self.granted.get(stack) == revision:
            # Admitted by a re-check in the loop (which then woke the stack): its words.
            return self._granted_verdict.get(stack) or Verdict(True, "admitted earlier")
        fut = asyncio.run_coroutine_threadsafe(self.check(stack, revision, rollout), self.loop)
        try:
            verdict, recheck = fut.result(self.timeout + 1)
        except (concurrent.futures.TimeoutError, TimeoutError):
            fut.cancel()
            verdict, recheck = self._unreachable("no answer in time"), None
        self._told[stack] = verdict.detail
        if not verdict.allowed:
            self.loop.call_soon_threadsafe(self._schedule, stack, revision, recheck)
        return verdict

    def settled(self, stack: str, result: PassResult) -> None:
        """After a full pass: free the lease once Ready and Healthy at its revision."""
        lease = self.leases.get(stack)
        if lease is None or result.revision != lease.revision or not result.converged:
            return
        if any(h != "Healthy" for h, _ in result.health.values()):
            return
        asyncio.run_coroutine_threadsafe(self.release(stack), self.loop)

    # -- the loop's side ---------------------------------------------------------------

    def _unreachable(self, why: str) -> Verdict:
        return Verdict(
            False,
            f"the fleet store is unreachable ({why}): a new revision waits until it answers",
            {"state": "unreachable"},
        )

    def _nc(self) -> Any:
        nc = self.connection()
        if nc is None or not nc.is_connected:
            raise Unreachable("not connected")
        return nc

    def _js(self) -> JetStreamContext:
        js: JetStreamContext = self._nc().jetstream()
        return js

    async def check(
        self, stack: str, revision: str, rollout: Rollout
    ) -> tuple[Verdict, float | None]:
        """The verdict for (stack, revision), and when to look again if it waits."""
        try:
            return await asyncio.wait_for(self._check(stack, revision, rollout), self.timeout)
        except (TimeoutError, Unreachable, nats.errors.Error, OSError) as exc:
            return self._unreachable(str(exc) or type(exc).__name__), None

    async def _check(
        self, stack: str, revision: str, rollout: Rollout
    ) -> tuple[Verdict, float | None]:
        nc = self._nc()
        js: JetStreamContext = nc.jetstream()
        await self._record_spec(js, stack, rollout)
        view = self.views.get(stack)
        if view is None:
            view = self.views[stack] = StatusView(stack, self.heartbeat, self.clock)
        hosts = await view.hosts(nc, js, self.timeout)
        d = decide(rollout, self.host, self.labels, revision, hosts, self.clock(), self.heartbeat)
        if not d.allowed:
            await self.release(stack)  # not moving: a slot held for an older revision goes
            # Not the blocking host's name: the stack is woken (a pass, a journal line)
            # when the wave waited for or its state changes, not at each host of a wave.
            why = {k: v for k, v in d.detail.items() if k != "host"}
            return Verdict(False, d.reason, why), d.recheck_at
        if d.slots is None:
            return self._grant(stack, revision, Verdict(True, d.reason, d.detail)), None
        kv = await lease_bucket_kv(js, stack, self.lease_ttl)
        slot, held = await self._take(kv, stack, d.wave_name, d.slots, revision)
        if slot is None:
            who = ", ".join(sorted(held)) or "other hosts"
            return (
                Verdict(
                    False,
                    f"waiting for a slot in wave {d.wave_name}: {d.slots} of {d.slots} "
                    f"(maxParallel) held by {who}",
                    {"wave": d.wave_name, "state": "slots-full"},
                ),
                None,
            )
        self._ensure_renewer()
        verdict = Verdict(
            True,
            f"{d.reason}; lease {slot} of {d.slots} in wave {d.wave_name}",
            {"wave": d.wave_name, "slot": slot, "slots": d.slots, "waveHosts": d.wave_hosts},
        )
        return self._grant(stack, revision, verdict), None

    def _grant(self, stack: str, revision: str, verdict: Verdict) -> Verdict:
        self._granted_verdict[stack] = verdict
        self.granted[stack] = revision
        view = self.views.pop(stack, None)
        if view is not None:
            # Followed only while this host waits: the next rollout reads it afresh.
            asyncio.get_running_loop().create_task(view.close())
        return verdict

    async def _take(
        self, kv: KeyValue, stack: str, wave: str, slots: int, revision: str
    ) -> tuple[int | None, list[str]]:
        """Take (or keep, after a restart) a slot of ``wave``: (its index, or None; holders)."""
        value = json.dumps(
            {"host": self.host, "revision": revision, "wave": wave, "at": self.clock()}
        ).encode()
        free: list[int] = []
        held: list[str] = []
        for i in range(slots):
            key = slot_key(wave, i)
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # absent, deleted or expired
                free.append(i)
                continue
            try:
                owner = json.loads(entry.value or b"{}").get("host")
            except ValueError:
                owner = None
            if owner == self.host:
                # Ours (this process, or an earlier one that died mid-rollout): keep it.
                seq = await kv.update(key, value, last=entry.revision)
                self.leases[stack] = Lease(stack, key, revision, wave, seq)
                return i, held
            held.append(str(owner))
        for i in free:
            key = slot_key(wave, i)
            try:
                seq = await kv.create(key, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                held.append("(just taken)")
                continue  # another host was quicker
            self.leases[stack] = Lease(stack, key, revision, wave, seq)
            return i, held
        return None, held

    async def release(self, stack: str) -> None:
        """Give the stack's lease back (compare-and-set: never someone else's)."""
        lease = self.leases.pop(stack, None)
        if lease is None:
            return
        try:
            js = self._js()
            kv = await lease_bucket_kv(js, stack, self.lease_ttl)
            await kv.delete(lease.key, last=lease.seq)
            log.info("stack %s: lease %s released", stack, lease.key)
        except (Unreachable, nats.errors.Error, OSError, TimeoutError) as exc:
            # It expires by itself (max_age) if it cannot be deleted now.
            log.info("stack %s: lease %s left to expire: %s", stack, lease.key, exc)

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while self.leases:
            await asyncio.sleep(self.lease_ttl / 3)
            for stack, lease in list(self.leases.items()):
                try:
                    kv = await lease_bucket_kv(self._js(), stack, self.lease_ttl)
                    value = json.dumps(
                        {
                            "host": self.host,
                            "revision": lease.revision,
                            "wave": lease.wave,
                            "at": self.clock(),
                        }
                    ).encode()
                    lease.seq = await kv.update(lease.key, value, last=lease.seq)
                except nats.js.errors.KeyWrongLastSequenceError:
                    # It expired (we could not renew in time) and another host took it.
                    log.warning("stack %s: lease %s was lost; not renewed", stack, lease.key)
                    if self.leases.get(stack) is lease:
                        del self.leases[stack]
                except (Unreachable, nats.errors.Error, OSError, TimeoutError) as exc:
                    log.info("stack %s: lease %s not renewed yet: %s", stack, lease.key, exc)

    def _schedule(self, stack: str, revision: str, at: float | None) -> None:
        """Re-check a held stack later, in the loop; wake its worker once it may move."""
        have = self._rechecks.get(stack)
        if have is not None and not have[1].done():
            if have[0] == revision:
                return  # already re-checking this revision
            have[1].cancel()  # a newer revision replaces the one it was waiting for
        self._rechecks[stack] = (revision, asyncio.create_task(self._recheck(stack, revision, at)))

    async def _recheck(self, stack: str, revision: str, at: float | None) -> None:
        while self.wanted.get(stack) == revision and self.granted.get(stack) != revision:
            rollout = self.rollouts(stack)
            if rollout is None:
                break
            # A re-check reads the live view (no request) until leases are to be taken:
            # every healthyFor/4, 0.5-5 s, jittered so a wave does not take leases in
            # step; sooner when time alone is missing (an earlier wave soaking).
            every = min(RECHECK_MAX, max(RECHECK_MIN, rollout.healthy_for / 4))
            every *= self._rng.uniform(0.8, 1.2)
            delay = every if at is None else min(every, max(0.05, at - self.clock()))
            await asyncio.sleep(delay)
            if self.wanted.get(stack) != revision:
                return
            verdict, at = await self.check(stack, revision, rollout)
            if verdict.allowed:
                break
            if verdict.detail != self._told.get(stack):
                # Why it waits changed (the canary stalled, a slot holder changed): a pass
                # asks again, so status and journal say it. Not on every re-check.
                self._told[stack] = verdict.detail
                self.on_wake(stack)
        if self.granted.get(stack) == revision:
            self.on_wake(stack)

    async def _record_spec(self, js: JetStreamContext, stack: str, rollout: Rollout) -> None:
        spec = json.dumps(rollout.model_dump(by_alias=True, exclude_none=True), sort_keys=True)
        if self._specs.get(stack) == spec:
            return
        try:
            kv = await js.key_value(SPEC_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(KeyValueConfig(bucket=SPEC_BUCKET, history=1))
        try:
            same = (await kv.get(stack)).value == spec.encode()
        except nats.js.errors.KeyNotFoundError:
            same = False
        if not same:
            await kv.put(stack, spec.encode())
        self._specs[stack] = spec

    async def close(self) -> None:
        """Stop re-checking and renewing. Leases are not released: a host stopped mid-apply
        is still moving; its slot frees itself when max_age expires it, or is taken back
        by this host's next agent (same ``host:``)."""
        for t in [*(t for _, t in self._rechecks.values()), self._renewer]:
            if t is not None:
                t.cancel()
        for view in self.views.values():
            await view.close()


def attach(agent: Agent) -> RolloutGate | None:
    """Make a rollout gate the agent's admission (in its loop), if it has a Fleet and a bus.

    Called by :meth:`setpoint.engine.agent.Agent.run`; returns the gate (or None).
    """
    bus, fleet = agent.fleetbus, agent.controller.fleet
    if bus is None or fleet is None:
        return None
    loop = asyncio.get_running_loop()

    def connection() -> Any:
        return bus.client.nc

    def rollout_of(stack: str) -> Rollout | None:
        return fleet.rollouts.get(stack) if stack in fleet.names else None

    gate = RolloutGate(
        loop,
        connection,
        bus.host,
        agent.controller.labels,
        rollout_of,
        agent.request,
        heartbeat=bus.cfg.heartbeat_seconds,
    )
    agent.controller.admissions.admission = gate

    async def close_on_stop() -> None:
        await agent.stop.wait()
        await gate.close()

    gate._closer = loop.create_task(close_on_stop())
    return gate
