"""The release store on disk: ``<state>/releases/<name>/`` (see :mod:`.release`).

Paths, the ``current`` switch, the rollout hold, the history used for GC, checked
removals and the temporaries a crash can leave behind. Used by the Release provider and
by the Service provider (:func:`declared_dir`, :func:`current_dir`, :func:`hold_release`,
:func:`lift_hold`, :func:`collect_orphans`).

Every removal here is *checked*: it reports what could not be removed (the entry is
kept and tried again later) instead of ignoring errors and claiming success.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import uuid
from pathlib import Path

from setpoint.atomic import fsync_dir, write_json_atomic
from setpoint.providers.services.common import live_release_dirs, read_json
from setpoint.providers.services.service_spec import ReleaseSpec

HOLD = "hold.json"

# What a crash can leave behind, by directory of the store (all dot-names: never a version).
# ``.current.*`` is a switch's temporary link, ``.*.tmp`` a JSON write's temporary file.
LEFTOVERS: dict[str, tuple[tuple[str, str], ...]] = {
    "": ((".current.", ""), (".", ".tmp")),
    "versions": ((".tmp-", ""), (".trash-", "")),
    "archives": ((".", ".part"),),
    "manifests": ((".", ".tmp"),),
}


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
    switch(base, healthy)


def lift_hold(state_dir: Path, name: str, ready_dir: str) -> None:
    """``ready_dir`` passed its rollout: point ``current`` at it and drop any hold."""
    base = releases_dir(state_dir) / name
    if not (base / HOLD).exists():
        return
    if (base / "versions" / Path(ready_dir).name).is_dir():
        switch(base, Path(ready_dir).name)
    with contextlib.suppress(FileNotFoundError):
        (base / HOLD).unlink()


def history(base: Path) -> list[str]:
    data = read_json(base / "history.json")
    items = data.get("dirs") if data else None
    return [str(x) for x in items] if isinstance(items, list) else []


def switch(base: Path, want: str) -> None:
    """Point ``current`` at ``versions/<want>`` atomically (symlink + rename), durably."""
    link = base / "current"
    if not (os.path.islink(link) and os.readlink(link) == f"versions/{want}"):
        tmp = base / f".current.{uuid.uuid4().hex[:8]}"
        os.symlink(f"versions/{want}", tmp)
        os.replace(tmp, link)  # atomic: readers see the old or the new target
        fsync_dir(base)
    dirs = [d for d in history(base) if d != want] + [want]
    write_json_atomic(base / "history.json", {"dirs": dirs[-100:]})


def remove_path(path: Path) -> str | None:
    """Remove ``path`` (a tree, a file or a link, never followed); None once it is gone.

    Otherwise the reason it (or part of it) is still there, e.g. ``Operation not
    permitted (/state/releases/app/versions/.trash-x/f)``: the caller reports it and the
    entry is tried again at the next pass.
    """
    errors: list[str] = []

    def failed(exc: BaseException, where: str) -> None:
        text = getattr(exc, "strerror", None) or str(exc)
        errors.append(f"{text} ({getattr(exc, 'filename', None) or where})")

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        failed(exc, str(path))
        return errors[0]
    if stat.S_ISDIR(st.st_mode):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=lambda _f, p, e: failed(e, p))
        else:
            shutil.rmtree(path, onerror=lambda _f, p, ei: failed(ei[1], p))
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed(exc, str(path))
    if not errors and os.path.lexists(path):  # pragma: no cover (rmtree said nothing)
        errors.append(f"still present ({path})")
    return "; ".join(errors[:3]) or None


def remove_version(base: Path, dirname: str) -> list[str]:
    """Remove a version's archives, manifest and tree; the failures (empty when all went).

    The tree goes last, renamed to ``versions/.trash-*`` first (so it stops being a
    version at once): a tree that cannot be removed entirely stays as a leftover, which
    :func:`leftovers` finds at the next pass. A failure before that keeps the version,
    to be collected again.
    """
    if not dirname or "/" in dirname or dirname.startswith("."):
        return []
    failures: list[str] = []
    files = sorted((base / "archives").glob(f"{dirname}.*"))
    files += [base / "manifests" / f"{dirname}{ext}" for ext in (".json", ".stat.json")]
    for f in files:
        if why := remove_path(f):
            failures.append(f"{f.relative_to(base)}: {why}")
    d = base / "versions" / dirname
    if failures or not os.path.lexists(d):
        return failures
    trash = base / "versions" / f".trash-{dirname}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(d, trash)
    except OSError as exc:
        return [f"versions/{dirname}: {exc.strerror or exc}"]
    if why := remove_path(trash):
        failures.append(f"{trash.relative_to(base)}: {why}")
    return failures


def leftovers(base: Path) -> list[str]:
    """Temporaries a crashed or failed install left in the store, relative to ``base``."""
    found: list[str] = []
    for sub, patterns in LEFTOVERS.items():
        d = base / sub if sub else base
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if any(name.startswith(p) and name.endswith(s) for p, s in patterns):
                found.append(f"{sub}/{name}" if sub else name)
    return sorted(found)


def collect_orphans(state_dir: Path, only: str | None = None) -> tuple[list[str], list[str]]:
    """Remove versions of releases without a ``current`` link, unless a live service uses them.

    Returns the version dirs kept because they are in use, and what could not be
    removed (with why); a release dir is removed once nothing is kept in it.
    """
    store = releases_dir(state_dir)
    if not store.is_dir():
        return [], []
    in_use = live_release_dirs(state_dir)
    kept: list[str] = []
    failures: list[str] = []
    for base in store.iterdir():
        if (only is not None and base.name != only) or os.path.lexists(base / "current"):
            continue
        mine: list[str] = []
        before = len(failures)
        versions = base / "versions"
        for d in sorted(versions.iterdir()) if versions.is_dir() else ():
            if str(d) in in_use:
                mine.append(d.name)
            elif d.name.startswith("."):
                if why := remove_path(d):
                    failures.append(f"{base.name}/versions/{d.name}: {why}")
            else:
                failures += [f"{base.name}/{f}" for f in remove_version(base, d.name)]
        kept += mine
        if not mine and len(failures) == before and (why := remove_path(base)):
            failures.append(f"{base.name}: {why}")
    return kept, failures


def traversable(state_dir: Path) -> None:
    """Let others pass through the state dir (0700 → 0711: execute, not read).

    Only names known in advance can be reached (``releases/``); the DB, the tokens and
    ``services/`` keep their own 0600/0700 modes. Done only once a Release is installed.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(os.stat(state_dir).st_mode)
    if mode & 0o011 != 0o011:
        os.chmod(state_dir, mode | 0o011)  # noqa: S103 (execute only: see above)
