"""``setpoint explain PATH|Kind/name``: why does this look like this, and since when?

Role: answers from what the agent already keeps, read-only: the state DB's
inventory (which stack and resource own a path, the declaration's ``file:line``,
when it was applied, the commit that last changed the declaration), its journal
(drift found and reverted: count, last one with its diff) and stack status (the
source and stack path), and the source's Git mirror under
``STATE/sources/NAME/repo.git`` (author, date and subject of the commit that last
touched the declaration's files). When the applied revision's exported tree is
still in ``STATE/sources/NAME/trees/``, the overlay chain and the patches the
resource came through are listed too (:mod:`setpoint.writeback.stack`).

A path nobody manages says so and names its nearest managed parent. Called by
:mod:`setpoint.cli_writeback`.
"""

from __future__ import annotations

import os
import posixpath
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from setpoint.model.errors import SetpointError
from setpoint.state import StateDB
from setpoint.state.db import InventoryRecord
from setpoint.writeback.stack import StackError, assemble

DRIFT_EVENTS = ("drift", "revert")
HISTORY_LIMIT = 100_000


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass
class Explanation:
    target: str
    managed: bool
    stack: str = ""
    resource: str = ""
    path: str = ""
    source: str = ""
    stack_path: str = ""
    declared_at: str = ""
    overlays: list[str] = field(default_factory=list)
    patches: list[str] = field(default_factory=list)
    template: str = ""  # the templateSource file, or "inline" (the manifest's template:)
    commit: dict[str, str] = field(default_factory=dict)
    applied_at: str = ""
    applied_revision: str = ""
    drift_count: int = 0
    last_drift: dict[str, Any] = field(default_factory=dict)
    nearest_parent: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _records(db: StateDB) -> list[InventoryRecord]:
    out: list[InventoryRecord] = []
    for st in db.all_status():
        out.extend(db.inventory(st.stack).values())
    return out


def explain(state: Path, target: str) -> Explanation:
    """Explain ``target`` (an absolute path, or ``Kind/name``) from the agent's state dir."""
    if not (state / "setpoint.db").exists():
        raise SetpointError(f"no setpoint state in {state} (has an agent run with --state?)")
    db = StateDB(state)
    try:
        records = _records(db)
        if target.startswith("/"):
            path = posixpath.normpath(target)
            found = [r for r in records if r.path == path]
        else:
            found = [r for r in records if r.resource == target]
        if not found:
            return _unmanaged(target, records)
        rec = found[0]
        out = Explanation(target, True, rec.stack, rec.resource, rec.path)
        out.declared_at = rec.location
        out.applied_at = _iso(rec.applied_at)
        status = db.load_status(rec.stack)
        out.source = status.source if status else ""
        out.stack_path = status.path if status else ""
        out.applied_revision = (status.applied_revision if status else None) or rec.revision
        _drift(db, rec, out)
    finally:
        db.close()
    cache = state / "sources" / out.source
    files = [rec.location.rpartition(":")[0]]
    _chain(cache / "trees" / out.applied_revision, out, files)
    out.commit = _last_commit(cache / "repo.git", out.applied_revision, files, rec.revision)
    return out


def _unmanaged(target: str, records: list[InventoryRecord]) -> Explanation:
    out = Explanation(target, False)
    if not target.startswith("/"):
        return out
    by_path = {r.path: r for r in records if r.path.startswith("/")}
    parent = posixpath.normpath(target)
    while parent != "/":
        parent = posixpath.dirname(parent)
        if parent in by_path:
            r = by_path[parent]
            out.nearest_parent = {"path": parent, "resource": r.resource, "stack": r.stack}
            break
    return out


