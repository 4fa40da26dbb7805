"""The provider contract, the provider context and the kind registry.

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
- ``claims(resource)`` are keys of the provider's choosing (a path, ``release:NAME``,
  ``postgres://...``), every one recorded and checked against other stacks;
  ``record(resource)`` is JSON (no secret) stored with them at claim time, and
  ``delete(kind, record)`` removes the resource from that record alone (prune).

A factory receives a :class:`ProviderContext` (root, state dir, ``waiting``, the
stacks' ``settings``); optional capabilities are the runtime-checkable protocols
below (:class:`PassAware`, :class:`Watchable`, :class:`EventSource`,
:class:`DesiredAware`, :class:`DigestDeriving`, :class:`HealthReporting`,
:class:`StackChecker`, :class:`QuickCheckable`, :class:`Pipelining`), which the engine
finds with ``isinstance`` once per provider.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from setpoint.model.errors import ManifestError, ProviderError, SetpointError
from setpoint.model.plan import Change
from setpoint.model.resource import Resource

WaitHook = Callable[[str, str, float], AbstractContextManager[None]]
"""(resource id, what is awaited, timeout s) -> a context manager around the wait."""

SettingsHook = Callable[[str, str], BaseModel | None]
"""(stack name, settings key) -> the stack's parsed section of that key, or None."""


@dataclass
class ProviderContext:
    """What a provider factory receives: the agent's context, the same for every stack.

    ``root`` is where declared absolute host paths are placed (a File's path, a
    Service's ``workingDir``, a ``file://`` release URL); ``state_dir`` holds the
    agent's own data (release store, service records, ...). Per-pass state of a
    family (the file provider's declared paths, touched directories, descriptor
    cache) lives inside that family's provider, never here.

    Example::

        ctx = ProviderContext(Path("/srv/root"), state_dir=Path("/var/lib/setpoint"))
        provider = FilesystemProvider(ctx)
    """

    root: Path = Path("/")
    state_dir: Path | None = None
    # Set by the engine: how a provider's wait on the outside world lets other stacks'
    # passes run meanwhile (see :meth:`waiting`).
    wait_hook: WaitHook | None = field(default=None, repr=False)
    # Set by the engine: the stacks' provider settings sections (see :meth:`settings`).
    settings_hook: SettingsHook | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))

    def host_path(self, path: str) -> str:
        """The real path of a declared absolute path under the root (no resolution)."""
        if str(self.root) == "/":
            return path
        return str(self.root) + path

    def settings(self, stack: str, key: str) -> BaseModel | None:
        """The section ``key`` of stack ``stack``'s config, parsed by its registered model.

        E.g. ``settings("db", "postgres")`` for a stack declared with ``postgres:
        {connection: {...}}`` (in the local config or a Fleet entry); None when the
        stack has no such section (or is unknown). See :meth:`Registry.register_settings`.
        """
        hook = self.settings_hook
        return hook(stack, key) if hook is not None else None

    @contextmanager
    def waiting(self, resource: str, what: str, timeout: float) -> Iterator[None]:
        """Wrap a provider's wait on the outside world (readiness, a download).

        ``what`` says what is awaited, for status ("rollout of Service/app: waiting for
        readiness"); ``timeout`` is the wait's bound in seconds. The engine runs other
        stacks' passes during the block; the provider must hold no per-pass state
        across it (no cached directory descriptor, no per-pass set) and re-read after
        it: the engine calls ``begin_pass`` again (``resumed``) before the block ends.
        """
        hook = self.wait_hook
        if hook is None:
            yield
            return
        with hook(resource, what, timeout):
            yield


D = TypeVar("D", covariant=True)


@dataclass(frozen=True)
class Observed(Generic[D]):
    """What a provider read from the target for one resource.

    ``data`` is the provider's own type (``Observed[FsState]``, ``Observed[ReleaseState]``):
    a provider's ``read`` and ``plan`` are typed with it; the engine only passes it on.
    """

    resource: str
    data: D


