"""The file-system provider: kinds File, Directory and Symlink on a local target root.

Registered for those kinds by :func:`setpoint.providers.registry.default_registry`; the
engine calls it only through the :class:`~setpoint.providers.base.Provider` protocol.
Reading lives in :mod:`~setpoint.providers.files.read`, deciding in
:mod:`~setpoint.providers.files.plan`, writing in :mod:`~setpoint.providers.files.apply`;
all of them reach a path through :mod:`~setpoint.providers.files.walk` (directory
descriptors opened from the root; a symlink in the chain is refused unless a Symlink
resource declares it), never through a path string the kernel would resolve.

Example::

    provider = FilesystemProvider(ProviderContext(root=Path("/srv/root")))
    change = provider.plan(resource, provider.read(resource))
    if not change.is_noop:
        provider.apply(resource, change)
    provider.end_pass()  # the engine does this once per pass: one fsync per directory

The provider keeps its :class:`~setpoint.providers.files.target.FileTarget` (root,
declared paths, touched directories, descriptor cache) itself: one per agent, shared
by every stack, fed by the engine's generic ``begin_pass``/``end_pass``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterable, Sequence, Set
from typing import TYPE_CHECKING, Any, ClassVar

from setpoint.model.errors import ManifestError, ProviderError
from setpoint.model.plan import Action, Change
from setpoint.model.resource import Resource
from setpoint.providers.base import (
    Landed,
    Observed,
    PassInfo,
    ProviderContext,
    ProviderEvent,
    QuickCheck,
    WatchCallback,
    Watcher,
)
from setpoint.providers.files import apply as fs_apply
from setpoint.providers.files.common import (
    FsState,
    IdCache,
    desired_bytes,
    fs_spec,
    is_tmp_name,
    os_error,
)
from setpoint.providers.files.guard import state_dir_below
from setpoint.providers.files.plan import link_text, plan_directory, plan_file, plan_symlink
from setpoint.providers.files.read import declared_ancestors, lstat_or_none, observe
from setpoint.providers.files.spec import DirectorySpec, FileSpec, SymlinkSpec
from setpoint.providers.files.target import FileTarget
from setpoint.providers.files.walk import cached_parent
from setpoint.providers.files.writer import Writer

if TYPE_CHECKING:  # inotify (asyncio) loads only when an agent watches: one-shot start-up
    from setpoint.providers.files.watch import FsWatch

__all__ = ["FilesystemProvider", "FsState"]

_VERBS = {Action.CREATE: "create", Action.REPLACE: "replace", Action.UPDATE: "update"}


class FilesystemProvider:
    """Files, directories and symlinks under ``target.root`` (see the module docstring)."""

    kinds: ClassVar[tuple[str, ...]] = ("File", "Directory", "Symlink")

    def __init__(self, ctx: ProviderContext) -> None:
        self.target = FileTarget(ctx.root, ctx.state_dir)
        self.ids = IdCache()
        # The declared set the ancestors were derived from, held (not its id: a freed
        # set's id can be reused by the next one) with its size (it may grow in place).
        self._ancestors_of: tuple[Set[str], int] | None = None
        self._ancestors: frozenset[str] = frozenset()
        self._watches: list[FsWatch] = []
        # Full passes sweep each directory they visit (once) for our own temporary
        # files left by a crash; what was removed is journaled (drain_events).
        self._sweep = False
        self._swept: set[str] = set()
        self._events: list[ProviderEvent] = []
        # New files of a first apply are written in the background (Pipelining).
        self._writer = Writer()

    def begin_pass(self, info: PassInfo) -> None:
        """PassAware: take the pass's claimed paths (what ``Directory.purge`` keeps).

        Cached descriptors of another pass are closed (a fresh parent-chain check);
        full passes sweep the directories they visit for crash leftovers.
        """
        self._writer.wait()  # the engine has landed them; never overlap another pass
        self.target.declared = info.claimed
        self.target.forget_parents()
        if not info.resumed:
            self._sweep = info.full
            self._swept = set()

    def end_pass(self) -> None:
        """PassAware: one fsync per directory touched in the pass; descriptors closed."""
        self._writer.wait()  # every rename before its directory's fsync
        self.target.fsync_touched()

    def apply_later(self, resource: Resource, change: Change) -> bool:
        """Pipelining: a new regular file is written by the background writer.

        Only a create (the path is absent): its parent is made and opened now, so a
        failure there is raised at once; the writer fills, fsyncs and renames.
        The parent is marked swept: this pass must never take the temporary file in
        flight for a crash's leftover (``_sweep_leftovers``), and a directory this
        pass made or already swept holds none.
        """
        spec = resource.spec
        if change.action is not Action.CREATE or not isinstance(spec, FileSpec):
            return False
        try:
            new = fs_apply.new_file(self.target, self.ids, resource, spec)
        except OSError as err:
            raise os_error("create", spec.path, err) from err
        self._writer.submit(new)
        self._swept.add(spec.path.rpartition("/")[0] or "/")
        return True

    def land(self) -> Landed:
        """Pipelining: wait for the queued writes; what failed, and each one's time."""
        return self._writer.land()

    def check_declarations(self, resources: Sequence[Resource]) -> list[ManifestError]:
        """StackChecker: refuse a ``purge: true`` Directory holding the agent's state dir.

        Everything the agent keeps (state DB, git cache and exported trees, release
        store, service records) lives under the state dir; a purge of a directory at
        or above it would delete the agent's memory of what it owns. Both the declared
        and the resolved (symlinks followed) forms are compared, whatever the root.
        """
        state_dir = self.target.state_dir
        if state_dir is None:
            return []
        errors = []
        for r in resources:
            spec = r.spec
            if not isinstance(spec, DirectorySpec) or not spec.purge:
                continue
            host = self.target.host_path(spec.path)
            held = state_dir_below(host, state_dir)
            if held is not None:
                errors.append(
                    ManifestError(
                        r.location.file,
                        r.location.line,
                        f"{r.id}: purge: true on {spec.path} would remove the agent's own "
                        f"state dir {state_dir} (state DB, git cache, release store), which "
                        f"lies {held} {host}; set purge: false, or give the agent a state dir "
                        "(--state / state:) outside this directory",
                    )
                )
        return errors

    def drain_events(self, resources: Collection[str]) -> list[ProviderEvent]:
        """EventSource: the leftovers removed, journaled with the resource that found them."""
        mine = [e for e in self._events if e.resource in resources]
        self._events = [e for e in self._events if e.resource not in resources]
        return mine

    def _sweep_leftovers(self, dir_fd: int, parent: str, rid: str) -> None:
        """Remove this state dir's temporary files (``.NAME.setpoint-<token>.tmp``).

        Only ours: the token names this state dir, so a user's ``.x.setpoint-tmp``
        or another agent's temporary file is left alone. Directories never match.
        """
        token = self.target.tmp_token
        try:
            # The walk's descriptors may be O_PATH (not listable): open "." below it.
            listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return  # unreadable here: the resource's own read reports what matters
        try:
            with os.scandir(listing) as it:  # scans a duplicate of the descriptor
                names = [
                    e.name
                    for e in it
                    if is_tmp_name(e.name, token) and not e.is_dir(follow_symlinks=False)
                ]
        except OSError:
            return
        finally:
            os.close(listing)
        for name in names:
            where = f"{parent.rstrip('/')}/{name}"
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as err:
                self._events.append(
                    ProviderEvent(rid, "failure", f"cannot remove the leftover {where}: {err}")
                )
                continue
            self.target.touched_dirs.add(self.target.host_path(parent))
            self._events.append(
                ProviderEvent(
                    rid,
                    "cleanup",
                    f"removed {where}, a temporary file left by an interrupted write",
                    {"path": where},
                )
            )

    def claims(self, resource: Resource) -> tuple[str, ...]:
        return (fs_spec(resource).path,)

    def record(self, resource: Resource) -> dict[str, Any]:
        """What prune needs: the path (the kind tells unlink from rmdir)."""
        return {"path": fs_spec(resource).path}

    def implicit_dependencies(self, resource: Resource, by_path: dict[str, str]) -> Iterable[str]:
        """The nearest declared ancestor of the path (a Symlink's target is not one)."""
        path = fs_spec(resource).path
        own = resource.id
        parent = path.rpartition("/")[0]
        while parent:
            rid = by_path.get(parent)
            if rid is not None and rid != own:
                return (rid,)
            parent = parent.rpartition("/")[0]
        return ()

    def read(self, resource: Resource) -> Observed[FsState] | None:
        spec = fs_spec(resource)
        path = spec.path
        target = self.target
        if isinstance(spec, SymlinkSpec):
            # Declared: resources below it may be reached through it (see fs_walk).
            target.links[path] = spec.target
        # Walked from the root without following an undeclared symlink (SymlinkInPath
        # propagates: the engine reports it); the descriptor is cached for the pass.
        try:
            dir_fd = cached_parent(target, path)
        except OSError as err:
            raise os_error("inspect", path, err) from err
        if dir_fd is None:
            return None  # a parent is missing (or not a directory): apply says why
        parent = path.rpartition("/")[0] or "/"
        if self._sweep and parent not in self._swept:
            self._swept.add(parent)
            self._sweep_leftovers(dir_fd, parent, resource.id)
        name = path.rpartition("/")[2]
        st = lstat_or_none(dir_fd, name, path)
        if st is None:
            return None
        want_size = None
        purge: tuple[Set[str], Set[str]] | None = None
        if isinstance(spec, FileSpec):
            want_size = len(desired_bytes(resource, spec))
        elif isinstance(spec, DirectorySpec) and spec.purge:
            if path not in target.declared:
                # An unfilled declared set would make every entry a stray: refuse to purge.
                raise ProviderError(
                    f"cannot check {path} for purge: the pass's claimed paths "
                    "(PassInfo.claimed) do not include it, so setpoint cannot tell which "
                    "entries it manages",
                    transient=False,
                )
            purge = (target.declared, self._declared_ancestors())
        count = not isinstance(spec, DirectorySpec)  # a directory it would replace
        state = observe(st, (dir_fd, name), path, want_size, purge, count)
        return Observed(resource.id, state)

    def plan(self, resource: Resource, observed: Observed[FsState] | None) -> Change:
        spec = fs_spec(resource)
        state = None
        if observed is not None:
            if not isinstance(observed.data, FsState):
                raise ProviderError(f"{resource.id}: observed data is not a file-system state")
            state = observed.data
        if isinstance(spec, FileSpec):
            return plan_file(resource, spec, state, self.ids)
        if isinstance(spec, DirectorySpec):
            return plan_directory(resource, spec, state, self.ids)
        return plan_symlink(resource, spec, state, str(self.target.root))

    def apply(self, resource: Resource, change: Change) -> None:
        """Carry out ``change`` (as planned) for ``resource``; NOOP does nothing at all."""
        if change.action is Action.NOOP:
            return
        spec = fs_spec(resource)
        if change.action is Action.DELETE:
            self.delete(resource.kind, {"path": spec.path})
            return
        try:
            if isinstance(spec, FileSpec):
                fs_apply.apply_file(self.target, self.ids, resource, spec, change)
            elif isinstance(spec, DirectorySpec):
                fs_apply.apply_directory(self.target, self.ids, spec, change)
            elif isinstance(spec, SymlinkSpec):
                fs_apply.apply_symlink(self.target, spec, change)
        except OSError as err:
            raise os_error(_VERBS.get(change.action, "change"), spec.path, err) from err

    def delete(self, kind: str, record: dict[str, Any]) -> str:
        """Prune: unlink a File/Symlink; rmdir a Directory only when empty."""
        path = record.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ProviderError(f"cannot delete {kind}: its inventory record {record} has no path")
        if kind == "Symlink":
            self.target.links.pop(path, None)  # no longer declared: never followed again
        return fs_apply.delete(self.target, kind, path)

    def watch(self, resources: Sequence[Resource], notify: WatchCallback) -> Watcher:
        """Watch the resources' paths with inotify (see :mod:`~setpoint.providers.files.watch`)."""
        from setpoint.providers.files.watch import FsWatch

        w = FsWatch(self.target, resources, notify)
        self._watches = [x for x in self._watches if not x.closed] + [w]
        return w

    def unwatched(self) -> set[str]:
        """Ids the open watches could not watch (kernel watch limit): poll them."""
        return {rid for w in self._watches if not w.closed for rid in w.unwatched()}

    def quick_check(self, resources: Sequence[Resource], claimed: Set[str]) -> QuickCheck | None:
        """QuickCheckable: the entries :func:`setpoint.providers.files.quick.confirm` checks.

        What the plan compares, as the declaration says it (a File's bytes as a size and
        a SHA-256). ``claimed`` gives a purging Directory the names it may hold.
        """
        root = str(self.target.root)
        keep = claimed | declared_ancestors(claimed)
        entries: list[Any] = []
        for r in resources:
            spec = fs_spec(r)
            if isinstance(spec, FileSpec):
                data = desired_bytes(r, spec)
                entries.append(
                    ["f", spec.path, int(spec.mode, 8), spec.owner, spec.group, len(data),
                     hashlib.sha256(data).hexdigest()]
                )  # fmt: skip
            elif isinstance(spec, DirectorySpec):
                allowed = None
                if spec.purge:
                    prefix = spec.path + "/"
                    allowed = sorted(
                        p[len(prefix) :] for p in keep
                        if p.startswith(prefix) and "/" not in p[len(prefix) :]
                    )  # fmt: skip
                entries.append(
                    ["d", spec.path, int(spec.mode, 8), spec.owner, spec.group, allowed]
                )
            else:
                entries.append(["l", spec.path, link_text(spec.target, root)])
        return QuickCheck("setpoint.providers.files.quick", entries)

    def _declared_ancestors(self) -> frozenset[str]:
        # Recomputed when begin_pass swaps ``target.declared`` or it grows (once per pass).
        declared = self.target.declared
        of = self._ancestors_of
        if of is None or of[0] is not declared or of[1] != len(declared):
            self._ancestors = declared_ancestors(declared)
            self._ancestors_of = (declared, len(declared))
        return self._ancestors
