"""The agent's HTTP API: ``GET /status``, ``POST /sync``, ``POST /hooks/git``.

Runs inside the agent's asyncio loop (:class:`~setpoint.api.server.ApiServer`);
webhook signatures are checked by :mod:`setpoint.api.webhook`.
"""

from setpoint.api.server import ApiServer, build_app
from setpoint.api.webhook import verify_signature

__all__ = ["ApiServer", "build_app", "verify_signature"]
