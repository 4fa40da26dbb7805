"""``/api/v1``: stacks, resources, live diffs, the journal; sync, suspend, resume.

Read routes need read access, the POST routes a write token (:mod:`.auth`).
``GET /api/v1/stacks`` is built once per change (journal entry or pass) and
served from that cache, so many dashboards polling it cost next to nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from setpoint.api.auth import READ, WRITE, ApiAuth
from setpoint.api.diff import NotDeclared, live_diff
from setpoint.model.status import StackStatus
from setpoint.obs.events import entry_json
from setpoint.obs.views import resource_views, stack_health, stack_sync

if TYPE_CHECKING:
    from setpoint.engine.agent import Agent


class Revision(BaseModel):
    sha: str
    subject: str | None = None
    author: str | None = None
    date: str | None = None


class Condition(BaseModel):
    type: str
    status: bool
    reason: str
    message: str
    since: float


class Stack(BaseModel):
    name: str
    source: str
    path: str
    suspended: bool
    orphaned: bool
    sync: str  # Synced | OutOfSync | Unknown | Failed
    health: str
    conditions: list[Condition]
    revision: Revision | None
    fetchedRevision: str | None
    lastGoodRevision: str | None
    lastPass: float | None
    counts: dict[str, int]


class Stacks(BaseModel):
    stacks: list[Stack]


class Resource(BaseModel):
    id: str
    kind: str
    name: str
    path: str
    sync: str  # Synced | OutOfSync | Missing | Failed | Waiting
    health: str  # Healthy | Progressing | Degraded | Missing | Unknown
    healthMessage: str
    location: str
    revision: str | None
    appliedAt: float | None


class Resources(BaseModel):
    stack: str
    resources: list[Resource]


class JournalEntry(BaseModel):
    id: int
    ts: float
    type: str
    event: str
    stack: str
    resource: str | None
    revision: str | None
    message: str
    detail: dict[str, Any]
    count: int = 1  # how many times it happened (a failure repeated on every retry)
    lastAt: float | None = None  # the last time, when more than once


class Trimmed(BaseModel):
    at: float  # when retention last trimmed the journal
    before: float  # older entries were trimmed
    removed: int  # entries removed, in all
    reason: str  # e.g. "maxAgeDays 90"


class JournalPage(BaseModel):
    entries: list[JournalEntry]
    next: str | None  # the cursor of the next (older) page
    trimmed: Trimmed | None = None  # what journal retention removed (None: nothing)


class Diff(BaseModel):
    resource: str
    revision: str
    inSync: bool | None = None
    drift: bool | None = None
    change: dict[str, Any] | None = None
    error: str | None = None


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"detail": message}, status)


def _time(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: give a Unix time or an ISO 8601 date, not {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


class StacksView:
    """Builds the stack documents; caches the list per observer version."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._commits: dict[str, dict[str, str] | None] = {}
        self._cache: tuple[int, bytes] | None = None
        self._lock = asyncio.Lock()

    async def commit(self, source: str, sha: str | None) -> dict[str, str] | None:
        if not sha:
            return None
        if sha not in self._commits:
            src = self.agent.controller.sources.get(source)
            info = None
            if src is not None:
                try:
                    loop = asyncio.get_running_loop()
                    info = await loop.run_in_executor(None, src.commit_info, sha)
                except Exception:  # no commit details is not an error of the API
                    info = None
            self._commits[sha] = info
        return self._commits[sha]

    def names(self) -> dict[str, StackStatus | None]:
        statuses: dict[str, StackStatus | None] = {
            st.stack: st for st in self.agent.obs.reader.statuses()
        }
        for s in self.agent.controller.config.stacks:
            statuses.setdefault(s.name, None)
        return dict(sorted(statuses.items()))

    async def stack(self, name: str, st: StackStatus | None) -> dict[str, Any]:
        cfg = next((s for s in self.agent.controller.config.stacks if s.name == name), None)
        source = cfg.source if cfg else (st.source if st else "")
        rev = st.applied_revision if st else None
        info = await self.commit(source, rev)
        revision = None
        if rev:
            details = info or {}
            revision = {"sha": rev} | {k: details.get(k) for k in ("subject", "author", "date")}
        return {
            "name": name,
            "source": source,
            "path": cfg.path if cfg else (st.path if st else ""),
            "suspended": cfg is None or cfg.suspend or name in self.agent.suspended,
            "orphaned": cfg is None,
            # What the pass under way waits for (a rollout's readiness, a download).
            "waiting": (
                w.describe(time.time())
                if (w := self.agent.controller.waits.get(name)) is not None
                else None
            ),
            "sync": stack_sync(st),
            "health": stack_health(st),
            "conditions": [c.__dict__ for c in st.conditions] if st else [],
            "revision": revision,
            "fetchedRevision": st.fetched_revision if st else None,
            "lastGoodRevision": st.last_good_revision if st else None,
            "lastPass": st.last_pass if st else None,
            "counts": st.counts if st else {},
        }

    async def all(self) -> bytes:
        version = self.agent.obs.version
        cached = self._cache
        if cached is not None and cached[0] == version:
            return cached[1]
        async with self._lock:
            cached = self._cache
            if cached is not None and cached[0] == version:
                return cached[1]
            docs = [await self.stack(n, st) for n, st in self.names().items()]
            body = json.dumps({"stacks": docs}, separators=(",", ":")).encode()
            self._cache = (version, body)
            return body


