"""Changing the file system to match a File, Directory or Symlink, and pruning them.

Called by :meth:`setpoint.providers.files.provider.FilesystemProvider.apply` with a Change that
:mod:`setpoint.providers.files.plan` made, and by ``FilesystemProvider.delete`` for prune.

Files and symlinks are written atomically: a temporary ``.<name>.setpoint-<token>.tmp`` in the
same directory, filled, fsynced, then renamed over the path, so a crash leaves the old
state or the new one, never half of either (and the temporary is unlinked on any error).
Directory fsyncs are batched: every directory whose entries changed is added to
the provider's ``FileTarget.touched_dirs``, fsynced once per pass (``end_pass``).
Attribute-only changes are made in place, so an unchanged file keeps its mtime and inode.

Every operation is relative to a descriptor of the parent directory that
:mod:`setpoint.providers.files.walk` opened afresh, without following a symlink (missing
parents are made by that walk, mode 0755): ``openat``/``mkdirat``/``renameat``/
``unlinkat``/``symlinkat``, ``fchown``/``fchmod`` on ``O_NOFOLLOW`` descriptors, and
``shutil.rmtree(dir_fd=...)`` (descriptor-based: never follows a symlink inside). A
directory swapped for a symlink mid-apply is therefore never written through.
Replacing a non-empty directory needs ``force: true`` on the File or Symlink.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from dataclasses import dataclass

from setpoint.model.errors import ProviderError
from setpoint.model.plan import Action, Change
from setpoint.model.resource import Resource
from setpoint.providers.files.common import IdCache, desired_bytes, os_error, tmp_name
from setpoint.providers.files.guard import holds_state_dir
from setpoint.providers.files.plan import link_text
from setpoint.providers.files.read import list_dir, lstat_or_none
from setpoint.providers.files.spec import DirectorySpec, FileSpec, SymlinkSpec
from setpoint.providers.files.target import FileTarget
from setpoint.providers.files.walk import (
    forget_below,
    host_dir,
    open_dir,
    parent_dir,
    parent_of,
    the_dir,
)

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ATTR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ATTR_FIELDS = frozenset({"mode", "owner", "group"})


def apply_file(
    target: FileTarget, ids: IdCache, resource: Resource, spec: FileSpec, change: Change
) -> None:
    if change.action is not Action.UPDATE or any(f.field == "content" for f in change.fields):
        _write_file(target, ids, resource, spec, change)
    else:
        _set_attrs(target, ids, spec, change, want_dir=False)


def apply_directory(
    target: FileTarget, ids: IdCache, spec: DirectorySpec, change: Change
) -> None:
    path = spec.path
    if change.action is Action.UPDATE:
        if any(f.field in _ATTR_FIELDS for f in change.fields):
            _set_attrs(target, ids, spec, change, want_dir=True)
        if change.extra:
            purge(target, path, change.extra)
        return
    uid, gid = ids.resolve(spec, path)  # an unknown name fails before anything changes
    name = _name(path)
    with _parent(target, path) as pfd:
        if change.action is Action.REPLACE:
            st = lstat_or_none(pfd, name, path)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=pfd)
        # Created owner-only, then chowned, then given its mode: no moment in which the
        # declared mode applies to the wrong owner.
        with contextlib.suppress(FileExistsError):  # raced into existence: still fixed below
            os.mkdir(name, 0o700, dir_fd=pfd)
        _fd_attrs(pfd, name, path, True, uid, gid, int(spec.mode, 8))
    target.touched_dirs.add(host_dir(target, parent_of(path)))


def apply_symlink(target: FileTarget, spec: SymlinkSpec, change: Change) -> None:
    path = spec.path
    name = _name(path)
    text = link_text(spec.target, str(target.root))
    tmp = tmp_name(name, target.tmp_token)
    with _parent(target, path) as pfd:
        _symlink_temp(text, pfd, tmp, path)
        try:
            if change.action is Action.REPLACE:
                _clear_directory(target, pfd, name, path, spec.force, change.resource)
            # atomic: the old link (or file) is replaced in one step
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            unlink_quiet(pfd, tmp)
            raise
    target.touched_dirs.add(host_dir(target, parent_of(path)))


def purge(target: FileTarget, path: str, entries: tuple[str, ...]) -> None:
    """Remove the undeclared ``entries`` (declared-style paths) of directory ``path``."""
    prefix = path + "/"
    names = []
    for entry in entries:
        name = entry[len(prefix) :] if entry.startswith(prefix) else ""
        if not name or "/" in name or name in (".", ".."):
            raise ProviderError(
                f"refusing to purge {entry}: it is not an entry of {path}", transient=False
            )
        if holds_state_dir(target, target.host_path(entry)):
            continue  # never the agent's own data (see fs_guard)
        names.append((entry, name))
    try:
        with the_dir(target, path) as dfd:
            if dfd is None:
                return  # the directory is gone: nothing left to purge
            for entry, name in names:
                try:
                    _remove_entry(target, dfd, name, entry)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    raise os_error("purge", entry, err) from err
    except OSError as err:
        raise os_error("purge", path, err) from err
    target.touched_dirs.add(target.host_path(path))


def delete(target: FileTarget, kind: str, path: str) -> str:
    """Prune what a File, Symlink or Directory left at ``path``; say what was done."""
    name = _name(path)
    try:
        with parent_dir(target, path) as pfd:
            if pfd is None:
                return f"{path} already absent"
            st = lstat_or_none(pfd, name, path)
            if st is None:
                return f"{path} already absent"
            is_dir = stat.S_ISDIR(st.st_mode)
            if kind == "Directory":
                if not is_dir:
                    return f"kept {path}: it is no longer a directory"
                try:
                    os.rmdir(name, dir_fd=pfd)
                except OSError as err:
                    if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        return f"kept {path}: not empty (holds entries setpoint does not manage)"
                    raise
                forget_below(target, path)
                what = "removed directory"
            else:
                if is_dir:
                    return f"kept {path}: a directory is there now, not a {kind.lower()}"
                os.unlink(name, dir_fd=pfd)  # unlinkat: a symlink itself, never its target
                what = "deleted"
    except FileNotFoundError:
        return f"{path} already absent"
    except OSError as err:
        raise os_error("delete", path, err) from err
    target.touched_dirs.add(host_dir(target, parent_of(path)))
    return f"{what} {path}"


def _write_file(
    target: FileTarget, ids: IdCache, resource: Resource, spec: FileSpec, change: Change
) -> None:
    path = spec.path
    name = _name(path)
    data = desired_bytes(resource, spec)
    uid, gid = ids.resolve(spec, path)  # an unknown name fails before a temp exists
    tmp = tmp_name(name, target.tmp_token)
    with _parent(target, path) as pfd:
        if uid == -1 or gid == -1:
            uid, gid = _kept_ids(pfd, name, path, uid, gid)
        fd = fill_temp(pfd, tmp, path, data, uid, gid, int(spec.mode, 8))
        try:
            try:
                os.fsync(fd)  # the bytes must be durable before the rename publishes them
            finally:
                os.close(fd)
            if change.action is Action.REPLACE:
                _clear_directory(target, pfd, name, path, spec.force, resource.id)
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            unlink_quiet(pfd, tmp)  # never leave a partial managed file behind
            raise
    target.touched_dirs.add(host_dir(target, parent_of(path)))


@dataclass(frozen=True)
class NewFile:
    """A new file's durable write, for :class:`~setpoint.providers.files.writer.Writer`:
    the parent's descriptor ``pfd`` (the writer closes it), the names, what to write."""

    rid: str
    pfd: int
    name: str
    tmp: str
    path: str
    data: bytes
    uid: int
    gid: int
    mode: int


