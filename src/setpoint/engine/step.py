"""One resource of a pass: read, plan, apply, and write down what happened.

:class:`ResourceStep` is mixed into :class:`setpoint.engine.reconciler.Reconciler`,
whose ``_run`` calls :meth:`ResourceStep._one` for each resource in order (and
``_record`` for the batched write-ahead claims of :mod:`.claims`). It holds no state
of its own: it works on the reconciler's inventory view, state DB, desired-state
cache and clock. It builds what a pass records about one resource: its inventory
row (every claim, the provider's delete record, its dependencies), the journal
entries of an apply, a revert, a drift, a handover or a failure, and the
operator's message for a provider error. Bookkeeping follows confirmed outcomes
only, one transaction per resource, except the creates the pass claimed in a batch,
whose records go with the next batch (:meth:`~.claims.PassClaims.done`), and the
creates a provider carries out in the background (``Pipelining``), whose failures
are reported when they land (:meth:`ResourceStep._landed_failures`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from setpoint.config import StackConfig
from setpoint.engine.claims import PassClaims
from setpoint.engine.desired import Desired, DesiredCache
from setpoint.engine.inventory import InventoryView
from setpoint.engine.outcome import PassResult, ResourceOutcome
from setpoint.engine.prune import os_message
from setpoint.model.errors import SetpointError
from setpoint.model.plan import Action, Change
from setpoint.model.resource import Resource
from setpoint.providers.base import Pipelining, Provider, StallError
from setpoint.state import InventoryRecord, JournalEntry, StateDB

log = logging.getLogger("setpoint.reconciler")


class ResourceStep:
    """The per-resource half of :class:`~setpoint.engine.reconciler.Reconciler`.

    The attributes below are set by the reconciler's ``__init__``.
    """

    db: StateDB
    inventory: InventoryView
    desired: DesiredCache
    providers: dict[str, Provider]
    clock: Callable[[], float]
    # Per kind, the provider's effective_digest (DigestDeriving), or None.
    _effective: dict[str, Callable[[Resource], str] | None]
    # Per kind, its provider if it pipelines creates (Pipelining), else None.
    _later: dict[str, Pipelining | None]
    # Per stack, the resources its previous pass failed (see Reconciler.__init__).
    _failing: dict[str, frozenset[str]]
    # Per stack, its in-sync outcomes by id, for the desired state they came from.
    _in_sync: dict[str, tuple[Desired, dict[str, ResourceOutcome]]]

    def _provider(self, r: Resource) -> Provider:
        return self.providers[r.kind]

    def _one(
        self,
        stack: StackConfig,
        r: Resource,
        owned: InventoryRecord | None,
        sha: str,
        dry_run: bool,
        already_reported: bool = False,
        event_at: float | None = None,
        deps: frozenset[str] = frozenset(),
        claiming: tuple[PassClaims, int] | None = None,
    ) -> ResourceOutcome:
        """Read, plan and (unless a dry run) apply ``r``; ``claiming``: (claims, position)."""
        provider = self._provider(r)
        # The records of this pass's batched creates go before anything else this
        # resource writes (the journal keeps the order of events); a claim takes them along.
        settle = claiming[0].flush if claiming is not None else _nothing
        effective = self._effective[r.kind]
        if effective is not None:
            # What the resource's state derives from (a Service: its own spec, its
            # release's and its restartOn declarations): a change there is not drift.
            r = replace(r, digest=effective(r))
        try:
            change = provider.plan(r, provider.read(r))
        except Exception as exc:  # a provider error is an outcome; it never ends the pass
            settle()
            if isinstance(exc, StallError):  # e.g. a rolled-back rollout, still declared
                return self._failed(stack, r, sha, str(exc), dry_run, stall=exc.reason)
            return self._failed(stack, r, sha, f"cannot read: {_error_text(r, exc)}", dry_run)
        if owned is None and not dry_run:
            refused = self._take_over(stack, r, provider, sha, change, deps, settle)
            if refused is not None:
                settle()
                return self._failed(stack, r, sha, refused, dry_run)
        drift = owned is not None and owned.digest == r.digest and not change.is_noop
        if change.is_noop:
            if (owned is None or owned.digest != r.digest) and not dry_run:
                fresh = claiming is not None and r.id in claiming[0].fresh
                if claiming is not None:
                    claiming[0].applied(r.id)
                settle()
                entries = []
                if owned is not None and owned.digest == "" and not fresh:
                    # Claimed by an earlier pass that stopped (a crash) after the create and
                    # before its record, which it batched: what it created is journaled now.
                    entries.append(_recovered(self.clock(), stack.name, sha, r, change))
                self.inventory.record_outcome(
                    records=[self._record(stack, r, sha, deps, owned=owned, keep=False)],
                    entries=entries,
                )
            # The same object every pass (outcomes are never changed in place): a no-op
            # pass then leaves no new long-lived objects, which made the garbage
            # collector walk the whole heap every few passes.
            same = self._in_sync[stack.name][1]
            out = same.get(r.id)
            if out is None:
                out = same[r.id] = ResourceOutcome(r.id, "in_sync")
            return out
        if dry_run:
            return ResourceOutcome(r.id, "drifted" if drift else "pending", change=change)
        now = self.clock()
        entries = []
        if drift:
            entries.append(
                JournalEntry(
                    now, stack.name, "drift", sha, r.id, _drift_message(change), _detail(change)
                )
            )
            if stack.drift == "report":
                # Report mode: journal a drift once, not on every pass while it lasts.
                if not already_reported:
                    settle()
                    self.db.append(*entries)
                return ResourceOutcome(r.id, "drifted", change=change)
        intent = owned is None and change.action is Action.CREATE
        if intent:
            # Write-ahead: own the path before creating it, so that a crash between the
            # create and its record cannot leave a file that no inventory knows (which
            # prune would then never remove). Digest "" = not applied yet (never drift).
            # Batched: the creates that follow are claimed in the same transaction.
            if claiming is not None:
                claiming[0].claim(claiming[1], r)
            else:
                claim = replace(self._record(stack, r, sha, deps), digest="")
                self.inventory.record_outcome(records=[claim])
        t0 = time.monotonic()
        try:
            # A create this pass claimed (now, or with an earlier one's batch).
            later = self._later[r.kind] if change.action is Action.CREATE else None
            if (
                later is not None
                and claiming is not None
                and r.id in claiming[0].fresh
                and later.apply_later(r, change)
            ):
                # Queued (Pipelining): recorded below like any batched create, written
                # only once landed (claims.py); a failure then is reported by the pass.
                claiming[0].fly(r.id, later)
            else:
                provider.apply(r, change)
        except Exception as exc:
            if claiming is not None:  # the create failed (atomically): withdraw the claim
                claiming[0].withdraw(r.id)
            elif intent:
                self.inventory.record_outcome(removed=[(stack.name, r.id)])
            if entries:
                self.db.append(*entries)
            if isinstance(exc, StallError):
                return self._failed(stack, r, sha, str(exc), False, stall=exc.reason)
            return self._failed(
                stack, r, sha, f"cannot {change.action.value}: {_error_text(r, exc)}", False
            )
        done = time.monotonic()
        fresh = claiming is not None and r.id in claiming[0].fresh
        event = "revert" if drift else "apply"
        # A create's diff is the whole declared content, which Git holds at ``sha``: its
        # fields (size, sha256, mode) say what was written. Most of a first apply's
        # journal bytes otherwise; an update's and a revert's diffs are kept.
        full = drift or change.action is not Action.CREATE
        detail = _detail(change, diff=full) | {"ms": round((done - t0) * 1000, 3)}
        if event_at is not None and drift:
            # From the watch event to the restored state: what the operator waited.
            detail |= {"trigger": "watch", "restore_ms": round((done - event_at) * 1000, 3)}
        entries.append(
            JournalEntry(self.clock(), stack.name, event, sha, r.id, change.summary(), detail)
        )
        record = self._record(stack, r, sha, deps, owned=owned)
        if claiming is not None and fresh:
            # A create this pass claimed: its record goes with the next batch (claims.py);
            # until then its claim owns the path, so a crash leaves nothing unknown.
            claiming[0].done(record, entries)
        else:
            settle()
            self.inventory.record_outcome(records=[record], entries=entries)
        return ResourceOutcome(r.id, "reverted" if drift else "changed", change=change)

    def _landed_failures(
        self,
        stack: StackConfig,
        desired: Desired,
        claims: PassClaims,
        result: PassResult,
        blocked: set[str],
    ) -> None:
        """Creates that failed after they were queued (Pipelining): failed outcomes.

        Their claims are withdrawn and their records never written (claims.land); the
        pass reports and journals them like a failed ``apply``, and no dependent runs:
        each landed before any step that depends on it.
        """
        failed, claims.failed = claims.failed, {}
        at = {o.resource: i for i, o in enumerate(result.outcomes) if o.resource in failed}
        ordered = desired.ordered.order
        for rid, exc in failed.items():
            r = ordered[desired.index[rid]]
            outcome = self._failed(
                stack, r, desired.revision, f"cannot create: {_error_text(r, exc)}", False
            )
            if rid in at:
                result.outcomes[at[rid]] = outcome
            else:
                result.outcomes.append(outcome)
            blocked.add(rid)

    def _take_over(
        self,
        stack: StackConfig,
        r: Resource,
        provider: Provider,
        sha: str,
        change: Change,
        deps: frozenset[str],
        settle: Callable[[], None],
    ) -> str | None:
        """Before this stack first records ``r``: every claim must be free, or handed over.

        Another stack may own one: one that gives it up in this same commit (the path
        moves between stacks) hands its record over here, in one transaction with this
        claim, so the path is never unowned nor deleted; any other owner (one that
        claimed it while this pass waited for a rollout) refuses the resource.
        """
        owners = self.inventory.owners()
        taken: list[tuple[str, InventoryRecord]] = []
        for key in provider.claims(r):
            other = owners.get(key)
            if other is None or other.stack == stack.name:
                continue
            if not self.desired.handed_over(stack, sha, key, other.stack):
                return (
                    f"cannot {change.action.value} {key}: stack {other.stack} claimed it "
                    f"meanwhile ({other.resource}); refused"
                )
            taken.append((key, other))
        if not taken:
            return None
        entries = [
            JournalEntry(
                self.clock(),
                stack.name,
                "handover",
                sha,
                r.id,
                f"{key} handed over from stack {other.stack} ({other.resource}), which no "
                "longer declares it",
                {"path": key, "from": other.stack},
            )
            for key, other in taken
        ]
        claim = replace(self._record(stack, r, sha, deps), digest="")  # applied below
        removed = sorted({(other.stack, other.resource) for _key, other in taken})
        settle()
        self.inventory.record_outcome(records=[claim], removed=removed, entries=entries)
        return None

    def _failed(
        self,
        stack: StackConfig,
        r: Resource,
        sha: str,
        message: str,
        dry_run: bool,
        stall: str = "",
    ) -> ResourceOutcome:
        if not dry_run:
            self.db.record_repeat(
                JournalEntry(
                    self.clock(),
                    stack.name,
                    "failure",
                    sha,
                    r.id,
                    f"{r.id} ({r.location}): {message}",
                ),
                follows=r.id in self._failing.get(stack.name, frozenset()),
            )
        return ResourceOutcome(r.id, "failed", error=message, stall=stall)

    def _record(
        self,
        stack: StackConfig,
        r: Resource,
        sha: str,
        deps: frozenset[str],
        owned: InventoryRecord | None = None,
        keep: bool = True,
        digest: str | None = None,
    ) -> InventoryRecord:
        """The inventory row of ``r``: every claim, the provider's delete record, deps.

        ``deps`` are the resolved dependency ids (explicit and implicit), so that a
        later prune deletes dependents first, from the inventory alone. ``digest``:
        "" for a write-ahead claim (default: the declaration's).
        """
        provider = self._provider(r)
        claims = tuple(provider.claims(r))
        # The revision kept is the one that last changed the declaration, so that
        # "which commit declared this" stays answerable without rewriting every row.
        keep = keep and owned is not None and owned.digest == r.digest
        return InventoryRecord(
            stack=stack.name,
            resource=r.id,
            kind=r.kind,
            path=claims[0] if claims else "",
            location=str(r.location),
            digest=r.digest if digest is None else digest,
            revision=owned.revision if keep and owned else sha,
            applied_at=self.clock(),
            prune=not r.prune_disabled,
            claims=claims,
            record=provider.record(r),
            deps=tuple(sorted(deps)),
        )



def _error_text(r: Resource, exc: Exception) -> str:
    """The operator's message for a provider error; a bug's traceback goes to the log."""
    if isinstance(exc, SetpointError | OSError):
        return os_message(exc)
    log.error("%s: unexpected error in the %s provider", r.id, r.kind, exc_info=exc)
    return f"internal error in the {r.kind} provider: {exc!r} (see the agent's log)"


def _nothing() -> None:
    """No batched records to settle (a dry run, or work outside a pass)."""


def _recovered(ts: float, stack: str, sha: str, r: Resource, change: Change) -> JournalEntry:
    """The journal entry of a create whose record a stopped pass never wrote."""
    return JournalEntry(
        ts,
        stack,
        "apply",
        sha,
        r.id,
        f"create {r.id} {change.path} (recorded now: the pass that created it stopped "
        "before recording it)",
        {"action": "create", "path": change.path, "recovered": True},
    )


def _drift_message(change: Change) -> str:
    if change.action is Action.CREATE:
        return f"{change.path} was deleted outside setpoint"
    if change.action is Action.REPLACE:
        return f"{change.path} was replaced by another type of file outside setpoint"
    what = ", ".join(str(f) for f in change.fields) or "changed"
    return f"{change.path} changed outside setpoint: {what}"


def _detail(change: Change, diff: bool = True) -> dict[str, object]:
    detail: dict[str, object] = {"action": change.action.value, "path": change.path}
    if change.fields:
        detail["fields"] = [{"field": f.field, "old": f.old, "new": f.new} for f in change.fields]
    if change.diff and diff:
        detail["diff"] = change.diff
    if change.extra:
        detail["purged"] = list(change.extra)
    return detail
