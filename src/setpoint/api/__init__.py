"""The agent's HTTP API: ``GET /status``, ``POST /sync``, ``POST /hooks/git``.

Runs inside the agent's asyncio loop (:class:`~setpoint.api.server.ApiServer`);
webhook signatures are checked by :mod:`setpoint.api.webhook`.

Nothing is imported here: the light modules of this package (``webhook``, ``auth``)
are used without an HTTP listener (the fleet bus, ``listen: off``), and importing
:mod:`setpoint.api.server` loads FastAPI and uvicorn (about 12 MiB).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ApiServer", "build_app", "verify_signature"]
_WHERE = {"ApiServer": "server", "build_app": "server", "verify_signature": "webhook"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"setpoint.api.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'setpoint.api' has no attribute {name!r}")