def new_file(target: FileTarget, ids: IdCache, resource: Resource, spec: FileSpec) -> NewFile:
    """A new file's write for the background writer (files.writer), its parent made and
    opened now: what can fail at once (an unknown owner, a parent that cannot be
    made) fails here, before anything is queued. The writer owns the descriptor."""
    path = spec.path
    name = _name(path)
    data = desired_bytes(resource, spec)
    uid, gid = ids.resolve(spec, path)
    pfd = _open_parent(target, path)
    try:
        if uid == -1 or gid == -1:
            uid, gid = _kept_ids(pfd, name, path, uid, gid)
    except BaseException:
        os.close(pfd)
        raise
    target.touched_dirs.add(host_dir(target, parent_of(path)))
    return NewFile(
        resource.id, pfd, name, tmp_name(name, target.tmp_token), path, data, uid, gid,
        int(spec.mode, 8),
    )


def _kept_ids(pfd: int, name: str, path: str, uid: int, gid: int) -> tuple[int, int]:
    """A rewrite must not hand an operator's file to root: keep the owner/group that
    the declaration leaves open (-1) from the file being replaced."""
    st = lstat_or_none(pfd, name, path)
    if st is not None and stat.S_ISREG(st.st_mode):
        uid = st.st_uid if uid == -1 else uid
        gid = st.st_gid if gid == -1 else gid
    return uid, gid


def fill_temp(
    pfd: int, tmp: str, path: str, data: bytes, uid: int, gid: int, mode: int
) -> int:
    """Create the temporary ``tmp`` in ``pfd`` with ``data``, owner and exact mode; its
    descriptor, for the caller to fsync, close, then rename (``unlink_quiet`` on error).
    """
    fd = _open_temp(pfd, tmp, path)
    try:
        _write_all(fd, data)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)  # before fchmod: chown clears setuid/setgid bits
        os.fchmod(fd, mode)  # exact mode, whatever the umask was
    except BaseException:
        os.close(fd)
        unlink_quiet(pfd, tmp)
        raise
    return fd


