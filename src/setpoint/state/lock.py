"""The state dir's owner lock (``STATE/agent.lock``): one agent or apply per state dir.

Taken by :meth:`setpoint.engine.controller.Controller.lock_state` (agent, apply,
forget), by ``setpoint forget`` directly, and by the one-shot fast path
(:mod:`setpoint.engine.settled`), which must not import the engine to take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from setpoint.model.errors import SetpointError


class StateLockedError(SetpointError):
    def __init__(self, message: str, state: Path, holder: str) -> None:
        super().__init__(message)
        self.state = state
        self.holder = holder  # "pid N" as the holder wrote it


def lock_state_dir(state: Path) -> IO[str]:
    """Take ``STATE/agent.lock`` (one agent per state dir); a dead holder frees it.

    Returns the open lock file: the lock lasts as long as it stays open. Raises
    :class:`StateLockedError` naming the holder when another process has it.
    """
    path = state / "agent.lock"
    f = open(path, "a+")  # noqa: SIM115 (held for the process lifetime)
    os.chmod(path, 0o600)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise StateLockedError(
            f"state dir {state} is in use by {holder}; only one setpoint agent "
            "may own a state dir (stop the other one, or give this one its own --state)",
            state,
            holder,
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f
