"""The in-memory view of the inventory: what each stack owns, and who owns each claim.

Used by the reconciler (drift vs new declaration, prune, conflicts) and by
:mod:`setpoint.engine.desired` (cross-stack conflicts). Every pass needs the whole
inventory; reading 10,000 rows from SQLite each time would cost a third of a
no-op pass, so the view keeps a copy. It is exact: every write of this process
goes through :meth:`InventoryView.record_outcome`, which updates the copy, and
a write by another process (another connection) moves SQLite's ``data_version``,
which makes the view reload.
"""

from __future__ import annotations

from collections.abc import Sequence

from setpoint.state import InventoryRecord, JournalEntry, StateDB


class InventoryView:
    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._stacks: dict[str, dict[str, InventoryRecord]] = {}
        self._owners: dict[str, InventoryRecord] | None = None
        self._seen_version: int | None = None
        self.version = 0  # moves whenever the set of path owners may have changed

    def refresh(self) -> None:
        """Drop the copy if another connection wrote to the state DB since it was read."""
        now = self.db.changed_elsewhere()
        if now != self._seen_version:
            self._seen_version = now
            self._stacks.clear()
            self._owners = None

    def stack(self, stack: str) -> dict[str, InventoryRecord]:
        """What ``stack`` owns, by resource id (the view's own dict: do not mutate it)."""
        inv = self._stacks.get(stack)
        if inv is None:
            inv = self._stacks[stack] = self.db.inventory(stack)
        return inv

    def owners(self) -> dict[str, InventoryRecord]:
        """Every claimed key (paths and other providers' keys), across stacks, with its owner."""
        if self._owners is None:
            self._owners = self.db.owners_by_path()
            self.version += 1
        return self._owners

    def record_outcome(
        self,
        records: Sequence[InventoryRecord] = (),
        removed: Sequence[tuple[str, str]] = (),
        entries: Sequence[JournalEntry] = (),
    ) -> None:
        """``StateDB.record_outcome`` (one transaction), then the same change in the copy."""
        self.db.record_outcome(records=records, removed=removed, entries=entries)
        for rec in records:
            inv = self._stacks.get(rec.stack)
            old = inv.get(rec.resource) if inv is not None else None
            if inv is not None:
                inv[rec.resource] = rec
            owners = self._owners
            if owners is None or not rec.claims:
                continue
            if old is not None and old.claims != rec.claims:
                self._owners = None  # a claim moved: reload the owners next time
                continue
            for key in rec.claims:
                cur = owners.get(key)
                if cur is None:
                    owners[key] = rec
                    self.version += 1
                elif (cur.stack, cur.resource) == (rec.stack, rec.resource):
                    owners[key] = rec  # same owner: the set of owners is unchanged
        for st, rid in removed:
            inv = self._stacks.get(st)
            if inv is not None:
                inv.pop(rid, None)
            self._owners = None
