"""The agent's HTTP listener: a small FastAPI app served by uvicorn inside the agent's loop.

Endpoints (kept small on purpose):

- ``GET /status``: read-only JSON: each stack's status (as ``setpoint status --json``)
  plus the agent's live view (sources, watches, pass counts). No token needed;
  the listener binds loopback by default.
- ``POST /sync`` (``{"stack": NAME}`` or ``{}`` for all): fetch, then a full pass;
  answers when the pass is over, with its result. Needs ``Authorization: Bearer
  <token>``, the token the agent writes to ``STATE/api-token`` (mode 0600).
- ``POST /hooks/git``: a Git host's push webhook (see :mod:`setpoint.api.webhook`);
  401 and nothing triggered unless the signature is valid.

Tokens and secrets are never logged (uvicorn's access log is off).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from setpoint.api.webhook import match_sources, payload_urls, verify_signature

if TYPE_CHECKING:
    from setpoint.engine.agent import Agent

log = logging.getLogger("setpoint.api")


def build_app(agent: Agent) -> FastAPI:
    app = FastAPI(title="setpoint agent", docs_url=None, redoc_url=None, openapi_url=None)

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), agent.api_token.encode()
        )

    @app.get("/status")
    async def status() -> JSONResponse:
        return JSONResponse(agent.status_json())

    @app.post("/sync")
    async def sync(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": "missing or wrong token"}, status_code=401)
        body = await request.body()
        try:
            data: Any = json.loads(body) if body.strip() else {}
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        stack = data.get("stack") if isinstance(data, dict) else None
        if stack is not None and not isinstance(stack, str):
            return JSONResponse({"error": "stack must be a string"}, status_code=400)
        if stack is not None and stack not in agent.stack_names:
            known = ", ".join(sorted(agent.stack_names))
            return JSONResponse(
                {"error": f"no active stack named {stack!r} (known: {known})"}, status_code=404
            )
        results = await agent.sync(stack)
        return JSONResponse(
            {"results": results, "converged": all(r.get("converged") for r in results)}
        )

    @app.post("/hooks/git")
    async def hook(request: Request) -> JSONResponse:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not verify_signature(headers, body, agent.webhook_secret):
            agent.webhook_refused += 1
            return JSONResponse({"error": "missing or invalid signature"}, status_code=401)
        sources = match_sources(payload_urls(body), agent.source_urls)
        for name in sources:
            agent.refresh_source(name)
        return JSONResponse({"sources": sources}, status_code=202)

    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The agent owns SIGTERM/SIGINT (it finishes the pass under way first).
        yield


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class ApiServer:
    """Binds ``listen`` (HOST:PORT; port 0 = any free port) and serves the app in this loop."""

    def __init__(self, agent: Agent, listen: str) -> None:
        self.agent = agent
        self.listen = listen
        self.address: str | None = None  # HOST:PORT actually bound
        self._server: _Server | None = None

    def bind(self) -> socket.socket:
        host, port = parse_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
        self.address = f"{shown}:{bound[1]}"
        return sock

    async def serve(self, sock: socket.socket) -> None:
        config = uvicorn.Config(
            build_app(self.agent),
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
        )
        self._server = _Server(config)
        await self._server.serve(sockets=[sock])

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