class Provider(Protocol):
    """One family of kinds on one kind of target."""

    kinds: ClassVar[tuple[str, ...]]

    def claims(self, resource: Resource) -> tuple[str, ...]:
        """Keys this resource owns, chosen by the provider (for conflicts and ordering).

        A file's path (``/etc/motd``); ``release:NAME``; a database object's URL-like
        key (``postgres://host:port/db/schema/NAME``). The inventory records every
        claim; a key claimed by two stacks is a conflict. Keys of different families
        must not collide (files are absolute paths, others carry a prefix).
        """

    def record(self, resource: Resource) -> dict[str, Any]:
        """JSON data ``delete`` needs to remove this resource later (stored at claim time).

        The declaration is gone from Git by the time a prune runs: give what is needed
        to find and remove the object (a path, a name, a connection's host, port and
        database, a reference to a password *file*), never a secret itself. It must
        suffice alone: a stack pruned after it left the config has no settings any more.
        """

    def read(self, resource: Resource) -> Observed[Any] | None: ...

    def plan(self, resource: Resource, observed: Observed[Any] | None) -> Change: ...

    def apply(self, resource: Resource, change: Change) -> None: ...

    def delete(self, kind: str, record: dict[str, Any]) -> str:
        """Remove a pruned resource of ``kind`` from its ``record``; return what was done.

        Records of inventories written before records existed are ``{"path": P}``,
        ``P`` the resource's first claim.
        """

    def implicit_dependencies(self, resource: Resource, by_path: dict[str, str]) -> Iterable[str]:
        """Ids this resource must wait for (e.g. the Directory that holds it)."""


WatchCallback = Callable[[set[str]], None]
"""Called (from any thread) with ids of resources that may have changed; may over-report."""


class Watcher(Protocol):
    """A running watch; ``close`` stops it and releases its kernel resources."""

    def close(self) -> None: ...


@runtime_checkable
class RetryingWatcher(Watcher, Protocol):
    """Optional watcher capability: some resources could not be watched (a kernel limit).

    ``unwatched`` lists their ids (the agent polls and reports them), ``retry`` tries
    again, ``watch_count`` is how many kernel watches it holds (status, metrics).
    """

    @property
    def watch_count(self) -> int: ...

    def unwatched(self) -> set[str]: ...

    def retry(self) -> None: ...


@runtime_checkable
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


@runtime_checkable
class EventSource(Protocol):
    """Optional provider capability: events to journal, drained by the engine.

    The engine calls ``drain_events`` at the end of every pass (full or partial) with
    the ids of the stack's resources, and journals what it returns with the stack and
    the revision in force. Events of other resources stay queued for their own stack.
    """

    def drain_events(self, resources: Collection[str]) -> list[ProviderEvent]: ...


@runtime_checkable
class DesiredAware(Protocol):
    """Optional provider capability: given the stack's resources by id before a pass.

    The engine calls ``set_desired`` at the start of each pass (and after a wait): the
    Service provider compares the digests of the declarations a service's
    ``restartOn``/``reloadOn`` name with those it started with.
    """

    def set_desired(self, resources: Mapping[str, Resource]) -> None: ...


@runtime_checkable
class DigestDeriving(Protocol):
    """Optional provider capability: what a resource's state derives from, as a digest.

    Replaces ``Resource.digest`` for the drift check, so that a change of what a resource
    derives from (a Service's release version, its ``restartOn`` declarations) is a new
    declaration, not drift.
    """

    def effective_digest(self, resource: Resource) -> str: ...


@runtime_checkable
class HealthReporting(Protocol):
    """Optional provider capability: ``(health, message)`` of a resource after its check.

    Health is one of Healthy / Progressing / Degraded / Missing / Unknown.
    """

    def health(self, resource: Resource) -> tuple[str, str]: ...


@dataclass(frozen=True)
class PassInfo:
    """What the engine tells providers at the start of a pass (see :class:`PassAware`).

    ``full`` is False for a partial pass (only some resources, e.g. after a watch
    event) and for a prune outside a pass; ``resync`` is the stack's resync interval
    in seconds; ``claimed`` holds every key claimed in this pass: the stack's
    declarations and every stack's inventory (the file provider's ``Directory.purge``
    keeps them). ``resumed`` is True when a pass continues after a provider's wait
    (other stacks' passes ran meanwhile): restore, do not start anew.
    """

    stack: str
    full: bool
    resync: float
    claimed: AbstractSet[str] = frozenset()
    resumed: bool = False


@runtime_checkable
class PassAware(Protocol):
    """Optional provider capability: told when a pass of a stack starts and ends.

    The engine calls ``begin_pass`` before reading any resource of the pass (and again,
    ``resumed``, after a wait), and ``end_pass`` after its last write (also after a
    dry run, and after an out-of-pass prune or diff). E.g. the file provider keeps the
    pass's claimed paths and descriptor cache and fsyncs the directories it touched
    once at the end; a provider with a costly deep check (hashing whole release trees)
    runs it once per resync interval and a cheap one in between.
    """

    def begin_pass(self, info: PassInfo) -> None: ...

    def end_pass(self) -> None: ...


