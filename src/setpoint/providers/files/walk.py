"""Reaching a declared path without following a symlink planted in its parent chain.

Every read, create, rename, chmod, chown, unlink and rmdir of the file-system provider
(:mod:`.provider`, :mod:`.apply`) is made relative to
a descriptor of the path's parent directory that this module opens by walking from the
target root, never by a path string the kernel resolves on its own:

- ``openat2(2)`` with ``RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`` (one call; Python's ``os``
  lacks it, so through the raw syscall with ctypes) where the kernel and a seccomp
  filter allow it;
- otherwise (and to name what stopped ``openat2``) component by component, each one
  opened ``O_PATH | O_DIRECTORY | O_NOFOLLOW`` relative to the previous descriptor.

A symlink in the chain is refused (:class:`SymlinkInPath`, naming it as declared) unless
it is a *declared* symlink: a Symlink resource of the pass (``FileTarget.links``, path still
in ``FileTarget.declared``) whose link holds exactly the declared text. Then its declared
target is walked by these same rules, and ``..`` can never climb above the root. A
directory swapped for a symlink after the walk changes nothing: the descriptor still
refers to the directory that was walked, never to where the symlink points.

Reads (the hot drift check) reuse the descriptors of the pass, cached in
``FileTarget.dir_fds`` by declared directory path and closed at the start and end of each
pass (``FileTarget.forget_parents``, ``FileTarget.fsync_touched``), and remember which
parents they found missing (``FileTarget.absent_dirs``) until a walk that may create
(every write) starts; every write walks afresh.
Only one pass runs on a target at a time (the agent runs passes on one thread).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from setpoint.model.errors import ProviderError
from setpoint.providers.files.common import TYPE_WORDS
from setpoint.providers.files.plan import link_text
from setpoint.providers.files.target import FileTarget

DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_STEP_FLAGS = DIR_FLAGS | os.O_NOFOLLOW
# A directory we just created, opened to fix its mode (O_PATH descriptors cannot fchmod).
_NEW_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PARENT_MODE = 0o755
MAX_HOPS = 8  # declared symlinks followed (and lost races retried) in one walk
CACHE_SIZE = 256  # descriptors kept per pass: well below the usual 1024 open-file limit

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS
# openat2 has one number on every architecture since the unified syscall table (5.6).
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "i686": 437, "armv7l": 437, "riscv64": 437}
# A kernel without it (ENOSYS), a seccomp filter (EPERM/ENOSYS) or an older struct
# (E2BIG/EINVAL): use the component walk from then on.
_UNSUPPORTED = {errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL}
# What makes the fast path step aside for the component walk, which explains or handles it.
_WALK_INSTEAD = {errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.EXDEV, errno.EAGAIN}


class SymlinkInPath(ProviderError):
    """A symlink nobody declared (or not as declared) stands in a managed path's chain.

    Transient: an operator removes it (it may have been planted by a local user).
    """


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class Openat2:
    """``openat2(dirfd, path, flags, RESOLVE_NO_SYMLINKS|RESOLVE_BENEATH)`` or ``None``.

    ``None`` means "not available here": the caller walks component by component.
    ``enabled`` is switched off for good at the first sign the kernel refuses the call.
    """

    def __init__(self) -> None:
        self.number = _SYS_OPENAT2.get(platform.machine())
        self.enabled = self.number is not None
        self._syscall: ctypes._NamedFuncPointer | None = None

    def __call__(self, dirfd: int, path: str, flags: int) -> int | None:
        if not self.enabled or self.number is None:
            return None
        if self._syscall is None:
            call = ctypes.CDLL(None, use_errno=True).syscall
            call.restype = ctypes.c_long
            self._syscall = call
        how = _OpenHow(flags, 0, _RESOLVE)
        fd = int(
            self._syscall(
                ctypes.c_long(self.number),
                ctypes.c_int(dirfd),
                ctypes.c_char_p(os.fsencode(path)),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
        )
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code in _UNSUPPORTED:
            self.enabled = False
            return None
        raise OSError(code, os.strerror(code), path)


OPENAT2 = Openat2()


def open_dir(target: FileTarget, dirpath: str, path: str, *, create: bool = False) -> int | None:
    """A new ``O_PATH`` descriptor of the declared directory ``dirpath`` ("/": the root).

    ``path`` is the declared path acted on, for messages. Missing directories are made
    (mode 0755) when ``create``; otherwise ``None`` says that ``dirpath`` is absent or
    that one of its components is not a directory. Raises :class:`SymlinkInPath` for an
    undeclared symlink on the way and ``ProviderError`` for a file where a directory must
    be made; ``OSError`` for the rest (the caller names the operation).
    """
    if create:
        target.absent_dirs.clear()  # what this walk (or the write after it) makes
    root_fd = os.open(target.root, DIR_FLAGS)
    if dirpath == "/":
        return root_fd
    try:
        fd = OPENAT2(root_fd, dirpath[1:], DIR_FLAGS)
    except OSError as err:
        if err.errno not in _WALK_INSTEAD:
            os.close(root_fd)
            raise
        fd = None
    if fd is not None:
        os.close(root_fd)
        return fd
    return _walk(target, root_fd, dirpath, path, create)


@contextmanager
def parent_dir(target: FileTarget, path: str, *, create: bool = False) -> Iterator[int | None]:
    """A fresh descriptor of ``path``'s parent for a write, closed on exit (see open_dir)."""
    fd = open_dir(target, parent_of(path), path, create=create)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def the_dir(target: FileTarget, path: str) -> Iterator[int | None]:
    """A fresh descriptor of the declared directory ``path`` itself (a symlink refused)."""
    fd = open_dir(target, path, path)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def cached_parent(target: FileTarget, path: str) -> int | None:
    """The parent descriptor of ``path`` for a read, kept for the rest of the pass.

    Owned by ``target.dir_fds``: never close it. ``None`` when the parent is absent.
    """
    parent = parent_of(path)
    fds = target.dir_fds
    fd = fds.get(parent)
    if fd is None:
        if parent in target.absent_dirs:
            return None
        fd = open_dir(target, parent, path)
        if fd is None:
            target.absent_dirs.add(parent)
            return None
        if len(fds) >= CACHE_SIZE:
            os.close(fds.pop(next(iter(fds))))  # oldest first: passes go directory by directory
        fds[parent] = fd
    return fd


