"""The controller: wires the config's sources, the state DB, the target and the reconciler.

One object per process. The CLI's ``plan``/``apply``/``forget`` use it directly
for one pass (or one forget); :mod:`setpoint.engine.agent` drives it in a loop.
At its first pass it reports the stacks the state DB knows but the config no
longer names (:mod:`setpoint.engine.orphans`); :meth:`Controller.prune_stack`
deletes what such a stack owns and :meth:`Controller.forget` forgets it (both in
:mod:`setpoint.engine.forget`). Not thread-safe by itself:
the agent calls it from one worker thread (passes) and one git thread (polls),
which touch disjoint parts (see ``_lock``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from setpoint.config import AgentConfig, StackConfig
from setpoint.engine.admission import Admissions
from setpoint.engine.fleet import FleetChange, FleetView, with_stacks
from setpoint.engine.fleet_sync import refresh
from setpoint.engine.forget import forget_stack, prune_stack_of
from setpoint.engine.gate import FULL, PARTIAL, PassGate, Wait
from setpoint.engine.orphans import ForgetResult, Orphan, find_orphans, report_orphans
from setpoint.engine.outcome import PassResult
from setpoint.engine.prune import PruneResult
from setpoint.engine.reconciler import Reconciler
from setpoint.engine.render_store import RenderStore
from setpoint.engine.settled import forget_settled
from setpoint.engine.status import record_tag
from setpoint.facts import host_labels
from setpoint.model.errors import SetpointError, SourceError
from setpoint.providers.base import ProviderContext, Registry
from setpoint.providers.registry import default_registry
from setpoint.render import Host, Limits, RenderCache
from setpoint.render.decrypt import host_keys
from setpoint.source.configured import git_source
from setpoint.source.verify import (
    HistoryRewrittenError,
    VerificationError,
    VerifyPolicy,
    is_ancestor,
    verify_revision,
)
from setpoint.state import JournalEntry, StateDB
from setpoint.state.lock import lock_state_dir
from setpoint.state.retention import (
    ONE_SHOT_TRIM_BATCHES,
    Retention,
    TrimResult,
    trim_apart,
    trim_if_due,
)

log = logging.getLogger("setpoint.controller")


class Controller:
    def __init__(self, config: AgentConfig, registry: Registry | None = None) -> None:
        self.base_config = config  # as configured; ``config`` adds the Fleet's stacks
        self.config = config
        root = Path(config.root)
        if not root.is_dir():
            raise SetpointError(
                f"target root {root} does not exist or is not a directory; create it or pass "
                "--root DIR"
            )
        self.db = StateDB(Path(config.state))
        self.ctx = ProviderContext(root, state_dir=Path(config.state))
        lim = config.limits
        limits = Limits(lim.max_manifest_bytes, lim.max_source_bytes, lim.max_nodes, lim.max_depth)
        cache = RenderCache(limits=limits)
        self.reconciler = Reconciler(
            self.db, registry or default_registry(), self.ctx, cache=cache
        )
        self.labels = host_labels(config.labels, host=config.host)
        self.fleet = (
            FleetView(config.fleet, config.stacks, self.labels, Path(config.state), limits)
            if config.fleet is not None
            else None
        )
        self.gate = PassGate()
        self._local = threading.local()  # the stack whose pass runs on this thread
        self.waits: dict[str, Wait] = {}  # stack -> what its pass waits for (status)
        self.ctx.wait_hook = self._waiting
        self.ctx.settings_hook = self._settings
        # Whether a stack may move to a new revision (a fleet's rollout waves); none = yes.
        self.admissions = Admissions(self.db)
        self.reconciler.desired.peers = self._peers
        # Fleet stacks whose prune failed (retried at each refresh), by name.
        self._removing: dict[str, StackConfig] = {}
        if self.fleet is not None:
            self.config = with_stacks(config, self.fleet.stacks)
            self._removing = {s.name: s for s in self.fleet.removing}
        self.reconciler.desired.store = RenderStore(
            Path(config.state) / "render-cache", self.reconciler.desired.registry, limits
        )
        keys = host_keys(config.decryption.age_key_file)
        self.reconciler.desired.set_host(Host(labels=self.labels, keys=keys))
        # 0700: the state dir may be 0711 (services running as other users reach their
        # releases through it), and the list of sources is nobody else's business.
        caches = Path(config.state) / "sources"
        caches.mkdir(mode=0o700, exist_ok=True)
        os.chmod(caches, 0o700)
        self.sources = {
            s.name: git_source(s, caches / s.name) for s in config.sources
        }
        self.fetched: dict[str, str | None] = {s.name: None for s in config.sources}
        self.fetch_errors: dict[str, str | None] = {s.name: None for s in config.sources}
        self._lock = threading.Lock()
        self._lock_file: IO[str] | None = None
        # Trust: per (source, sha), None = verified (or no policy), else the refusal.
        self._trust: dict[tuple[str, str], VerificationError | None] = {}
        self._signers: dict[tuple[str, str], str] = {}
        self._ancestry: dict[tuple[str, str, str], bool] = {}
        self._orphans: list[Orphan] | None = None  # found at the first pass
        self._orphans_reported = False

    # -- ownership of the state dir ------------------------------------------------

    def lock_state(self) -> None:
        """Take the state dir's lock (one agent per state dir); a dead holder frees it."""
        self._lock_file = lock_state_dir(Path(self.config.state))
        # This process may change what the settled record vouches for: drop it first.
        forget_settled(Path(self.config.state))

    def close(self) -> None:
        self.db.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- sources --------------------------------------------------------------------

    def fetch(self, source: str) -> str | None:
        """Fetch ``source``; remember the revision or the error. Return the new sha if it moved."""
        src = self.sources[source]
        try:
            sha = src.fetch()
            info = src.commit_info(sha)  # reads the commit: a damaged mirror fails here
        except SourceError as exc:
            if not self._repair(source, str(exc)):
                self._source_failed(source, str(exc))
                return None
            try:
                sha = src.fetch()
                info = src.commit_info(sha)
            except SourceError as exc2:
                self._source_failed(source, str(exc2))
                return None
        # Verified before it becomes the fetched revision: a pass never sees it unchecked.
        self._trust_error(source, sha)
        return self._fetched(source, sha, info)

    def poll(self, source: str, moved: bool = False) -> str | None:
        """Cheap check (ls-remote) first; fetch only when the ref moved. Return a new sha.

        ``moved``: we were told the ref moved (a fleet notice naming a commit we lack), so
        fetch at once: the ls-remote would only confirm it (2 of the 5 HTTP requests).
        Never raises: an unexpected error (a bug) is logged with its traceback and
        reported like a source failure, so the agent's poll loop keeps running.
        """
        try:
            return self.fetch(source) if moved else self._poll(source)
        except Exception as exc:
            log.exception("source %s: unexpected error while polling", source)
            self._source_failed(source, f"internal error while polling: {exc!r}")
            return None

    def _poll(self, source: str) -> str | None:
        if self.fetched[source] is not None:
            try:
                remote = self.sources[source].remote_revision()
            except SourceError as exc:
                self._source_failed(source, str(exc))
                return None
            if remote is None or remote == self.fetched[source]:
                with self._lock:
                    self.fetch_errors[source] = None
                return None
        return self.fetch(source)

    def _fetched(self, source: str, sha: str, info: dict[str, str]) -> str | None:
        with self._lock:
            old = self.fetched[source]
            self.fetched[source] = sha
            self.fetch_errors[source] = None
        if sha == old:
            return None
        signer = self._signers.get((source, sha))
        if signer:
            info["signer"] = signer
        stacks = [s.name for s in self.config.stacks if s.source == source]
        self.db.append(
            *(
                JournalEntry(
                    time.time(),
                    st,
                    "revision.fetched",
                    sha,
                    None,
                    f"fetched {sha[:12]}{f' (tag {tag})' if (tag := info.get('tag')) else ''} "
                    f"from {source}: {info.get('subject', '')}",
                    info,
                )
                for st in stacks
            )
        )
        return sha

    def _source_failed(self, source: str, message: str) -> None:
        with self._lock:
            repeated = self.fetch_errors[source] == message
            self.fetch_errors[source] = message
        entries = [
            JournalEntry(time.time(), s.name, "source.failed", None, None, message)
            for s in self.config.stacks
            if s.source == source
        ]
        if not repeated:
            self.db.append(*entries)  # one call: the metrics count the source once
        for e in entries if repeated else ():
            # The same error again, no success between: counted on its entry.
            self.db.record_repeat(e, follows=True)

    # -- passes ---------------------------------------------------------------------

    def reconcile(
        self,
        stack: str,
        *,
        dry_run: bool = False,
        only: set[str] | None = None,
        event_at: float | None = None,
    ) -> PassResult:
        """One pass over ``stack`` (only the ``only`` ids, for a watch event at ``event_at``).

        Safe to call from several threads for different stacks: the pass holds the
        pass gate (drift-triggered passes first), which it gives up only while a
        provider waits on the outside world (see :mod:`setpoint.engine.gate`).
        """
        self._local.stack = stack
        try:
            if only is None and not dry_run and self.admissions.admission is not None:
                self._admit(stack)  # outside the gate: it may wait on the fleet store
            with self.gate.hold(PARTIAL if only is not None else FULL):
                result = self._reconcile(stack, dry_run=dry_run, only=only, event_at=event_at)
            if not dry_run:
                self.admissions.settled(stack, result)
            return result
        finally:
            self._local.stack = None

    def _admit(self, stack: str) -> None:
        """Ask whether ``stack`` may move to its fetched revision (engine/admission.py)."""
        cfg = next((s for s in self.config.stacks if s.name == stack), None)
        if cfg is not None:
            with self._lock:
                fetched = self.fetched[cfg.source]
            self.admissions.ask(stack, fetched, self._last_good(stack))

    def _last_good(self, stack: str) -> str | None:
        return st.last_good_revision if (st := self.db.load_status(stack)) else None

    def _peers(self, stack: StackConfig, sha: str) -> dict[str, set[str]]:
        """The paths each other stack of ``stack``'s source declares at ``sha``.

        For a path moving between two stacks in one commit (see DesiredCache.peers). A
        stack that cannot be rendered at ``sha`` is left out: it gives nothing up.
        """
        out: dict[str, set[str]] = {}
        for other in self.config.stacks:
            if other.name == stack.name or other.source != stack.source:
                continue
            try:
                tree = self._tree(other.source, sha)
                out[other.name] = set(self.reconciler.desired.render(other, tree, sha).paths)
            except SetpointError:
                continue
        return out

    def _settings(self, stack: str, key: str) -> BaseModel | None:
        """ProviderContext.settings: a stack's provider settings section (config or Fleet)."""
        for st in (*self.config.stacks, *self._removing.values()):
            if st.name == stack:
                return st.provider_settings.get(key)
        return None

    @contextmanager
    def _waiting(self, resource: str, what: str, timeout: float) -> Iterator[None]:
        """ProviderContext.waiting: let other stacks' passes run while a provider waits."""
        stack = getattr(self._local, "stack", None)
        if stack is not None:
            self.waits[stack] = Wait(resource, what, time.time(), timeout)
        try:
            with self.gate.outside():
                yield
        finally:
            if stack is not None:
                self.waits.pop(stack, None)
                self.reconciler.resume(stack)

    def _reconcile(
        self,
        stack: str,
        *,
        dry_run: bool,
        only: set[str] | None,
        event_at: float | None,
    ) -> PassResult:
        cfg = next((s for s in self.config.stacks if s.name == stack), None)
        if cfg is None:  # a Fleet change removed it while the pass was queued
            return PassResult(stack, errors=[f"stack {stack} no longer runs on this host"])
        if not self._orphans_reported:
            self._check_orphans(report=not dry_run)
        with self._lock:
            fetched = self.fetched[cfg.source]
            error = self.fetch_errors[cfg.source]

        fleet = self.fleet if self.fleet is not None and stack in self.fleet.names else None

        def check(sha: str) -> None:
            if sha == fetched:
                refusal = self._refusal(cfg.name, cfg.source, sha)
                if refusal is not None:
                    raise refusal
                broken = fleet.refusal(sha) if fleet is not None else None
                if broken is not None:
                    raise broken  # the Fleet file at this commit is broken: keep the last good

        def tree_for(sha: str) -> Path:
            check(sha)
            return self._tree(cfg.source, sha)

        hold = self.admissions.hold_reason(stack, fetched, self._last_good(stack))
        try:
            result = self.reconciler.reconcile(
                cfg,
                fetched,
                tree_for,
                fetch_error=error,
                dry_run=dry_run,
                only=only,
                tree_id_for=self.sources[cfg.source].tree_id,
                event_at=event_at,
                ids_for=self.sources[cfg.source].object_ids,
                check_for=check,
                hold=hold,
            )
            if not dry_run and self.sources[cfg.source].semver is not None:
                record_tag(self.db, stack, self.sources[cfg.source].tag_of)
            return result
        except Exception as exc:
            # A bug must not stop the loop: the pass counts as failed and is retried.
            log.exception("stack %s: unexpected error in a pass", stack)
            return PassResult(
                stack,
                fetched=fetched,
                fetch_error=error,
                errors=[f"internal error in the pass: {exc!r}"],
            )

    # -- trust and repair -----------------------------------------------------------

    def _trust_error(self, source: str, sha: str) -> SourceError | None:
        """The signature check of ``sha`` (cached): None when verified or not required."""
        key = (source, sha)
        if key in self._trust:
            return self._trust[key]
        cfg = self.config.source(source)
        error: VerificationError | None = None
        if cfg.verify is not None:
            policy = VerifyPolicy(
                cfg.verify.mode,
                cfg.verify.ssh.allowed_signers if cfg.verify.ssh else None,
                cfg.verify.gpg.keyring if cfg.verify.gpg else None,
            )
            src = self.sources[source]
            try:
                self._signers[key] = verify_revision(
                    src.repo_dir, sha, policy, source=source, tag_ref=src.local_ref
                )
            except VerificationError as exc:
                error = exc
            except SourceError as exc:
                return exc  # the mirror could not be read: not a verdict, not cached
        self._trust[key] = error
        return error

    def _refusal(self, stack: str, source: str, sha: str) -> SourceError | None:
        """Why ``sha`` must not be applied to ``stack`` (untrusted, or a rewrite), or None."""
        error = self._trust_error(source, sha)
        if error is not None:
            return error
        moved = self.sources[source].moved_tag(sha)  # a semver source's tag that moved
        if moved is not None:
            return HistoryRewrittenError(moved)
        if self.config.source(source).allow_rewrites or self.sources[source].is_commit:
            return None
        status = self.db.load_status(stack)
        good = status.last_good_revision if status else None
        if good is None or good == sha:
            return None
        key = (source, good, sha)
        if key not in self._ancestry:
            # A commit straight after the one in force (the usual push) needs no git.
            parents = self.sources[source].parents(sha)
            self._ancestry[key] = (parents is not None and good in parents) or is_ancestor(
                self.sources[source].repo_dir, good, sha
            )
        if self._ancestry[key]:
            return None
        return HistoryRewrittenError(
            f"source {source}: history rewritten: {sha[:12]} does not descend from "
            f"{good[:12]}, the revision in force (was {self.config.source(source).ref!r} "
            "force-pushed?); refused: set allowRewrites: true on the source to accept it"
        )

    def _tree(self, source: str, sha: str) -> Path:
        """The exported tree of ``sha``; a damaged mirror is re-cloned once and retried."""
        src = self.sources[source]
        try:
            return src.tree(sha)
        except SourceError as exc:
            if not self._repair(source, str(exc)):
                raise
            src.fetch()
            return src.tree(sha)

    def _repair(self, source: str, error: str) -> bool:
        """After a git failure: re-clone the mirror if ``git fsck`` finds it damaged."""
        try:
            repaired = self.sources[source].repair()
        except (SourceError, OSError) as exc:
            # The check could not run (fsck timed out, no git...): no verdict, mirror kept.
            log.warning("source %s: %s", source, exc)
            return False
        if repaired:
            self.db.append(
                *(
                    JournalEntry(
                        time.time(),
                        s.name,
                        "source.repaired",
                        None,
                        None,
                        f"the git cache of {source} was damaged ({error}); re-cloning it",
                    )
                    for s in self.config.stacks
                    if s.source == source
                )
            )
        return repaired

    # -- the Fleet ------------------------------------------------------------------

    def refresh_fleet(self, *, dry_run: bool = False) -> FleetChange | None:
        """Re-select this host's Fleet stacks (see :meth:`_refresh_fleet`), under the gate."""
        with self.gate.hold():
            return refresh(self, dry_run=dry_run)

    def run_once(self, *, dry_run: bool = False) -> list[PassResult]:
        """Fetch every source, then one pass over every stack (the CLI's plan/apply)."""
        for name in self.sources:
            self.fetch(name)
        self.refresh_fleet(dry_run=dry_run)
        results = [
            self.reconcile(s.name, dry_run=dry_run) for s in self.config.stacks if not s.suspend
        ]
        if not dry_run:
            self.trim_journal(max_batches=ONE_SHOT_TRIM_BATCHES)  # a little, when due
        return results

    def trim_journal(
        self, max_batches: int | None = None, between: Callable[[float], bool] | None = None
    ) -> TrimResult | None:
        """Trim the journal to the ``journal:`` config when due (state/retention.py); with
        ``between`` (the agent's trim thread) all of it, on a connection of its own."""
        policy = Retention.of(self.config.journal)
        if between is not None:
            return trim_apart(Path(self.config.state), policy, between=between)
        return trim_if_due(self.db, policy, max_batches=max_batches)

    # -- stacks that left the config --------------------------------------------------

    def orphans(self) -> list[Orphan]:
        """Stacks the state DB knows (inventory or status) that the config no longer names."""
        fleet = set(self.fleet.owned) if self.fleet is not None else set()
        return find_orphans(self.db, {s.name for s in self.config.stacks} | fleet)

    def _check_orphans(self, *, report: bool) -> None:
        """Once per start: find the orphans; report them (status, journal) unless a dry run.

        A dry run (``plan``) only learns their names, so that a conflict with one
        says how to hand it over. Never raises: the pass goes on regardless.
        """
        try:
            if self._orphans is None:
                self._orphans = self.orphans()
                self.reconciler.desired.orphans = frozenset(o.stack for o in self._orphans)
            if report:
                self._orphans_reported = True
                report_orphans(self.db, self._orphans, time.time())
                for o in self._orphans:
                    log.warning("%s", o.message)
        except Exception:
            log.exception("checking for stacks that left the config failed")

    def prune_stack(
        self,
        name: str,
        *,
        stack_prune: bool = True,
        revision: str | None = None,
        why: str | None = None,
    ) -> PruneResult:
        """Delete what stack ``name`` owns, by the ordinary prune rules (engine/forget.py)."""
        return prune_stack_of(self, name, stack_prune=stack_prune, revision=revision, why=why)

    def forget(self, name: str, *, prune: bool = False, to: str | None = None) -> ForgetResult:
        """``setpoint forget``: release stack ``name``'s inventory, prune it, or hand it ``to``.

        See :func:`setpoint.engine.forget.forget_stack`; the caller holds the state dir.
        """
        return forget_stack(self, name, prune=prune, to=to)
