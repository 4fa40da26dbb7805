"""The Release kind: an artefact at a version, verified and unpacked once, immutably.

Store layout under ``<state>/releases/<name>/`` (``releases/``, ``<name>/`` and ``versions/``
are 0755 so that a service running as another ``user`` can reach its tree; the state dir
above is 0711; ``manifests/`` and ``archives/`` are 0700)::

    versions/<version>-<sha256[:16]>/   the unpacked tree, never changed in place
    manifests/<dir>.json                what was unpacked (type, mode, size, sha256 per entry)
    archives/<dir>.<ext>                the verified download (a restore needs no download)
    current -> versions/<dir>           switched atomically (symlink + rename)
    history.json                        dirs in the order they became current (for GC)
    hold.json                           a failed rollout put ``current`` back (see below)

``read`` checks the declared version's tree against its manifest (tampering is drift:
the tree is put back from the cached archive); ``plan`` decides; ``apply`` downloads,
verifies the SHA-256 (a mismatch refuses the release and changes nothing), unpacks into a
temporary directory renamed into place, switches ``current`` and removes versions beyond
``keep`` (never one a live service process runs from).

When a Service's rollout of the declared version fails, the service provider calls
:func:`hold_release`: ``current`` goes back to the last healthy version and stays there
(``plan`` is a NOOP with the reason, ``health`` is Degraded) while that version is
declared; a new declaration is installed normally, and a rollout that passes readiness
calls :func:`lift_hold`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tarfile
import urllib.request
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from setpoint.model.errors import ProviderError
from setpoint.model.plan import Action, Change, FieldChange
from setpoint.model.resource import Resource
from setpoint.providers.base import Observed, Target
from setpoint.providers.service_proc import (
    ensure_private_dir,
    live_release_dirs,
    read_json,
    write_json_atomic,
)
from setpoint.providers.service_spec import ReleaseSpec

CLAIM_PREFIX = "release:"
HOLD = "hold.json"
OLD = "old version"  # a FieldChange naming a version dir to collect
RESTORED = "as released"  # the new value of a tampered entry
_CHUNK = 1 << 20


def releases_dir(state_dir: Path) -> Path:
    return state_dir / "releases"


def current_link(state_dir: Path, name: str) -> Path:
    return releases_dir(state_dir) / name / "current"


def current_dir(state_dir: Path, name: str) -> str | None:
    """The real versioned directory ``current`` points at, or None."""
    link = current_link(state_dir, name)
    if not os.path.islink(link):
        return None
    real = os.path.realpath(link)
    return real if os.path.isdir(real) else None


def version_dir_name(spec: ReleaseSpec) -> str:
    return f"{spec.version}-{spec.sha256[:16]}"


def declared_dir(state_dir: Path, name: str, spec: ReleaseSpec) -> str | None:
    """The real directory of the declared version, if it is unpacked (else None)."""
    d = releases_dir(state_dir) / name / "versions" / version_dir_name(spec)
    return os.path.realpath(d) if d.is_dir() else None


def read_hold(state_dir: Path, name: str) -> dict[str, str] | None:
    """The hold a failed rollout put on the release: ``{dir, healthy, by, message}``."""
    data = read_json(releases_dir(state_dir) / name / HOLD)
    return {k: str(v) for k, v in data.items()} if data else None


def hold_release(
    state_dir: Path, name: str, failed_dir: str, healthy_dir: str, by: str, message: str
) -> None:
    """Put ``current`` back on ``healthy_dir`` after ``failed_dir``'s rollout failed.

    The hold is recorded first (``hold.json``), then ``current`` is switched atomically:
    while the declared version is ``failed_dir``, the Release keeps ``current`` where it
    is (no flapping) and reports the hold; a new declaration lifts it.
    """
    base = releases_dir(state_dir) / name
    failed, healthy = Path(failed_dir).name, Path(healthy_dir).name
    if not (base / "versions" / healthy).is_dir():
        return
    hold = {"dir": failed, "healthy": healthy, "by": by, "message": message}
    write_json_atomic(base / HOLD, hold)
    _switch(base, healthy)


def lift_hold(state_dir: Path, name: str, ready_dir: str) -> None:
    """``ready_dir`` passed its rollout: point ``current`` at it and drop any hold."""
    base = releases_dir(state_dir) / name
    if not (base / HOLD).exists():
        return
    if (base / "versions" / Path(ready_dir).name).is_dir():
        _switch(base, Path(ready_dir).name)
    with contextlib.suppress(FileNotFoundError):
        (base / HOLD).unlink()


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
class ReleaseState:
    current: str | None  # dir name current points to
    present: tuple[str, ...]  # version dirs in the store
    problems: tuple[str, ...]  # how the declared version's tree differs from its manifest
    gc: tuple[str, ...]  # dirs that GC would remove
    held: dict[str, str] | None = None  # the declared version failed its rollout


class ReleaseProvider:
    """Releases in ``<state>/releases`` (see the module docstring)."""

    kinds: ClassVar[tuple[str, ...]] = ("Release",)

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def store(self) -> Path:
        if self.target.state_dir is None:
            raise ProviderError("the Release kind needs the agent's state dir", transient=False)
        return releases_dir(self.target.state_dir)

    def claims(self, resource: Resource) -> tuple[str, ...]:
        return (CLAIM_PREFIX + resource.name,)

    def implicit_dependencies(self, resource: Resource, by_path: dict[str, str]) -> Iterable[str]:
        """A ``file://`` archive that a resource of the stack (a File) puts in place."""
        parts = urlsplit(release_spec(resource).url)
        if parts.scheme == "file":
            rid = by_path.get(unquote(parts.path))
            if rid is not None:
                return (rid,)
        return ()

    # -- read / plan ------------------------------------------------------------------

    def read(self, resource: Resource) -> Observed | None:
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
            manifest = read_json(base / "manifests" / f"{want}.json")
            problems = tuple(_check_tree(versions / want, manifest))
        gc = self._gc_candidates(resource.name, spec, want, present)
        hold = read_hold(self.store.parent, resource.name)
        held = hold if hold is not None and hold.get("dir") == want else None
        return Observed(resource.id, ReleaseState(current, present, problems, gc, held))

    def _gc_candidates(
        self, name: str, spec: ReleaseSpec, want: str, present: tuple[str, ...]
    ) -> tuple[str, ...]:
        history = _history(self.store / name)
        order = [d for d in history if d in present]
        order += [d for d in present if d not in order]
        order = [d for d in order if d != want] + [want]  # the declared one is newest
        keep = set(order[-spec.keep :])
        assert self.target.state_dir is not None
        in_use = {Path(p).name for p in live_release_dirs(self.target.state_dir)}
        return tuple(d for d in order if d not in keep and d not in in_use and d in present)

    def plan(self, resource: Resource, observed: Observed | None) -> Change:
        spec = release_spec(resource)
        want = version_dir_name(spec)
        path = str(self.store / resource.name / "versions" / want)
        state = observed.data if observed is not None else None
        if state is not None and not isinstance(state, ReleaseState):
            raise ProviderError(f"{resource.id}: observed data is not a release state")
        gc = tuple(FieldChange(OLD, d, None) for d in (state.gc if state else ()))
        if state is None or want not in state.present:
            old = state.current if state else None
            action = Action.CREATE if old is None else Action.UPDATE
            fields = (FieldChange("version", _version_of(old), spec.version), *gc)
            return Change(resource.id, action, path, fields=fields)
        if state.problems:
            fields = tuple(FieldChange(p, "tampered", RESTORED) for p in state.problems)
            return Change(
                resource.id, Action.UPDATE, path, fields=fields,
                reason="the unpacked release was modified",
            )  # fmt: skip
        if state.current != want and state.held is not None:
            # A service's rollout of this version failed and put the last healthy one back:
            # hold it there while the declaration stays the same (the Service reports the
            # stall); a new declaration is tried normally.
            reason = _held_reason(spec, state.current, state.held)
            if gc:
                return Change(resource.id, Action.UPDATE, path, fields=gc, reason=reason)
            return Change(resource.id, Action.NOOP, path, reason=reason)
        if state.current != want:
            fields = (FieldChange("current", state.current, want), *gc)
            return Change(resource.id, Action.UPDATE, path, fields=fields)
        if gc:
            reason = f"keep {spec.keep}"
            return Change(resource.id, Action.UPDATE, path, fields=gc, reason=reason)
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
        _traversable(self.store.parent)
        for d in (self.store, base, base / "versions"):
            d.mkdir(mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)  # noqa: S103 (world-readable on purpose, see above)
        for sub in ("manifests", "archives"):
            ensure_private_dir(base / sub)
        want = version_dir_name(spec)
        ops: set[str] = set()
        for f in change.fields:
            if f.field == "version":
                ops |= {"unpack", "switch"}
            elif f.field == "current":
                ops.add("switch")
            elif f.field == OLD and f.old:
                ops.add("gc:" + f.old)
            elif f.new == RESTORED:
                ops |= {"restore", "switch"}
        hold = read_hold(self.store.parent, resource.name)
        if hold is not None and hold.get("dir") == want:
            ops.discard("switch")  # held at the last healthy version (see plan)
        elif "switch" in ops and hold is not None:
            with contextlib.suppress(FileNotFoundError):
                (base / HOLD).unlink()
        try:
            if "unpack" in ops or "restore" in ops:
                archive = self._archive(resource, spec, base)
                self._unpack(spec, archive, base, want, replace="restore" in ops)
            if "switch" in ops:
                _switch(base, want)
            for op in sorted(ops):
                if op.startswith("gc:"):
                    _remove_version(base, op[3:])
        except OSError as err:
            raise ProviderError(f"{resource.id}: cannot install {want}: {err}") from err

    def _archive(self, resource: Resource, spec: ReleaseSpec, base: Path) -> Path:
        """The verified archive: the cached copy if intact, else downloaded and verified."""
        want = version_dir_name(spec)
        cached = base / "archives" / f"{want}.{archive_ext(spec)}"
        if cached.exists() and _sha256_file(cached) == spec.sha256:
            return cached
        tmp = base / "archives" / f".{want}.{uuid.uuid4().hex}.part"
        h = hashlib.sha256()
        try:
            with self._open(spec) as src, open(tmp, "wb") as dst:
                os.chmod(tmp, 0o600)
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            got = h.hexdigest()
            if got != spec.sha256:
                raise ProviderError(
                    f"{resource.id}: {spec.url} has sha256 {got}, but {spec.sha256} is "
                    "declared; the download is refused and nothing was changed",
                    transient=False,
                )
            os.replace(tmp, cached)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return cached

    def _open(self, spec: ReleaseSpec):  # type: ignore[no-untyped-def]
        parts = urlsplit(spec.url)
        if parts.scheme == "file":
            path = self.target.host_path(unquote(parts.path))
            try:
                return open(path, "rb")
            except OSError as err:
                raise ProviderError(f"cannot read {spec.url}: {err.strerror}") from err
        try:
            return urllib.request.urlopen(spec.url, timeout=30)  # noqa: S310 (scheme checked)
        except OSError as err:
            raise ProviderError(f"cannot download {spec.url}: {err}") from err

    def _unpack(
        self, spec: ReleaseSpec, archive: Path, base: Path, want: str, *, replace: bool
    ) -> None:
        final = base / "versions" / want
        tmp = base / "versions" / f".tmp-{want}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o755)
        os.chmod(tmp, 0o755)  # noqa: S103 (whatever the umask: a service user reads it)
        try:
            extract(archive, archive_ext(spec), tmp, PurePosixPath(urlsplit(spec.url).path).name)
            manifest = _scan(tmp)
            write_json_atomic(base / "manifests" / f"{want}.json", manifest)
            if replace and final.exists():
                trash = base / "versions" / f".trash-{want}-{uuid.uuid4().hex[:8]}"
                os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

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

    def delete(self, kind: str, path: str) -> str:
        """Remove the release's ``current`` link and every version no live service runs from."""
        name = path[len(CLAIM_PREFIX) :] if path.startswith(CLAIM_PREFIX) else ""
        if not name or "/" in name or name in (".", ".."):
            raise ProviderError(f"cannot delete release {path!r}: not a release", transient=False)
        base = self.store / name
        if not base.exists():
            return f"release {name} already absent"
        with contextlib.suppress(FileNotFoundError):
            (base / "current").unlink()
        kept = collect_orphans(self.store.parent, only=name)
        if kept:
            return f"removed release {name} (kept {', '.join(kept)}: a service runs from it)"
        return f"removed release {name}"


