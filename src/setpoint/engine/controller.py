"""The controller: wires the config's sources, the state DB, the target and the reconciler.

One object per process. The CLI's ``plan``/``apply`` use it directly for one
pass; :mod:`setpoint.engine.agent` drives it in a loop. Not thread-safe by itself:
the agent calls it from one worker thread (passes) and one git thread (polls),
which touch disjoint parts (see ``_lock``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import IO

from setpoint.config import AgentConfig
from setpoint.engine.outcome import PassResult
from setpoint.engine.reconciler import Reconciler
from setpoint.model.errors import SetpointError, SourceError
from setpoint.providers.base import Registry, Target
from setpoint.providers.registry import default_registry
from setpoint.render import Host, Limits, RenderCache
from setpoint.source import GitSource
from setpoint.source.verify import (
    HistoryRewrittenError,
    VerificationError,
    VerifyPolicy,
    is_ancestor,
    verify_revision,
)
from setpoint.state import JournalEntry, StateDB

log = logging.getLogger("setpoint.controller")


class StateLockedError(SetpointError):
    pass


class Controller:
    def __init__(self, config: AgentConfig, registry: Registry | None = None) -> None:
        self.config = config
        root = Path(config.root)
        if not root.is_dir():
            raise SetpointError(
                f"target root {root} does not exist or is not a directory; create it or pass "
                "--root DIR"
            )
        self.db = StateDB(Path(config.state))
        self.target = Target(root, state_dir=Path(config.state))
        lim = config.limits
        limits = Limits(lim.max_manifest_bytes, lim.max_source_bytes, lim.max_nodes, lim.max_depth)
        cache = RenderCache(limits=limits)
        self.reconciler = Reconciler(
            self.db, registry or default_registry(), self.target, cache=cache
        )
        self.reconciler.desired.set_host(Host(labels=config.labels))
        # 0700: the state dir may be 0711 (services running as other users reach their
        # releases through it), and the list of sources is nobody else's business.
        caches = Path(config.state) / "sources"
        caches.mkdir(mode=0o700, exist_ok=True)
        os.chmod(caches, 0o700)
        self.sources = {
            s.name: GitSource(s.name, s.url, s.ref, caches / s.name) for s in config.sources
        }
        self.fetched: dict[str, str | None] = {s.name: None for s in config.sources}
        self.fetch_errors: dict[str, str | None] = {s.name: None for s in config.sources}
        self._lock = threading.Lock()
        self._lock_file: IO[str] | None = None
        # Trust: per (source, sha), None = verified (or no policy), else the refusal.
        self._trust: dict[tuple[str, str], VerificationError | None] = {}
        self._signers: dict[tuple[str, str], str] = {}
        self._ancestry: dict[tuple[str, str, str], bool] = {}

    # -- ownership of the state dir ------------------------------------------------

    def lock_state(self) -> None:
        """Take the state dir's lock (one agent per state dir); a dead holder frees it."""
        path = Path(self.config.state) / "agent.lock"
        f = open(path, "a+")  # noqa: SIM115 (held for the process lifetime)
        os.chmod(path, 0o600)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StateLockedError(
                f"state dir {self.config.state} is in use by {holder}; only one setpoint agent "
                "may own a state dir (stop the other one, or give this one its own --state)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        self._lock_file = f

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

    def poll(self, source: str) -> str | None:
        """Cheap check (ls-remote) first; fetch only when the ref moved. Return a new sha.

        Never raises: an unexpected error (a bug) is logged with its traceback and
        reported like a source failure, so the agent's poll loop keeps running.
        """
        try:
            return self._poll(source)
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
                    f"fetched {sha[:12]} from {source}: {info.get('subject', '')}",
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
        if not repeated:
            self.db.append(
                *(
                    JournalEntry(time.time(), s.name, "source.failed", None, None, message)
                    for s in self.config.stacks
                    if s.source == source
                )
            )

    # -- passes ---------------------------------------------------------------------

    def reconcile(
        self,
        stack: str,
        *,
        dry_run: bool = False,
        only: set[str] | None = None,
        event_at: float | None = None,
    ) -> PassResult:
        """One pass over ``stack`` (only the ``only`` ids, for a watch event at ``event_at``)."""
        cfg = self.config.stack(stack)
        with self._lock:
            fetched = self.fetched[cfg.source]
            error = self.fetch_errors[cfg.source]

        def tree_for(sha: str) -> Path:
            if sha == fetched:
                refusal = self._refusal(cfg.name, cfg.source, sha)
                if refusal is not None:
                    raise refusal
            return self._tree(cfg.source, sha)

        try:
            return self.reconciler.reconcile(
                cfg,
                fetched,
                tree_for,
                fetch_error=error,
                dry_run=dry_run,
                only=only,
                tree_id_for=self.sources[cfg.source].tree_id,
                event_at=event_at,
            )
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
        if self.config.source(source).allow_rewrites or self.sources[source].is_commit:
            return None
        status = self.db.load_status(stack)
        good = status.last_good_revision if status else None
        if good is None or good == sha:
            return None
        key = (source, good, sha)
        if key not in self._ancestry:
            self._ancestry[key] = is_ancestor(self.sources[source].repo_dir, good, sha)
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
        except (SourceError, OSError):
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

    def run_once(self, *, dry_run: bool = False) -> list[PassResult]:
        """Fetch every source, then one pass over every stack (the CLI's plan/apply)."""
        for name in self.sources:
            self.fetch(name)
        return [
            self.reconcile(s.name, dry_run=dry_run) for s in self.config.stacks if not s.suspend
        ]
