"""The agent loop: poll sources, reconcile stacks on new revisions, resync, retry, react to events.

Called by ``setpoint agent``. Triggers (a new revision, the resync timer, a retry,
a watch event, a webhook, ``setpoint sync``) are turned into passes on a per-stack
serial queue: a stack never has two passes at once, and requests that arrive
during a pass collapse into one follow-up pass. Passes run in one worker thread
(the state DB and the providers are used from one thread); git runs in another
so a slow remote never delays drift correction.

Events:

- watches (:mod:`setpoint.engine.watch`): after each full pass the stack's managed
  paths are watched; a change asks for a pass over only the resources concerned,
  at once (no debounce timer: a burst collapses into the pass under way plus one
  follow-up). The re-check after the agent's own write finds nothing to do and
  writes nothing, so it cannot loop; a resource that is nevertheless reverted
  more than ``FLAP_LIMIT`` times within ``FLAP_WINDOW`` seconds (two agents, or
  another tool, fighting over it) is re-checked at most once a second until it
  calms down. Resources the kernel would not let us watch are polled.
- webhooks and ``POST /sync`` (:mod:`setpoint.api`): ``refresh_source`` wakes the
  source's poll loop (a storm of calls collapses into one check and at most one
  fetch); ``sync`` fetches, runs a full pass and returns its result.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import importlib
import json
import logging
import os
import random
import secrets
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from setpoint.atomic import write_atomic
from setpoint.config import StackConfig
from setpoint.engine.agent_status import agent_status
from setpoint.engine.controller import Controller
from setpoint.engine.outcome import REVERTED, PassResult, result_json
from setpoint.engine.watch import StackWatches, fallback_poll_interval
from setpoint.obs.logs import log_pass_start
from setpoint.state import JournalEntry

log = logging.getLogger("setpoint.agent")

TOKEN_FILE = "api-token"  # noqa: S105 (a file name)
AGENT_FILE = "agent.json"
SUSPENDED_FILE = "suspended.json"
_T = TypeVar("_T")
FLAP_LIMIT = 20
FLAP_WINDOW = 10.0
# Journal retention (state/retention.py): checked at start, then this often.
TRIM_INTERVAL = 600.0
# Between two trim batches, at least (and twice the batch's time): a pass waiting for
# the write lock wakes from SQLite's busy sleeps (1, 2, 5, 10 ... ms) inside the pause.
TRIM_PAUSE = 0.01


def jittered(seconds: float, rng: random.Random, spread: float = 0.1) -> float:
    """``seconds`` ±10%: a fleet of agents must not poll the Git server in lockstep."""
    return seconds * rng.uniform(1 - spread, 1 + spread)


def backoff(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential back-off with jitter, capped: base, 2·base, 4·base ... ≤ cap."""
    return float(min(cap, base * 2 ** max(failures - 1, 0)) * rng.uniform(0.8, 1.0))


@dataclass
class _StackQueue:
    cfg: StackConfig
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    only: set[str] | None = None  # None = full pass requested
    failures: int = 0
    event_at: float | None = None  # monotonic time of the first watch event waiting
    waiters: list[asyncio.Future[PassResult]] = field(default_factory=list)
    passes: int = 0
    partial_passes: int = 0
    last_pass: float | None = None
    stopped: bool = False  # the stack left this host (a Fleet change): the worker ends


