"""The CLI as a client of a running agent's HTTP API (``status``, ``history``, ``sync``).

An agent is running when ``STATE/agent.json`` names a live pid; then these commands
ask it (it knows more than the state dir: live pass counts, and a sync must be
run by it). An agent with ``listen: off`` writes ``"listen": null`` there: ``status``
and ``history`` read the state dir, ``sync`` says the agent has no listener. The
token is ``STATE/api-token`` (write scope, so reads work too when anonymous reads are
off); with ``api.tls`` the agent's own certificate is trusted.

``setpoint status`` loads this module on every run (must start in <= 80 ms): only
``json`` and ``os`` at import; no dataclasses, typing or pathlib (state dirs are
``str`` or ``Path``, joined with ``os.path``); the errors and HTTP modules load
when an agent is asked.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import ssl
    from typing import Any

    StateDir = str | os.PathLike[str]

AGENT_FILE = "agent.json"
TOKEN_FILE = "api-token"  # noqa: S105 (a file name)


class AgentClient:
    """How to call the agent's API: base URL, bearer token, TLS context (https)."""

    __slots__ = ("base", "context", "token")

    def __init__(self, base: str, token: str | None, context: ssl.SSLContext | None) -> None:
        self.base = base
        self.token = token
        self.context = context

    def __repr__(self) -> str:  # never the token
        return f"AgentClient(base={self.base!r})"

    def call(
        self, method: str, path: str, body: Any = None, timeout: float = 30.0
    ) -> Any:
        """JSON in, JSON out; SetpointError naming the status and the agent's answer."""
        import urllib.error
        import urllib.request

        from setpoint.model.errors import SetpointError

        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(  # noqa: S310 (http or https, from agent.json)
            self.base + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.context) as resp:  # noqa: S310
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise SetpointError(f"the agent refused ({exc.code}): {detail}") from None
        except (OSError, ValueError) as exc:
            raise SetpointError(f"cannot reach the agent at {self.base}: {exc}") from None


def _live_agent(state: StateDir) -> dict[str, Any] | None:
    """``STATE/agent.json`` if the agent it names is alive, else None."""
    try:
        with open(os.path.join(state, AGENT_FILE), encoding="utf-8") as fh:
            info = json.load(fh)
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale file: that agent is gone
    except PermissionError:
        pass  # alive, another user's
    return info if isinstance(info, dict) else None


def agent_without_api(state: StateDir) -> int | None:
    """The pid of an agent running in ``state`` with ``listen: off``, else None."""
    info = _live_agent(state)
    return int(info["pid"]) if info is not None and info.get("listen") is None else None


def running_agent(state: StateDir) -> AgentClient | None:
    """A client for the agent that owns ``state``, or None when none runs there.

    None too for an agent with ``listen: off`` (``"listen": null`` in agent.json):
    there is nothing to ask, so callers read the state dir.
    """
    info = _live_agent(state)
    if info is None or not isinstance(info.get("listen"), str):
        return None
    listen = info["listen"]
    try:
        with open(os.path.join(state, TOKEN_FILE), encoding="utf-8") as fh:
            token: str | None = fh.read().strip()
    except OSError:
        token = None
    context = None
    scheme = info.get("scheme", "http")
    if scheme == "https":
        import ssl

        context = ssl.create_default_context(cafile=info.get("certFile"))
        context.check_hostname = False  # the certificate itself is the trust anchor
    return AgentClient(f"{scheme}://{listen}", token, context)


def journal_query(stack: str | None, limit: int) -> str:
    params = {"limit": str(min(limit, 500))}
    if stack:
        params["stack"] = stack
    from urllib.parse import urlencode

    return "/api/v1/journal?" + urlencode(params)
