"""One reconcile pass over one stack: render → order → read → plan → apply → prune → status.

Called by :mod:`setpoint.engine.controller` (the CLI's ``plan``/``apply`` and the
agent). A broken revision (invalid manifests, a dependency cycle, a path claimed by
another stack) is refused as a whole and the last good revision is enforced
instead. Provider errors become per-resource outcomes; they never escape the pass.
Bookkeeping (inventory, journal) is written only from confirmed outcomes, one
transaction per resource, so a crash never loses the record of a completed apply;
the write-ahead claims before creates, and the records of those creates, are
written in batches (:mod:`.claims`): a crash may lose the records of a batch of
creates, never their claims, and the next pass records and journals them.
The step over one resource (read, plan, apply, what it records) is
:class:`~setpoint.engine.step.ResourceStep`, which the reconciler mixes in.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from setpoint.config import StackConfig
from setpoint.engine.claims import PassClaims
from setpoint.engine.desired import Desired, DesiredCache, TreeIdFor, refusal_reason
from setpoint.engine.inventory import InventoryView
from setpoint.engine.outcome import PassResult, ResourceOutcome
from setpoint.engine.prune import prune
from setpoint.engine.render_store import IdsFor
from setpoint.engine.status import update_status
from setpoint.engine.step import ResourceStep
from setpoint.model.errors import ManifestErrors, SetpointError
from setpoint.model.resource import Resource
from setpoint.providers.base import (
    DesiredAware,
    DigestDeriving,
    EventSource,
    HealthReporting,
    PassAware,
    PassInfo,
    Pipelining,
    ProviderContext,
    Registry,
)
from setpoint.render import RenderCache
from setpoint.state import JournalEntry, StateDB

__all__ = ["Desired", "Reconciler", "TreeIdFor"]

TreeFor = Callable[[str], Path]


@dataclass(frozen=True)
class _Head:
    """What a full pass decided about the revisions (reused by partial passes)."""

    fetched: str | None
    last_good: str | None
    desired: Desired | None
    refused: str | None
    refused_reason: str
    errors: tuple[str, ...]


class Reconciler(ResourceStep):
    """Runs passes for the stacks of one target, sharing one render cache.

    Partial passes (``only=``, the agent's watch events) must cost O(changed), not
    O(stack): they reuse what the last full pass of the stack decided (the
    revision in force, refusals, the rendered stack) when the fetched and last
    good revisions are unchanged. The inventory is read through an in-memory
    :class:`~setpoint.engine.inventory.InventoryView`.
    """

    def __init__(
        self,
        db: StateDB,
        registry: Registry,
        ctx: ProviderContext,
        cache: RenderCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.ctx = ctx
        self.providers = registry.providers(ctx)
        # Not ``cache or ...``: an empty RenderCache is falsy (it has __len__).
        self.desired = DesiredCache(
            registry, self.providers, cache if cache is not None else RenderCache()
        )
        self.inventory = InventoryView(db)
        self.clock = clock
        self._heads: dict[str, _Head] = {}
        # The keys claimed in a pass (PassInfo.claimed), and the (desired state, owners
        # version) they were built from: one set object while neither changes.
        self._declared: tuple[Desired, int, set[str]] | None = None
        # Per stack, the pass under way's (desired state, pass info): restored when a
        # pass resumes after a provider's wait, during which other stacks' passes ran.
        self._context: dict[str, tuple[Desired, PassInfo]] = {}
        # Optional provider hooks, looked up once (the per-resource ones sit on the hot path).
        unique = list({id(p): p for p in self.providers.values()}.values())
        self._effective = {
            k: p.effective_digest if isinstance(p, DigestDeriving) else None
            for k, p in self.providers.items()
        }
        self._later = {
            k: p if isinstance(p, Pipelining) else None
            for k, p in self.providers.items()
        }
        self._health_of = {
            k: p.health if isinstance(p, HealthReporting) else None
            for k, p in self.providers.items()
        }
        self._desired_aware = [p for p in unique if isinstance(p, DesiredAware)]
        self._drains = [p for p in unique if isinstance(p, EventSource)]
        # PassAware (providers/base.py): told when a pass starts and ends.
        self._pass_aware = [p for p in unique if isinstance(p, PassAware)]
        self._by_id: tuple[Desired, dict[str, Resource]] | None = None
        # Per stack, the resources its previous pass failed: a failure repeated by this
        # pass is counted on its journal entry rather than journaled again.
        self._failing: dict[str, frozenset[str]] = {}
        self._in_sync: dict[str, tuple[Desired, dict[str, ResourceOutcome]]] = {}

    @property
    def renders(self) -> int:
        """How many stacks were actually rendered (not served from a cache)."""
        return self.desired.renders

    def enforced(self, stack: str) -> Desired | None:
        """The desired state the last full pass of ``stack`` enforced (None if none)."""
        head = self._heads.get(stack)
        return head.desired if head is not None else None

    # -- the pass ---------------------------------------------------------------------

    def reconcile(
        self,
        stack: StackConfig,
        fetched: str | None,
        tree_for: TreeFor,
        *,
        fetch_error: str | None = None,
        dry_run: bool = False,
        only: set[str] | None = None,
        tree_id_for: TreeIdFor | None = None,
        event_at: float | None = None,
        ids_for: IdsFor | None = None,
        check_for: Callable[[str], None] | None = None,
        hold: str | None = None,
    ) -> PassResult:
        """One pass: enforce ``fetched`` if it is valid, else the last good revision.

        ``only`` limits the pass to those resource ids (no prune). ``event_at`` is
        the ``time.monotonic()`` of the watch event that asked for the pass: the
        journal's revert entries then say how long the restore took from it.
        ``hold`` says why ``fetched`` may not be applied yet (not admitted, see
        :mod:`setpoint.engine.admission`): the last good revision is enforced instead,
        drift correction included.
        """
        started = self.clock()
        self.inventory.refresh()
        status = self.db.load_status(stack.name)
        last_good = status.last_good_revision if status else None
        self._failing[stack.name] = frozenset(
            rid for rid, st in (status.resources if status else {}).items() if st == "failed"
        )
        result = PassResult(
            stack=stack.name, fetched=fetched, fetch_error=fetch_error, partial=only is not None
        )
        if hold is not None and fetched is not None and fetched != last_good:
            result.held, result.held_reason = fetched, hold
            fetched = last_good  # what this pass may enforce
        head = self._heads.get(stack.name)
        if (
            only is not None
            and head is not None
            and (head.fetched, head.last_good) == (fetched, last_good)
        ):
            # A partial pass: the last full pass already judged these revisions.
            desired = head.desired
            result.refused, result.refused_reason = head.refused, head.refused_reason
            result.errors = list(head.errors)
        else:
            desired = self._judge(
                stack, fetched, last_good, tree_for, tree_id_for, result, ids_for, check_for
            )
            self._heads[stack.name] = _Head(
                fetched,
                last_good,
                desired,
                result.refused,
                result.refused_reason,
                tuple(result.errors),
            )
        if desired is not None:
            result.revision = desired.revision
            reported = {
                rid for rid, st in (status.resources if status else {}).items() if st == "drifted"
            }
            self._run(
                stack,
                desired,
                result,
                dry_run=dry_run,
                only=only,
                reported=reported,
                event_at=event_at,
            )

        result.duration = self.clock() - started
        if not dry_run:
            self._drain_provider_events(stack, result.revision)
            update_status(self.db, stack, result, status, self.clock())
        self.desired.save_rendered()  # the disk cache, once the pass is done
        return result

    def _drain_provider_events(self, stack: StackConfig, revision: str | None) -> None:
        """Journal what providers did between passes (e.g. a supervisor's restarts).

        Only events of the resources of the desired state just enforced are taken
        (``drain_events``, see :class:`setpoint.providers.base.EventSource`).
        """
        head = self._heads.get(stack.name)
        if head is None or head.desired is None:
            return
        ids = head.desired.index.keys()
        entries: list[JournalEntry] = []
        for source in self._drains:
            for ev in source.drain_events(ids):
                entries.append(
                    JournalEntry(
                        ev.at, stack.name, ev.event, revision, ev.resource, ev.message, ev.detail
                    )
                )
        if entries:
            self.db.append(*entries)

    def _judge(
        self,
        stack: StackConfig,
        fetched: str | None,
        last_good: str | None,
        tree_for: TreeFor,
        tree_id_for: TreeIdFor | None,
        result: PassResult,
        ids_for: IdsFor | None = None,
        check_for: Callable[[str], None] | None = None,
    ) -> Desired | None:
        """Which revision to enforce: ``fetched`` if valid, else the last good one."""
        desired: Desired | None = None
        if fetched is not None:
            try:
                tree: Path | Callable[[], Path]
                if check_for is not None:
                    # Refusals (trust, a broken Fleet file) first; the tree only if rendered.
                    check_for(fetched)
                    tree = functools.partial(tree_for, fetched)
                else:
                    tree = tree_for(fetched)
                desired = self.desired.get(
                    stack, tree, fetched, self.inventory, tree_id_for, ids_for
                )
            except ManifestErrors as exc:
                result.refused = fetched
                result.errors = [str(e) for e in exc.errors]
                result.refused_reason = refusal_reason(exc)
            except SetpointError as exc:
                result.refused = fetched
                result.errors = [str(exc)]
                # VerificationFailed / HistoryRewritten carry their own reason.
                result.refused_reason = str(getattr(exc, "reason", "SourceFailed"))
        if desired is None and last_good and last_good != fetched:
            try:
                desired = self.desired.get(
                    stack, tree_for(last_good), last_good, self.inventory, ids_for=ids_for
                )
            except SetpointError as exc:
                result.errors.append(
                    f"last good revision {last_good[:12]} cannot be enforced: {exc}"
                )
        return desired

    def _run(
        self,
        stack: StackConfig,
        desired: Desired,
        result: PassResult,
        *,
        dry_run: bool,
        only: set[str] | None,
        reported: set[str],
        event_at: float | None = None,
    ) -> None:
        full = only is None
        inventory = self.inventory.stack(stack.name)
        owners = self.inventory.owners()
        # One set object per (desired, owners): a provider caches what it derives from it.
        d = self._declared
        if d is None or d[0] is not desired or d[1] != self.inventory.version:
            d = self._declared = (desired, self.inventory.version, set(desired.paths) | set(owners))
        info = PassInfo(stack.name, full, stack.resync, d[2])
        self._context[stack.name] = (desired, info)
        if (kept := self._in_sync.get(stack.name)) is None or kept[0] is not desired:
            self._in_sync[stack.name] = (desired, {})  # a new render: ids may have gone
        self._bind_desired(desired)
        for p in self._pass_aware:
            p.begin_pass(info)
        order = desired.ordered.order
        if only is not None:
            index = desired.index
            order = tuple(order[i] for i in sorted(index[rid] for rid in only if rid in index))
        claims = None
        if not dry_run:
            claims = PassClaims(
                stack.name,
                order,
                self.inventory,
                self._provider,
                lambda r: self._record(
                    stack, r, desired.revision, desired.ordered.deps[r.id], digest=""
                ),
            )
        blocked: set[str] = set()
        try:
            deps = desired.ordered.deps
            for pos, r in enumerate(order):
                if claims is not None and (claims.flying or claims.failed):
                    if claims.must_land(r, deps[r.id]):
                        claims.land()  # creates in flight first (claims.py)
                    if claims.failed:
                        self._landed_failures(stack, desired, claims, result, blocked)
                if deps[r.id] & blocked:
                    waiting = sorted(deps[r.id] & blocked)
                    blocked.add(r.id)
                    result.outcomes.append(
                        ResourceOutcome(r.id, "waiting", error=f"waiting for {', '.join(waiting)}")
                    )
                    continue
                outcome = self._one(
                    stack,
                    r,
                    inventory.get(r.id),
                    desired.revision,
                    dry_run,
                    r.id in reported,
                    event_at,
                    deps[r.id],
                    (claims, pos) if claims is not None else None,
                )
                result.outcomes.append(outcome)
                if claims is not None and claims.flying and self._health_of[r.kind] is not None:
                    claims.land()  # a health check reads what it created
                self._health(r, result)
                if outcome.state in ("failed", "pending", "drifted"):
                    blocked.add(r.id)
        finally:
            if claims is not None:
                claims.close()  # claims no create used (a failed dependency, a look-ahead)
        if claims is not None and claims.failed:
            self._landed_failures(stack, desired, claims, result, blocked)
        if full:
            wanted = {r.id for r in desired.ordered.order}
            prune(
                stack,
                desired.revision,
                wanted,
                self.inventory,
                self.providers,
                result,
                dry_run=dry_run,
                clock=self.clock,
                declared=desired.paths,
                heirs=lambda: self._heirs(stack, desired.revision),
                failing=self._failing.get(stack.name, frozenset()),
            )
        self.end_pass()

    def begin_outside(self, stack: str, desired: Desired | None = None) -> None:
        """Before work outside a pass (a prune of a stack that left, a live diff).

        Providers get a partial pass's start, with every key the inventory holds (and
        ``desired`` declares) as claimed; pair it with :meth:`end_pass`.
        """
        self.inventory.refresh()
        claimed = set(self.inventory.owners()) | set(desired.paths if desired else ())
        info = PassInfo(stack, False, 0.0, claimed)
        for p in self._pass_aware:
            p.begin_pass(info)

    def end_pass(self) -> None:
        """The end of a pass (or of work outside one): providers flush (one fsync per dir)."""
        for p in self._pass_aware:
            p.end_pass()

    def _heirs(self, stack: StackConfig, sha: str) -> dict[str, str]:
        """Paths other stacks of this stack's source declare at ``sha`` (path -> stack)."""
        peers = self.desired.peers(stack, sha) if self.desired.peers is not None else {}
        return {p: other for other, paths in sorted(peers.items()) for p in paths}

    def resume(self, stack: str) -> None:
        """A pass of ``stack`` continues after a provider's wait: put its context back.

        Other stacks' passes ran meanwhile and told the providers theirs: each
        ``PassAware`` provider gets this pass's info again (``resumed``), and the
        desired-state binding is restored.
        """
        ctx = self._context.get(stack)
        if ctx is None:
            return
        desired, info = ctx
        resumed = replace(info, resumed=True)
        for p in self._pass_aware:
            p.begin_pass(resumed)
        self._bind_desired(desired)

    def _bind_desired(self, desired: Desired) -> None:
        """Give providers with a ``set_desired`` hook the stack's resources by id.

        The Service provider uses it for ``restartOn``/``reloadOn``: it compares the
        digests of the declarations it depends on with those it started with.
        """
        if not self._desired_aware:
            return
        if self._by_id is None or self._by_id[0] is not desired:
            self._by_id = (desired, {r.id: r for r in desired.ordered.order})
        for p in self._desired_aware:
            p.set_desired(self._by_id[1])

    def _health(self, r: Resource, result: PassResult) -> None:
        """Record the health of a resource whose provider reports one (services)."""
        health = self._health_of[r.kind]
        if health is not None:
            result.health[r.id] = health(r)
