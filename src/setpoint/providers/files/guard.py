"""The last guard of ``Directory.purge``: never remove the agent's own state dir.

Called by :func:`setpoint.providers.files.apply.purge` for each entry it is about to
remove. The provider already refuses, at render time, a purging Directory that
holds the state dir (``FilesystemProvider.check_declarations``, with
:func:`state_dir_below`); this catches
what slips past that check (a symlink changed since, a caller that bypasses the
engine). Everything the agent keeps lives under ``FileTarget.state_dir``: the state
DB, the git cache and exported trees, the release store and service records.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from setpoint.providers.files.target import FileTarget

log = logging.getLogger("setpoint.fs")


def holds_state_dir(target: FileTarget, host: str) -> bool:
    """True when removing the entry ``host`` (a real path) would remove the state dir.

    The entry's own last component is not resolved: a symlink entry is unlinked,
    never followed, so a link that leads to the state dir may go.
    """
    state = target.state_dir
    if state is None:
        return False
    parent, name = os.path.split(os.path.abspath(host))
    entries = {os.path.join(parent, name), os.path.join(os.path.realpath(parent), name)}
    for s in {os.path.abspath(state), os.path.realpath(state)}:
        for e in entries:
            if s == e or s.startswith(e + "/"):
                log.warning("not purging %s: it holds setpoint's own state dir %s", host, state)
                return True
    return False


def state_dir_below(host: str, state_dir: Path) -> str | None:
    """Where ``state_dir`` lies relative to directory ``host``: "at", "below", or None."""
    homes = {os.path.abspath(state_dir), os.path.realpath(state_dir)}
    for h in {os.path.abspath(host), os.path.realpath(host)}:
        for s in homes:
            if s == h:
                return "at"
            if s.startswith(h.rstrip("/") + "/"):
                return "below"
    return None
