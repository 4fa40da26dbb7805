"""The provider contract, the target context and the kind registry.

The engine (:mod:`setpoint.engine`) calls providers only through
:class:`Provider`; the renderer (:mod:`setpoint.render`) only uses
:meth:`Registry.spec_model` to validate specs. Providers import no engine.

Contract (checked by ``tests/test_provider_contract.py`` for every kind):

- ``read(resource)`` is the only I/O for checking; it returns ``None`` when the
  resource is absent from the target.
- ``plan(resource, observed)`` is pure and deterministic; it returns a NOOP
  change when in sync.
- ``apply(resource, change)`` executes exactly that change, atomically.
- after ``apply``, ``plan(resource, read(resource))`` is a NOOP (idempotence).
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from setpoint.model.errors import ProviderError, SetpointError
from setpoint.model.plan import Change
from setpoint.model.resource import Resource

WaitHook = Callable[[str, str, float], AbstractContextManager[None]]
"""(resource id, what is awaited, timeout s) -> a context manager around the wait."""


@dataclass
class Target:
    """The target a pass acts on: a root directory under which absolute paths are placed.

    ``declared`` holds every path any resource declares in this pass (all
    stacks), so that ``Directory.purge`` knows what to keep. ``touched_dirs``
    collects the directories whose entries changed, for one batched fsync.
    ``links`` maps the path of each declared Symlink to its declared target (kept by
    the file-system provider): only those symlinks may be followed on the way to a
    managed path, and only while the path is still declared. ``dir_fds`` caches the
    directory descriptors the file-system provider opened for reading in this pass
    (see :mod:`setpoint.providers.fs_walk`).
    """

    root: Path
    state_dir: Path | None = None  # the agent's own data (release store, service logs, ...)
    declared: set[str] = field(default_factory=set)
    touched_dirs: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)
    dir_fds: dict[str, int] = field(default_factory=dict, repr=False)
    # Set by the engine: how a provider's wait on the outside world lets other stacks'
    # passes run meanwhile (see :meth:`waiting`).
    wait_hook: WaitHook | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))
        # In the names of our temporary files (``.NAME.setpoint-<token>.tmp``): a user's
        # file of a similar name is never taken for ours, and another agent's (another
        # state dir) are left to it.
        where = os.path.realpath(self.state_dir) if self.state_dir is not None else ""
        self.tmp_token = hashlib.sha256(where.encode()).hexdigest()[:8]

    def host_path(self, path: str) -> str:
        """The real path of a declared absolute path under the root (no resolution)."""
        if str(self.root) == "/":
            return path
        return str(self.root) + path

    @contextmanager
    def waiting(self, resource: str, what: str, timeout: float) -> Iterator[None]:
        """Wrap a provider's wait on the outside world (readiness, a download).

        ``what`` says what is awaited, for status ("rollout of Service/app: waiting for
        readiness"); ``timeout`` is the wait's bound in seconds. The engine runs other
        stacks' passes during the block; the provider must hold no engine state across
        it (no cached directory descriptor, no per-pass set) and re-read after it.
        """
        hook = self.wait_hook
        if hook is None:
            yield
            return
        with hook(resource, what, timeout):
            yield

    def forget_parents(self) -> None:
        """Start of a pass: close the directory descriptors cached by the last one."""
        self.close_dirs()

    def close_dirs(self) -> None:
        """Close the cached directory descriptors (they pin directories and mounts)."""
        fds = self.dir_fds
        while fds:
            os.close(fds.popitem()[1])

    def fsync_touched(self) -> None:
        """fsync every directory whose entries changed, once each (batched per pass).

        The end of a pass: the cached directory descriptors are closed too.
        """
        self.close_dirs()
        for d in sorted(self.touched_dirs):
            try:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.touched_dirs.clear()


@dataclass(frozen=True)
class Observed:
    """What a provider read from the target for one resource (kind-specific ``data``)."""

    resource: str
    data: Any


class Provider(Protocol):
    """One family of kinds on one kind of target."""

    kinds: ClassVar[tuple[str, ...]]

    def claims(self, resource: Resource) -> tuple[str, ...]:
        """Target paths this resource owns (for conflicts and implicit ordering)."""

    def read(self, resource: Resource) -> Observed | None: ...

    def plan(self, resource: Resource, observed: Observed | None) -> Change: ...

    def apply(self, resource: Resource, change: Change) -> None: ...

    def delete(self, kind: str, path: str) -> str:
        """Remove what a pruned resource left at ``path``; return what was done."""

    def implicit_dependencies(self, resource: Resource, by_path: dict[str, str]) -> Iterable[str]:
        """Ids this resource must wait for (e.g. the Directory that holds it)."""


WatchCallback = Callable[[set[str]], None]
"""Called (from any thread) with ids of resources that may have changed; may over-report."""


class Watcher(Protocol):
    """A running watch; ``close`` stops it and releases its kernel resources."""

    def close(self) -> None: ...


class Watchable(Protocol):
    """Optional provider capability: report changes as they happen (polling is the fallback).

    The agent calls ``watch`` after a full pass with the stack's resources of the
    provider's kinds, closes the previous watcher, and turns each callback into a
    pass over only the named resources. ``unwatched`` lists the ids it could not
    watch (e.g. the kernel's watch limit), which the agent polls and reports.
    """

    def watch(self, resources: Sequence[Resource], notify: WatchCallback) -> Watcher: ...

    def unwatched(self) -> set[str]: ...


@dataclass(frozen=True)
class ProviderEvent:
    """Something a provider saw or did between passes, for the journal.

    E.g. the Service supervisor restarting a killed process: ``drift`` ("Service/web
    killed by SIGKILL outside setpoint"), then ``revert`` ("restarted (pid N), ready
    after X ms"); ``failure`` when it could not. ``at`` is when it happened (epoch s).
    """

    resource: str  # a resource id, Kind/name
    event: str  # a journal event name: "drift", "revert", "failure"
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


class EventQueue:
    """A provider's events waiting to be drained, bounded; what the bound drops is counted.

    When ``bound`` events wait, the oldest goes and is counted against its
    resource; that resource's next drain starts with an ``events.lost`` event
    saying how many were lost, so none disappears silently. Thread-safe
    (supervisor threads put, the pass thread drains).
    """

    def __init__(self, bound: int = 1000) -> None:
        self.bound = bound
        self._events: collections.deque[ProviderEvent] = collections.deque()
        self._lost: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, event: ProviderEvent) -> None:
        with self._lock:
            self._events.append(event)
            if len(self._events) > self.bound:
                dropped = self._events.popleft()
                self._lost[dropped.resource] = self._lost.get(dropped.resource, 0) + 1

    def drain(self, resources: Collection[str]) -> list[ProviderEvent]:
        """The queued events of ``resources``, oldest first (a count of lost ones first)."""
        with self._lock:
            out = [
                ProviderEvent(
                    rid,
                    "events.lost",
                    f"{n:,} provider events were lost (queue bound {self.bound:,})",
                    {"lost": n, "bound": self.bound},
                )
                for rid, n in sorted(self._lost.items())
                if rid in resources
            ]
            for e in out:
                del self._lost[e.resource]
            mine = [e for e in self._events if e.resource in resources]
            if mine:
                self._events = collections.deque(
                    e for e in self._events if e.resource not in resources
                )
        return out + mine


class EventSource(Protocol):
    """Optional provider capability: events to journal, drained by the engine.

    The engine calls ``drain_events`` at the end of every pass (full or partial) with
    the ids of the stack's resources, and journals what it returns with the stack and
    the revision in force. Events of other resources stay queued for their own stack.
    """

    def drain_events(self, resources: Collection[str]) -> list[ProviderEvent]: ...


class PassAware(Protocol):
    """Optional provider capability: told when a pass of a stack starts.

    The engine calls ``begin_pass(full, resync)`` before reading any resource of the
    pass: ``full`` is False for a partial pass (only some resources, e.g. after a watch
    event); ``resync`` is the stack's resync interval in seconds. A provider with a costly
    deep check (hashing whole release trees) runs it once per resync interval and a cheap
    one in between.
    """

    def begin_pass(self, full: bool, resync: float) -> None: ...


class RegistryError(SetpointError):
    pass


class StallError(ProviderError):
    """A permanent failure that stalls the stack (condition Stalled, with ``reason``).

    Raised e.g. by the Service provider when a rollout never became ready and was rolled
    back: the failure stays reported until the declaration changes.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, transient=False)
        self.reason = reason


class ProviderFactory(Protocol):
    def __call__(self, target: Target) -> Provider: ...


class Registry:
    """Maps each kind to its spec model and its provider factory; a kind registers once."""

    def __init__(self) -> None:
        self._specs: dict[str, type[BaseModel]] = {}
        self._factories: dict[str, ProviderFactory] = {}

    def register(self, kind: str, spec: type[BaseModel], factory: ProviderFactory) -> None:
        if kind in self._specs:
            raise RegistryError(f"kind {kind} is registered twice")
        self._specs[kind] = spec
        self._factories[kind] = factory

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self._specs))

    def spec_model(self, kind: str) -> type[BaseModel] | None:
        return self._specs.get(kind)

    def providers(self, target: Target) -> dict[str, Provider]:
        """One provider instance per factory, bound to ``target``, keyed by kind."""
        made: dict[int, Provider] = {}
        out: dict[str, Provider] = {}
        for kind, factory in self._factories.items():
            key = id(factory)
            if key not in made:
                made[key] = factory(target)
            out[kind] = made[key]
        return out
