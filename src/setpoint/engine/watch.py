"""The agent's watches of one stack: made after full passes, polled where they cannot be.

Used by :mod:`setpoint.engine.agent`. After each full pass the agent calls
:meth:`StackWatches.update` (in its pass thread) with the desired state the
pass enforced; the resources are handed to each provider that can watch
(:class:`~setpoint.providers.base.Watchable`), whose callbacks become partial
passes. Resources no watch covers (the kernel's watch limit) are listed by
:meth:`StackWatches.unwatched`: the agent re-checks them every
``SETPOINT_WATCH_POLL`` seconds (default 2) and the stack's ``Watching``
condition says so, so they are never left uncorrected in silence.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from setpoint.engine.desired import Desired
from setpoint.model.resource import Resource
from setpoint.providers.base import Provider, RetryingWatcher, Watchable, WatchCallback, Watcher
from setpoint.state import JournalEntry, StateDB

log = logging.getLogger("setpoint.agent")

WATCHING = "Watching"
WATCH_LIMIT_REACHED = "WatchLimitReached"


def fallback_poll_interval() -> float:
    """Seconds between re-checks of unwatched resources (``SETPOINT_WATCH_POLL``, default 2)."""
    try:
        return max(float(os.environ.get("SETPOINT_WATCH_POLL", "2")), 0.05)
    except ValueError:
        return 2.0


class StackWatches:
    """The open watchers of one stack (one per provider that can watch)."""

    def __init__(self, stack: str, providers: dict[str, Provider], notify: WatchCallback) -> None:
        self.stack = stack
        self.providers = providers
        # The providers that can watch, by kind (the Watchable check once, not per resource).
        self._watchable = {k: p for k, p in providers.items() if isinstance(p, Watchable)}
        self.notify = notify
        self._key: tuple[str, int] | None = None
        self._watchers: list[tuple[Watchable, Watcher]] = []
        self.resources = 0
        self.setup_ms = 0.0
        self._limited = False
        # Providers whose watch could not be set up, with their resources: polled by the
        # agent (as unwatched) and tried again at each poll.
        self._failed: list[tuple[Watchable, list[Resource]]] = []
        self.ids: set[str] = set()  # the resources of the last watch set-up

    def update(self, desired: Desired | None) -> bool:
        """(Re)watch ``desired``'s resources if they changed; True when watches were made."""
        if desired is None:
            return False
        key = (desired.revision, len(desired.ordered.order))
        if key == self._key and not self.unwatched():
            return False
        t0 = time.monotonic()
        groups: dict[int, tuple[Watchable, list[Resource]]] = {}
        watchable = self._watchable
        for r in desired.ordered.order:
            p = watchable.get(r.kind)
            if p is None:
                continue
            groups.setdefault(id(p), (p, []))[1].append(r)
        new, self._failed = self._watch(list(groups.values()))
        self.ids = {r.id for _p, rs in groups.values() for r in rs}
        old, self._watchers = self._watchers, new
        for _p, w in old:  # the new watches are up before the old ones go: no gap
            w.close()
        self._key = key
        self.resources = sum(len(rs) for _p, rs in groups.values())
        self.setup_ms = (time.monotonic() - t0) * 1000
        log.info(
            "stack %s: watching %d resource(s) (%.0f ms)", self.stack, self.resources, self.setup_ms
        )
        return True

    def _watch(
        self, groups: list[tuple[Watchable, list[Resource]]]
    ) -> tuple[list[tuple[Watchable, Watcher]], list[tuple[Watchable, list[Resource]]]]:
        made: list[tuple[Watchable, Watcher]] = []
        failed: list[tuple[Watchable, list[Resource]]] = []
        for p, rs in groups:
            try:
                made.append((p, p.watch(rs, self.notify)))
            except Exception as exc:  # any failure: those resources are polled instead
                log.warning(
                    "stack %s: cannot watch %d resource(s) (%s); polling them instead",
                    self.stack,
                    len(rs),
                    exc,
                )
                failed.append((p, rs))
        return made, failed

    def unwatched(self) -> set[str]:
        out: set[str] = {r.id for _p, rs in self._failed for r in rs}
        for p, w in self._watchers:
            if isinstance(w, RetryingWatcher):
                out |= w.unwatched()
            else:
                out |= p.unwatched()
        return out

    def retry(self) -> None:
        for _p, w in self._watchers:
            if isinstance(w, RetryingWatcher):
                w.retry()
        if self._failed:
            made, self._failed = self._watch(self._failed)
            self._watchers += made

    def watch_count(self) -> int:
        return sum(w.watch_count for _p, w in self._watchers if isinstance(w, RetryingWatcher))

    def close(self) -> None:
        for _p, w in self._watchers:
            w.close()
        self._watchers = []
        self._failed = []
        self._key = None

    def report(self, db: StateDB, poll: float) -> None:
        """Record in the stack's status (and once in the journal) whether all is watched."""
        missing = self.unwatched()
        st = db.load_status(self.stack)
        if st is None:
            return
        now = time.time()
        if missing:
            msg = (
                f"{len(missing)} of {self.resources} resource(s) could not be watched (the "
                "kernel's inotify watch limit, fs.inotify.max_user_watches, is reached); they "
                f"are re-checked by polling every {poll:g}s: " + ", ".join(sorted(missing)[:10])
            )
            st.set_condition(WATCHING, False, WATCH_LIMIT_REACHED, msg, now)
        else:
            msg = f"{self.resources} resource(s) watched ({self.watch_count()} inotify watches)"
            st.set_condition(WATCHING, True, WATCHING, msg, now)
        db.save_status(st)
        if bool(missing) != self._limited:
            self._limited = bool(missing)
            event = "watch.limited" if missing else "watch.restored"
            db.append(JournalEntry(now, self.stack, event, None, None, msg))
            (log.warning if missing else log.info)("stack %s: %s", self.stack, msg)

    def info(self) -> dict[str, Any]:
        return {
            "resources": self.resources,
            "watches": self.watch_count(),
            "unwatched": sorted(self.unwatched()),
            "setup_ms": round(self.setup_ms, 1),
        }

