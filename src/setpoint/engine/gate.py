"""The pass gate: stacks reconcile concurrently, engine code runs one pass at a time.

Used by :class:`setpoint.engine.controller.Controller` around every pass (and every
other use of the shared engine state: watches, the Fleet refresh). Each stack's
passes run on their own worker thread, up to ``maxConcurrentStacks`` at once, but
only the holder of the gate runs engine code (render, read, plan, apply,
bookkeeping): the state DB, the inventory view, the providers' caches and the
target's per-pass data stay single-threaded, as they were designed.

The gate is given up only while a provider waits on the outside world (a
Service's readiness, a Release's download), through
:meth:`setpoint.providers.base.ProviderContext.waiting`: another stack's pass (a drift
revert, a new revision) runs meanwhile, and the waiting pass takes the gate back,
ahead of the queue, when its wait ends. CPU-bound work is serial under the GIL
anyway; what concurrency buys is that no stack waits for another's rollout.

Waiters are served by priority, then arrival: a resumed pass first, then
drift-triggered partial passes, then full passes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

RESUME = 0  # a pass taking the gate back after a provider's wait
PARTIAL = 1  # a drift-triggered pass over a few resources
FULL = 2  # a full pass, a Fleet refresh, watch set-up


class PassGate:
    """A lock whose waiters are served by priority (lower first), then in arrival order."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._owner: int | None = None
        self._queue: list[tuple[int, int]] = []
        self._tickets = itertools.count()

    def acquire(self, priority: int = FULL) -> None:
        with self._cond:
            ticket = (priority, next(self._tickets))
            heapq.heappush(self._queue, ticket)
            while self._held or self._queue[0] != ticket:
                self._cond.wait()
            heapq.heappop(self._queue)
            self._held = True
            self._owner = threading.get_ident()

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._owner = None
            self._cond.notify_all()

    @property
    def mine(self) -> bool:
        """Whether the calling thread holds the gate."""
        return self._held and self._owner == threading.get_ident()

    @contextmanager
    def hold(self, priority: int = FULL) -> Iterator[None]:
        """Hold the gate for the block (re-entrant: a holder passes straight through)."""
        if self.mine:
            yield
            return
        self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def outside(self) -> Iterator[None]:
        """Give the gate up for the block (a wait), then take it back first in line."""
        if not self.mine:
            yield
            return
        self.release()
        try:
            yield
        finally:
            self.acquire(RESUME)


@dataclass(frozen=True)
class Wait:
    """What a stack's pass waits for, for status: "rollout of Service/app: waiting for
    readiness, 12 s of 20"."""

    resource: str
    what: str
    since: float  # epoch seconds
    timeout: float

    def describe(self, now: float) -> str:
        return f"{self.what}, {now - self.since:.0f} s of {self.timeout:g}"
