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

The records of the creates themselves (inventory row with the applied digest, the
``apply`` journal entry) are batched too (:meth:`PassClaims.done`): they wait, in
order, for the next write of the pass (the next batch of claims, a withdrawal, the
end of the pass, or :meth:`PassClaims.flush`, which the step calls before any other
write) and go in its transaction. A crash loses at most those records, never a claim: every created
file is still owned (digest ""), and the next pass finds it as declared, records it
and journals its create then (:mod:`.step`, "recovered").

A create whose provider pipelines it (:class:`~setpoint.providers.base.Pipelining`:
the file provider's writer thread fsyncs while the pass goes on) is *in flight*
until landed (:meth:`PassClaims.land`): its record waits like any batched create's,
and every write of this class lands first, so no record is written for a create
that has not happened. One that failed is withdrawn in that same transaction and
left in :attr:`PassClaims.failed` for the reconciler to report. The reconciler
lands before any step a write in flight could affect (:meth:`PassClaims.must_land`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Set
from dataclasses import replace

from setpoint.engine.inventory import InventoryView
from setpoint.model.resource import Resource
from setpoint.providers.base import Pipelining, Provider
from setpoint.state import InventoryRecord, JournalEntry

BATCH = 1024  # claims per transaction at most (the resource that needs one, and what follows)

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
        # Confirmed creates whose records wait for the next write (see the module docstring).
        self.pending: list[InventoryRecord] = []
        self.pending_entries: list[JournalEntry] = []
        self.transactions = 0  # for tests and benchmarks
        # Creates in flight: their ids, and the provider that carries them out.
        self.flying: set[str] = set()
        self._lander: Pipelining | None = None
        # Landed creates that failed, for the reconciler to report (then it clears it).
        self.failed: dict[str, Exception] = {}
        self._withdrawn: list[tuple[str, str]] = []  # their claims, for the next write

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
        self._write(records=records)
        self.fresh |= taken

    def _claim_record(self, r: Resource) -> InventoryRecord:
        rec = self.record_for(r)  # built with digest "" by the reconciler (no copy per claim)
        return rec if rec.digest == "" else replace(rec, digest="")  # "" = not applied yet

    def applied(self, rid: str) -> None:
        """``rid``'s create is recorded: its claim is no longer this pass's to withdraw."""
        self.fresh.discard(rid)

    def fly(self, rid: str, provider: Pipelining) -> None:
        """``rid``'s create was queued by ``provider`` (``apply_later``): in flight."""
        if self._lander is not None and self._lander is not provider:
            self.land()  # one provider in flight at a time (must_land keeps it so)
        self._lander = provider
        self.flying.add(rid)

    def must_land(self, r: Resource, deps: Set[str]) -> bool:
        """Whether the creates in flight must land before the step of ``r``.

        Only a create this pass claimed (its path absent, owned by none: nothing in
        flight is there), of the same provider, and depending on none in flight may
        overlap them; any other read or apply could meet a write half done.
        """
        if not self.flying:
            return False
        provider: object = self.provider_of(r)  # the same object, seen as a Pipelining one
        return (
            r.id not in self.fresh
            or provider is not self._lander
            or not self.flying.isdisjoint(deps)
        )

    def land(self) -> None:
        """Wait for the creates in flight: time their entries, set the failed ones aside.

        A failed create's record and entries are dropped and its claim is withdrawn
        with the next write (its path was left as it was: nothing to own).
        """
        if self._lander is None:
            return
        landed = self._lander.land()
        self._lander = None
        self.flying.clear()
        seconds = landed.seconds
        for e in self.pending_entries:
            took = seconds.get(e.resource or "")
            if took is not None and e.event == "apply":
                e.detail["ms"] = round(took * 1000, 3)
        failed = landed.failed
        if failed:
            self.pending = [rec for rec in self.pending if rec.resource not in failed]
            self.pending_entries = [e for e in self.pending_entries if e.resource not in failed]
            self._withdrawn.extend((self.stack, rid) for rid in sorted(failed))
            self.failed.update(failed)

    def done(self, record: InventoryRecord, entries: Sequence[JournalEntry]) -> None:
        """The create of a resource this pass claimed is confirmed: record it with the next
        write (the next batch's claims, normally; never more than ``batch`` records wait)."""
        self.fresh.discard(record.resource)
        self.pending.append(record)
        self.pending_entries.extend(entries)
        if len(self.pending) > self.batch:
            self.flush()

    def flush(self) -> None:
        """Write the records that wait (before any other bookkeeping of the pass)."""
        if self.pending or self.flying or self._withdrawn:
            self._write()

    def withdraw(self, rid: str) -> None:
        """The create of ``rid`` failed (atomically): nothing was created, drop its claim."""
        if rid in self.fresh:
            self.fresh.discard(rid)
            self._write(removed=[(self.stack, rid)])
        else:
            self.flush()  # the failure the caller journals next comes after them

    def close(self) -> None:
        """Land, write what waits and withdraw the claims no create used, in one
        transaction."""
        self.land()
        removed = [(self.stack, rid) for rid in sorted(self.fresh)]
        self.fresh.clear()
        if removed or self.pending or self._withdrawn:
            self._write(removed=removed)

    def _write(
        self, records: Sequence[InventoryRecord] = (), removed: Sequence[tuple[str, str]] = ()
    ) -> None:
        """One transaction: the records that wait (and their journal entries) first.

        Creates in flight land before: only what happened is recorded.
        """
        self.land()
        if self._withdrawn:
            removed = [*self._withdrawn, *removed]
            self._withdrawn = []
        if self.pending:
            records = [*self.pending, *records]
        entries = self.pending_entries
        self.pending, self.pending_entries = [], []
        self.inventory.record_outcome(records=records, removed=removed, entries=entries)
        self.transactions += 1
