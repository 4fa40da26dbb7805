"""The agent loop: poll sources, reconcile stacks on new revisions, resync, retry.

Called by ``setpoint agent``. Triggers (a new revision, the resync timer, a retry,
later watch events and webhooks) are turned into passes on a per-stack serial
queue: a stack never has two passes at once, and requests that arrive during a
pass collapse into one follow-up pass. Passes run in one worker thread (the
state DB and the providers are used from one thread); git runs in another so a
slow remote never delays drift correction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from setpoint.config import StackConfig
from setpoint.engine.controller import Controller
from setpoint.engine.outcome import PassResult

log = logging.getLogger("setpoint.agent")


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


class Agent:
    def __init__(
        self,
        controller: Controller,
        *,
        rng: random.Random | None = None,
        on_pass: Callable[[PassResult], None] | None = None,
    ) -> None:
        self.controller = controller
        self.config = controller.config
        self.rng = rng or random.Random()
        self.on_pass = on_pass
        self.stop = asyncio.Event()
        self._passes = ThreadPoolExecutor(1, thread_name_prefix="setpoint-pass")
        self._git = ThreadPoolExecutor(1, thread_name_prefix="setpoint-git")
        self._queues = {s.name: _StackQueue(s) for s in self.config.stacks if not s.suspend}
        self._fetched_once = {s.name: asyncio.Event() for s in self.config.sources}

    # -- requests ---------------------------------------------------------------------

    def request(self, stack: str, only: set[str] | None = None) -> None:
        """Ask for a pass of ``stack`` (of only some resources, if ``only`` is given)."""
        q = self._queues.get(stack)
        if q is None:
            return
        if not q.wake.is_set():
            q.only = None if only is None else set(only)
        elif q.only is not None:
            # Requests that arrive before the pass starts collapse into one pass.
            q.only = None if only is None else q.only | only
        q.wake.set()

    def request_source(self, source: str) -> None:
        for q in self._queues.values():
            if q.cfg.source == source:
                self.request(q.cfg.name)

    # -- main -------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        tasks = [asyncio.create_task(self._poll(s.name, s.interval)) for s in self.config.sources]
        tasks += [asyncio.create_task(self._worker(q)) for q in self._queues.values()]
        log.info(
            "agent started: %d source(s), %d stack(s)", len(self.config.sources), len(self._queues)
        )
        await self.stop.wait()
        log.info("stopping: finishing the pass under way")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._passes.shutdown(wait=True)
        self._git.shutdown(wait=True, cancel_futures=True)

    async def _poll(self, source: str, interval: float) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            new = await loop.run_in_executor(self._git, self.controller.poll, source)
            first = not self._fetched_once[source].is_set()
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
            await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    async def _worker(self, q: _StackQueue) -> None:
        loop = asyncio.get_running_loop()
        await self._fetched_once[q.cfg.source].wait()
        resync = loop.time()  # the first pass is a full one
        retry_at: float | None = None
        while True:
            now = loop.time()
            due = min(resync, retry_at) if retry_at is not None else resync
            if not q.wake.is_set() and due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(q.wake.wait(), timeout=due - now)
            only = q.only if q.wake.is_set() else None
            q.wake.clear()
            q.only = None
            result = await loop.run_in_executor(
                self._passes, functools.partial(self.controller.reconcile, q.cfg.name, only=only)
            )
            if self.on_pass is not None:
                self.on_pass(result)
            if only is None:
                resync = loop.time() + jittered(q.cfg.resync, self.rng)
            if _retryable(result):
                q.failures += 1
                retry_at = loop.time() + backoff(
                    q.failures, self.config.retry.base, self.config.retry.max, self.rng
                )
            else:
                q.failures = 0
                retry_at = None


def _retryable(result: PassResult) -> bool:
    """Failed resources are retried with back-off; a refused revision waits for a new commit."""
    return bool(result.count("failed", "waiting") or result.prune_failures)
