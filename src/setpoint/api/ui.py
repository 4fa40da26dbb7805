"""The web UI at ``/``: server-rendered pages (Jinja2) plus one small script and stylesheet.

Pages: the overview (stacks with sync and health badges, revision, commit subject,
age of the last pass, recent events), a stack (resources grouped by kind), a
resource (its live diff and journal), the journal timeline (each drift with its
diff). ``static/app.js`` keeps them live through ``GET /events`` and carries the
Sync / Suspend / Resume buttons, which ask for a write token and send it as a
bearer header (never a cookie). Everything is served by the agent: no CDN.

When reads are not anonymous, a page asks for a read token and keeps it in the
``setpoint_token`` cookie (read access only, see :mod:`.auth`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse

from setpoint.api.auth import READ, ApiAuth
from setpoint.api.diff import NotDeclared, live_diff
from setpoint.obs.events import entry_json
from setpoint.obs.views import resource_views

if TYPE_CHECKING:
    import jinja2

    from setpoint.engine.agent import Agent

HERE = Path(__file__).parent
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}


def _age(ts: float | None) -> str:
    if not ts:
        return "never"
    s = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def environment() -> jinja2.Environment:
    # Imported here, on the first page asked for: most agents never serve one, and
    # Jinja2 with its compiled templates costs each of them about 2 MiB.
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = _age
    env.filters["when"] = _when
    env.filters["short"] = lambda sha: (sha or "")[:12]
    return env


def router(agent: Agent, auth: ApiAuth) -> APIRouter:
    from setpoint.api.v1 import StacksView

    api = APIRouter(include_in_schema=False)
    envs: list[jinja2.Environment] = []  # made on the first page
    view = StacksView(agent)
    obs = agent.obs

    def page(request: Request, template: str, status: int = 200, **ctx: Any) -> Response:
        if not auth.allowed(request, READ):
            template, status = "login.html", 401
        if not envs:
            envs.append(environment())
        html = envs[0].get_template(template).render(**ctx)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    @api.get("/")
    async def overview(request: Request) -> Response:
        if not auth.allowed(request, READ):
            return page(request, "login.html")
        stacks = [await view.stack(n, st) for n, st in view.names().items()]
        entries = [entry_json(e) for e in obs.reader.journal(limit=30)]
        return page(request, "overview.html", stacks=stacks, entries=entries, title="setpoint")

    @api.get("/stacks/{stack}")
    async def stack_page(request: Request, stack: str) -> Response:
        if not auth.allowed(request, READ):
            return page(request, "login.html")
        names = view.names()
        if stack not in names:
            return page(request, "missing.html", 404, what=f"stack {stack}", title=stack)
        doc = await view.stack(stack, names[stack])
        kinds: dict[str, list[dict[str, Any]]] = {}
        for r in resource_views(agent.controller, obs.reader, stack, names[stack]):
            kinds.setdefault(r["kind"], []).append(r)
        entries = [entry_json(e) for e in obs.reader.journal(stack=stack, limit=30)]
        return page(request, "stack.html", s=doc, kinds=kinds, entries=entries, title=stack)

    @api.get("/stacks/{stack}/resources/{kind}/{name}")
    async def resource_page(request: Request, stack: str, kind: str, name: str) -> Response:
        if not auth.allowed(request, READ):
            return page(request, "login.html")
        rid = f"{kind}/{name}"
        names = view.names()
        views = resource_views(agent.controller, obs.reader, stack, names.get(stack))
        res = next((v for v in views if v["id"] == rid), None) if stack in names else None
        if res is None:
            return page(request, "missing.html", 404, what=rid, title=rid)
        try:
            diff = await agent.in_pass_thread(lambda: live_diff(agent.controller, stack, rid))
        except NotDeclared:
            diff = None
        entries = [entry_json(e) for e in obs.reader.journal(stack=stack, resource=rid, limit=50)]
        return page(
            request, "resource.html", stack=stack, r=res, diff=diff, entries=entries, title=rid
        )

    @api.get("/journal")
    async def journal_page(
        request: Request, stack: str | None = None, event: str | None = None
    ) -> Response:
        if not auth.allowed(request, READ):
            return page(request, "login.html")
        events = [e for e in (event or "").split(",") if e] or None
        entries = [
            entry_json(e) for e in obs.reader.journal(stack=stack or None, events=events, limit=200)
        ]
        return page(request, "journal.html", entries=entries, stack=stack or "",
                    event=event or "", stacks=list(view.names()), title="journal",
                    trimmed=obs.reader.trimmed())  # fmt: skip

    @api.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            return Response(status_code=404)
        return FileResponse(HERE / "static" / name, media_type=STATIC[name])

    return api