def _set_attrs(
    target: FileTarget,
    ids: IdCache,
    spec: FileSpec | DirectorySpec,
    change: Change,
    *,
    want_dir: bool,
) -> None:
    """Apply only the mode/owner/group fields of ``change``, in place (content untouched)."""
    names = {f.field for f in change.fields}
    uid, gid = ids.resolve(spec, spec.path)
    with _parent(target, spec.path) as pfd:
        _fd_attrs(
            pfd,
            _name(spec.path),
            spec.path,
            want_dir,
            uid if "owner" in names else -1,
            gid if "group" in names else -1,
            int(spec.mode, 8) if "mode" in names else None,
        )


def _fd_attrs(
    pfd: int, name: str, path: str, want_dir: bool, uid: int, gid: int, mode: int | None
) -> None:
    """chown then chmod through a descriptor opened without following the leaf."""
    flags = _ATTR_FLAGS | (os.O_DIRECTORY if want_dir else 0)
    try:
        fd = os.open(name, flags, dir_fd=pfd)
    except PermissionError:
        # An unprivileged agent may own what it cannot open (mode 0200 or 0000): fall
        # back to *at calls; fchownat never follows, and chmod is preceded by a leaf check.
        fd = -1
    if fd == -1:
        if uid != -1 or gid != -1:
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
        if mode is not None:
            if stat.S_ISLNK(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                raise ProviderError(f"cannot set the mode of {path}: it is a symlink now")
            os.chmod(name, mode, dir_fd=pfd)
        return
    try:
        if not want_dir and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProviderError(f"cannot update {path}: it is no longer a regular file")
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)  # first: chown clears setuid/setgid bits
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


class _parent:  # lower case: used like the context-manager functions it replaced
    """A fresh descriptor of ``path``'s parent, missing parents made (see fs_walk).

    A class rather than a generator: one per write of a first apply, and the cheaper.
    """

    def __init__(self, target: FileTarget, path: str) -> None:
        self.target, self.path = target, path

    def __enter__(self) -> int:
        self.fd = _open_parent(self.target, self.path)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _open_parent(target: FileTarget, path: str) -> int:
    """A fresh descriptor of ``path``'s parent, missing parents made (the caller closes it)."""
    fd = open_dir(target, parent_of(path), path, create=True)
    if fd is None:  # create=True never gives None; kept for the type checker
        raise ProviderError(f"cannot create {path}: its parent directory is missing")
    return fd


def _name(path: str) -> str:
    return path.rpartition("/")[2]




def _open_temp(pfd: int, tmp: str, path: str) -> int:
    # O_EXCL rather than O_TRUNC: a leftover (or planted) name is unlinked and created
    # anew, so a hard link to another file can never be truncated and written through.
    try:
        return os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=pfd)
    except FileExistsError:
        _remove_stale(pfd, tmp, path)
        return os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=pfd)


def _symlink_temp(text: str, pfd: int, tmp: str, path: str) -> None:
    try:
        os.symlink(text, tmp, dir_fd=pfd)
    except FileExistsError:
        _remove_stale(pfd, tmp, path)
        os.symlink(text, tmp, dir_fd=pfd)


def _remove_stale(pfd: int, tmp: str, path: str) -> None:
    if stat.S_ISDIR(os.stat(tmp, dir_fd=pfd, follow_symlinks=False).st_mode):
        raise ProviderError(
            f"cannot write {path}: a directory named {tmp} is in the way "
            "of setpoint's temporary file; remove it"
        )
    os.unlink(tmp, dir_fd=pfd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _clear_directory(
    target: FileTarget, pfd: int, name: str, path: str, force: bool, rid: str
) -> None:
    """Remove a directory standing where a File or Symlink is declared (a REPLACE).

    Puppet's rule: an empty directory goes; a non-empty one only with ``force: true``
    on the resource (a typo in a path must not wipe a data directory). Without it the
    resource fails, permanently, and the rest of the stack goes on.
    """
    st = lstat_or_none(pfd, name, path)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return
    if not force:
        n = len(list_dir(pfd, name, path))
        if n:
            raise ProviderError(
                f"{path} is a directory holding {n} entr{'y' if n == 1 else 'ies'}; setpoint "
                f"replaces a non-empty directory only with force: true on {rid}",
                transient=False,
            )
    _remove_entry(target, pfd, name, path)


def _remove_entry(target: FileTarget, pfd: int, name: str, path: str) -> None:
    """Remove ``name`` in ``pfd``: a directory recursively, by descriptors, never
    following a symlink (shutil.rmtree's fd-based walk, given ``dir_fd``)."""
    if stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
        forget_below(target, path)
        shutil.rmtree(name, dir_fd=pfd)
    else:
        os.unlink(name, dir_fd=pfd)  # files, symlinks (not their targets), special files


def unlink_quiet(pfd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=pfd)