def collect_orphans(state_dir: Path, only: str | None = None) -> list[str]:
    """Remove versions of releases without a ``current`` link, unless a live service uses them.

    Returns the version dirs kept because they are in use.
    """
    store = releases_dir(state_dir)
    if not store.is_dir():
        return []
    in_use = live_release_dirs(state_dir)
    kept: list[str] = []
    for base in store.iterdir():
        if (only is not None and base.name != only) or os.path.lexists(base / "current"):
            continue
        versions = base / "versions"
        for d in versions.iterdir() if versions.is_dir() else ():
            if str(d) in in_use:
                kept.append(d.name)
            else:
                _remove_version(base, d.name)
        if not kept:
            shutil.rmtree(base, ignore_errors=True)
    return kept


# -- helpers --------------------------------------------------------------------------


def _held_reason(spec: ReleaseSpec, current: str | None, hold: dict[str, str]) -> str:
    return (
        f"held at version {_version_of(current)}: version {spec.version} failed its rollout "
        f"({hold.get('by', 'a service')} rolled back); a new declaration is tried"
    )


def _version_of(dirname: str | None) -> str | None:
    return dirname.rpartition("-")[0] if dirname else None


def _history(base: Path) -> list[str]:
    data = read_json(base / "history.json")
    items = data.get("dirs") if data else None
    return [str(x) for x in items] if isinstance(items, list) else []


