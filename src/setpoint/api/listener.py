"""The agent's listening socket, bound before the HTTP stack is loaded.

Used by :meth:`setpoint.engine.agent.Agent._run_api` and :class:`setpoint.api.server.ApiServer`.
Imports only ``socket`` and ``asyncio``: the agent binds its address (so a taken
port is reported at start, and ``STATE/agent.json`` names the address at once), then
waits here until the first client connects before it imports FastAPI and uvicorn
(about 13 MiB of RSS that an agent nobody asks over HTTP never spends). The first
connection waits in the socket's backlog meanwhile (the import takes about a second).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def bind_listener(listen: str) -> tuple[socket.socket, str]:
    """A non-blocking listening socket on ``listen`` (HOST:PORT) and the HOST:PORT bound."""
    host, port = parse_listen(listen)
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
    return sock, f"{shown}:{bound[1]}"


async def first_connection(sock: socket.socket, stop: asyncio.Event) -> bool:
    """Wait until a client connects to ``sock`` (True; not accepted) or ``stop`` is set."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    stopping = asyncio.ensure_future(stop.wait())
    waits: list[asyncio.Future[Any]] = [ready, stopping]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(sock.fileno())
        stopping.cancel()
    return ready.done() and not stop.is_set()
