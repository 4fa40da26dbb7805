"""The Release kind: an artefact at a version, verified and unpacked once, immutably.

Store layout under ``<state>/releases/<name>/`` (``releases/``, ``<name>/`` and ``versions/``
are 0755 so that a service running as another ``user`` can reach its tree; the state dir
above is 0711; ``manifests/`` and ``archives/`` are 0700)::

    versions/<version>-<sha256[:16]>/   the unpacked tree, never changed in place
    manifests/<dir>.json                what was unpacked (type, mode, size, sha256 per entry)
    manifests/<dir>.stat.json           inode and ctime per file, recorded at unpack
    archives/<dir>.<ext>                the verified download (a restore needs no download)
    current -> versions/<dir>           switched atomically (symlink + rename)
    history.json                        dirs in the order they became current (for GC)
    hold.json                           a failed rollout put ``current`` back (see below)

``read`` checks the declared version's tree against its manifest (tampering is drift:
the tree is put back from the cached archive). The check is cheap (every entry is
lstat'ed; only a file whose inode or ctime moved is hashed) except once per resync
interval, when every file is hashed (:meth:`ReleaseProvider.begin_pass`). ``read`` also
finds the temporaries a crash left in the store (``versions/.tmp-*``, ``.trash-*``,
``archives/.*.part``...): ``plan`` lists them and ``apply`` removes them.

``plan`` decides; ``apply`` downloads, verifies the SHA-256 (a mismatch refuses the
release and changes nothing), unpacks into a temporary directory, fsyncs it, renames it
into place, switches ``current`` and removes versions beyond ``keep`` (never one a live
service process runs from). A removal that fails is journaled as a failure event (with
why) and tried again at the next pass. A release URL is shown redacted everywhere
(:mod:`setpoint.model.redact`); ``user:password@`` in it is sent as Basic auth.

When a Service's rollout of the declared version fails, the service provider calls
:func:`~setpoint.providers.services.release_store.hold_release`: ``current`` goes back to the
last healthy version and stays there (``plan`` is a NOOP with the reason, ``health`` is
Degraded) while that version is declared; a new declaration is installed normally, and
a rollout that passes readiness calls :func:`~setpoint.providers.services.release_store.lift_hold`.

Modules: this one (the provider); ``release_store`` (the store on disk: paths, switch,
hold, checked removals, leftovers); ``release_unpack`` (extract, fsync, scan, check).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

from setpoint.atomic import fsync_dir
from setpoint.atomic import write_json_atomic as _write_json
from setpoint.model.errors import ProviderError
from setpoint.model.plan import Action, Change, FieldChange
from setpoint.model.redact import redact_text, redact_url
from setpoint.model.resource import Resource
from setpoint.providers.base import Observed, PassInfo, ProviderContext, ProviderEvent
from setpoint.providers.services.common import (
    ensure_private_dir,
    live_release_dirs,
    read_json,
    record_name,
)
from setpoint.providers.services.release_store import (
    HOLD,
    collect_orphans,
    current_dir,
    declared_dir,
    history,
    hold_release,
    leftovers,
    lift_hold,
    read_hold,
    releases_dir,
    remove_path,
    remove_version,
    switch,
    traversable,
    version_dir_name,
)
from setpoint.providers.services.release_unpack import (
    check_tree,
    extract,
    fsync_tree,
    scan,
    sha256_file,
)
from setpoint.providers.services.service_spec import ReleaseSpec

if TYPE_CHECKING:  # the HTTP client (and ssl) loads with the first download: start-up cost
    import urllib.request

__all__ = [
    "ReleaseProvider",
    "collect_orphans",
    "current_dir",
    "declared_dir",
    "hold_release",
    "lift_hold",
]

CLAIM_PREFIX = "release:"
# Labels of the plan's fields (for people; apply reads the ReleaseWork payload).
OLD = "old version"  # a version dir to collect
LEFTOVER = "leftover"  # a crash's temporary to remove
RESTORED = "as released"  # the new value of a tampered entry
_CHUNK = 1 << 20
# A full hash is due when the last one is older than this share of the resync interval
# (the agent jitters it by ±10%: a resync-driven pass always hashes).
_FULL_SHARE = 0.8


def archive_ext(spec: ReleaseSpec) -> str:
    if spec.format != "auto":
        return spec.format
    name = urlsplit(spec.url).path.lower()
    for ext, fmt in ((".tar.gz", "tar.gz"), (".tgz", "tar.gz"), (".tar", "tar"), (".zip", "zip")):
        if name.endswith(ext):
            return fmt
    return "file"


def release_spec(resource: Resource) -> ReleaseSpec:
    if not isinstance(resource.spec, ReleaseSpec):
        raise ProviderError(f"{resource.id}: not a Release spec", transient=False)
    return resource.spec


@dataclass(frozen=True, slots=True)
class ReleaseWork:
    """What ``apply`` must do for a Release change (``Change.payload``).

    ``unpack``: download (or reuse the cached archive), verify, unpack the declared
    version; ``restore``: unpack it again over a tampered tree; ``switch``: point
    ``current`` at it; ``collect``: old version dirs to remove; ``leftovers``: a
    crash's temporaries to remove (relative to the release dir; re-checked at apply).
    """

    unpack: bool = False
    restore: bool = False
    switch: bool = False
    collect: tuple[str, ...] = ()
    leftovers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReleaseState:
    current: str | None  # dir name current points to
    present: tuple[str, ...]  # version dirs in the store
    problems: tuple[str, ...]  # how the declared version's tree differs from its manifest
    gc: tuple[str, ...]  # dirs that GC would remove
    held: dict[str, str] | None = None  # the declared version failed its rollout
    leftovers: tuple[str, ...] = ()  # a crash's temporaries, relative to the release dir


class ReleaseProvider:
    """Releases in ``<state>/releases`` (see the module docstring)."""

    kinds: ClassVar[tuple[str, ...]] = ("Release",)

    def __init__(self, ctx: ProviderContext, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.clock = clock
        # Seconds between full hashes of a tree. 0 (every read) until the engine says
        # otherwise through begin_pass: used alone, the provider always hashes fully.
        self._full_every = 0.0
        self._hashed: dict[str, float] = {}  # version dir → clock() of its last full hash
        self._events: list[ProviderEvent] = []

    @property
    def store(self) -> Path:
        if self.ctx.state_dir is None:
            raise ProviderError("the Release kind needs the agent's state dir", transient=False)
        return releases_dir(self.ctx.state_dir)

    def claims(self, resource: Resource) -> tuple[str, ...]:
        return (CLAIM_PREFIX + resource.name,)

    def record(self, resource: Resource) -> dict[str, Any]:
        """What prune needs: the release's name (its store is under the state dir)."""
        return {"name": resource.name}

    def implicit_dependencies(self, resource: Resource, by_path: dict[str, str]) -> Iterable[str]:
        """A ``file://`` archive that a resource of the stack (a File) puts in place."""
        parts = urlsplit(release_spec(resource).url)
        if parts.scheme == "file":
            rid = by_path.get(unquote(parts.path))
            if rid is not None:
                return (rid,)
        return ()

    # -- engine hooks -----------------------------------------------------------------

    def begin_pass(self, info: PassInfo) -> None:
        """A pass starts (:class:`~setpoint.providers.base.PassAware`).

        A full pass hashes every file of a tree last hashed more than most of a resync
        interval ago; otherwise (and in a partial pass) the cheap check runs.
        """
        if not info.resumed:
            self._full_every = _FULL_SHARE * info.resync if info.full else float("inf")

    def end_pass(self) -> None:
        """Nothing to flush: every write of a release is fsynced where it is made."""

    def drain_events(self, resources: Collection[str]) -> list[ProviderEvent]:
        """Removals that failed, for the journal (:class:`~setpoint.providers.base.EventSource`)."""
        mine = [e for e in self._events if e.resource in resources]
        self._events = [e for e in self._events if e.resource not in resources]
        return mine

    def _failed_removals(self, rid: str, failures: list[str]) -> None:
        if failures:
            text = "; ".join(failures)
            self._events.append(
                ProviderEvent(
                    rid, "failure",
                    f"{rid}: could not remove {text}; kept, tried again at the next pass",
                    {"kept": failures},
                )
            )  # fmt: skip

    # -- read / plan ------------------------------------------------------------------

    def read(self, resource: Resource) -> Observed[ReleaseState] | None:
        spec = release_spec(resource)
        base = self.store / resource.name
        versions = base / "versions"
        if not versions.is_dir():
            return None
        present = tuple(
            sorted(d.name for d in versions.iterdir() if not d.name.startswith(".") and d.is_dir())
        )
        link = base / "current"
        current = None
        if os.path.islink(link):
            current = os.readlink(link).rpartition("/")[2]
        want = version_dir_name(spec)
        problems: tuple[str, ...] = ()
        if want in present:
            problems = tuple(self._check(base, want))
        gc = self._gc_candidates(resource.name, spec, want, present)
        hold = read_hold(self.store.parent, resource.name)
        held = hold if hold is not None and hold.get("dir") == want else None
        state = ReleaseState(current, present, problems, gc, held, tuple(leftovers(base)))
        return Observed(resource.id, state)

    def _check(self, base: Path, want: str) -> list[str]:
        """The tree of ``want`` against its manifest: hashed fully when one is due."""
        tree = base / "versions" / want
        last = self._hashed.get(str(tree))
        full = last is None or self.clock() - last >= self._full_every
        manifest = read_json(base / "manifests" / f"{want}.json")
        stats = read_json(base / "manifests" / f"{want}.stat.json")
        problems = check_tree(tree, manifest, stats, full=full)
        if full and not problems:
            self._hashed[str(tree)] = self.clock()
        return problems

    def _gc_candidates(
        self, name: str, spec: ReleaseSpec, want: str, present: tuple[str, ...]
    ) -> tuple[str, ...]:
        order = [d for d in history(self.store / name) if d in present]
        order += [d for d in present if d not in order]
        order = [d for d in order if d != want] + [want]  # the declared one is newest
        keep = set(order[-spec.keep :])
        assert self.ctx.state_dir is not None
        in_use = {Path(p).name for p in live_release_dirs(self.ctx.state_dir)}
        return tuple(d for d in order if d not in keep and d not in in_use and d in present)

    def plan(self, resource: Resource, observed: Observed[ReleaseState] | None) -> Change:
        spec = release_spec(resource)
        want = version_dir_name(spec)
        path = str(self.store / resource.name / "versions" / want)
        state = observed.data if observed is not None else None
        if state is not None and not isinstance(state, ReleaseState):
            raise ProviderError(f"{resource.id}: observed data is not a release state")
        # Tidying the store rides along with any change: old versions, a crash's leftovers.
        gc, junk = (state.gc, state.leftovers) if state else ((), ())
        tidy = tuple(FieldChange(OLD, d, None) for d in gc)
        tidy += tuple(FieldChange(LEFTOVER, x, None) for x in junk)
        work = ReleaseWork(collect=gc, leftovers=junk)
        if state is None or want not in state.present:
            old = state.current if state else None
            action = Action.CREATE if old is None else Action.UPDATE
            fields = (FieldChange("version", _version_of(old), spec.version), *tidy)
            return Change(
                resource.id, action, path, fields=fields,
                payload=replace(work, unpack=True, switch=True),
            )  # fmt: skip
        if state.problems:
            fields = tuple(FieldChange(p, "tampered", RESTORED) for p in state.problems)
            return Change(
                resource.id, Action.UPDATE, path, fields=(*fields, *tidy),
                reason="the unpacked release was modified",
                payload=replace(work, restore=True, switch=True),
            )  # fmt: skip
        if state.current != want and state.held is not None:
            # A service's rollout of this version failed and put the last healthy one back:
            # hold it there while the declaration stays the same (the Service reports the
            # stall); a new declaration is tried normally.
            reason = _held_reason(spec, state.current, state.held)
            if tidy:
                return Change(
                    resource.id, Action.UPDATE, path, fields=tidy, reason=reason, payload=work
                )
            return Change(resource.id, Action.NOOP, path, reason=reason)
        if state.current != want:
            fields = (FieldChange("current", state.current, want), *tidy)
            return Change(
                resource.id, Action.UPDATE, path, fields=fields,
                payload=replace(work, switch=True),
            )  # fmt: skip
        if tidy:
            reason = (
                f"keep {spec.keep}" if not state.leftovers
                else "remove what an interrupted install left in the store"
            )  # fmt: skip
            return Change(
                resource.id, Action.UPDATE, path, fields=tidy, reason=reason, payload=work
            )
        return Change(resource.id, Action.NOOP, path, reason=f"version {spec.version} in place")

    # -- apply ------------------------------------------------------------------------

    def apply(self, resource: Resource, change: Change) -> None:
        if change.action is Action.NOOP:
            return
        spec = release_spec(resource)
        base = self.store / resource.name
        # The tree a service runs from must be reachable by a service's own ``user``:
        # releases/, releases/NAME/ and versions/ are 0755 (the state dir above is 0711,
        # traversable, not listable); what was downloaded and the manifests stay private.
        traversable(self.store.parent)
        for d in (self.store, base, base / "versions"):
            d.mkdir(mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)  # noqa: S103 (world-readable on purpose, see above)
        for sub in ("manifests", "archives"):
            ensure_private_dir(base / sub)
        want = version_dir_name(spec)
        work = change.payload
        if not isinstance(work, ReleaseWork):
            raise ProviderError(
                f"{resource.id}: cannot apply a change the Release provider did not plan",
                transient=False,
            )
        switching = work.switch
        hold = read_hold(self.store.parent, resource.name)
        if hold is not None and hold.get("dir") == want:
            switching = False  # held at the last healthy version (see plan)
        elif switching and hold is not None:
            with contextlib.suppress(FileNotFoundError):
                (base / HOLD).unlink()
        failures: list[str] = []
        try:
            if work.unpack or work.restore:
                archive = self._archive(resource, spec, base)
                failures += self._unpack(spec, archive, base, want, replace=work.restore)
            if switching:
                switch(base, want)
            for old in sorted(set(work.collect)):
                failures += remove_version(base, old)
            # Only what is still a leftover now (a name in the change is never trusted
            # to point elsewhere in the store).
            for rel in sorted(set(work.leftovers) & set(leftovers(base))):
                if why := remove_path(base / rel):
                    failures.append(f"{rel}: {why}")
        except OSError as err:
            raise ProviderError(f"{resource.id}: cannot install {want}: {err}") from err
        finally:
            self._failed_removals(resource.id, failures)

    def _archive(self, resource: Resource, spec: ReleaseSpec, base: Path) -> Path:
        """The verified archive: the cached copy if intact, else downloaded and verified."""
        import http.client
        want = version_dir_name(spec)
        cached = base / "archives" / f"{want}.{archive_ext(spec)}"
        if cached.exists() and sha256_file(cached) == spec.sha256:
            return cached
        shown = redact_url(spec.url)
        tmp = base / "archives" / f".{want}.{uuid.uuid4().hex}.part"
        h = hashlib.sha256()
        deadline = time.monotonic() + spec.timeoutSeconds
        try:
            waiting = self.ctx.waiting(
                resource.id, f"download of {resource.id}", spec.timeoutSeconds
            )
            with waiting, self._open(spec, deadline) as src, open(tmp, "wb") as dst:
                os.chmod(tmp, 0o600)
                size = 0
                # read1: what has arrived, so a slow drip cannot hold a read past the deadline.
                read = getattr(src, "read1", src.read)
                try:
                    while chunk := read(_CHUNK):
                        size += len(chunk)
                        if size > spec.maxBytes:
                            raise ProviderError(
                                f"cannot download {shown}: larger than maxBytes "
                                f"({spec.maxBytes} bytes); refused",
                                transient=False,
                            )
                        if time.monotonic() > deadline:
                            raise ProviderError(
                                f"cannot download {shown}: not done within timeoutSeconds "
                                f"({spec.timeoutSeconds:g} s, {size} bytes received)"
                            )
                        h.update(chunk)
                        dst.write(chunk)
                except (OSError, http.client.HTTPException, ValueError) as err:
                    why = redact_text(str(err) or type(err).__name__, spec.url)
                    raise ProviderError(f"cannot download {shown}: {why}") from None
                dst.flush()
                os.fsync(dst.fileno())
            got = h.hexdigest()
            if got != spec.sha256:
                raise ProviderError(
                    f"{resource.id}: {shown} has sha256 {got}, but {spec.sha256} is "
                    "declared; the download is refused and nothing was changed",
                    transient=False,
                )
            os.replace(tmp, cached)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return cached

    def _open(self, spec: ReleaseSpec, deadline: float) -> IO[bytes]:
        import http.client
        import urllib.request

        parts = urlsplit(spec.url)
        if parts.scheme == "file":
            path = self.ctx.host_path(unquote(parts.path))
            try:
                return open(path, "rb")
            except OSError as err:
                raise ProviderError(f"cannot read {redact_url(spec.url)}: {err.strerror}") from None
        try:
            # Each socket operation is bounded too: a server that stops sending fails the
            # read (the loop in _archive checks the overall deadline between reads).
            wait = max(0.1, min(30.0, deadline - time.monotonic()))
            resp: IO[bytes] = urllib.request.urlopen(_request(spec.url), timeout=wait)  # noqa: S310
            return resp
        except (OSError, http.client.HTTPException, ValueError) as err:
            # ``from None``: the original error (which may quote the URL) is not chained.
            why = redact_text(str(err) or type(err).__name__, spec.url)
            raise ProviderError(f"cannot download {redact_url(spec.url)}: {why}") from None

    def _unpack(
        self, spec: ReleaseSpec, archive: Path, base: Path, want: str, *, replace: bool
    ) -> list[str]:
        """Unpack into a temporary dir, durably, and rename it into place; what was not removed."""
        final = base / "versions" / want
        tmp = base / "versions" / f".tmp-{want}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o755)
        os.chmod(tmp, 0o755)  # noqa: S103 (whatever the umask: a service user reads it)
        failures: list[str] = []
        try:
            extract(archive, archive_ext(spec), tmp, PurePosixPath(urlsplit(spec.url).path).name)
            # Durable before it is published: after a power loss ``current`` never points
            # at a tree with a truncated file.
            fsync_tree(tmp)
            manifest, stats = scan(tmp)
            _write_json(base / "manifests" / f"{want}.json", manifest)
            _write_json(base / "manifests" / f"{want}.stat.json", stats)
            trash = None
            if replace and final.exists():
                trash = base / "versions" / f".trash-{want}-{uuid.uuid4().hex[:8]}"
                os.rename(final, trash)
            os.rename(tmp, final)
            fsync_dir(final.parent)
            self._hashed[str(final)] = self.clock()  # scan just hashed every file
            if trash is not None and (why := remove_path(trash)):
                failures.append(f"{trash.relative_to(base)}: {why}")
        finally:
            if os.path.lexists(tmp) and (why := remove_path(tmp)):
                failures.append(f"{tmp.relative_to(base)}: {why}")
        return failures

    def health(self, resource: Resource) -> tuple[str, str]:
        """Healthy when ``current`` is the declared version; Degraded while it is held back."""
        spec = release_spec(resource)
        want = version_dir_name(spec)
        link = self.store / resource.name / "current"
        current = os.readlink(link).rpartition("/")[2] if os.path.islink(link) else None
        if current == want:
            return "Healthy", f"version {spec.version} in place"
        hold = read_hold(self.store.parent, resource.name)
        if hold is not None and hold.get("dir") == want:
            return "Degraded", _held_reason(spec, current, hold)
        if current is None:
            return "Missing", f"version {spec.version} not installed yet"
        return "Progressing", f"version {_version_of(current)} in place, {spec.version} declared"

    # -- prune ------------------------------------------------------------------------

    def delete(self, kind: str, record: dict[str, Any]) -> str:
        """Remove the release's ``current`` link and every version no live service runs from.

        Says what really happened: what a live service still runs from is kept, and a
        removal that fails is an error (the release stays in the inventory, to be
        pruned again at the next pass).
        """
        name = record_name(record, CLAIM_PREFIX)
        if not name or "/" in name or name in (".", ".."):
            raise ProviderError(f"cannot delete release {record}: not a release", transient=False)
        base = self.store / name
        if not base.exists():
            return f"release {name} already absent"
        with contextlib.suppress(FileNotFoundError):
            (base / "current").unlink()
        kept, failures = collect_orphans(self.store.parent, only=name)
        if failures:
            raise ProviderError(
                f"release {name}: could not remove {'; '.join(failures)}; kept, tried again "
                "at the next pass"
            )
        if kept:
            return f"removed release {name} (kept {', '.join(kept)}: a service runs from it)"
        return f"removed release {name}"


# -- helpers --------------------------------------------------------------------------



def _request(url: str) -> urllib.request.Request:
    """A GET of ``url``; its ``user:password@`` goes in a Basic ``Authorization`` header.

    (urllib would take the user part for a host name, and quote it in its error.) The
    header is not sent on to a redirect's target, which may be another host.
    """
    import urllib.request

    parts = urlsplit(url)  # http(s) only: the spec's validator refused any other scheme
    if parts.username is None:
        return urllib.request.Request(url)  # noqa: S310
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    req = urllib.request.Request(bare)  # noqa: S310
    cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    req.add_unredirected_header("Authorization", "Basic " + base64.b64encode(cred).decode())
    return req


def _held_reason(spec: ReleaseSpec, current: str | None, hold: dict[str, str]) -> str:
    return (
        f"held at version {_version_of(current)}: version {spec.version} failed its rollout "
        f"({hold.get('by', 'a service')} rolled back); a new declaration is tried"
    )


def _version_of(dirname: str | None) -> str | None:
    return dirname.rpartition("-")[0] if dirname else None
