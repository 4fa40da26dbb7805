"""Keeping the agent's stacks in step with the Fleet file (the controller's side).

Called by :meth:`setpoint.engine.controller.Controller.refresh_fleet` (under the
pass gate) after each fetch of the fleet source: judge the Fleet file at the fetched
revision (trust, then :class:`~setpoint.engine.fleet.FleetView`), journal what it
gave or why it was refused, and prune the stacks this host no longer runs.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from setpoint.config import StackConfig
from setpoint.engine.fleet import FleetChange, FleetView, with_stacks
from setpoint.model.errors import ManifestErrors, SetpointError
from setpoint.state import JournalEntry

if TYPE_CHECKING:
    from setpoint.engine.controller import Controller

log = logging.getLogger("setpoint.controller")

FLEET_JOURNAL = "@fleet"  # journal stack name for Fleet events before any Fleet stack runs


def refresh(ctl: Controller, *, dry_run: bool = False) -> FleetChange | None:
    """Re-select this host's Fleet stacks at the fleet source's fetched revision.

    Called in the pass thread after a fetch. Stacks the host no longer runs are
    pruned like anything removed from Git (a failed prune is retried on the next
    call). A broken Fleet file is refused with file:line errors and the last good
    selection stays in force. Returns the change, or None when nothing changed.
    """
    fv = ctl.fleet
    if fv is None:
        return None
    source = fv.ref.source
    with ctl._lock:
        sha = ctl.fetched[source]
    change: FleetChange | None = None
    if sha is not None and sha != fv.seen:
        change = _select(ctl, fv, source, sha)
    if change is None and not ctl._removing:
        return None
    if change is None:
        change = FleetChange(fv.revision or "")
    ctl.config = with_stacks(ctl.base_config, fv.stacks)
    if dry_run:
        return change
    for name in change.removed:
        ctl._removing[name] = fv.gone(name)
    for name in sorted(ctl._removing):
        if _prune_gone(ctl, ctl._removing[name], change.revision):
            del ctl._removing[name]
    fv.save(list(ctl._removing.values()))
    return change

def _select(ctl: Controller, fv: FleetView, source: str, sha: str) -> FleetChange | None:
    error: SetpointError | None = ctl._trust_error(source, sha)
    change = None
    if error is None:
        try:
            change = fv.select(sha, ctl._tree(source, sha))
        except ManifestErrors as exc:
            error = exc
        except SetpointError as exc:
            fv.seen = None  # the tree could not be read: try again next time
            log.error("fleet file at %s could not be read: %s", sha[:12], exc)
            return None
    if error is not None:
        log.error("fleet file %s at %s refused:\n%s", fv.ref.path, sha[:12], error)
        ctl.db.append(
            *(
                JournalEntry(
                    time.time(),
                    name,
                    "fleet.refused",
                    sha,
                    None,
                    f"Fleet file {fv.ref.path} at {sha[:12]} refused; the stacks chosen "
                    f"at {(fv.revision or 'none')[:12]} stay in force: {error}",
                )
                for name in sorted(fv.names) or [FLEET_JOURNAL]
            )
        )
        return None
    assert change is not None
    ctl.db.append(
        *(
            JournalEntry(
                time.time(),
                name,
                "fleet.selected",
                sha,
                None,
                f"the Fleet file {fv.ref.path} at {sha[:12]} gives this host stack {name}",
            )
            for name in change.added
        )
    )
    return change

def _prune_gone(ctl: Controller, cfg: StackConfig, revision: str) -> bool:
    """Prune every resource of a stack the Fleet no longer gives this host.

    True when nothing of it is left in the inventory (its status is then dropped).
    """
    why = f"stack {cfg.name} no longer runs on this host (Fleet at {revision[:12]})"
    pruned = ctl.prune_stack(cfg.name, stack_prune=cfg.prune, revision=revision, why=why)
    left = ctl.reconciler.inventory.stack(cfg.name)
    done = f"{len(pruned.deleted)} resource(s) pruned"
    if left and not pruned.failures:
        done += f", {len(left)} released"
    if pruned.failures:
        done += f"; {len(pruned.failures)} could not be pruned yet (retried): " + "; ".join(
            pruned.failures.values()
        )
    ctl.db.append(
        JournalEntry(time.time(), cfg.name, "fleet.removed", revision, None, f"{why}: {done}")
    )
    if pruned.failures:
        return False
    ctl.db.delete_status(cfg.name)
    return True