@runtime_checkable
class StackChecker(Protocol):
    """Optional provider capability: checks of a rendered stack that need the target.

    The engine calls ``check_declarations`` with the stack's resources once per render
    (before ordering); any error refuses the revision, like a manifest error (e.g. the
    file provider refuses a ``purge: true`` directory holding the agent's state dir).
    """

    def check_declarations(self, resources: Sequence[Resource]) -> list[ManifestError]: ...


@dataclass(frozen=True)
class QuickCheck:
    """What :class:`QuickCheckable` gives: a checker and the data it needs, as JSON values.

    ``checker`` names a module under ``setpoint.providers`` whose ``confirm(root,
    entries) -> bool`` must import nothing heavy (no pydantic: it runs in a one-shot
    process that never loads the engine); ``entries`` are plain JSON values.
    """

    checker: str
    entries: list[Any]


@runtime_checkable
class QuickCheckable(Protocol):
    """Optional provider capability: a no-op confirmed without rendering (engine/settled.py).

    After a one-shot apply that left every stack converged, the engine asks the
    provider of each kind in use for ``quick_check`` of its resources (``claimed`` as
    in :class:`PassInfo`). The next ``setpoint apply``/``plan`` at the same revision
    and config runs ``confirm`` instead of loading the engine; it must return True only
    when a full pass would find every one of those resources in sync (False sends the
    run down the full path, so a doubt costs time, never correctness). None: this
    provider cannot say so cheaply (the fast path is then not used for the stack).
    """

    def quick_check(
        self, resources: Sequence[Resource], claimed: AbstractSet[str]
    ) -> QuickCheck | None: ...


@dataclass
class Landed:
    """What :meth:`Pipelining.land` gives: the applies that failed, and each one's time.

    ``failed`` maps resource ids to the error (a failed apply left nothing behind: the
    path is as before); ``seconds`` maps the ids of every landed apply to how long the
    apply itself took (journaled as its ``ms``).
    """

    failed: dict[str, Exception] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Pipelining(Protocol):
    """Optional provider capability: a create carried out in the background, landed later.

    A first apply is bound by the target's own latency (the file provider's fsync of
    each file before its rename); with this, that wait overlaps the engine's work on
    the next resources. The engine calls ``apply_later`` instead of ``apply`` only for
    a create that its pass claimed write-ahead and whose record it batches
    (engine/claims.py): True = queued, the provider now owes it; False = not one it
    defers (the engine calls ``apply``). It raises as ``apply`` would for what it can
    tell at once. ``land`` waits for every queued apply and says how each went; a
    failed one must have changed nothing (it is atomic like ``apply``).

    The engine lands before it records any queued create, before it reads or applies
    a resource that is not such a create (or one of another provider, or a
    dependent of one in flight), and before ``end_pass``: a queued apply never
    overlaps a read it could change. The provider lands by itself in ``begin_pass``
    and ``end_pass`` too, and keeps what that found for the engine's next ``land``.
    """

    def apply_later(self, resource: Resource, change: Change) -> bool: ...

    def land(self) -> Landed: ...


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
    def __call__(self, ctx: ProviderContext) -> Provider: ...


class Registry:
    """Maps each kind to its spec model and its provider factory; a kind registers once."""

    def __init__(self) -> None:
        self._specs: dict[str, type[BaseModel]] = {}
        self._factories: dict[str, ProviderFactory] = {}
        self._settings: dict[str, type[BaseModel]] = {}

    def register(self, kind: str, spec: type[BaseModel], factory: ProviderFactory) -> None:
        if kind in self._specs:
            raise RegistryError(f"kind {kind} is registered twice")
        self._specs[kind] = spec
        self._factories[kind] = factory

    def register_settings(self, key: str, model: type[BaseModel]) -> None:
        """Declare a stack-level config section ``key`` parsed by ``model``.

        E.g. ``register_settings("postgres", PostgresSettings)`` lets a stack (in the
        config file or a Fleet entry) carry ``postgres: {connection: {...}}``; providers
        read it through :meth:`ProviderContext.settings`. A key registers once, and
        never one of the stack's own fields.
        """
        if key in self._settings:
            raise RegistryError(f"settings key {key} is registered twice")
        self._settings[key] = model

    def settings_models(self) -> dict[str, type[BaseModel]]:
        """The registered settings sections: key -> model."""
        return dict(self._settings)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self._specs))

    def spec_model(self, kind: str) -> type[BaseModel] | None:
        return self._specs.get(kind)

    def providers(self, ctx: ProviderContext) -> dict[str, Provider]:
        """One provider instance per factory, made with ``ctx``, keyed by kind."""
        made: dict[int, Provider] = {}
        out: dict[str, Provider] = {}
        for kind, factory in self._factories.items():
            key = id(factory)
            if key not in made:
                made[key] = factory(ctx)
            out[kind] = made[key]
        return out
