"""The agent's side of the fleet bus: commit fan-out in, webhook notices out, status out.

Created by :class:`setpoint.engine.agent.Agent` when the config has ``nats:``; its
:meth:`FleetBus.run` is one of the agent's tasks (same asyncio loop). It

- subscribes to the subject of each of the agent's sources
  (:mod:`setpoint.fleetbus.subjects`); a notice for a ref the source may follow,
  naming a commit it has not fetched, makes the agent check the source at once
  (``Agent.refresh_source``; a storm collapses into one check), after a random delay up
  to ``spreadSeconds``: a fetch straight away when the notice names a commit (the
  ls-remote would only confirm the move; an unmoved ref costs git fetch the same two
  requests as an ls-remote), else ls-remote and fetch only if moved;
- publishes what the agent's own webhook (``POST /hooks/git``) hears, so the hosts
  no webhook can reach learn it too (:meth:`publish`);
- writes each of its stacks' status to the ``setpoint-status`` bucket
  (:mod:`setpoint.fleetbus.status`) after every pass that changed it and at least
  every ``heartbeatSeconds``, and deletes the entries of stacks that left the host.

NATS down means: no fan-out (polling goes on), status not written (readers see the
heartbeat age and, after 3 periods, unknown). Nothing here ever blocks a pass.

Other parts of the agent that need the bus (a rollout gate) use :attr:`client`
(``client.nc`` is the live connection or None), :attr:`loop` and :meth:`call`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from setpoint.fleetbus.client import BusClient
from setpoint.fleetbus.status import BUCKET, Entry, entry_for, parse_key, read_all, status_key
from setpoint.fleetbus.subjects import CommitNotice, decode_notice, ref_may_match, subject_for

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from setpoint.engine.agent import Agent
    from setpoint.engine.outcome import PassResult

log = logging.getLogger("setpoint.fleetbus")
_T = TypeVar("_T")


async def status_bucket(nc: Client) -> Any:
    """The status bucket (created if missing: one value per key, file storage)."""
    import nats.js.errors

    js = nc.jetstream()
    try:
        return await js.key_value(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(
                bucket=BUCKET, history=1, description="setpoint: each host's stacks' status"
            )
        except nats.js.errors.BadRequestError:
            return await js.key_value(BUCKET)  # another agent created it meanwhile


class FleetBus:
    def __init__(self, agent: Agent) -> None:
        cfg = agent.config.nats
        assert cfg is not None
        self.agent = agent
        self.cfg = cfg
        self.host = agent.config.host
        self.client = BusClient(cfg, f"setpoint-agent {self.host}", on_connect=self._on_connect)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.kv: Any = None
        self._written: dict[str, Entry] = {}  # stack -> what we last wrote (or found)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._subjects: dict[str, list[str]] = {}
        for s in agent.config.sources:
            self._subjects.setdefault(subject_for(s.url), []).append(s.name)
        self.received = 0  # notices for our sources
        self.acted = 0  # ... that made us check a source
        self.published = 0
        self.status_writes = 0
        self.status_error: str | None = None
        self._chained = agent.on_pass
        agent.on_pass = self._on_pass

    # -- the agent's hooks ------------------------------------------------------------

    def _on_pass(self, result: PassResult) -> None:
        if self._chained is not None:
            self._chained(result)
        self._dirty.add(result.stack)
        self._wake.set()

    def publish(self, notices: list[CommitNotice]) -> None:
        """Publish commit notices (from the agent's webhook); a no-op while disconnected."""
        nc = self.client.nc
        if nc is None or not notices:
            return
        loop = asyncio.get_running_loop()
        for n in notices:
            task = loop.create_task(self._publish(nc, n))
            task.add_done_callback(_log_failure)

    async def _publish(self, nc: Client, notice: CommitNotice) -> None:
        await nc.publish(notice.subject, notice.encode())
        await nc.flush(timeout=2)
        self.published += 1
        log.info("published commit %s of %s to the fleet", (notice.commit or "?")[:12],
                 notice.url)

    def call(self, make: Callable[[], Awaitable[_T]], timeout: float) -> _T:
        """From another thread (a pass): run ``make()`` in the agent's loop, wait for it."""
        if self.loop is None or self.loop.is_closed():
            raise ConnectionError("the fleet bus is not running")
        fut = asyncio.run_coroutine_threadsafe(_awaited(make), self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"the fleet bus did not answer within {timeout:g}s") from None

    def info(self) -> dict[str, Any]:
        """For ``GET /status``: the bus's state and counters."""
        return {
            "connected": self.client.connected,
            "error": self.client.error,
            "host": self.host,
            "subjects": sorted(self._subjects),
            "received": self.received,
            "acted": self.acted,
            "published": self.published,
            "status_writes": self.status_writes,
            "status_error": self.status_error,
        }

    # -- connection ---------------------------------------------------------------------

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        stop = self.agent.stop
        beat = asyncio.create_task(self._status_loop(stop))
        try:
            await self.client.run(stop)
        finally:
            beat.cancel()
            with contextlib.suppress(BaseException):
                await beat

    async def _on_connect(self, nc: Client) -> None:
        for subject in self._subjects:
            await nc.subscribe(subject, cb=self._on_message)
        kv = await status_bucket(nc)
        if not self._written:
            await self._seed(nc.jetstream())
        self.kv = kv
        self._dirty.update(self._stacks())  # a reconnect: refresh every entry now
        self._wake.set()

    async def _seed(self, js: Any) -> None:
        """Our entries from before a restart: ``ready_since`` carries over at the same revision."""
        for key, entry in (await read_all(js, status_key(self.host, "*"))).items():
            if parse_key(key)[0] == self.host and entry.stack == parse_key(key)[1]:
                self._written[entry.stack] = entry

    # -- fan-out in ---------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        notice = decode_notice(msg.data)
        if notice is None or subject_for(notice.url) != msg.subject:
            return  # not a notice, or for another repository: ignored
        self.received += 1
        ctl = self.agent.controller
        loop = asyncio.get_running_loop()
        for name in self._subjects.get(msg.subject, []):
            src = self.agent.config.source(name)
            if isinstance(src.ref, str) and not ref_may_match(src.ref, notice.ref):
                continue
            if notice.commit is not None and ctl.fetched.get(name) == notice.commit:
                continue  # we have it already (the webhook reached us too)
            self.acted += 1
            delay = self.agent.rng.uniform(0, self.cfg.spread_seconds)
            log.info("source %s: commit %s announced on the fleet bus; checking%s", name,
                     (notice.commit or "?")[:12], f" in {delay:.1f}s" if delay >= 0.1 else "")
            # A named commit we lack: fetch at once (no ls-remote to confirm a move).
            moved = notice.commit is not None and ctl.fetched.get(name) is not None
            loop.call_later(delay, functools.partial(self.agent.refresh_source, name,
                                                     moved=moved))

    # -- status out ---------------------------------------------------------------------

    def _stacks(self) -> set[str]:
        return {s.name for s in self.agent.controller.config.stacks}

    async def _status_loop(self, stop: asyncio.Event) -> None:
        period = self.cfg.heartbeat_seconds
        next_beat = time.monotonic()
        while not stop.is_set():
            timeout = max(next_beat - time.monotonic(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            beat = time.monotonic() >= next_beat
            if beat:
                next_beat = time.monotonic() + period
            if self.kv is None or not self.client.connected:
                continue  # written again at the next connect (every stack is marked)
            try:
                await self._write(all_=beat)
                self.status_error = None
            except Exception as exc:
                # The bucket is unreachable (NATS restarting): keep the marks, try again.
                self.status_error = str(exc) or type(exc).__name__
                log.debug("writing fleet status failed: %s", self.status_error)
                await asyncio.sleep(min(period, 1.0))
                self._wake.set()

    async def _write(self, all_: bool) -> None:
        now = time.time()
        labels = self.agent.controller.labels
        period = self.cfg.heartbeat_seconds
        stacks = self._stacks()
        todo = stacks if all_ else self._dirty & stacks
        statuses = {s.stack: s for s in self.agent.controller.db.all_status()}
        for name in sorted(todo):
            st = statuses.get(name)
            if st is None:
                self._dirty.discard(name)
                continue  # no pass yet: nothing to say
            prev = self._written.get(name)
            entry = entry_for(self.host, labels, st, prev, now, period)
            if not all_ and entry.same_state(prev):
                self._dirty.discard(name)
                continue
            await self.kv.put(status_key(self.host, name), entry.encode())
            self.status_writes += 1
            self._written[name] = entry
            self._dirty.discard(name)
        for name in sorted(set(self._written) - stacks):
            await self.kv.delete(status_key(self.host, name))  # the stack left this host
            del self._written[name]


async def _awaited(make: Callable[[], Awaitable[_T]]) -> _T:
    return await make()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("publishing a commit notice failed: %s", task.exception())
