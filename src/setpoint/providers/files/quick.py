"""The files provider's quick check: are these files, directories and symlinks as settled?

Role: ``confirm`` is the checker that
:meth:`setpoint.providers.files.provider.FilesystemProvider.quick_check` names; the
one-shot fast path (:mod:`setpoint.engine.settled`) calls it with the entries the
provider wrote after a converged pass. Standard library only: it runs in a process
that never imports pydantic or the engine, so its cost is close to the bare cost of
looking at the files.

It returns True only when a full pass would find every entry in sync, comparing what
:mod:`setpoint.providers.files.plan` compares: the type, the mode, a declared owner and
group (names resolved now, as the plan does), a File's size and SHA-256 of its bytes,
a Symlink's target text and a purging Directory's entries (each must be declared or
hold a declared path). Paths are reached from the root through directory descriptors
opened without following symlinks, like the provider's walk; anything unusual (a
symlink in the parent chain, even a declared one; an error) answers False, which sends
the run down the full path: a doubt costs time, never a wrong answer.

Entries (JSON lists, in the stack's order):
``["f", path, mode, owner, group, size, sha256]``, ``["d", path, mode, owner, group,
allowed]`` (``allowed``: the entry names a purging Directory may hold, else None) and
``["l", path, target]`` (the readlink text, root prefix included).
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
from typing import Any

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


def user_id(name: str) -> int | None:
    """The uid of user ``name`` in the host's user database; None if there is none."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def group_id(name: str) -> int | None:
    """The gid of group ``name`` in the host's group database; None if there is none."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class IdLookup:
    """Owner and group names resolved once (None: the host has no such name); the
    provider's :class:`~setpoint.providers.files.common.IdCache` adds an expiry."""

    def __init__(self) -> None:
        self.users: dict[Any, int | None] = {}
        self.groups: dict[Any, int | None] = {}

    def uid(self, owner: str | int) -> int | None:
        if isinstance(owner, int):
            return owner
        if owner not in self.users:
            self.users[owner] = user_id(owner)
        return self.users[owner]

    def gid(self, group: str | int) -> int | None:
        if isinstance(group, int):
            return group
        if group not in self.groups:
            self.groups[group] = group_id(group)
        return self.groups[group]

    def owned(self, st: os.stat_result, owner: Any, group: Any) -> bool:
        if owner is not None and self.uid(owner) != st.st_uid:
            return False
        return group is None or self.gid(group) == st.st_gid


def confirm(root: str, entries: list[Any]) -> bool:
    """Whether every entry is in sync under ``root`` (see the module docstring)."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    dirs: dict[str, int] = {"": root_fd}
    ids = IdLookup()
    try:
        for entry in entries:
            parent, _, name = entry[1].rpartition("/")
            dir_fd = dirs.get(parent)
            if dir_fd is None:
                dir_fd = _open_dir(dirs, parent)
                if dir_fd is None:
                    return False
            kind = entry[0]
            if kind == "f":
                ok = _file(dir_fd, name, entry, ids)
            elif kind == "d":
                ok = _directory(dir_fd, name, entry, ids)
            elif kind == "l":
                ok = _symlink(dir_fd, name, entry[2])
            else:
                ok = False  # written by another version: never guess
            if not ok:
                return False
        return True
    except (OSError, ValueError, TypeError, IndexError):
        return False
    finally:
        for fd in dirs.values():
            os.close(fd)


def _open_dir(dirs: dict[str, int], path: str) -> int | None:
    """The descriptor of directory ``path`` (absolute, under the root), opened link-free."""
    parent, _, name = path.rpartition("/")
    parent_fd = dirs.get(parent)
    if parent_fd is None:
        parent_fd = _open_dir(dirs, parent)
        if parent_fd is None:
            return None
    try:
        fd = os.open(name, _DIR, dir_fd=parent_fd)
    except OSError:
        return None  # absent, not a directory, or a symlink: the full pass says which
    dirs[path] = fd
    return fd


def _file(dir_fd: int, name: str, entry: list[Any], ids: IdLookup) -> bool:
    _kind, _path, mode, owner, group, size, digest = entry
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or stat.S_IMODE(st.st_mode) != mode
            or st.st_size != size
            or not ids.owned(st, owner, group)
        ):
            return False
        if size <= _CHUNK:
            data = os.read(fd, size + 1)  # one byte more: a file that grew is seen
            return len(data) == size and hashlib.sha256(data).hexdigest() == str(digest)
        h = hashlib.sha256()
        read = 0
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
            read += len(chunk)
        return read == size and h.hexdigest() == str(digest)
    finally:
        os.close(fd)


def _directory(dir_fd: int, name: str, entry: list[Any], ids: IdLookup) -> bool:
    _kind, _path, mode, owner, group, allowed = entry
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
        return False
    if not ids.owned(st, owner, group):
        return False
    if allowed is None:
        return True
    fd = os.open(name, _DIR, dir_fd=dir_fd)
    try:
        names = os.listdir(fd)
    finally:
        os.close(fd)
    return set(names) <= set(allowed)


def _symlink(dir_fd: int, name: str, target: str) -> bool:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    return stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == target