def _drift(db: StateDB, rec: InventoryRecord, out: Explanation) -> None:
    entries = [
        e
        for e in db.history(stack=rec.stack, limit=HISTORY_LIMIT, events=DRIFT_EVENTS)
        if e.resource == rec.resource
    ]
    found = [e for e in entries if e.event == "drift"]
    # A drift reverted at once is journaled as a revert only: count each episode once.
    episodes = found or [e for e in entries if e.event == "revert"]
    out.drift_count = len(episodes)
    if episodes:
        last = episodes[-1]
        out.last_drift = {
            "at": _iso(last.ts),
            "event": last.event,
            "revision": last.revision or "",
            "message": last.message,
            "diff": last.detail.get("diff", ""),
            "fields": last.detail.get("fields", []),
        }


def _chain(tree: Path, out: Explanation, files: list[str]) -> None:
    if not out.stack_path or not tree.is_dir():
        return
    try:
        doc = assemble(tree, out.stack_path).find(out.resource)
    except (StackError, OSError):
        return
    out.overlays = [ov.file for ov in doc.chain]
    for p, _before in doc.applied():
        out.patches.append(f"{p.overlay} patches[{p.index}]")
        if p.overlay not in files:
            files.append(p.overlay)
    spec = doc.effective().get("spec")
    spec = spec if isinstance(spec, dict) else {}
    source = spec.get("templateSource")
    if isinstance(source, str):
        # Relative to the manifest, as the renderer reads it; its commits count too.
        out.template = posixpath.normpath(posixpath.join(posixpath.dirname(doc.file), source))
        files.append(out.template)
    elif spec.get("template") is not None:
        out.template = f"inline ({out.declared_at})"


def _last_commit(repo: Path, revision: str, files: list[str], fallback: str) -> dict[str, str]:
    """The newest commit up to ``revision`` touching ``files`` (else ``fallback`` itself)."""
    if not repo.is_dir():
        return {"sha": fallback}
    fmt = "--format=%H%x00%an <%ae>%x00%aI%x00%s"
    env = {**os.environ, "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (
        [revision, "--", *[f for f in files if f]],
        [fallback],
    ):
        proc = subprocess.run(
            ["git", f"--git-dir={repo}", "log", "-1", fmt, *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        parts = proc.stdout.strip().split("\0")
        if proc.returncode == 0 and len(parts) == 4:
            return dict(zip(("sha", "author", "date", "subject"), parts, strict=True))
    return {"sha": fallback}


def render_text(e: Explanation) -> str:
    if not e.managed:
        lines = [f"{e.target} is not managed by setpoint."]
        if e.nearest_parent:
            p = e.nearest_parent
            lines.append(
                f"Nearest managed parent: {p['path']} ({p['resource']}, stack {p['stack']})"
            )
        elif e.target.startswith("/"):
            lines.append("No parent directory of it is managed either.")
        return "\n".join(lines)
    lines = [
        f"{e.target}: {e.resource}" + (f" at {e.path}" if e.path and e.path != e.target else ""),
        f"  stack:       {e.stack} (source {e.source or '?'}, path {e.stack_path or '?'})",
        f"  declared at: {e.declared_at}",
    ]
    if e.overlays:
        lines.append(f"  through:     {' <- '.join(e.overlays)}")
    for patch in e.patches:
        lines.append(f"  patched by:  {patch}")
    if e.template:
        lines.append(f"  template:    {e.template}")
    c = e.commit
    if c.get("subject"):
        lines.append(f"  changed by:  {c['sha'][:12]} {c['author']} {c['date']}")
        lines.append(f"               {c['subject']}")
    else:
        lines.append(f"  changed by:  {c.get('sha', '?')[:12]} (commit details unavailable)")
    lines.append(f"  applied:     {e.applied_at} (revision {e.applied_revision[:12]})")
    if e.drift_count:
        d = e.last_drift
        lines.append(f"  drift:       {e.drift_count} time(s); last {d['at']}: {d['message']}")
        if d.get("diff"):
            lines += ["    " + ln for ln in str(d["diff"]).rstrip("\n").splitlines()]
        for f in d.get("fields") or []:
            lines.append(f"    {f.get('field')}: {f.get('old')} -> {f.get('new')}")
    else:
        lines.append("  drift:       never")
    return "\n".join(lines)
