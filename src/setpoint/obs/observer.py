"""Wires the agent to its event stream, log, metrics and notifications.

Created by :class:`setpoint.engine.agent.Agent`. Two inputs: every journal entry
the state DB stores (``StateDB.on_journal``: called in the writing thread, in id
order, so it only hands things on) and every pass result (it wraps the agent's
``on_pass``). The API reads :attr:`events`, :attr:`metrics` and :attr:`reader`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from setpoint.engine.outcome import PassResult
from setpoint.obs import logs
from setpoint.obs.events import EventBus
from setpoint.obs.notify import Notice, Notifier
from setpoint.obs.views import StateReader, resource_views
from setpoint.state import JournalEntry

if TYPE_CHECKING:
    from setpoint.engine.agent import Agent
    from setpoint.obs.metrics import Metrics

log = logging.getLogger("setpoint.obs")

# journal event -> notification event
NOTICES = {
    "revision.applied": "applied",
    "drift": "drift",
    "failure": "failed",
    "source.failed": "failed",
    "revision.refused": "stalled",
}


class Observer:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.ctl = ctl = agent.controller
        self.events = EventBus()
        self._reader: StateReader | None = None
        # Metrics are only ever read by GET /metrics: an agent without an API
        # (``listen: off``) keeps none and never loads prometheus-client.
        self.metrics: Metrics | None = None
        if agent.api_enabled:
            from setpoint.obs.metrics import Metrics

            self.metrics = Metrics(self._snapshot)
        self.notifier = Notifier(Path(ctl.config.state))
        self._last_ok: dict[str, float] = {}
        self._converged: dict[str, bool] = {}
        for st in ctl.db.all_status():
            ready = st.condition("Ready")
            self._converged[st.stack] = bool(ready and ready.status)
            if ready is not None and ready.status and st.last_pass is not None:
                self._last_ok[st.stack] = st.last_pass
        self.refresh_rules()
        self._user_on_pass = agent.on_pass
        agent.on_pass = self.on_pass
        ctl.db.on_journal = self.on_journal
        self.version = 0  # moves with every event and pass: the API's caches key on it

    @property
    def reader(self) -> StateReader:
        if self._reader is None:
            self._reader = StateReader(Path(self.ctl.config.state))
        return self._reader

    def refresh_rules(self) -> None:
        self.notifier.set_rules({s.name: s.notifications for s in self.ctl.config.stacks})

    def _source_of(self) -> dict[str, str]:
        return {s.name: s.source for s in self.ctl.config.stacks}

    # -- inputs -------------------------------------------------------------------------

    def on_journal(self, entries: list[JournalEntry]) -> None:
        """The writing thread, under the state DB's lock: hand on, quickly; never raise."""
        try:
            self.version += 1
            self.events.publish(entries)
            if self.metrics is not None:
                self.metrics.observe_entries(entries, self._source_of())
            logs.log_entries(entries)
            for e in entries:
                kind = NOTICES.get(str(e.event))
                if kind is not None:
                    self.notifier.offer(
                        Notice(e.stack, kind, e.message, e.revision, e.resource, e.ts)
                    )
        except Exception:
            log.exception("publishing journal entries failed")

    def on_pass(self, r: PassResult) -> None:
        """The loop thread, after each pass."""
        self.version += 1
        if self._user_on_pass is not None:
            self._user_on_pass(r)
        try:
            if self.metrics is not None:
                self.metrics.observe_pass(r, self._source_of().get(r.stack, ""))
            logs.log_pass(r)
            was = self._converged.get(r.stack)
            ok = r.converged
            if ok:
                self._last_ok[r.stack] = time.time()
            if not r.partial or not ok:
                self._converged[r.stack] = ok
            if ok and was is False and not r.partial:
                self.notifier.offer(
                    Notice(r.stack, "recovered", f"stack {r.stack} converged again",
                           r.revision, None, time.time())
                )  # fmt: skip
        except Exception:
            log.exception("observing a pass failed")

    # -- reads --------------------------------------------------------------------------

    def _snapshot(
        self,
    ) -> list[tuple[str, str | None, float | None, dict[str, bool], list[dict[str, Any]]]]:
        out = []
        for st in self.reader.statuses():
            views = resource_views(self.ctl, self.reader, st.stack, st)
            conds = {c.type: c.status for c in st.conditions}
            conds.setdefault("Stalled", False)
            last_ok = self._last_ok.get(st.stack)
            out.append((st.stack, st.applied_revision, last_ok, conds, views))
        return out

    def close(self) -> None:
        self.notifier.stop()
        if self._reader is not None:
            self._reader.close()
