"""Unpacking a verified release archive, and checking an unpacked tree against its record.

Used by :class:`setpoint.providers.services.release.ReleaseProvider`:

- :func:`extract` unpacks an archive, refusing the whole archive when any member would
  escape the release (absolute paths, ``..``, links outside, devices);
- :func:`fsync_tree` makes the unpacked files and directories durable before the tree is
  renamed into place and ``current`` switched to it (a power loss never leaves a
  truncated file in a published release);
- :func:`scan` records what was unpacked: the *manifest* (type, mode, size, sha256 or link
  text per entry) and the *stat record* (inode and ctime per file);
- :func:`check_tree` compares a tree with them. The cheap check hashes only the files
  whose inode or ctime moved: a user who rewrites a file can reset its mtime
  (``os.utime``) but not its ctime. The full check hashes every file (the provider runs
  it once per resync interval, see ``ReleaseProvider.begin_pass``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from setpoint.atomic import fsync_dir
from setpoint.model.errors import ProviderError

_CHUNK = 1 << 20
Manifest = dict[str, list[Any]]  # rel path → [type, mode, size, sha256 or link text]
Stats = dict[str, list[int]]  # rel path of a file → [inode, ctime_ns]


class UnsafeArchiveError(ProviderError):
    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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


def fsync_tree(root: Path) -> None:
    """fsync every regular file and directory under ``root`` (and ``root`` itself)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(dirpath)


def _walk(root: Path) -> dict[str, os.stat_result]:
    """Every entry under ``root`` (links not followed): rel path → lstat."""
    out: dict[str, os.stat_result] = {}
    todo = [""]
    while todo:
        rel_dir = todo.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                st = entry.stat(follow_symlinks=False)
                out[rel] = st
                if stat.S_ISDIR(st.st_mode):
                    todo.append(rel)
    return out


def _entry(root: Path, rel: str, st: os.stat_result, digest: str | None) -> list[Any]:
    if stat.S_ISLNK(st.st_mode):
        return ["link", 0, 0, os.readlink(root / rel)]
    if stat.S_ISDIR(st.st_mode):
        return ["dir", stat.S_IMODE(st.st_mode), 0, ""]
    if stat.S_ISREG(st.st_mode):
        return ["file", stat.S_IMODE(st.st_mode), st.st_size, digest or ""]
    return ["other", 0, 0, ""]


def scan(root: Path) -> tuple[Manifest, Stats]:
    """What is in an unpacked tree: its manifest and its stat record (see the docstring)."""
    manifest: Manifest = {}
    stats: Stats = {}
    for rel, st in _walk(root).items():
        digest = None
        if stat.S_ISREG(st.st_mode):
            digest = sha256_file(root / rel)
            stats[rel] = [st.st_ino, st.st_ctime_ns]
        manifest[rel] = _entry(root, rel, st, digest)
    return manifest, stats


def check_tree(
    root: Path, manifest: dict[str, Any] | None, stats: dict[str, Any] | None, *, full: bool
) -> list[str]:
    """How ``root`` differs from its manifest: 'added X', 'removed X', 'changed X'.

    ``full`` hashes every file; otherwise only a file whose type, mode or size differs
    from the manifest, or whose inode or ctime differs from the stat record (a file
    without a record, e.g. from an older store, is hashed), is looked at closely.
    """
    if manifest is None:
        return ["(manifest missing)"]
    recorded = stats or {}
    now = _walk(root)
    problems = [f"added {p}" for p in sorted(set(now) - set(manifest))]
    problems += [f"removed {p}" for p in sorted(set(manifest) - set(now))]
    for rel in sorted(set(now) & set(manifest)):
        st, want = now[rel], manifest[rel]
        digest = None
        if stat.S_ISREG(st.st_mode) and want[:3] == ["file", stat.S_IMODE(st.st_mode), st.st_size]:
            if full or recorded.get(rel) != [st.st_ino, st.st_ctime_ns]:
                digest = sha256_file(root / rel)
            else:
                digest = want[3]  # unchanged since unpack (ctime cannot be set back)
        if _entry(root, rel, st, digest) != want:
            problems.append(f"changed {rel}")
    return problems[:50]
