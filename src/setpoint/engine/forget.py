"""Removing a stack that left the config: prune what it owns, or forget it.

The controller's side of :mod:`setpoint.engine.orphans`, like
:mod:`setpoint.engine.fleet_sync` for the Fleet. Called by
:meth:`setpoint.engine.controller.Controller.prune_stack` (``setpoint forget NAME
--prune``; :mod:`setpoint.engine.fleet_sync` for Fleet stacks that stop applying
to this host) and :meth:`~setpoint.engine.controller.Controller.forget`
(``setpoint forget``, from :mod:`setpoint.cli_forget`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from setpoint.config import ConfigError
from setpoint.engine.orphans import ForgetResult, hand_over, release
from setpoint.engine.prune import PruneResult, prune_records
from setpoint.model.errors import SetpointError
from setpoint.state import Event, JournalEntry

if TYPE_CHECKING:
    from setpoint.engine.controller import Controller


def prune_stack_of(
    ctl: Controller,
    name: str,
    *,
    stack_prune: bool = True,
    revision: str | None = None,
    why: str | None = None,
) -> PruneResult:
    """Delete what stack ``name`` owns through the providers, by the ordinary prune rules.

    For a stack that left the config (``setpoint forget NAME --prune``; Fleet
    stacks that stop applying to this host). Resources labelled ``setpoint/prune:
    disabled`` are released (kept on the host); what is deleted or released
    leaves the inventory, one transaction each; a failed delete stays in it and
    is named in ``PruneResult.failures``. Refused for a stack of the config: its
    next pass would create everything again.
    """
    if any(s.name == name for s in ctl.config.stacks):
        raise ConfigError(
            f"stack {name!r} is in the config: its next pass would create again what a "
            "prune deletes; remove it from the config first"
        )
    view = ctl.reconciler.inventory
    view.refresh()
    ctl.reconciler.begin_outside(name)  # a fresh parent-chain check for every delete
    try:
        return prune_records(
            name,
            list(view.stack(name).values()),
            view,
            ctl.reconciler.providers,
            revision=revision,
            stack_prune=stack_prune,
            why=why or f"stack {name} left the config",
            dry_run=False,
            clock=ctl.reconciler.clock,
        )
    finally:
        ctl.reconciler.end_pass()


def forget_stack(
    ctl: Controller, name: str, *, prune: bool = False, to: str | None = None
) -> ForgetResult:
    """``setpoint forget``: release stack ``name``'s inventory, prune it, or hand it ``to``.

    The caller holds the state dir (:meth:`Controller.lock_state`): a running agent
    keeps the inventory in memory. ``name`` must have left the config; ``to`` must be
    in it. Journaled (event ``forget``); the stack's status is dropped once it
    owns nothing.
    """
    if prune and to is not None:
        raise SetpointError("give --prune or --to NEW, not both")
    if any(s.name == name for s in ctl.config.stacks):
        raise ConfigError(
            f"stack {name!r} is still in the config; forget is for stacks the config no "
            f"longer names (remove or rename it in the config first)"
        )
    known = ctl.db.stack_sizes()
    if name not in known:
        raise SetpointError(
            f"the state dir {ctl.config.state} knows no stack named {name!r} "
            f"(known: {', '.join(sorted(known)) or 'none'})"
        )
    view = ctl.reconciler.inventory
    if to is not None:
        if to == name:
            raise SetpointError(f"cannot hand stack {name!r} to itself")
        ctl.config.stack(to)  # ConfigError naming the known stacks
        result = hand_over(view, name, to, time.time())
    elif prune:
        result = _forget_pruned(ctl, name)
    else:
        result = release(view, name, time.time())
    if result.ok:
        desired = ctl.reconciler.desired
        desired.orphans = desired.orphans - {name}
    return result


def _forget_pruned(ctl: Controller, name: str) -> ForgetResult:
    view = ctl.reconciler.inventory
    before = dict(view.stack(name))
    pruned = ctl.prune_stack(name)
    deleted = [before[rid] for rid in pruned.deleted]
    kept = [c.resource for c in pruned.changes if c.is_noop]
    result = ForgetResult(name, "prune", deleted, kept, dict(pruned.failures))
    summary = f"{len(deleted)} deleted, {len(kept)} kept on the host (released)"
    if pruned.failures:
        msg = (
            f"stack {name}: {summary}; {len(pruned.failures)} could not be deleted and "
            f"stay in its inventory: {', '.join(sorted(pruned.failures))}"
        )
    else:
        msg = f"forgot stack {name}: {summary}"
        ctl.db.delete_status(name)
    ctl.db.append(
        JournalEntry(
            time.time(),
            name,
            Event.FORGET,
            None,
            None,
            msg,
            {"mode": "prune", "deleted": len(deleted), "kept": kept, "failed": pruned.failures},
        )
    )
    return result
