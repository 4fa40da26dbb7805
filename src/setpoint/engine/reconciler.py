"""One reconcile pass over one stack: render → order → read → plan → apply → prune → status.

Called by :mod:`setpoint.engine.controller` (the CLI's ``plan``/``apply`` and the
agent). A broken revision (invalid manifests, a dependency cycle, a path claimed by
another stack) is refused as a whole and the last good revision is enforced
instead. Provider errors become per-resource outcomes; they never escape the pass.
Bookkeeping (inventory, journal) is written only from confirmed outcomes, one
transaction per resource, so a crash never loses the record of a completed apply.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from setpoint.config import StackConfig
from setpoint.engine.graph import Ordered, order_resources
from setpoint.engine.outcome import PassResult, ResourceOutcome
from setpoint.engine.status import update_status
from setpoint.model.errors import ManifestError, ManifestErrors, SetpointError
from setpoint.model.plan import Action, Change
from setpoint.model.resource import Resource
from setpoint.providers.base import Provider, Registry, StallError, Target
from setpoint.render import RenderCache
from setpoint.state import InventoryRecord, JournalEntry, StateDB

TreeFor = Callable[[str], Path]
TreeIdFor = Callable[[str, str], str | None]
"""(commit sha, stack path) -> the Git tree id of that path at that commit, or None."""


@dataclass(frozen=True)
class Desired:
    """A stack's validated desired state at one revision, in dependency order."""

    revision: str
    ordered: Ordered
    paths: dict[str, str] = field(default_factory=dict)  # declared path -> resource id
    index: dict[str, int] = field(default_factory=dict)  # resource id -> position in order


@dataclass(frozen=True)
class _Head:
    """What a full pass decided about the revisions (reused by partial passes)."""

    fetched: str | None
    last_good: str | None
    desired: Desired | None
    refused: str | None
    refused_reason: str
    errors: tuple[str, ...]


