"""Prune: delete what left Git, but only what the stack's inventory says it owns.

Called by the reconciler at the end of a full pass (:func:`prune`), and by
:meth:`setpoint.engine.controller.Controller.prune_stack` for a whole stack that
left the config (``setpoint forget OLD --prune``; later, Fleet stacks that stop
applying to a host). Both go through :func:`prune_records`, so the rules are one:
``prune: false`` on the stack or the label ``setpoint/prune: disabled`` releases a
resource instead (kept on the host, dropped from the inventory); a path that
another resource of the same stack now declares (a renamed resource) is handed
over, never deleted; a failed delete stays in the inventory, to be tried again:
bookkeeping follows confirmed outcomes only.

Order: reverse dependency order, from the dependencies each inventory record kept
when it was applied (a Service before its Release, a file before its directory, a
role after the database it owns); ties (and records of older inventories, which
kept none) go deepest path first. A provider deletes from the record it gave at
claim time (``Provider.record``): the declaration is gone from Git by then.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from setpoint.config import StackConfig
from setpoint.engine.inventory import InventoryView
from setpoint.engine.outcome import PassResult
from setpoint.model.errors import SetpointError
from setpoint.model.plan import Action, Change
from setpoint.providers.base import Provider
from setpoint.state import InventoryRecord, JournalEntry


@dataclass
class PruneResult:
    """What a prune did: one change per record (DELETE, or NOOP with why it was kept)."""

    stack: str
    changes: list[Change] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # resource id -> why not deleted

    @property
    def deleted(self) -> list[str]:
        """Ids deleted from the host (and dropped from the inventory)."""
        return [
            c.resource
            for c in self.changes
            if c.action is Action.DELETE and c.resource not in self.failures
        ]

    @property
    def ok(self) -> bool:
        return not self.failures


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
    declared: dict[str, str] | None = None,
    heirs: Callable[[], dict[str, str]] | None = None,
    failing: Collection[str] = (),
) -> None:
    """End of a full pass: prune what ``stack`` owns and no longer declares (``wanted``).

    ``declared`` maps the paths the desired state declares to their resource ids
    (default: the paths of the ``wanted`` records of the inventory). ``heirs`` gives
    the paths other stacks of the same source declare at this revision (path ->
    stack): those are neither deleted nor released but left for that stack's pass to
    take over in one transaction, so the path is never unowned nor absent.
    ``failing``: the resources the previous pass failed (a repeated failure is counted
    on its journal entry, see ``StateDB.record_repeat``).
    """
    inv = view.stack(stack.name)
    gone = [rec for rid, rec in inv.items() if rid not in wanted]
    if gone and heirs is not None:
        taken = heirs()
        for rec in [rec for rec in gone if any(k in taken for k in rec.claims)]:
            gone.remove(rec)
            heir = next(taken[k] for k in rec.claims if k in taken)
            result.prunes.append(
                Change(
                    rec.resource,
                    Action.NOOP,
                    rec.path,
                    reason=f"removed from Git, handed over to stack {heir} "
                    "(its pass takes it over)",
                )
            )
    if not gone:
        return
    # A renamed resource keeps its path: deleting the old id's path would delete the
    # file the new id declares (and the pass just checked or wrote).
    if declared is None:
        declared = {k: rid for rid, rec in inv.items() if rid in wanted for k in rec.claims}
    done = prune_records(
        stack.name,
        gone,
        view,
        providers,
        revision=revision,
        stack_prune=stack.prune,
        declared=declared,
        why="removed from Git",
        dry_run=dry_run,
        clock=clock,
        failing=failing,
    )
    result.prunes.extend(done.changes)
    result.prune_failures.update(done.failures)


def prune_records(
    stack: str,
    records: Iterable[InventoryRecord],
    view: InventoryView,
    providers: dict[str, Provider],
    *,
    revision: str | None,
    stack_prune: bool = True,
    declared: dict[str, str] | None = None,
    why: str,
    dry_run: bool,
    clock: Callable[[], float],
    failing: Collection[str] = (),
) -> PruneResult:
    """Delete (or release) ``records`` of ``stack`` through their providers.

    ``declared`` maps paths that resources of the stack still declare to their ids;
    ``why`` is the reason shown for the deletes ("removed from Git"). Each confirmed
    outcome is recorded (inventory and journal) in its own transaction.
    """
    out = PruneResult(stack)
    for rec in prune_order(list(records)):
        keep_reason = _keep_reason(stack_prune, rec, declared or {})
        if keep_reason:
            out.changes.append(
                Change(rec.resource, Action.NOOP, rec.path, reason=f"{why}, kept: {keep_reason}")
            )
            if not dry_run:
                entry = JournalEntry(
                    clock(),
                    stack,
                    "prune",
                    revision,
                    rec.resource,
                    f"released {rec.path}: {keep_reason}",
                )
                view.record_outcome(removed=[(stack, rec.resource)], entries=[entry])
            continue
        out.changes.append(Change(rec.resource, Action.DELETE, rec.path, reason=why))
        if dry_run:
            continue
        provider = providers.get(rec.kind)
        try:
            if provider is None:
                raise SetpointError(f"no provider for kind {rec.kind}")
            done = provider.delete(rec.kind, dict(rec.record))
        except (SetpointError, OSError) as exc:
            msg = f"cannot delete {rec.path}: {os_message(exc)}"
            out.failures[rec.resource] = msg
            view.db.record_repeat(
                JournalEntry(clock(), stack, "failure", revision, rec.resource, msg),
                follows=rec.resource in failing,
            )
            continue
        entry = JournalEntry(
            clock(), stack, "prune", revision, rec.resource, done, {"path": rec.path}
        )
        view.record_outcome(removed=[(stack, rec.resource)], entries=[entry])
    return out


def prune_order(records: Sequence[InventoryRecord]) -> list[InventoryRecord]:
    """``records`` in reverse dependency order: each before every record it depended on.

    From the ids each record depended on when applied (``InventoryRecord.deps``);
    among records free to go, deeper paths first, then by path and id (stable).
    Dependencies outside ``records`` (still declared, or already gone) do not count.
    A cycle (impossible from an ordered stack, but rows may be edited) falls back to
    the path order for what is left.
    """
    by_id = {r.resource: r for r in records}
    # blockers[x]: records that depend on x and are not deleted yet (x must wait).
    blockers = {rid: 0 for rid in by_id}
    for r in records:
        for dep in set(r.deps):
            if dep in by_id and dep != r.resource:
                blockers[dep] += 1

    def key(r: InventoryRecord) -> tuple[int, str, str]:
        return (-r.path.count("/"), r.path, r.resource)

    ready = [(key(r), r.resource) for r in records if blockers[r.resource] == 0]
    heapq.heapify(ready)
    out: list[InventoryRecord] = []
    while ready:
        _k, rid = heapq.heappop(ready)
        rec = by_id[rid]
        out.append(rec)
        for dep in set(rec.deps):
            if dep in blockers and dep != rid:
                blockers[dep] -= 1
                if blockers[dep] == 0:
                    heapq.heappush(ready, (key(by_id[dep]), dep))
    if len(out) < len(records):
        done = {r.resource for r in out}
        out.extend(sorted((r for r in records if r.resource not in done), key=key))
    return out


def _keep_reason(stack_prune: bool, rec: InventoryRecord, declared: dict[str, str]) -> str | None:
    for claim in rec.claims:
        heir = declared.get(claim)
        if heir is not None and heir != rec.resource:
            return f"{claim} is now declared by {heir}"
    if not stack_prune:
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
