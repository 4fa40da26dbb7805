"""Human-readable rendering of plans, passes, status and history for :mod:`setpoint.cli`."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from setpoint.cli_fast import print_status
from setpoint.engine.outcome import PassResult, result_json
from setpoint.model.plan import Action, Change

if TYPE_CHECKING:
    from setpoint.state import JournalEntry
    from setpoint.state.retention import Trimmed

__all__ = ["print_change", "print_history", "print_plan", "print_status", "result_json"]


def echo(text: str) -> None:
    # Not typer.echo: `plan`/`apply` print through here without importing typer (cli_fast).
    sys.stdout.write(text + "\n")

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


def _when_again(first: float, last: float | None) -> str:
    """The time of a repeat: only the clock time when it is the first one's day."""
    if last is None:
        return "unknown"
    same_day = time.localtime(first)[:3] == time.localtime(last)[:3]
    return time.strftime("%H:%M:%S", time.localtime(last)) if same_day else _when(last)


def print_change(c: Change, note: str = "") -> None:
    line = f"  {SYMBOL[c.action]} {c.action.value} {c.resource}"
    if c.path:
        line += f" {c.path}"
    if note:
        line += f"  [{note}]"
    if c.reason:
        line += f"  ({c.reason})"
    lines = [line]
    lines += [f"      {f}" for f in c.fields if f.field != "content" or not c.diff]
    lines += [f"      purge {e}" for e in c.extra]
    if c.diff:
        lines += [f"      {dl}" for dl in c.diff.rstrip("\n").splitlines()]
    # One write per change: a first apply of thousands of files prints every diff line.
    echo("\n".join(lines))


def print_plan(r: PassResult, applied: bool = False, unchanged: bool = False) -> None:
    echo(f"stack {r.stack} @ {_short(r.revision)}")
    if r.fetch_error:
        echo(f"  ! source: {r.fetch_error}")
    if r.refused:
        echo(
            f"  ! revision {_short(r.refused)} refused; "
            + (
                f"enforcing last good revision {_short(r.revision)}"
                if r.revision
                else "no earlier good revision to enforce"
            )
        )
        for e in r.errors:
            echo(f"    {e}")
    elif r.errors:
        for e in r.errors:
            echo(f"  ! {e}")
    for o in r.outcomes:
        if o.change is not None and not o.change.is_noop:
            print_change(
                o.change,
                DONE.get(o.state, "") if applied else ("drift" if o.state == "drifted" else ""),
            )
        elif o.state in ("failed", "waiting"):
            echo(f"  ! {o.resource}: {o.error}")
        elif unchanged and o.state == "in_sync":
            echo(f"  = noop {o.resource}  (in sync)")
    for p in r.prunes:
        failure = r.prune_failures.get(p.resource)
        print_change(p, failure or ("pruned" if applied and not p.is_noop else ""))
    counts = {a: 0 for a in Action}
    for c in r.changes:
        counts[c.action] += 1
    in_sync = r.count("in_sync")
    verb = "Applied" if applied else "Plan"
    echo(
        f"{verb}: {counts[Action.CREATE]} to create, {counts[Action.UPDATE]} to update, "
        f"{counts[Action.REPLACE]} to replace, {counts[Action.DELETE]} to delete, "
        f"{in_sync} unchanged."
        if not applied
        else f"{verb}: {counts[Action.CREATE]} created, {counts[Action.UPDATE]} updated, "
        f"{counts[Action.REPLACE]} replaced, {counts[Action.DELETE]} deleted, "
        f"{r.count('failed')} failed, {in_sync} unchanged ({r.duration * 1000:.0f} ms)."
    )


def print_history(entries: list[JournalEntry], trimmed: Trimmed | None = None) -> None:
    if trimmed is not None:
        echo(trimmed.describe(_when))
    for e in entries:
        where = f" {e.resource}" if e.resource else ""
        rev = f" @{e.revision[:12]}" if e.revision else ""
        times = f" ×{e.count}, last {_when_again(e.ts, e.last_at)}" if e.count > 1 else ""
        echo(f"{_when(e.ts)} {e.stack} {e.event}{times}{where}{rev}: {e.message}")
        diff = e.detail.get("diff") if isinstance(e.detail, dict) else None
        if isinstance(diff, str):
            for dl in diff.rstrip("\n").splitlines():
                echo(f"    {dl}")
