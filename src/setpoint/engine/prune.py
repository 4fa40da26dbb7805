"""Prune: delete what left Git, but only what the stack's inventory says it owns.

Called by the reconciler at the end of a full pass. ``prune: false`` on the stack
or the label ``setpoint/prune: disabled`` releases a resource instead (kept on the
host, dropped from the inventory). A failed delete stays in the inventory, to be
tried again: bookkeeping follows confirmed outcomes only.
"""

from __future__ import annotations

from collections.abc import Callable

from setpoint.config import StackConfig
from setpoint.engine.inventory import InventoryView
from setpoint.engine.outcome import PassResult
from setpoint.model.errors import SetpointError
from setpoint.model.plan import Action, Change
from setpoint.providers.base import Provider
from setpoint.state import InventoryRecord, JournalEntry


def prune(
    stack: StackConfig,
    revision: str,
    wanted: set[str],
    view: InventoryView,
    providers: dict[str, Provider],
    result: PassResult,
    *,
    dry_run: bool,
    clock: Callable[[], float],
) -> None:
    gone = [rec for rid, rec in view.stack(stack.name).items() if rid not in wanted]
    # Children before parents: deeper paths first.
    gone.sort(key=lambda rec: (-rec.path.count("/"), rec.path))
    for rec in gone:
        keep_reason = _keep_reason(stack, rec)
        if keep_reason:
            result.prunes.append(
                Change(
                    rec.resource,
                    Action.NOOP,
                    rec.path,
                    reason=f"removed from Git, kept: {keep_reason}",
                )
            )
            if not dry_run:
                entry = JournalEntry(
                    clock(),
                    stack.name,
                    "prune",
                    revision,
                    rec.resource,
                    f"released {rec.path}: {keep_reason}",
                )
                view.record_outcome(removed=[(stack.name, rec.resource)], entries=[entry])
            continue
        result.prunes.append(
            Change(rec.resource, Action.DELETE, rec.path, reason="removed from Git")
        )
        if dry_run:
            continue
        provider = providers.get(rec.kind)
        try:
            if provider is None:
                raise SetpointError(f"no provider for kind {rec.kind}")
            done = provider.delete(rec.kind, rec.path)
        except (SetpointError, OSError) as exc:
            msg = f"cannot delete {rec.path}: {os_message(exc)}"
            result.prune_failures[rec.resource] = msg
            view.db.append(
                JournalEntry(clock(), stack.name, "failure", revision, rec.resource, msg)
            )
            continue
        entry = JournalEntry(
            clock(), stack.name, "prune", revision, rec.resource, done, {"path": rec.path}
        )
        view.record_outcome(removed=[(stack.name, rec.resource)], entries=[entry])


def _keep_reason(stack: StackConfig, rec: InventoryRecord) -> str | None:
    if not stack.prune:
        return "prune is disabled for this stack"
    if not rec.prune:
        return "labelled setpoint/prune: disabled"
    return None


def os_message(exc: BaseException) -> str:
    """An error's text for an operator: strerror and file for OS errors."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)