class Reconciler:
    """Runs passes for the stacks of one target, sharing one render cache.

    Partial passes (``only=``, the agent's watch events) must cost O(changed), not
    O(stack): they reuse what the last full pass of the stack decided (the
    revision in force, refusals, the rendered stack) when the fetched and last
    good revisions are unchanged, and an in-memory copy of the inventory and of
    the path owners. That copy is exact because this process is the only writer
    (one agent per state dir, see ``Controller.lock_state``): every inventory
    write goes through :meth:`_record_outcome`, which updates it; a full pass
    reloads it from the database.
    """

    def __init__(
        self,
        db: StateDB,
        registry: Registry,
        target: Target,
        cache: RenderCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.registry = registry
        self.target = target
        self.providers = registry.providers(target)
        # Not ``cache or ...``: an empty RenderCache is falsy (it has __len__).
        self.cache = cache if cache is not None else RenderCache()
        self.clock = clock
        self._desired: dict[tuple[str, str, str], Desired] = {}
        # Rendered stacks by (tree id of the stack path, path, stack): a commit that
        # changes only other parts of a monorepo costs no re-render.
        self._by_tree: dict[tuple[str, str, str], Desired] = {}
        self._tree_ids: dict[tuple[str, str], str | None] = {}
        self._heads: dict[str, _Head] = {}
        self._inventory: dict[str, dict[str, InventoryRecord]] = {}
        self._owners: dict[str, InventoryRecord] | None = None
        self._owners_version = 0
        self._declared: tuple[tuple[int, int], set[str]] | None = None
        self._conflicts_ok: tuple[Desired, int, str] | None = None
        self.renders = 0  # stacks actually rendered (for tests and benchmarks)
        self._desired_hooks: list[Callable[[dict[str, Resource]], None]] | None = None
        self._by_id: tuple[Desired, dict[str, Resource]] | None = None

    # -- desired state ----------------------------------------------------------------

    def desired(
        self, stack: StackConfig, tree: Path, sha: str, tree_key: str | None = None
    ) -> Desired:
        """Render and order a stack at ``sha``; raise ManifestErrors if it must be refused.

        ``tree_key`` (the Git tree id of the stack's path at ``sha``) lets a stack
        rendered at another commit with the same tree be reused, when the stack
        reads nothing outside its path (see :func:`_self_contained`).
        """
        key = (sha, stack.path, stack.name)
        hit = self._desired.get(key)
        tkey = (tree_key, stack.path, stack.name) if tree_key else None
        if hit is None and tkey is not None and tkey in self._by_tree:
            hit = replace(self._by_tree[tkey], revision=sha)
            self._remember(key, hit)
        if hit is None:
            self.renders += 1
            resources = self.cache.get_or_load(sha, tree, stack.path, self.registry)
            by_path: dict[str, str] = {}
            for r in resources:
                for p in self._provider(r).claims(r):
                    by_path[p] = r.id
            try:
                ordered = order_resources(
                    resources, lambda r: self._provider(r).implicit_dependencies(r, by_path)
                )
            except ManifestError as exc:
                raise ManifestErrors([exc]) from exc
            index = {r.id: i for i, r in enumerate(ordered.order)}
            hit = Desired(sha, ordered, by_path, index)
            self._remember(key, hit)
            if tkey is not None and _self_contained(tree, stack.path, resources):
                if len(self._by_tree) > 16:
                    self._by_tree.pop(next(iter(self._by_tree)))
                self._by_tree[tkey] = hit
        self._check_conflicts(stack, hit)
        return hit

    def enforced(self, stack: str) -> Desired | None:
        """The desired state the last full pass of ``stack`` enforced (None if none)."""
        head = self._heads.get(stack)
        return head.desired if head is not None else None

    def _remember(self, key: tuple[str, str, str], hit: Desired) -> None:
        if len(self._desired) > 16:
            self._desired.pop(next(iter(self._desired)))
        self._desired[key] = hit

    def _tree_id(self, tree_id_for: TreeIdFor | None, sha: str, path: str) -> str | None:
        if tree_id_for is None:
            return None
        key = (sha, path)
        if key not in self._tree_ids:
            try:
                self._tree_ids[key] = tree_id_for(sha, path)
            except SetpointError:
                return None  # not cached: no reuse this time, asked again next time
            if len(self._tree_ids) > 64:
                self._tree_ids.pop(next(iter(self._tree_ids)))
        return self._tree_ids[key]

    # -- in-memory inventory (exact: this process is the only writer) -------------------

    def _owners_by_path(self, *, reload: bool = False) -> dict[str, InventoryRecord]:
        if reload or self._owners is None:
            self._owners = self.db.owners_by_path()
            self._owners_version += 1
        return self._owners

    def _stack_inventory(self, stack: str, *, reload: bool) -> dict[str, InventoryRecord]:
        inv = self._inventory.get(stack)
        if reload or inv is None:
            inv = self._inventory[stack] = self.db.inventory(stack)
        return inv

    def _record_outcome(
        self,
        records: Sequence[InventoryRecord] = (),
        removed: Sequence[tuple[str, str]] = (),
        entries: Sequence[JournalEntry] = (),
    ) -> None:
        """``db.record_outcome``, keeping the in-memory inventory and owners in step."""
        self.db.record_outcome(records=records, removed=removed, entries=entries)
        for rec in records:
            inv = self._inventory.get(rec.stack)
            old = inv.get(rec.resource) if inv is not None else None
            if inv is not None:
                inv[rec.resource] = rec
            owners = self._owners
            if owners is None or not rec.path:
                continue
            if old is not None and old.path != rec.path:
                self._owners = None  # a path moved: reload the owners next time
                continue
            cur = owners.get(rec.path)
            if cur is None:
                owners[rec.path] = rec
                self._owners_version += 1
            elif (cur.stack, cur.resource) == (rec.stack, rec.resource):
                owners[rec.path] = rec  # same owner: no version change
        for st, rid in removed:
            inv = self._inventory.get(st)
            if inv is not None:
                inv.pop(rid, None)
            self._owners = None

    def _check_conflicts(self, stack: StackConfig, desired: Desired) -> None:
        owners = self._owners_by_path()
        checked = (desired, self._owners_version, stack.name)
        ok = self._conflicts_ok
        if ok is not None and ok[0] is desired and ok[1:] == checked[1:]:
            return
        errors = []
        by_id = {r.id: r for r in desired.ordered.order}
        for path, rid in desired.paths.items():
            owner = owners.get(path)
            if owner is not None and owner.stack != stack.name:
                loc = by_id[rid].location
                errors.append(
                    ManifestError(
                        loc.file,
                        loc.line,
                        f"{rid}: path {path} is already managed by stack {owner.stack!r} "
                        f"({owner.resource} at {owner.location}); a path can belong to one "
                        "resource only: remove one of the two declarations",
                    )
                )
        if errors:
            raise ManifestErrors(errors)
        self._conflicts_ok = checked

    def _provider(self, r: Resource) -> Provider:
        return self.providers[r.kind]

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
    ) -> PassResult:
        """One pass: enforce ``fetched`` if it is valid, else the last good revision.

        ``only`` limits the pass to those resource ids (no prune). ``event_at`` is
        the ``time.monotonic()`` of the watch event that asked for the pass: the
        journal's revert entries then say how long the restore took from it.
        """
        started = self.clock()
        status = self.db.load_status(stack.name)
        last_good = status.last_good_revision if status else None
        result = PassResult(
            stack=stack.name, fetched=fetched, fetch_error=fetch_error, partial=only is not None
        )
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
            desired = self._judge(stack, fetched, last_good, tree_for, tree_id_for, result)
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
            update_status(self.db, stack, result, status, self.clock())
        return result

    def _judge(
        self,
        stack: StackConfig,
        fetched: str | None,
        last_good: str | None,
        tree_for: TreeFor,
        tree_id_for: TreeIdFor | None,
        result: PassResult,
    ) -> Desired | None:
        """Which revision to enforce: ``fetched`` if valid, else the last good one."""
        desired: Desired | None = None
        if fetched is not None:
            try:
                tree = tree_for(fetched)
                tkey = self._tree_id(tree_id_for, fetched, stack.path)
                desired = self.desired(stack, tree, fetched, tkey)
            except ManifestErrors as exc:
                result.refused = fetched
                result.errors = [str(e) for e in exc.errors]
                result.refused_reason = _refusal_reason(exc)
            except SetpointError as exc:
                result.refused = fetched
                result.errors = [str(exc)]
                # VerificationFailed / HistoryRewritten carry their own reason.
                result.refused_reason = str(getattr(exc, "reason", "SourceFailed"))
        if desired is None and last_good and last_good != fetched:
            try:
                desired = self.desired(stack, tree_for(last_good), last_good)
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
        inventory = self._stack_inventory(stack.name, reload=full)
        owners = self._owners_by_path(reload=full)
        target = self.target
        target.forget_parents()
        # One set object per (desired, owners): the provider caches what it derives from it.
        dkey = (id(desired), self._owners_version)
        if full or self._declared is None or self._declared[0] != dkey:
            self._declared = (dkey, set(desired.paths) | set(owners))
        target.declared = self._declared[1]
        self._bind_desired(desired)
        blocked: set[str] = set()
        deps = desired.ordered.deps
        order = desired.ordered.order
        if only is not None:
            index = desired.index
            order = tuple(order[i] for i in sorted(index[rid] for rid in only if rid in index))
        for r in order:
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
            )
            result.outcomes.append(outcome)
            self._health(r, result)
            if outcome.state in ("failed", "pending", "drifted"):
                blocked.add(r.id)
        if only is None:
            self._prune(stack, desired, inventory, result, dry_run)
        if not dry_run:
            target.fsync_touched()

    def _one(
        self,
        stack: StackConfig,
        r: Resource,
        owned: InventoryRecord | None,
        sha: str,
        dry_run: bool,
        already_reported: bool = False,
        event_at: float | None = None,
    ) -> ResourceOutcome:
        provider = self._provider(r)
        effective = getattr(provider, "effective_digest", None)
        if effective is not None:
            # What the resource's state derives from (a Service: its own spec, its
            # release's and its restartOn declarations): a change there is not drift.
            r = replace(r, digest=effective(r))
        try:
            change = provider.plan(r, provider.read(r))
        except (SetpointError, OSError) as exc:
            if isinstance(exc, StallError):  # e.g. a rolled-back rollout, still declared
                return self._failed(stack, r, sha, str(exc), dry_run, stall=exc.reason)
            return self._failed(stack, r, sha, f"cannot read: {_msg(exc)}", dry_run)
        drift = owned is not None and owned.digest == r.digest and not change.is_noop
        if change.is_noop:
            if (owned is None or owned.digest != r.digest) and not dry_run:
                self._record_outcome(records=[self._record(stack, r, sha)])
            return ResourceOutcome(r.id, "in_sync")
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
                    self.db.append(*entries)
                return ResourceOutcome(r.id, "drifted", change=change)
        intent = owned is None and change.action is Action.CREATE
        if intent:
            # Write-ahead: own the path before creating it, so that a crash between the
            # create and its record cannot leave a file that no inventory knows (which
            # prune would then never remove). Digest "" = not applied yet (never drift).
            self._record_outcome(records=[replace(self._record(stack, r, sha), digest="")])
        t0 = time.monotonic()
        try:
            provider.apply(r, change)
        except (SetpointError, OSError) as exc:
            if intent:  # the create failed (atomically): withdraw the claim
                self._record_outcome(removed=[(stack.name, r.id)])
            if entries:
                self.db.append(*entries)
            if isinstance(exc, StallError):
                return self._failed(stack, r, sha, str(exc), False, stall=exc.reason)
            return self._failed(stack, r, sha, f"cannot {change.action.value}: {_msg(exc)}", False)
        done = time.monotonic()
        event = "revert" if drift else "apply"
        detail = _detail(change) | {"ms": round((done - t0) * 1000, 3)}
        if event_at is not None and drift:
            # From the watch event to the restored state: what the operator waited.
            detail |= {"trigger": "watch", "restore_ms": round((done - event_at) * 1000, 3)}
        entries.append(
            JournalEntry(self.clock(), stack.name, event, sha, r.id, change.summary(), detail)
        )
        self._record_outcome(records=[self._record(stack, r, sha, owned)], entries=entries)
        return ResourceOutcome(r.id, "reverted" if drift else "changed", change=change)

    def _bind_desired(self, desired: Desired) -> None:
        """Give providers with a ``set_desired`` hook the stack's resources by id.

        The Service provider uses it for ``restartOn``/``reloadOn``: it compares the
        digests of the declarations it depends on with those it started with.
        """
        hooks = self._desired_hooks
        if hooks is None:
            seen = {id(p): p for p in self.providers.values()}
            hooks = self._desired_hooks = [
                h for p in seen.values() if (h := getattr(p, "set_desired", None)) is not None
            ]
        if not hooks:
            return
        if self._by_id is None or self._by_id[0] is not desired:
            self._by_id = (desired, {r.id: r for r in desired.ordered.order})
        for hook in hooks:
            hook(self._by_id[1])

    def _health(self, r: Resource, result: PassResult) -> None:
        """Record the health of a resource whose provider reports one (services)."""
        health = getattr(self._provider(r), "health", None)
        if health is not None:
            result.health[r.id] = health(r)

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
            self.db.append(
                JournalEntry(
                    self.clock(),
                    stack.name,
                    "failure",
                    sha,
                    r.id,
                    f"{r.id} ({r.location}): {message}",
                )
            )
        return ResourceOutcome(r.id, "failed", error=message, stall=stall)

    def _record(
        self, stack: StackConfig, r: Resource, sha: str, owned: InventoryRecord | None = None
    ) -> InventoryRecord:
        # The revision kept is the one that last changed the declaration, so that
        # "which commit declared this" stays answerable without rewriting every row.
        keep = owned is not None and owned.digest == r.digest
        return InventoryRecord(
            stack=stack.name,
            resource=r.id,
            kind=r.kind,
            path=next(iter(self._provider(r).claims(r)), ""),
            location=str(r.location),
            digest=r.digest,
            revision=owned.revision if keep and owned else sha,
            applied_at=self.clock(),
            prune=not r.prune_disabled,
        )

    def _prune(
        self,
        stack: StackConfig,
        desired: Desired,
        inventory: dict[str, InventoryRecord],
        result: PassResult,
        dry_run: bool,
    ) -> None:
        wanted = {r.id for r in desired.ordered.order}
        gone = [rec for rid, rec in inventory.items() if rid not in wanted]
        # Children before parents: deeper paths first.
        gone.sort(key=lambda rec: (-rec.path.count("/"), rec.path), reverse=False)
        for rec in gone:
            keep_reason = None
            if not stack.prune:
                keep_reason = "prune is disabled for this stack"
            elif not rec.prune:
                keep_reason = "labelled setpoint/prune: disabled"
            if keep_reason:
                change = Change(
                    rec.resource,
                    Action.NOOP,
                    rec.path,
                    reason=f"removed from Git, kept: {keep_reason}",
                )
                result.prunes.append(change)
                if not dry_run:
                    self._record_outcome(
                        removed=[(stack.name, rec.resource)],
                        entries=[
                            JournalEntry(
                                self.clock(),
                                stack.name,
                                "prune",
                                desired.revision,
                                rec.resource,
                                f"released {rec.path}: {keep_reason}",
                            )
                        ],
                    )
                continue
            change = Change(rec.resource, Action.DELETE, rec.path, reason="removed from Git")
            result.prunes.append(change)
            if dry_run:
                continue
            provider = self.providers.get(rec.kind)
            try:
                if provider is None:
                    raise SetpointError(f"no provider for kind {rec.kind}")
                done = provider.delete(rec.kind, rec.path)
            except (SetpointError, OSError) as exc:
                msg = f"cannot delete {rec.path}: {_msg(exc)}"
                result.prune_failures[rec.resource] = msg
                self.db.append(
                    JournalEntry(
                        self.clock(), stack.name, "failure", desired.revision, rec.resource, msg
                    )
                )
                continue
            self._record_outcome(
                removed=[(stack.name, rec.resource)],
                entries=[
                    JournalEntry(
                        self.clock(),
                        stack.name,
                        "prune",
                        desired.revision,
                        rec.resource,
                        done,
                        {"path": rec.path},
                    )
                ],
            )