def _switch(base: Path, want: str) -> None:
    link = base / "current"
    if os.path.islink(link) and os.readlink(link) == f"versions/{want}":
        pass
    else:
        tmp = base / f".current.{uuid.uuid4().hex[:8]}"
        os.symlink(f"versions/{want}", tmp)
        os.replace(tmp, link)  # atomic: readers see the old or the new target
        _fsync_dir(base)
    history = [d for d in _history(base) if d != want] + [want]
    write_json_atomic(base / "history.json", {"dirs": history[-100:]})


def _remove_version(base: Path, dirname: str) -> None:
    if not dirname or "/" in dirname or dirname.startswith("."):
        return
    d = base / "versions" / dirname
    if d.exists():
        trash = base / "versions" / f".trash-{dirname}-{uuid.uuid4().hex[:8]}"
        os.rename(d, trash)
        shutil.rmtree(trash, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (base / "manifests" / f"{dirname}.json").unlink()
    for a in (base / "archives").glob(f"{dirname}.*"):
        a.unlink()


def _traversable(state_dir: Path) -> None:
    """Let others pass through the state dir (0700 → 0711: execute, not read).

    Only names known in advance can be reached (``releases/``); the DB, the tokens and
    ``services/`` keep their own 0600/0700 modes. Done only once a Release is installed.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(os.stat(state_dir).st_mode)
    if mode & 0o011 != 0o011:
        os.chmod(state_dir, mode | 0o011)  # noqa: S103 (execute only: see above)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class UnsafeArchiveError(ProviderError):
    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


def _safe_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if name.startswith("/") or p.is_absolute():
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path; refused")
    if any(part == ".." for part in p.parts):
        raise UnsafeArchiveError(f"archive member {name!r} leads outside the release; refused")
    return p


def _inside(base: PurePosixPath, target: str) -> bool:
    if target.startswith("/"):
        return False
    depth = 0
    for part in (base / target).parts:
        if part == "..":
            depth -= 1
        elif part not in ("", "."):
            depth += 1
        if depth < 0:
            return False
    return True


def extract(archive: Path, fmt: str, dest: Path, filename: str) -> None:
    """Unpack ``archive`` into ``dest``; refuse the whole archive if any member would escape."""
    if fmt == "file":
        out = dest / (filename or "artefact")
        shutil.copyfile(archive, out)
        os.chmod(out, 0o755)  # noqa: S103 (a single-file release is an executable)
        return
    if fmt == "zip":
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _safe_member(info.filename)
            for info in infos:
                zf.extract(info, dest)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(dest / info.filename, mode & 0o755 | 0o400)
        return
    with tarfile.open(archive, "r:gz" if fmt == "tar.gz" else "r:") as tf:
        members = tf.getmembers()
        for m in members:
            p = _safe_member(m.name)
            if m.issym() and not _inside(p.parent, m.linkname):
                raise UnsafeArchiveError(
                    f"archive member {m.name!r} links to {m.linkname!r}, outside the release; "
                    "refused"
                )
            if m.islnk() and not _inside(PurePosixPath("."), m.linkname):
                raise UnsafeArchiveError(
                    f"archive member {m.name!r} hard-links to {m.linkname!r}, outside the "
                    "release; refused"
                )
            if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                raise UnsafeArchiveError(f"archive member {m.name!r} is a device or FIFO; refused")
        tf.extractall(dest, members=members, filter="data")


def _scan(root: Path) -> dict[str, list[object]]:
    """What is in an unpacked tree: rel path → [type, mode, size, sha256 or link text]."""
    out: dict[str, list[object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ["link", 0, 0, os.readlink(full)]
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ["dir", stat.S_IMODE(st.st_mode), 0, ""]
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ["file", stat.S_IMODE(st.st_mode), st.st_size, _sha256_file(Path(full))]
            else:
                out[rel] = ["other", 0, 0, ""]
    return out


def _check_tree(root: Path, manifest: dict[str, object] | None) -> list[str]:
    """How ``root`` differs from its manifest: 'added X', 'removed X', 'changed X'."""
    if manifest is None:
        return ["(manifest missing)"]
    now = _scan(root)
    problems = [f"added {p}" for p in sorted(set(now) - set(manifest))]
    problems += [f"removed {p}" for p in sorted(set(manifest) - set(now))]
    problems += [f"changed {p}" for p in sorted(set(now) & set(manifest)) if now[p] != manifest[p]]
    return problems[:50]
