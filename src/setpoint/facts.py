"""Facts: what the agent knows about its host by itself, offered to selectors as labels.

Called by :mod:`setpoint.engine.fleet` (a Fleet's selectors see the host's labels
and its facts) and by the ``setpoint facts`` command. Facts sit under the reserved
prefix ``setpoint.io/`` so that a configured label can never shadow one.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Mapping

# Labels under this prefix are facts; config.py refuses them in `labels:`.
FACT_PREFIX = "setpoint.io/"


def gather(host: str | None = None) -> dict[str, str]:
    """The host's facts: hostname, os, arch, cpus, memory-mib (values are strings).

    ``host`` is the config's ``host:`` name, which stands for the hostname when given.
    """
    return {
        FACT_PREFIX + "hostname": host or socket.gethostname(),
        FACT_PREFIX + "os": platform.system().lower(),
        FACT_PREFIX + "arch": platform.machine(),
        FACT_PREFIX + "cpus": str(os.cpu_count() or 1),
        FACT_PREFIX + "memory-mib": str(_memory_mib()),
    }


def host_labels(
    labels: Mapping[str, str], facts: Mapping[str, str] | None = None, host: str | None = None
) -> dict[str, str]:
    """The labels selectors match: the configured ones plus the facts."""
    return {**labels, **(gather(host) if facts is None else facts)}


def _memory_mib() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError):
        return 0
