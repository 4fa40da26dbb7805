"""One reconcile pass over one stack: render → order → read → plan → apply → prune → status.

Called by :mod:`setpoint.engine.controller` (the CLI's ``plan``/``apply`` and the
agent). A broken revision (invalid manifests, a dependency cycle, a path claimed by
another stack) is refused as a whole and the last good revision is enforced
instead. Provider errors become per-resource outcomes; they never escape the pass.
Bookkeeping (inventory, journal) is written only from confirmed outcomes, one
transaction per resource, so a crash never loses the record of a completed apply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from setpoint.config import StackConfig
from setpoint.engine.graph import Ordered, order_resources
from setpoint.engine.outcome import PassResult, ResourceOutcome
from setpoint.engine.status import update_status
from setpoint.model.errors import ManifestError, ManifestErrors, SetpointError
from setpoint.model.plan import Action, Change
from setpoint.model.resource import Resource
from setpoint.providers.base import Provider, Registry, Target
from setpoint.render import RenderCache
from setpoint.state import InventoryRecord, JournalEntry, StateDB

TreeFor = Callable[[str], Path]


@dataclass(frozen=True)
class Desired:
    """A stack's validated desired state at one revision, in dependency order."""

    revision: str
    ordered: Ordered
    paths: dict[str, str] = field(default_factory=dict)  # declared path -> resource id


class Reconciler:
    """Runs passes for the stacks of one target, sharing one render cache."""

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
        self.cache = cache or RenderCache()
        self.clock = clock
        self._desired: dict[tuple[str, str, str], Desired] = {}

    # -- desired state ----------------------------------------------------------------

    def desired(self, stack: StackConfig, tree: Path, sha: str) -> Desired:
        """Render and order a stack at ``sha``; raise ManifestErrors if it must be refused."""
        key = (sha, stack.path, stack.name)
        hit = self._desired.get(key)
        if hit is None:
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
            hit = Desired(sha, ordered, by_path)
            if len(self._desired) > 16:
                self._desired.pop(next(iter(self._desired)))
            self._desired[key] = hit
        self._check_conflicts(stack, hit)
        return hit

    def _check_conflicts(self, stack: StackConfig, desired: Desired) -> None:
        owners = self.db.owners_by_path()
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
    ) -> PassResult:
        """One pass: enforce ``fetched`` if it is valid, else the last good revision."""
        started = self.clock()
        status = self.db.load_status(stack.name)
        last_good = status.last_good_revision if status else None
        result = PassResult(
            stack=stack.name, fetched=fetched, fetch_error=fetch_error, partial=only is not None
        )

        desired: Desired | None = None
        if fetched is not None:
            try:
                desired = self.desired(stack, tree_for(fetched), fetched)
            except ManifestErrors as exc:
                result.refused = fetched
                result.errors = [str(e) for e in exc.errors]
                result.refused_reason = _refusal_reason(exc)
            except SetpointError as exc:
                result.refused = fetched
                result.errors = [str(exc)]
                result.refused_reason = "SourceFailed"
        if desired is None and last_good and last_good != fetched:
            try:
                desired = self.desired(stack, tree_for(last_good), last_good)
            except SetpointError as exc:
                result.errors.append(
                    f"last good revision {last_good[:12]} cannot be enforced: {exc}"
                )
        if desired is not None:
            result.revision = desired.revision
            reported = {
                rid for rid, st in (status.resources if status else {}).items() if st == "drifted"
            }
            self._run(stack, desired, result, dry_run=dry_run, only=only, reported=reported)

        result.duration = self.clock() - started
        if not dry_run:
            update_status(self.db, stack, result, status, self.clock())
        return result

    def _run(
        self,
        stack: StackConfig,
        desired: Desired,
        result: PassResult,
        *,
        dry_run: bool,
        only: set[str] | None,
        reported: set[str],
    ) -> None:
        inventory = self.db.inventory(stack.name)
        target = self.target
        target.forget_parents()
        target.declared = set(desired.paths) | set(self.db.owners_by_path())
        blocked: set[str] = set()
        deps = desired.ordered.deps
        for r in desired.ordered.order:
            if only is not None and r.id not in only:
                continue
            if deps[r.id] & blocked:
                waiting = sorted(deps[r.id] & blocked)
                blocked.add(r.id)
                result.outcomes.append(
                    ResourceOutcome(r.id, "waiting", error=f"waiting for {', '.join(waiting)}")
                )
                continue
            outcome = self._one(
                stack, r, inventory.get(r.id), desired.revision, dry_run, r.id in reported
            )
            result.outcomes.append(outcome)
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
    ) -> ResourceOutcome:
        provider = self._provider(r)
        try:
            change = provider.plan(r, provider.read(r))
        except (SetpointError, OSError) as exc:
            return self._failed(stack, r, sha, f"cannot read: {_msg(exc)}", dry_run)
        drift = owned is not None and owned.digest == r.digest and not change.is_noop
        if change.is_noop:
            if (owned is None or owned.digest != r.digest) and not dry_run:
                self.db.record_outcome(records=[self._record(stack, r, sha)])
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
        t0 = time.monotonic()
        try:
            provider.apply(r, change)
        except (SetpointError, OSError) as exc:
            if entries:
                self.db.append(*entries)
            return self._failed(stack, r, sha, f"cannot {change.action.value}: {_msg(exc)}", False)
        took = time.monotonic() - t0
        event = "revert" if drift else "apply"
        detail = _detail(change) | {"ms": round(took * 1000, 3)}
        entries.append(
            JournalEntry(self.clock(), stack.name, event, sha, r.id, change.summary(), detail)
        )
        self.db.record_outcome(records=[self._record(stack, r, sha, owned)], entries=entries)
        return ResourceOutcome(r.id, "reverted" if drift else "changed", change=change)

    def _failed(
        self, stack: StackConfig, r: Resource, sha: str, message: str, dry_run: bool
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
        return ResourceOutcome(r.id, "failed", error=message)

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
                    self.db.record_outcome(
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
            self.db.record_outcome(
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
