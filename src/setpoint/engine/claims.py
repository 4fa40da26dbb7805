"""Write-ahead claims of one pass, taken in batches (one SQLite transaction per batch).

Role: :class:`~setpoint.engine.reconciler.Reconciler` records a claim (an inventory
row with digest "") before it creates a path, so that a crash between the create
and its record cannot leave a file that no inventory knows (prune could never
remove it). One transaction per created file cost a commit each; here, when a
create needs its claim, the next resources of the pass's order that the same
provider will create too (``read`` finds it absent now, it has no record and
its path no owner) are claimed with it, in one transaction. The guarantee
is unchanged: every create is preceded by its claim; a crash leaves claims for
absent paths at worst, exactly what a crash between a claim and its create
always could (the next pass creates them, or prunes them if no longer declared).

A claim this pass took and did not use (the create failed, the resource waited
on a failed dependency, or the look-ahead guessed wrong) is withdrawn: on a
failure at once, the rest when the pass ends (:meth:`PassClaims.close`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from setpoint.engine.inventory import InventoryView
from setpoint.model.resource import Resource
from setpoint.providers.base import Provider
from setpoint.state import InventoryRecord

BATCH = 256  # claims per transaction at most (the resource that needs one, and what follows)

RecordFor = Callable[[Resource], InventoryRecord]


class PassClaims:
    """The claims of one pass over ``order`` (one stack)."""

    def __init__(
        self,
        stack: str,
        order: Sequence[Resource],
        inventory: InventoryView,
        provider_of: Callable[[Resource], Provider],
        record_for: RecordFor,
        batch: int = BATCH,
    ) -> None:
        self.stack = stack
        self.order = order
        self.inventory = inventory
        self.provider_of = provider_of
        self.record_for = record_for
        self.batch = batch
        self.fresh: set[str] = set()  # ids claimed by this pass, not yet recorded as applied
        self.transactions = 0  # for tests and benchmarks

    def claim(self, pos: int, r: Resource) -> None:
        """Claim ``r`` (at ``pos`` in the order), with the creates that follow it."""
        records = [self._claim_record(r)]
        taken = {r.id}
        provider = self.provider_of(r)
        owned = self.inventory.stack(self.stack)
        owners = self.inventory.owners()
        for nxt in self.order[pos + 1 : pos + self.batch]:
            if nxt.id in owned or nxt.id in taken or self.provider_of(nxt) is not provider:
                continue
            keys = tuple(provider.claims(nxt))
            if not keys or any(k in owners for k in keys):  # every claim is checked
                continue
            try:
                if provider.read(nxt) is not None:  # None: absent, so the plan creates it
                    continue
            except Exception:  # noqa: S112 (the pass reads it again and reports the error)
                continue
            records.append(self._claim_record(nxt))
            taken.add(nxt.id)
        self.inventory.record_outcome(records=records)
        self.transactions += 1
        self.fresh |= taken

    def _claim_record(self, r: Resource) -> InventoryRecord:
        return replace(self.record_for(r), digest="")  # "" = not applied yet (never drift)

    def applied(self, rid: str) -> None:
        """``rid``'s create is recorded: its claim is no longer this pass's to withdraw."""
        self.fresh.discard(rid)

    def withdraw(self, rid: str) -> None:
        """The create of ``rid`` failed (atomically): nothing was created, drop its claim."""
        if rid in self.fresh:
            self.fresh.discard(rid)
            self.inventory.record_outcome(removed=[(self.stack, rid)])

    def close(self) -> None:
        """Withdraw, in one transaction, the claims of this pass no create used."""
        if self.fresh:
            removed = [(self.stack, rid) for rid in sorted(self.fresh)]
            self.fresh.clear()
            self.inventory.record_outcome(removed=removed)
