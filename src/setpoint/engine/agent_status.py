"""The agent's status document: what ``GET /status`` returns.

Called by :meth:`setpoint.engine.agent.Agent.status_json` (which the API's
``GET /status`` in :mod:`setpoint.api.server` serves): the stored status of every
stack plus the agent's live view (sources and their polls, renders, the fleet
bus, webhooks, each stack's passes and what a pass waits for, watches). It only
reads: the agent's fields and the controller's, on the event loop's thread.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from setpoint.engine.agent import Agent


def agent_status(agent: Agent) -> dict[str, Any]:
    """The stored stack status plus ``agent``'s live view (see the module docstring)."""
    stacks = [s.to_json() for s in agent.controller.db.all_status()]
    ctl = agent.controller
    return {
        "stacks": stacks,
        "agent": {
            "pid": os.getpid(),
            "started": agent.started,
            "listen": agent.api_address,
            "sources": {
                name: {
                    "fetched": ctl.fetched.get(name),
                    "error": ctl.fetch_errors.get(name),
                    "checks": agent.checks[name],
                }
                for name in agent.checks
            },
            "renders": ctl.reconciler.renders,
            "fleetbus": agent.fleetbus.info() if agent.fleetbus is not None else None,
            "webhook": {
                "enabled": bool(agent.webhook_secret),
                "refused": agent.webhook_refused,
            },
            "passes": {
                name: {
                    "total": q.passes,
                    "partial": q.partial_passes,
                    "last": q.last_pass,
                    "queued": q.wake.is_set(),
                    "waiting": (
                        w.describe(time.time()) if (w := ctl.waits.get(name)) is not None else None
                    ),
                }
                for name, q in agent._queues.items()
            },
            "watch": {
                name: w.info() | {"poll_interval": agent.watch_poll}
                for name, w in agent._watches.items()
            },
        },
    }