def forget_below(target: FileTarget, path: str) -> None:
    """Drop cached descriptors of ``path`` and below (we removed or replaced it)."""
    prefix = path + "/"
    fds = target.dir_fds
    for key in [k for k in fds if k == path or k.startswith(prefix)]:
        os.close(fds.pop(key))


def parent_of(path: str) -> str:
    return path.rpartition("/")[0] or "/"


def _walk(target: FileTarget, root_fd: int, dirpath: str, path: str, create: bool) -> int | None:
    """The component walk; takes ownership of ``root_fd``."""
    stack = [root_fd]  # descriptors of the chain walked so far: ".." pops, lexically
    names = [""]  # the declared-style path of each
    todo = dirpath.split("/")[::-1]
    hops = made = 0
    via = ""  # the last declared symlink followed, for messages
    try:
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) == 1:
                    raise ProviderError(
                        f"refusing to reach {path}: the Symlink {via} declared on its way "
                        "leads outside the target root",
                        transient=False,
                    )
                os.close(stack.pop())
                names.pop()
                continue
            here = f"{names[-1]}/{name}"
            try:
                fd = os.open(name, _STEP_FLAGS, dir_fd=stack[-1])
            except FileNotFoundError:
                if not create:
                    return None
                todo.append(name)  # open what was made (or raced in, maybe a symlink) alike
                if _make_dir(target, stack[-1], name, names[-1] or "/"):
                    made += 1
                    if made <= len(dirpath):  # bounds a peer that keeps removing what we make
                        continue
            except OSError as err:
                if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                st = _lstat(stack[-1], name)
                if st is not None and stat.S_ISLNK(st.st_mode):
                    text = _declared_text(target, stack[-1], name, here, path)
                    if text is None:
                        todo.append(name)
                    else:
                        via = here
                        if text.startswith("/"):  # declared absolute: from the root
                            while len(stack) > 1:
                                os.close(stack.pop())
                                names.pop()
                        todo.extend(text.split("/")[::-1])
                elif st is not None and not stat.S_ISDIR(st.st_mode):
                    if not create:
                        return None
                    word = TYPE_WORDS["file"] if stat.S_ISREG(st.st_mode) else TYPE_WORDS["other"]
                    raise ProviderError(
                        f"cannot create {path}: {here} is a {word}, not a directory"
                    ) from None
                else:
                    todo.append(name)  # changed under us: look again
            else:
                stack.append(fd)
                names.append(here)
                continue
            hops += 1
            if hops > MAX_HOPS:
                raise SymlinkInPath(
                    f"refusing to reach {path}: {here} keeps changing while setpoint walks to "
                    "it (or too many declared symlinks are chained on the way)"
                )
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _make_dir(target: FileTarget, parent_fd: int, name: str, parent: str) -> bool:
    """mkdir a missing parent (0755 whatever the umask; not owned by setpoint)."""
    try:
        os.mkdir(name, PARENT_MODE, dir_fd=parent_fd)
    except FileExistsError:
        return False
    fd = os.open(name, _NEW_DIR_FLAGS, dir_fd=parent_fd)
    try:
        os.fchmod(fd, PARENT_MODE)
    finally:
        os.close(fd)
    target.touched_dirs.add(host_dir(target, parent))
    return True


def host_dir(target: FileTarget, dirpath: str) -> str:
    """The host path of a declared directory ("/": the root), for ``touched_dirs``."""
    return str(target.root) if dirpath == "/" else target.host_path(dirpath)


def _declared_text(target: FileTarget, dir_fd: int, name: str, here: str, path: str) -> str | None:
    """The declared target of the symlink ``here`` if it may be followed (None: it vanished)."""
    try:
        live = os.readlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as err:  # EINVAL: no longer a symlink
        if err.errno == errno.EINVAL:
            return None
        raise
    declared = target.links.get(here)
    if declared is not None and here in target.declared:
        if live == link_text(declared, str(target.root)):
            return declared
        raise SymlinkInPath(
            f"refusing to reach {path}: {here} is a symlink to {live!r}, not to "
            f"{declared!r} as its Symlink resource declares; setpoint follows a symlink on "
            "a managed path's way only as declared"
        )
    raise SymlinkInPath(
        f"refusing to reach {path}: {here} is a symlink{_where(target, here, live)} that no "
        "Symlink resource declares; setpoint never follows a symlink in a managed path's "
        "parent chain (a local user may have planted it): remove it, or declare the real path"
    )


def _where(target: FileTarget, here: str, live: str) -> str:
    # For the message only: where the kernel would have gone (nothing is opened there).
    real = os.path.realpath(target.host_path(here))
    root = str(target.root)
    inside = real == root or real.startswith(root.rstrip("/") + "/")
    return f" to {live}" + ("" if inside else ", outside the target root,")
