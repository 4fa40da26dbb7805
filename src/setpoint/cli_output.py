"""Human-readable rendering of plans, passes, status and history for :mod:`setpoint.cli`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer

from setpoint.engine.outcome import PassResult, result_json
from setpoint.model.plan import Action, Change

if TYPE_CHECKING:
    from setpoint.model.status import StackStatus
    from setpoint.state import JournalEntry

__all__ = ["print_change", "print_history", "print_plan", "print_status", "result_json"]

SYMBOL = {
    Action.CREATE: "+",
    Action.UPDATE: "~",
    Action.REPLACE: "±",
    Action.DELETE: "-",
    Action.NOOP: "=",
}
DONE = {
    "changed": "applied",
    "reverted": "reverted drift",
    "drifted": "drift (not reverted)",
    "pending": "",
    "failed": "FAILED",
    "waiting": "waiting",
}


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "(none)"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"


def print_change(c: Change, note: str = "") -> None:
    line = f"  {SYMBOL[c.action]} {c.action.value} {c.resource}"
    if c.path:
        line += f" {c.path}"
    if note:
        line += f"  [{note}]"
    if c.reason:
        line += f"  ({c.reason})"
    typer.echo(line)
    for f in c.fields:
        if f.field != "content" or not c.diff:
            typer.echo(f"      {f}")
    for e in c.extra:
        typer.echo(f"      purge {e}")
    if c.diff:
        for dl in c.diff.rstrip("\n").splitlines():
            typer.echo(f"      {dl}")


def print_plan(r: PassResult, applied: bool = False, unchanged: bool = False) -> None:
    typer.echo(f"stack {r.stack} @ {_short(r.revision)}")
    if r.fetch_error:
        typer.echo(f"  ! source: {r.fetch_error}")
    if r.refused:
        typer.echo(
            f"  ! revision {_short(r.refused)} refused; "
            + (
                f"enforcing last good revision {_short(r.revision)}"
                if r.revision
                else "no earlier good revision to enforce"
            )
        )
        for e in r.errors:
            typer.echo(f"    {e}")
    elif r.errors:
        for e in r.errors:
            typer.echo(f"  ! {e}")
    for o in r.outcomes:
        if o.change is not None and not o.change.is_noop:
            print_change(
                o.change,
                DONE.get(o.state, "") if applied else ("drift" if o.state == "drifted" else ""),
            )
        elif o.state in ("failed", "waiting"):
            typer.echo(f"  ! {o.resource}: {o.error}")
        elif unchanged and o.state == "in_sync":
            typer.echo(f"  = noop {o.resource}  (in sync)")
    for p in r.prunes:
        failure = r.prune_failures.get(p.resource)
        print_change(p, failure or ("pruned" if applied and not p.is_noop else ""))
    counts = {a: 0 for a in Action}
    for c in r.changes:
        counts[c.action] += 1
    in_sync = r.count("in_sync")
    verb = "Applied" if applied else "Plan"
    typer.echo(
        f"{verb}: {counts[Action.CREATE]} to create, {counts[Action.UPDATE]} to update, "
        f"{counts[Action.REPLACE]} to replace, {counts[Action.DELETE]} to delete, "
        f"{in_sync} unchanged."
        if not applied
        else f"{verb}: {counts[Action.CREATE]} created, {counts[Action.UPDATE]} updated, "
        f"{counts[Action.REPLACE]} replaced, {counts[Action.DELETE]} deleted, "
        f"{r.count('failed')} failed, {in_sync} unchanged ({r.duration * 1000:.0f} ms)."
    )


def print_status(stacks: list[StackStatus]) -> None:
    if not stacks:
        typer.echo("no stacks have run yet")
    for s in stacks:
        ready = s.condition("Ready")
        head = "Ready" if ready and ready.status else "NotReady"
        typer.echo(f"stack {s.stack} (source {s.source}, path {s.path}): {head}")
        for c in s.conditions:
            first, *rest = c.message.splitlines() or [""]
            typer.echo(f"  {c.type}={c.status} {c.reason} since {_when(c.since)}: {first}")
            for line in rest:
                typer.echo(f"      {line}")
        tag = f" (tag {s.applied_tag})" if s.applied_tag else ""
        typer.echo(
            f"  fetched {_short(s.fetched_revision)}  applied {_short(s.applied_revision)}{tag}"
            f"  last good {_short(s.last_good_revision)}  last pass {_when(s.last_pass)}"
        )
        n = s.counts
        typer.echo(
            f"  resources: {n.get('total', 0)} total, {n.get('in_sync', 0)} in sync, "
            f"{n.get('drifted', 0)} drifted, {n.get('failed', 0)} failed, "
            f"{n.get('waiting', 0)} waiting"
        )
        for rid, st in sorted(s.resources.items()):
            typer.echo(f"    {st}: {rid}")
        if s.health:
            typer.echo("  health:")
        for rid, h in sorted(s.health.items()):
            first = (str(h.get("message") or "").splitlines() or [""])[0]
            why = f" ({first})" if first else ""
            typer.echo(f"    {h.get('health', 'Unknown')}: {rid}{why}")


def print_history(entries: list[JournalEntry]) -> None:
    for e in entries:
        where = f" {e.resource}" if e.resource else ""
        rev = f" @{e.revision[:12]}" if e.revision else ""
        typer.echo(f"{_when(e.ts)} {e.stack} {e.event}{where}{rev}: {e.message}")
        diff = e.detail.get("diff") if isinstance(e.detail, dict) else None
        if isinstance(diff, str):
            for dl in diff.rstrip("\n").splitlines():
                typer.echo(f"    {dl}")