class Agent:
    def __init__(
        self,
        controller: Controller,
        *,
        rng: random.Random | None = None,
        on_pass: Callable[[PassResult], None] | None = None,
        webhook_secret: bytes | None = None,
        api: bool | None = None,
    ) -> None:
        self.controller = controller
        self.config = controller.config
        self.rng = rng or random.Random()
        self.on_pass = on_pass
        self.stop = asyncio.Event()
        # Stacks' passes run concurrently, up to maxConcurrentStacks at once; engine code
        # is serialized by the controller's pass gate, given up only while a provider
        # waits (a rollout's readiness), so no stack waits for another's rollout.
        self._passes = ThreadPoolExecutor(
            self.config.max_concurrent_stacks, thread_name_prefix="setpoint-pass"
        )
        self._git = ThreadPoolExecutor(1, thread_name_prefix="setpoint-git")
        self._trimmer = ThreadPoolExecutor(1, thread_name_prefix="setpoint-trim")
        self._queues = {s.name: _StackQueue(s) for s in self.config.stacks if not s.suspend}
        self._fetched_once = {s.name: asyncio.Event() for s in self.config.sources}
        self._refresh = {s.name: asyncio.Event() for s in self.config.sources}
        self._moved: set[str] = set()  # sources whose next check fetches at once
        self.checks = {s.name: 0 for s in self.config.sources}  # polls of the remote
        self.webhook_secret = webhook_secret
        self.webhook_refused = 0
        self.api_token = secrets.token_urlsafe(32)
        # None: as the config says (``listen: off`` is no API; then setpoint.api.server,
        # FastAPI and uvicorn are never imported).
        self.api_enabled = self.config.api_on if api is None else api
        self.api_address: str | None = None
        self.api_error: str | None = None
        self._api_server: Any = None
        self.watch_poll = fallback_poll_interval()
        self._watches: dict[str, StackWatches] = {}
        self._flaps: dict[tuple[str, str], collections.deque[float]] = {}
        self._calm_at: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.started = time.time()
        # Stacks suspended through the API (kept in the state dir across restarts).
        self.suspended = read_suspended(Path(self.config.state))
        for name in self.suspended:
            self._queues.pop(name, None)
        # Events, logs, metrics and notifications of what the agent does (setpoint.obs);
        # it wraps ``on_pass`` and listens to the journal.
        from setpoint.obs.observer import Observer

        self.obs = Observer(self)
        # The fleet bus (NATS: commit fan-out, fleet status) when configured; nats is
        # imported only then.
        self.fleetbus: Any = None
        if self.config.nats is not None:
            from setpoint.fleetbus.bus import FleetBus

            self.fleetbus = FleetBus(self)

    # -- requests ---------------------------------------------------------------------

    @property
    def stack_names(self) -> set[str]:
        return set(self._queues)

    @property
    def source_urls(self) -> dict[str, str]:
        return {s.name: s.url for s in self.config.sources}

    def request(
        self,
        stack: str,
        only: set[str] | None = None,
        *,
        waiter: asyncio.Future[PassResult] | None = None,
    ) -> None:
        """Ask for a pass of ``stack`` (of only some resources, if ``only`` is given)."""
        q = self._queues.get(stack)
        if q is None:
            return
        if not q.wake.is_set():
            q.only = None if only is None else set(only)
        elif q.only is not None:
            # Requests that arrive before the pass starts collapse into one pass.
            q.only = None if only is None else q.only | only
        if waiter is not None:
            q.waiters.append(waiter)
        q.wake.set()

    def request_source(self, source: str) -> None:
        for q in self._queues.values():
            if q.cfg.source == source:
                self.request(q.cfg.name)

    def refresh_source(self, source: str, *, moved: bool = False) -> None:
        """Check the source now (a webhook): calls during a check collapse into one more.

        ``moved``: a fleet notice named a commit we lack: fetch without an ls-remote first.
        """
        ev = self._refresh.get(source)
        if ev is not None:
            if moved:
                self._moved.add(source)
            ev.set()

    async def sync(self, stack: str | None = None) -> list[dict[str, Any]]:
        """Fetch, then one full pass of ``stack`` (or every active stack); their results."""
        loop = asyncio.get_running_loop()
        names = [stack] if stack is not None else sorted(self._queues)
        for source in sorted({self._queues[n].cfg.source for n in names}):
            self.checks[source] += 1
            new = await loop.run_in_executor(self._git, self.controller.poll, source)
            self._fetched_once[source].set()
            if new:
                self.request_source(source)
        futures = []
        for n in names:
            fut: asyncio.Future[PassResult] = loop.create_future()
            self.request(n, waiter=fut)
            futures.append(fut)
        results = await asyncio.gather(*futures)
        return [result_json(r) for r in results]

    # -- watch events -----------------------------------------------------------------

    def _notify_for(self, stack: str) -> Callable[[set[str]], None]:
        def notify(ids: set[str]) -> None:  # watcher thread
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._on_watch, stack, ids, time.monotonic())

        return notify

    def _on_watch(self, stack: str, ids: set[str], at: float) -> None:
        q = self._queues.get(stack)
        if q is None or self.stop.is_set():
            return
        calm = self._calm_at.get(stack)
        now = time.monotonic()
        if calm is not None and now < calm:
            # A flapping resource: at most one watch-driven pass a second.
            assert self._loop is not None
            self._loop.call_at(self._loop.time() + (calm - now), self._on_watch, stack, ids, at)
            return
        if q.event_at is None or not q.wake.is_set():
            q.event_at = at
        self.request(stack, ids)

    def _count_flaps(self, result: PassResult) -> None:
        now = time.monotonic()
        for o in result.outcomes:
            if o.state != REVERTED:
                continue
            d = self._flaps.setdefault((result.stack, o.resource), collections.deque())
            d.append(now)
            while d and d[0] < now - FLAP_WINDOW:
                d.popleft()
            if len(d) > FLAP_LIMIT:
                if self._calm_at.get(result.stack, 0) < now:
                    log.warning(
                        "stack %s: %s was reverted %d times in %gs (something keeps changing "
                        "it); re-checking it at most once a second",
                        result.stack,
                        o.resource,
                        len(d),
                        FLAP_WINDOW,
                    )
                self._calm_at[result.stack] = now + 1.0

    def _gated(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` in a pass thread under the pass gate (it touches engine state)."""
        with self.controller.gate.hold():
            return fn(*args)

    def _after_full_pass(self, stack: str) -> None:
        """Pass thread: (re)watch what the pass enforced; record whether all is watched."""
        w = self._watches.get(stack)
        if w is None:
            w = self._watches[stack] = StackWatches(
                stack, self.controller.reconciler.providers, self._notify_for(stack)
            )
        try:
            before = set(w.ids)
            if w.update(self.controller.reconciler.enforced(stack)) or w.unwatched():
                w.report(self.controller.db, self.watch_poll)
            added = w.ids - before
            if added and before and self._loop is not None:
                # Newly declared resources were applied before their watch existed: one
                # re-check of just those closes that window (a no-op when untouched).
                self._loop.call_soon_threadsafe(self.request, stack, added)
        except Exception:
            log.exception("stack %s: setting up watches failed; relying on polling", stack)

    async def _poll_unwatched(self) -> None:
        """Re-check what the kernel would not let us watch (and try to watch it again)."""
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            await self._sleep(self.watch_poll)
            for stack, w in list(self._watches.items()):
                if not w.unwatched():
                    continue
                await loop.run_in_executor(self._passes, self._gated, w.retry)
                missing = w.unwatched()
                if missing:
                    self.request(stack, missing)
                else:
                    await loop.run_in_executor(
                        self._passes, self._gated, w.report, self.controller.db, self.watch_poll
                    )

    async def _trim_journal(self) -> None:
        """Keep the journal to the ``journal:`` config: at start, then every TRIM_INTERVAL.

        On a thread of its own, in short batches: passes go on meanwhile.
        """
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            await loop.run_in_executor(
                self._trimmer, self.controller.trim_journal, None, self._trim_pause
            )
            await self._sleep(jittered(TRIM_INTERVAL, self.rng))

    def _trim_pause(self, took: float) -> bool:
        """Trim thread, between two batches: let a waiting pass in; stop with the agent."""
        time.sleep(max(TRIM_PAUSE, 2 * took))
        return not self.stop.is_set()

    # -- main -------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        tasks = [asyncio.create_task(self._poll(s.name, s.interval)) for s in self.config.sources]
        self._workers = [asyncio.create_task(self._worker(q)) for q in self._queues.values()]
        tasks.append(asyncio.create_task(self._poll_unwatched()))
        tasks.append(asyncio.create_task(self._trim_journal()))
        if self.fleetbus is not None:
            tasks.append(asyncio.create_task(self.fleetbus.run()))
        if self.fleetbus is not None and self.controller.fleet is not None:
            # Only a Fleet's stacks have rollouts: plain stacks never load the gate.
            from setpoint.fleetbus.rollout import attach

            attach(self)  # rollout waves: new revisions of Fleet stacks wait for their turn
        api_task = asyncio.create_task(self._run_api())
        log.info(
            "agent started: %d source(s), %d stack(s)", len(self.config.sources), len(self._queues)
        )
        await self.stop.wait()
        log.info("stopping: finishing the pass under way")
        for q in self._queues.values():
            q.wake.set()  # wake idle workers so they see ``stop``
        tasks += self._workers
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._api_server is not None:
            self._api_server.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(api_task, timeout=5)
        self._passes.shutdown(wait=True)
        self._git.shutdown(wait=True, cancel_futures=True)
        self._trimmer.shutdown(wait=True)  # stops after its batch under way
        for w in self._watches.values():
            w.close()
        self.obs.close()

    async def _run_api(self) -> None:
        if not self.api_enabled:
            # No listener (``listen: off``): say so in agent.json, so `setpoint status`
            # reads the state dir and `setpoint sync` explains why it cannot ask us.
            _write_private(
                Path(self.config.state) / AGENT_FILE,
                json.dumps({"pid": os.getpid(), "listen": None}) + "\n",
            )
            with contextlib.suppress(FileNotFoundError):  # a token for no API
                (Path(self.config.state) / TOKEN_FILE).unlink()
            return
        from setpoint.api.listener import bind_listener, first_connection

        try:
            sock, address = bind_listener(self.config.listen)
        except OSError as exc:
            # Drift correction does not depend on the API: keep running, say why.
            self.api_error = f"cannot listen on {self.config.listen}: {exc.strerror or exc}"
            log.error("%s; the HTTP API (status, sync, webhooks) is off", self.api_error)
            return
        self.api_address = address
        self._write_api_files()
        scheme = "https" if self.config.api.tls is not None else "http"
        log.info("API listening on %s://%s", scheme, address)
        try:
            # FastAPI and uvicorn (about 13 MiB) are loaded when the first client
            # connects (it waits in the backlog meanwhile): many agents are never asked.
            if not await first_connection(sock, self.stop):
                sock.close()
                return
            # In a thread: passes and polls go on during the import.
            loop = asyncio.get_running_loop()
            mod = await loop.run_in_executor(None, importlib.import_module, "setpoint.api.server")
            if self.stop.is_set():
                sock.close()
                return
            server = mod.ApiServer(self, self.config.listen)
            server.address = address
        except Exception as exc:
            sock.close()
            self.api_error = f"the HTTP API could not start: {exc}"
            log.exception("%s; reconciling goes on without it", self.api_error)
            return
        except BaseException:  # cancelled
            sock.close()
            raise
        self._api_server = server
        await server.serve(sock)

    def _write_api_files(self) -> None:
        """STATE/api-token (0600: the token for POST /sync) and STATE/agent.json (where)."""
        state = Path(self.config.state)
        _write_private(state / TOKEN_FILE, self.api_token + "\n")
        info: dict[str, Any] = {"pid": os.getpid(), "listen": self.api_address}
        tls = self.config.api.tls
        if tls is not None:  # clients on this host check the agent's certificate with it
            info |= {"scheme": "https", "certFile": str(tls.cert_file)}
        _write_private(state / AGENT_FILE, json.dumps(info) + "\n")

    def _sync_stacks(self) -> None:
        """Start a worker for each stack the Fleet added; stop those it removed."""
        wanted = {s.name: s for s in self.controller.config.stacks if not s.suspend}
        wanted = {n: s for n, s in wanted.items() if n not in self.suspended}
        for name in set(self._queues) - set(wanted):
            q = self._queues.pop(name)
            q.stopped = True
            q.wake.set()
            w = self._watches.pop(name, None)
            if w is not None:
                w.close()
            log.info("stack %s: no longer runs on this host (Fleet)", name)
        for name, cfg in wanted.items():
            have = self._queues.get(name)
            if have is None:
                have = self._queues[name] = _StackQueue(cfg)
                self._workers.append(asyncio.create_task(self._worker(have)))
                log.info("stack %s: now runs on this host (Fleet)", name)
            elif have.cfg != cfg:
                have.cfg = cfg  # policy changed in the Fleet file (resync, drift, prune)
                have.wake.set()
        self.obs.refresh_rules()  # the Fleet's stacks' notifications

    async def _poll(self, source: str, interval: float) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        fleet = self.controller.fleet
        # Loops test ``stop`` rather than rely on cancellation alone: on Python 3.11
        # asyncio.wait_for can swallow a cancel when its inner wait completes at once.
        while not self.stop.is_set():
            self._refresh[source].clear()
            moved = source in self._moved
            self._moved.discard(source)
            self.checks[source] += 1
            new = await loop.run_in_executor(self._git, self.controller.poll, source, moved)
            first = not self._fetched_once[source].is_set()
            if fleet is not None and fleet.ref.source == source:
                # Before the source's stacks run: the Fleet may add or remove some.
                await loop.run_in_executor(self._passes, self.controller.refresh_fleet)
                self._sync_stacks()
            self._fetched_once[source].set()
            if new or first:
                self.request_source(source)
            if self.controller.fetch_errors[source]:
                failures += 1
                delay = min(
                    jittered(interval, self.rng),
                    backoff(failures, self.config.retry.base, self.config.retry.max, self.rng),
                )
            else:
                failures = 0
                delay = jittered(interval, self.rng)
            await self._sleep(delay, self._refresh[source])

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        waits = [asyncio.ensure_future(self.stop.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _worker(self, q: _StackQueue) -> None:
        loop = asyncio.get_running_loop()
        await self._fetched_once[q.cfg.source].wait()
        resync = loop.time()  # the first pass is a full one
        retry_at: float | None = None
        while not self.stop.is_set() and not q.stopped:
            now = loop.time()
            due = min(resync, retry_at) if retry_at is not None else resync
            if not q.wake.is_set() and due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(q.wake.wait(), timeout=due - now)
            if self.stop.is_set() or q.stopped:
                break
            only = q.only if q.wake.is_set() else None
            event_at = q.event_at if only is not None else None
            q.wake.clear()
            q.only = None
            q.event_at = None
            waiters, q.waiters = q.waiters, []
            log_pass_start(q.cfg.name, only)
            result = await loop.run_in_executor(
                self._passes,
                functools.partial(
                    self.controller.reconcile, q.cfg.name, only=only, event_at=event_at
                ),
            )
            if q.stopped:
                break
            q.passes += 1
            q.partial_passes += only is not None
            q.last_pass = time.time()
            for w in waiters:
                if not w.done():
                    w.set_result(result)
            if self.on_pass is not None:
                self.on_pass(result)
            if only is None:
                resync = loop.time() + jittered(q.cfg.resync, self.rng)
                await loop.run_in_executor(
                    self._passes, self._gated, self._after_full_pass, q.cfg.name
                )
            else:
                self._count_flaps(result)
            if _retryable(result):
                q.failures += 1
                retry_at = loop.time() + backoff(
                    q.failures, self.config.retry.base, self.config.retry.max, self.rng
                )
            else:
                q.failures = 0
                retry_at = None

    # -- suspend / resume, live reads (the API) ---------------------------------------

    def suspend_stack(self, name: str) -> None:
        """No more passes of ``name`` (the one under way finishes) until :meth:`resume_stack`."""
        self.suspended.add(name)
        write_suspended(Path(self.config.state), self.suspended)
        q = self._queues.pop(name, None)
        if q is not None:
            q.stopped = True
            q.wake.set()
        w = self._watches.pop(name, None)
        if w is not None:
            w.close()
        self.controller.db.append(
            JournalEntry(time.time(), name, "suspended", None, None, f"stack {name} suspended")
        )

    def resume_stack(self, name: str) -> None:
        """Passes of ``name`` again, starting with a full one at once."""
        self.suspended.discard(name)
        write_suspended(Path(self.config.state), self.suspended)
        cfg = next((s for s in self.controller.config.stacks if s.name == name), None)
        if cfg is not None and not cfg.suspend and name not in self._queues:
            q = self._queues[name] = _StackQueue(cfg)
            self._workers.append(asyncio.create_task(self._worker(q)))
        self.controller.db.append(
            JournalEntry(time.time(), name, "resumed", None, None, f"stack {name} resumed")
        )

    async def in_pass_thread(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in a pass thread under the pass gate, so it never races a pass."""
        return await asyncio.get_running_loop().run_in_executor(self._passes, self._gated, fn)

    # -- status -----------------------------------------------------------------------

    def status_json(self) -> dict[str, Any]:
        """What ``GET /status`` returns: the stored stack status plus the agent's live view."""
        return agent_status(self)


def read_suspended(state: Path) -> set[str]:
    """The stacks suspended through the API (``STATE/suspended.json``)."""
    try:
        names = json.loads((state / SUSPENDED_FILE).read_text())
    except (OSError, ValueError):
        return set()
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def write_suspended(state: Path, names: set[str]) -> None:
    _write_private(state / SUSPENDED_FILE, json.dumps(sorted(names)) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically (never readable by others)."""
    write_atomic(path, text.encode(), mode=0o600)


def _retryable(result: PassResult) -> bool:
    """Failed resources are retried with back-off; a refused revision waits for a new commit."""
    return bool(
        result.count("failed", "waiting")
        or result.prune_failures
        or (result.errors and result.refused is None)  # e.g. the tree could not be exported
    )
