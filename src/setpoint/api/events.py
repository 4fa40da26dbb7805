"""``GET /events``: the agent's events as Server-Sent Events, resumable with ``Last-Event-ID``.

Each event is one journal entry (:mod:`setpoint.obs.events`): ``id:`` is its
journal id, ``event:`` its type (pass, apply, drift, revert, failure, stall,
revision.fetched, ...), ``data:`` its JSON. A client that sends ``Last-Event-ID``
(browsers do on reconnect) or ``?after=ID`` first gets every entry after that id
(from memory, or from the journal if the memory no longer reaches back), then
live ones. Without either it gets live events only. ``?types=drift,revert``
filters. A comment line every 15 s keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from setpoint.api.auth import READ, ApiAuth
from setpoint.obs.events import Event, Subscription, to_event

if TYPE_CHECKING:
    from setpoint.engine.agent import Agent

KEEPALIVE = 15.0
CATCH_UP_PAGE = 500


def frame(ev: Event) -> bytes:
    return f"id: {ev.id}\nevent: {ev.type}\ndata: {ev.data}\n\n".encode()


def router(agent: Agent, auth: ApiAuth) -> APIRouter:
    api = APIRouter(tags=["events"])
    obs = agent.obs

    async def backlog(after: int) -> AsyncIterator[Event]:
        """Everything after ``after``: from the ring if it reaches back, else the journal."""
        while True:
            ring = obs.events.since(after)
            if ring is not None:
                for ev in ring:
                    yield ev
                return
            page = obs.reader.journal(after=after, limit=CATCH_UP_PAGE)
            if not page:
                return
            for e in page:
                yield to_event(e)
            assert page[-1].id is not None
            after = page[-1].id
            await asyncio.sleep(0)

    async def stream(sub: Subscription, after: int | None, types: set[str] | None,
                     request: Request) -> AsyncIterator[bytes]:  # fmt: skip
        try:
            yield b"retry: 1000\n\n"
            last = after if after is not None else (obs.events.last_id or 0)
            if after is not None:
                async for ev in backlog(after):
                    if ev.id > last:
                        last = max(last, ev.id)
                        if types is None or ev.type in types:
                            yield frame(ev)
            while not sub.closed.is_set():
                try:
                    ev = await asyncio.wait_for(sub.queue.get(), KEEPALIVE)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                if ev.id <= last:
                    continue  # already sent from the backlog
                last = ev.id
                if types is None or ev.type in types:
                    yield frame(ev)
        finally:
            obs.events.unsubscribe(sub)

    @api.get("/events", response_class=StreamingResponse)
    async def events(request: Request, after: int | None = None, types: str | None = None
                     ) -> StreamingResponse:  # fmt: skip
        """Server-Sent Events of pass, apply, drift, revert, failure and stall (and more)."""
        auth.require(request, READ)
        last = request.headers.get("last-event-id")
        if last is not None:
            with contextlib.suppress(ValueError):
                after = int(last)
        wanted = {t.strip() for t in types.split(",") if t.strip()} if types else None
        sub = obs.events.subscribe()  # before the backlog: nothing falls between
        return StreamingResponse(
            stream(sub, after, wanted, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return api
