"""Orphaned stacks: stacks the state DB knows but the config no longer names.

Removing or renaming a stack in the config leaves its inventory behind: its paths
stay claimed (the conflict check refuses a renamed stack that declares them) and
nothing ever prunes them. The controller finds such stacks at its first pass
(:func:`find_orphans`) and reports each one in its status and once in the journal
(:func:`report_orphans`). ``setpoint forget OLD`` resolves one, through
:meth:`setpoint.engine.controller.Controller.forget`:

- no flag, :func:`release`: drop the inventory; the files stay on the host,
  unmanaged (Argo CD's non-cascading delete, ``argocd app delete --cascade=false``);
- ``--prune``: delete them first (``Controller.prune_stack``, the ordinary prune
  path), then drop what was deleted;
- ``--to NEW``, :func:`hand_over`: give the rows to NEW in one transaction, so
  NEW's next pass finds them its own (no delete and re-create).

Each is journaled (event ``forget``). The caller holds the state dir's lock: a
running agent keeps the inventory in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from setpoint.engine.inventory import InventoryView
from setpoint.engine.status import mark_orphaned
from setpoint.model.errors import SetpointError
from setpoint.state import Event, InventoryRecord, JournalEntry, StateDB

# A forget entry lists the paths it released; past this many it gives the count only.
_LISTED = 1000


class HandOverError(SetpointError):
    """``forget OLD --to NEW`` refused: NEW already owns one of OLD's paths or ids differently."""


@dataclass(frozen=True)
class Orphan:
    """A stack with state (inventory or status) that the config no longer names."""

    stack: str
    owned: int  # resources it still owns (inventory rows)

    @property
    def message(self) -> str:
        s = self.stack
        if self.owned == 0:
            return (
                f"stack {s} is no longer in the config and owns no resources: run "
                f"`setpoint forget {s}` to drop its status"
            )
        return (
            f"stack {s} is no longer in the config and still owns {_count(self.owned)}: "
            f"run `setpoint forget {s} --prune` to delete them or `setpoint forget {s} "
            "--to NEW` to hand them to NEW"
        )


@dataclass
class ForgetResult:
    """What ``forget`` did to one stack's inventory."""

    stack: str
    mode: str  # "release" | "prune" | "hand-over"
    done: list[InventoryRecord] = field(default_factory=list)  # released / deleted / handed
    kept: list[str] = field(default_factory=list)  # prune: released instead (label, heir)
    failures: dict[str, str] = field(default_factory=dict)  # prune: id -> why not deleted
    to: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


def find_orphans(db: StateDB, configured: Iterable[str]) -> list[Orphan]:
    """The stacks ``db`` knows that are not in ``configured``, by name."""
    names = set(configured)
    return [
        Orphan(stack, owned)
        for stack, owned in sorted(db.stack_sizes().items())
        if stack not in names
    ]


def report_orphans(db: StateDB, orphans: Iterable[Orphan], now: float) -> None:
    """Each orphan's status (not Ready, reason Orphaned) and one journal entry."""
    entries = []
    for o in orphans:
        mark_orphaned(db, o.stack, o.owned, o.message, now)
        entries.append(
            JournalEntry(
                now, o.stack, Event.ORPHANED, None, None, o.message, {"resources": o.owned}
            )
        )
    if entries:
        db.append(*entries)


def release(view: InventoryView, stack: str, now: float) -> ForgetResult:
    """Drop ``stack``'s inventory and status; its files stay on the host, unmanaged."""
    view.refresh()
    recs = list(view.stack(stack).values())
    msg = (
        f"forgot stack {stack}: released {_count(len(recs))}; the files stay on the host, "
        "no longer managed by setpoint"
    )
    entry = JournalEntry(now, stack, Event.FORGET, None, None, msg, _paths(recs, "release"))
    view.record_outcome(removed=[(stack, r.resource) for r in recs], entries=[entry])
    view.db.delete_status(stack)
    return ForgetResult(stack, "release", recs)


def hand_over(view: InventoryView, old: str, new: str, now: float) -> ForgetResult:
    """Give ``old``'s inventory rows to ``new`` in one transaction, then drop ``old``'s status.

    A row whose id ``new`` already has for the same kind and path is simply dropped
    (``new`` owns it already). Refused, with nothing changed, when ``new`` has one
    of the ids for another path or kind, or one of the claims under another id.
    """
    view.refresh()
    theirs = dict(view.stack(old))
    mine = view.stack(new)
    by_claim = {k: r for r in mine.values() for k in r.claims}
    moved: list[InventoryRecord] = []
    problems: list[str] = []
    for rid, rec in sorted(theirs.items()):
        same = mine.get(rid)
        if same is not None:
            if (same.kind, same.path) != (rec.kind, rec.path):
                problems.append(
                    f"{rid}: stack {new} already has {rid} at {same.path or '(no path)'}; "
                    f"stack {old}'s is at {rec.path or '(no path)'}"
                )
            continue
        held = [(k, by_claim[k]) for k in rec.claims if k in by_claim]
        if held:
            key, holder = held[0]
            problems.append(
                f"{key}: stack {new} already owns it as {holder.resource}; stack {old} as {rid}"
            )
            continue
        moved.append(replace(rec, stack=new))
    if problems:
        raise HandOverError(
            f"cannot hand stack {old}'s resources to stack {new}; nothing was changed:\n  "
            + "\n  ".join(problems)
            + f"\nuse `setpoint forget {old}` (keep the files, unmanaged) or "
            f"`setpoint forget {old} --prune` instead"
        )
    n = _count(len(moved))
    entries = [
        JournalEntry(
            now,
            old,
            Event.FORGET,
            None,
            None,
            f"forgot stack {old}: handed {n} to stack {new}",
            _paths(moved, "hand-over") | {"to": new},
        ),
        JournalEntry(
            now,
            new,
            Event.FORGET,
            None,
            None,
            f"took over {n} from stack {old} (setpoint forget {old} --to {new})",
            _paths(moved, "hand-over") | {"from": old},
        ),
    ]
    view.record_outcome(records=moved, removed=[(old, rid) for rid in theirs], entries=entries)
    view.db.delete_status(old)
    return ForgetResult(old, "hand-over", moved, to=new)


def _count(n: int) -> str:
    return f"{n} resource" if n == 1 else f"{n} resources"


def _paths(recs: list[InventoryRecord], mode: str) -> dict[str, object]:
    paths = sorted(r.path or r.resource for r in recs)
    detail: dict[str, object] = {"mode": mode, "resources": len(recs)}
    if len(paths) <= _LISTED:
        detail["paths"] = paths
    return detail
