"""The agent's HTTP listener: a FastAPI app served by uvicorn inside the agent's loop.

Endpoints (the OpenAPI document is at ``/openapi.json``):

- ``GET /status``: read-only JSON: each stack's status (as ``setpoint status --json``)
  plus the agent's live view (sources, watches, pass counts).
- ``POST /sync`` (``{"stack": NAME}`` or ``{}`` for all): fetch, then a full pass;
  answers when the pass is over, with its result. Needs a write token.
- ``POST /hooks/git``: a Git host's push webhook (see :mod:`setpoint.api.webhook`);
  401 and nothing triggered unless the signature is valid.
- ``/api/v1/...`` (:mod:`setpoint.api.v1`), ``GET /events`` (:mod:`setpoint.api.events`),
  ``GET /metrics`` (Prometheus text), the web UI at ``/`` (:mod:`setpoint.api.ui`).

Who may call what: :mod:`setpoint.api.auth`. Tokens and secrets are never logged
(uvicorn's access log is off). The agent imports this module when the first client
connects to the socket it bound at start (:mod:`setpoint.api.listener`), never with
``listen: off``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from setpoint.api.auth import READ, WRITE, ApiAuth, check_startup
from setpoint.api.listener import bind_listener
from setpoint.api.webhook import match_sources, payload_urls, verify_signature
from setpoint.obs.metrics import version

if TYPE_CHECKING:
    from setpoint.engine.agent import Agent

log = logging.getLogger("setpoint.api")


def build_app(agent: Agent, auth: ApiAuth | None = None) -> FastAPI:
    from setpoint.api import events, ui, v1

    auth = auth or ApiAuth.from_config(agent.config, agent.api_token)
    stacks = v1.StacksView(agent)  # one cache for the route and the fast path
    app = FastAPI(
        title="setpoint agent",
        version=version(),
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )

    @app.get("/status")
    async def status(request: Request) -> JSONResponse:
        """Every stack's stored status plus the agent's live view."""
        auth.require(request, READ)
        return JSONResponse(agent.status_json())

    @app.post("/sync")
    async def sync(request: Request) -> JSONResponse:
        """Fetch, then a full pass of ``{"stack": NAME}`` (or of every stack for ``{}``)."""
        if not auth.allowed(request, WRITE):
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

    @app.get("/metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (text exposition format); see README "Metrics"."""
        auth.require(request, READ)
        m = agent.obs.metrics  # None only for an agent built without an API
        return Response(m.render() if m else b"", media_type=CONTENT_TYPE_LATEST)

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
        if agent.fleetbus is not None:  # the hosts no webhook reaches learn it too
            from setpoint.fleetbus.subjects import notices_for_sources

            agent.fleetbus.publish(notices_for_sources(body, sources, agent.source_urls))
        return JSONResponse({"sources": sources}, status_code=202)

    app.include_router(v1.router(agent, auth, stacks))
    app.state.stacks = stacks
    app.include_router(events.router(agent, auth))
    app.include_router(ui.router(agent, auth))
    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The agent owns SIGTERM/SIGINT (it finishes the pass under way first).
        yield


class ApiServer:
    """Binds ``listen`` (HOST:PORT; port 0 = any free port) and serves the app in this loop."""

    def __init__(self, agent: Agent, listen: str) -> None:
        self.agent = agent
        self.listen = listen
        # The same checks as at start-up (the CLI runs them first, for a clear exit).
        check_startup(agent.config)
        self.auth = ApiAuth.from_config(agent.config, agent.api_token)
        self.scheme = "https" if agent.config.api.tls is not None else "http"
        self.address: str | None = None  # HOST:PORT actually bound
        self._server: _Server | None = None

    def bind(self) -> socket.socket:
        sock, self.address = bind_listener(self.listen)
        return sock

    async def serve(self, sock: socket.socket) -> None:
        tls = self.agent.config.api.tls
        config = uvicorn.Config(
            self.asgi(),
            lifespan="off",
            ws="none",  # no WebSocket routes (events are SSE): wsproto stays unloaded
            log_level="warning",
            access_log=False,
            server_header=False,
            ssl_certfile=str(tls.cert_file) if tls else None,
            ssl_keyfile=str(tls.key_file) if tls else None,
        )
        self._server = _Server(config)
        await self._server.serve(sockets=[sock])

    def asgi(self) -> Any:
        """The app, with ``GET /api/v1/stacks`` answered before FastAPI's routing."""
        from setpoint.api.v1 import FastStacks

        app = build_app(self.agent, self.auth)
        return FastStacks(app, app.state.stacks, self.auth)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
