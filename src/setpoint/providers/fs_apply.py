"""Changing the file system to match a File, Directory or Symlink, and pruning them.

Called by :meth:`setpoint.providers.fs.FilesystemProvider.apply` with a Change that
:mod:`setpoint.providers.fs_plan` made, and by ``FilesystemProvider.delete`` for prune.

Files and symlinks are written atomically: a temporary ``.<name>.setpoint-tmp`` in the
same directory, filled, fsynced, then renamed over the path, so a crash leaves the old
state or the new one, never half of either (and the temporary is unlinked on any error).
Directory fsyncs are batched: every directory whose entries changed is added to
``Target.touched_dirs`` and the engine calls ``Target.fsync_touched()`` once per pass.
Attribute-only changes are made in place, so an unchanged file keeps its mtime and inode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable
from typing import TypeVar

from setpoint.model.errors import ProviderError
from setpoint.model.plan import Action, Change
from setpoint.model.resource import Resource
from setpoint.providers.base import Target
from setpoint.providers.fs_common import (
    TMP_SUFFIX,
    TYPE_WORDS,
    IdCache,
    desired_bytes,
    os_error,
)
from setpoint.providers.fs_guard import holds_state_dir
from setpoint.providers.fs_plan import link_text
from setpoint.providers.fs_read import lstat_or_none
from setpoint.providers.fs_spec import DirectorySpec, FileSpec, SymlinkSpec

T = TypeVar("T")

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ATTR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ATTR_FIELDS = frozenset({"mode", "owner", "group"})
PARENT_MODE = 0o755


def apply_file(
    target: Target, ids: IdCache, resource: Resource, spec: FileSpec, change: Change
) -> None:
    if change.action is not Action.UPDATE or any(f.field == "content" for f in change.fields):
        _write_file(target, ids, resource, spec, change.action)
    else:
        _set_attrs(target, ids, spec, change, want_dir=False)


def apply_directory(target: Target, ids: IdCache, spec: DirectorySpec, change: Change) -> None:
    path = spec.path
    host = target.host_path(path)
    if change.action is Action.UPDATE:
        if any(f.field in _ATTR_FIELDS for f in change.fields):
            _set_attrs(target, ids, spec, change, want_dir=True)
        if change.extra:
            purge(target, path, change.extra)
        return
    uid, gid = ids.resolve(spec, path)  # an unknown name fails before anything changes
    if change.action is Action.REPLACE:
        st = lstat_or_none(host, path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(host)
    # Created owner-only, then chowned, then given its mode: no moment in which the
    # declared mode applies to the wrong owner.
    with contextlib.suppress(FileExistsError):  # raced into existence: still fixed below
        _with_parents(target, path, lambda: os.mkdir(host, 0o700))
    _fd_attrs(host, path, True, uid, gid, int(spec.mode, 8))
    target.touched_dirs.add(os.path.dirname(host))


def apply_symlink(target: Target, spec: SymlinkSpec, change: Change) -> None:
    path = spec.path
    host = target.host_path(path)
    text = link_text(spec.target, str(target.root))
    tmp = _tmp_name(host)
    _with_parents(target, path, lambda: _symlink_temp(text, tmp, path))
    try:
        if change.action is Action.REPLACE:
            _clear_directory(host, path)
        os.rename(tmp, host)  # atomic: the old link (or file) is replaced in one step
    except BaseException:
        _unlink_quiet(tmp)
        raise
    target.touched_dirs.add(os.path.dirname(host))


def purge(target: Target, path: str, entries: tuple[str, ...]) -> None:
    """Remove the undeclared ``entries`` (declared-style paths) of directory ``path``."""
    prefix = path + "/"
    for entry in entries:
        name = entry[len(prefix) :] if entry.startswith(prefix) else ""
        if not name or "/" in name or name in (".", ".."):
            raise ProviderError(
                f"refusing to purge {entry}: it is not an entry of {path}", transient=False
            )
        host = target.host_path(entry)
        if holds_state_dir(target, host):  # never the agent's own data (see fs_guard)
            continue
        try:
            if stat.S_ISDIR(os.lstat(host).st_mode):
                shutil.rmtree(host)  # fd-based on Linux: never follows a symlink inside
            else:
                os.unlink(host)  # files, symlinks (not their targets), special files
        except FileNotFoundError:
            continue
        except OSError as err:
            raise os_error("purge", entry, err) from err
    target.touched_dirs.add(target.host_path(path))


def delete(target: Target, kind: str, path: str) -> str:
    """Prune what a File, Symlink or Directory left at ``path``; say what was done."""
    target.check_parents(path)
    host = target.host_path(path)
    st = lstat_or_none(host, path)
    if st is None:
        return f"{path} already absent"
    is_dir = stat.S_ISDIR(st.st_mode)
    try:
        if kind == "Directory":
            if not is_dir:
                return f"kept {path}: it is no longer a directory"
            try:
                os.rmdir(host)
            except OSError as err:
                if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return f"kept {path}: not empty (holds entries setpoint does not manage)"
                raise
            what = "removed directory"
        else:
            if is_dir:
                return f"kept {path}: a directory is there now, not a {kind.lower()}"
            os.unlink(host)
            what = "deleted"
    except FileNotFoundError:
        return f"{path} already absent"
    except OSError as err:
        raise os_error("delete", path, err) from err
    target.touched_dirs.add(os.path.dirname(host))
    return f"{what} {path}"


def _write_file(
    target: Target, ids: IdCache, resource: Resource, spec: FileSpec, action: Action
) -> None:
    path = spec.path
    host = target.host_path(path)
    data = desired_bytes(resource, spec)
    uid, gid = ids.resolve(spec, path)  # an unknown name fails before a temp exists
    if uid == -1 or gid == -1:
        # A rewrite must not hand an operator's file to root: keep the owner/group that
        # the declaration leaves open from the file being replaced.
        st = lstat_or_none(host, path)
        if st is not None and stat.S_ISREG(st.st_mode):
            uid = st.st_uid if uid == -1 else uid
            gid = st.st_gid if gid == -1 else gid
    tmp = _tmp_name(host)
    fd = _with_parents(target, path, lambda: _open_temp(tmp, path))
    try:
        try:
            _write_all(fd, data)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)  # before fchmod: chown clears setuid/setgid bits
            os.fchmod(fd, int(spec.mode, 8))  # exact mode, whatever the umask was
            os.fsync(fd)  # the bytes must be durable before the rename publishes them
        finally:
            os.close(fd)
        if action is Action.REPLACE:
            _clear_directory(host, path)
        os.rename(tmp, host)
    except BaseException:
        _unlink_quiet(tmp)  # never leave a partial managed file behind
        raise
    target.touched_dirs.add(os.path.dirname(host))


def _set_attrs(
    target: Target,
    ids: IdCache,
    spec: FileSpec | DirectorySpec,
    change: Change,
    *,
    want_dir: bool,
) -> None:
    """Apply only the mode/owner/group fields of ``change``, in place (content untouched)."""
    names = {f.field for f in change.fields}
    uid, gid = ids.resolve(spec, spec.path)
    _fd_attrs(
        target.host_path(spec.path),
        spec.path,
        want_dir,
        uid if "owner" in names else -1,
        gid if "group" in names else -1,
        int(spec.mode, 8) if "mode" in names else None,
    )


def _fd_attrs(host: str, path: str, want_dir: bool, uid: int, gid: int, mode: int | None) -> None:
    """chown then chmod through a descriptor opened without following the leaf."""
    flags = _ATTR_FLAGS | (os.O_DIRECTORY if want_dir else 0)
    try:
        fd = os.open(host, flags)
    except PermissionError:
        # An unprivileged agent may own what it cannot open (mode 0200 or 0000): fall
        # back to path calls; lchown never follows, and chmod is preceded by a leaf check.
        fd = -1
    if fd == -1:
        if uid != -1 or gid != -1:
            os.chown(host, uid, gid, follow_symlinks=False)
        if mode is not None:
            if stat.S_ISLNK(os.lstat(host).st_mode):
                raise ProviderError(f"cannot set the mode of {path}: it is a symlink now")
            os.chmod(host, mode)
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


def make_parents(target: Target, path: str) -> None:
    """Create the missing parent directories of ``path`` (mode 0755, not owned by setpoint)."""
    missing = []
    parent = os.path.dirname(path)
    while parent != "/":
        host = target.host_path(parent)
        try:
            # stat follows: a symlinked parent inside the root is fine (check_parents
            # refused the ones leaving it).
            st = os.stat(host)
        except (FileNotFoundError, NotADirectoryError):
            missing.append(parent)
            parent = os.path.dirname(parent)
            continue
        except OSError as err:
            raise os_error(f"create {path}: cannot inspect its parent", parent, err) from err
        if not stat.S_ISDIR(st.st_mode):
            raise ProviderError(f"cannot create {path}: {parent} is a {_word(st)}, not a directory")
        break
    for parent in reversed(missing):
        host = target.host_path(parent)
        try:
            os.mkdir(host, PARENT_MODE)
            os.chmod(host, PARENT_MODE)  # mkdir's mode is masked by the umask
        except FileExistsError:
            continue  # created meanwhile by someone else: leave its mode alone
        except OSError as err:
            raise os_error(f"create the parent directory {parent} of", path, err) from err
        target.touched_dirs.add(os.path.dirname(host))


def _with_parents(target: Target, path: str, make: Callable[[], T]) -> T:
    """Run ``make``; if the parent directory is missing, create the parents and retry.

    ENOTDIR goes the same way so that make_parents names the ancestor that is a file.
    """
    try:
        return make()
    except (FileNotFoundError, NotADirectoryError):
        make_parents(target, path)
        return make()


def _tmp_name(host: str) -> str:
    parent, _, base = host.rpartition("/")
    return f"{parent}/.{base}{TMP_SUFFIX}"


def _open_temp(tmp: str, path: str) -> int:
    # O_EXCL rather than O_TRUNC: a leftover (or planted) name is unlinked and created
    # anew, so a hard link to another file can never be truncated and written through.
    try:
        return os.open(tmp, _TMP_FLAGS, 0o600)
    except FileExistsError:
        _remove_stale(tmp, path)
        return os.open(tmp, _TMP_FLAGS, 0o600)


def _symlink_temp(text: str, tmp: str, path: str) -> None:
    try:
        os.symlink(text, tmp)
    except FileExistsError:
        _remove_stale(tmp, path)
        os.symlink(text, tmp)


def _remove_stale(tmp: str, path: str) -> None:
    if stat.S_ISDIR(os.lstat(tmp).st_mode):
        raise ProviderError(
            f"cannot write {path}: a directory named {os.path.basename(tmp)} is in the way "
            "of setpoint's temporary file; remove it"
        )
    os.unlink(tmp)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _clear_directory(host: str, path: str) -> None:
    """Remove a directory standing where a File or Symlink is declared (a REPLACE).

    Recursive, like Puppet's ``force => true``: the declaration says a file or link
    belongs here, and the plan showed the replacement. Only REPLACE of a declared File
    or Symlink comes here; nothing else removes a non-empty directory (purge aside).
    """
    st = lstat_or_none(host, path)
    if st is not None and stat.S_ISDIR(st.st_mode):
        shutil.rmtree(host)


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _word(st: os.stat_result) -> str:
    if stat.S_ISREG(st.st_mode):
        return TYPE_WORDS["file"]
    return TYPE_WORDS["other"]