class FastStacks:
    """ASGI wrapper answering ``GET /api/v1/stacks`` from the cache without FastAPI's routing.

    Hundreds of dashboards poll that one document; every microsecond the loop thread
    spends on them is taken from the pass thread (one GIL).
    """

    def __init__(self, app: ASGIApp, view: StacksView, auth: ApiAuth) -> None:
        self.app, self.view, self.auth = app, view, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/api/v1/stacks"
            and scope["method"] == "GET"
            and self.auth.allowed(Request(scope), READ)
        ):
            body = await self.view.all()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def router(agent: Agent, auth: ApiAuth, view: StacksView | None = None) -> APIRouter:
    api = APIRouter(prefix="/api/v1", tags=["v1"])
    view = view or StacksView(agent)
    obs = agent.obs

    def known(name: str) -> tuple[bool, StackStatus | None]:
        """Whether there is such a stack, and its status (None if it has none yet)."""
        names = view.names()
        return name in names, names.get(name)

    @api.get("/stacks", responses={200: {"model": Stacks}})
    async def stacks(request: Request) -> Response:
        """Every stack: conditions, sync and health, source, revision in force and its commit."""
        auth.require(request, READ)
        return Response(await view.all(), media_type="application/json")

    @api.get("/stacks/{stack}", responses={200: {"model": Stack}})
    async def one_stack(request: Request, stack: str) -> Response:
        """One stack (as in the list) with its resources."""
        auth.require(request, READ)
        exists, st = known(stack)
        if not exists:
            return _error(404, f"no stack named {stack!r}")
        doc = await view.stack(stack, st)
        doc["resources"] = resource_views(agent.controller, obs.reader, stack, st)
        return _json(doc)

    @api.get("/stacks/{stack}/resources", responses={200: {"model": Resources}})
    async def resources(request: Request, stack: str) -> Response:
        """A stack's resources with their sync state and health."""
        auth.require(request, READ)
        exists, st = known(stack)
        if not exists:
            return _error(404, f"no stack named {stack!r}")
        views = resource_views(agent.controller, obs.reader, stack, st)
        return _json({"stack": stack, "resources": views})

    @api.get("/stacks/{stack}/resources/{kind}/{name}", responses={200: {"model": Resource}})
    async def resource(request: Request, stack: str, kind: str, name: str) -> Response:
        """One resource, with its last 50 journal entries (newest first)."""
        auth.require(request, READ)
        exists, st = known(stack)
        rid = f"{kind}/{name}"
        views = resource_views(agent.controller, obs.reader, stack, st) if exists else []
        doc = next((v for v in views if v["id"] == rid), None)
        if doc is None:
            return _error(404, f"stack {stack!r} has no resource {rid}")
        entries = obs.reader.journal(stack=stack, resource=rid, limit=50)
        return _json(doc | {"stack": stack, "journal": [entry_json(e) for e in entries]})

    @api.get("/stacks/{stack}/resources/{kind}/{name}/diff", responses={200: {"model": Diff}})
    async def diff(request: Request, stack: str, kind: str, name: str) -> Response:
        """The live diff: what the next pass would change in this resource, read now."""
        auth.require(request, READ)
        rid = f"{kind}/{name}"
        try:
            doc = await agent.in_pass_thread(lambda: live_diff(agent.controller, stack, rid))
        except NotDeclared:
            return _error(
                404, f"stack {stack!r} enforces no resource {rid} (yet: no pass has run?)"
            )
        return _json(doc)

    @api.get("/journal", responses={200: {"model": JournalPage}})
    async def journal(
        request: Request,
        stack: str | None = None,
        resource: str | None = None,
        event: str | None = Query(None, description="event names, comma-separated"),
        since: str | None = Query(None, description="Unix time or ISO 8601"),
        until: str | None = Query(None, description="Unix time or ISO 8601"),
        cursor: str | None = Query(None, description="the `next` of the previous page"),
        limit: int = Query(100, ge=1, le=500),
    ) -> Response:
        """The journal, newest first, filtered; page with ``cursor``."""
        auth.require(request, READ)
        try:
            lo, hi = _time(since, "since"), _time(until, "until")
            before = int(cursor) if cursor else None
        except ValueError as exc:
            return _error(400, str(exc) if "since" in str(exc) or "until" in str(exc)
                          else "cursor: give the `next` value of the previous page")  # fmt: skip
        events = [e.strip() for e in event.split(",") if e.strip()] if event else None
        entries = obs.reader.journal(
            stack=stack, resource=resource, events=events, since=lo, until=hi,
            before=before, limit=limit,
        )  # fmt: skip
        nxt = str(entries[-1].id) if len(entries) == limit and entries else None
        trimmed = obs.reader.trimmed()
        return _json({
            "entries": [entry_json(e) for e in entries], "next": nxt,
            "trimmed": trimmed.to_json() if trimmed is not None else None,
        })  # fmt: skip

    @api.post("/stacks/{stack}/sync")
    async def sync(request: Request, stack: str) -> Response:
        """Fetch, then a full pass of the stack now; answers with its result."""
        auth.require(request, WRITE)
        if stack in agent.suspended:
            return _error(409, f"stack {stack!r} is suspended; resume it first")
        if stack not in agent.stack_names:
            return _error(404, f"no active stack named {stack!r}")
        results = await agent.sync(stack)
        return _json({"results": results, "converged": all(r.get("converged") for r in results)})

    @api.post("/stacks/{stack}/suspend")
    async def suspend(request: Request, stack: str) -> Response:
        """No passes for this stack (drift is left alone) until resumed; kept across restarts."""
        auth.require(request, WRITE)
        if stack not in agent.stack_names and stack not in agent.suspended:
            return _error(404, f"no active stack named {stack!r}")
        if stack not in agent.suspended:
            agent.suspend_stack(stack)
        return _json({"stack": stack, "suspended": True})

    @api.post("/stacks/{stack}/resume")
    async def resume(request: Request, stack: str) -> Response:
        """Passes again, starting with a full one."""
        auth.require(request, WRITE)
        if stack not in agent.suspended:
            if stack in agent.stack_names:
                return _json({"stack": stack, "suspended": False})
            return _error(404, f"no stack named {stack!r} is suspended through the API")
        agent.resume_stack(stack)
        return _json({"stack": stack, "suspended": False})

    return api
