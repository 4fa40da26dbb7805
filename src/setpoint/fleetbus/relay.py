"""``setpoint relay``: a stateless process turning the forge's push webhooks into notices.

For fleets whose hosts no webhook can reach: the forge calls the relay (the same
``POST /hooks/git`` formats and signatures as the agent, :mod:`setpoint.api.webhook`),
the relay publishes ``{url, ref, commit}`` on each named repository's subject
(:mod:`setpoint.fleetbus.subjects`), and every subscribed agent checks its ref.
It keeps no state: run two behind a load balancer if one is not enough.

Answers: 202 ``{"published": [subjects]}``; 401 for a missing or wrong signature;
422 when the payload names no repository (the relay has no sources to fall back on);
503 while NATS is unreachable (the forge retries; the agents' polling goes on).
``GET /healthz``: 200 when connected to NATS, 503 otherwise.

Called by :mod:`setpoint.cli_fleetbus`; uvicorn with a bare ASGI app (no FastAPI:
a small process should stay small).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from setpoint.api.webhook import verify_signature
from setpoint.config import NatsConfig
from setpoint.fleetbus.client import BusClient, redact
from setpoint.fleetbus.subjects import notices_from_webhook

log = logging.getLogger("setpoint.relay")
MAX_BODY = 5 << 20  # GitHub caps payloads at 25 MB, but a push's is far below this
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Relay:
    def __init__(self, nats: NatsConfig, secret: bytes) -> None:
        self.client = BusClient(nats, "setpoint-relay")
        self.secret = secret
        self.published = 0
        self.refused = 0

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/healthz" and method == "GET":
            ok = self.client.connected
            await _answer(send, 200 if ok else 503, {"connected": ok})
        elif path == "/hooks/git" and method == "POST":
            await self._hook(scope, receive, send)
        else:
            await _answer(send, 404, {"error": f"no route {method} {path}; POST /hooks/git"})

    async def _hook(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > MAX_BODY:
                await _answer(send, 413, {"error": "payload too large"})
                return
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not verify_signature(headers, body, self.secret):
            self.refused += 1
            await _answer(send, 401, {"error": "missing or invalid signature"})
            return
        notices = notices_from_webhook(body)
        if not notices:
            await _answer(send, 422, {"error": "the payload names no repository URL "
                                      "(repository.clone_url, project.git_http_url, ...)"})
            return
        nc = self.client.nc
        if nc is None or not self.client.connected:
            await _answer(send, 503, {"error": "NATS is unreachable; retry later"})
            return
        try:
            for n in notices:
                await nc.publish(n.subject, n.encode())
            await nc.flush(timeout=2)
        except Exception as exc:
            await _answer(send, 503, {"error": f"publishing failed: {exc}; retry later"})
            return
        self.published += len(notices)
        for n in notices:
            log.info("published commit %s of %s", (n.commit or "?")[:12], n.url)
        await _answer(send, 202, {"published": [n.subject for n in notices]})


async def _answer(send: Send, status: int, data: dict[str, Any]) -> None:
    body = json.dumps(data).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def serve(relay: Relay, host: str, port: int) -> None:
    """Run until SIGTERM/SIGINT: the NATS connection and the HTTP listener."""
    import uvicorn

    stop = asyncio.Event()
    bus = asyncio.create_task(relay.client.run(stop))
    config = uvicorn.Config(relay, host=host, port=port, log_level="warning",
                            access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    log.info("relay listening on %s:%d, publishing to %s", host, port,
             redact(relay.client.cfg.url))
    try:
        await server.serve()
    finally:
        stop.set()
        await bus