def _self_contained(tree: Path, path: str, resources: Sequence[Resource]) -> bool:
    """True when the rendered stack depends on nothing outside ``path`` of the tree.

    Then the tree id of ``path`` identifies the rendered stack exactly. Not so if a
    File's ``source`` lies outside the path, or a symlink inside the path (which
    may lead elsewhere in the repository).
    """
    base = posixpath.normpath(path or ".")
    if base == ".":
        return True
    prefix = base + "/"
    for r in resources:
        source = getattr(r.spec, "source", None)
        if isinstance(source, str):
            where = posixpath.normpath(posixpath.join(posixpath.dirname(r.location.file), source))
            if not where.startswith(prefix):
                return False
    for dirpath, dirnames, filenames in os.walk(tree / base):
        for name in (*dirnames, *filenames):
            if os.path.islink(os.path.join(dirpath, name)):
                return False
    return True


def _refusal_reason(exc: ManifestErrors) -> str:
    text = " ".join(e.message for e in exc.errors)
    if "dependency cycle" in text:
        return "DependencyCycle"
    if "already managed by stack" in text:
        return "Conflict"
    return "ValidationFailed"


def _msg(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def _drift_message(change: Change) -> str:
    if change.action is Action.CREATE:
        return f"{change.path} was deleted outside setpoint"
    if change.action is Action.REPLACE:
        return f"{change.path} was replaced by another type of file outside setpoint"
    what = ", ".join(str(f) for f in change.fields) or "changed"
    return f"{change.path} changed outside setpoint: {what}"


def _detail(change: Change) -> dict[str, object]:
    detail: dict[str, object] = {"action": change.action.value, "path": change.path}
    if change.fields:
        detail["fields"] = [{"field": f.field, "old": f.old, "new": f.new} for f in change.fields]
    if change.diff:
        detail["diff"] = change.diff
    if change.extra:
        detail["purged"] = list(change.extra)
    return detail
