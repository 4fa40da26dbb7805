"""Reading the repository safely: finding manifests, confinement, bounded reads.

Role: all file-system access of :mod:`setpoint.render` goes through here
(called by :mod:`setpoint.render.loader`). A revision's tree is untrusted
input: a committed symlink may point at ``/etc/shadow``, a ``.yaml`` may be a
FIFO that blocks a reader forever, a file may be huge. So every read resolves
the real path, checks it stays inside the tree, opens without following
symlinks and without blocking, and checks type and size on the open
descriptor before reading a byte.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

MANIFEST_SUFFIXES = (".yaml", ".yml")


class ReadError(Exception):
    """A file could not be used; ``message`` is written for the operator."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def inside(tree_real: str, real: str) -> bool:
    """Whether the real path ``real`` is ``tree_real`` or below it."""
    if real == tree_real:
        return True
    return real.startswith(tree_real.rstrip("/") + "/")


def relative(tree_real: str, path: str) -> str:
    """``path`` (below ``tree_real``, no ``..``) relative to the tree, posix style."""
    if path == tree_real:
        return "."
    return path[len(tree_real.rstrip("/")) + 1 :]


def walk_manifests(tree_real: str, start: str, problems: list[tuple[str, str]]) -> Iterator[str]:
    """Yield the path of every ``*.yaml`` / ``*.yml`` below ``start``, in sorted order.

    Directories whose name starts with ``.`` (``.git``, ``.github``, ...) are
    skipped: they hold tooling, not manifests. Symlinked directories are not
    followed (they could loop or lead out of the tree); symlinked files are
    yielded and confined by :func:`read_confined`. Unreadable directories are
    appended to ``problems`` as ``(relative path, reason)`` rather than skipped
    silently, since a missing manifest would otherwise be pruned.
    """

    def onerror(exc: OSError) -> None:
        where = relative(tree_real, str(exc.filename)) if exc.filename else "."
        problems.append((where, f"cannot list directory: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(start, onerror=onerror, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.endswith(MANIFEST_SUFFIXES):
                path = os.path.join(dirpath, fname)
                if not _is_utf8(path):
                    # Locations are journaled and printed: a name that is not text cannot be.
                    where = printable(relative(tree_real, path))
                    problems.append((where, "file name is not valid UTF-8; rename the file"))
                    continue
                yield path


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.walk decodes undecodable bytes to lone surrogates
        return False
    return True


def printable(name: str) -> str:
    """``name`` with undecodable bytes shown as ``\\xNN`` (safe to print and store)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def confine(tree_real: str, path: str, what: str) -> str:
    """The real path of ``path``; :class:`ReadError` if it resolves outside the tree."""
    real = os.path.realpath(path)
    if not inside(tree_real, real):
        raise ReadError(f"{what} leads outside the repository (resolves to {real})")
    return real


class SymlinkFound(ReadError):
    """``O_NOFOLLOW`` met a symlink where a real path was expected."""


def read_regular(real: str, limit: int, what: str) -> bytes:
    """Read a regular file of at most ``limit`` bytes, at an already confined real path.

    ``O_NOFOLLOW`` refuses a symlink swapped in after :func:`confine`;
    ``O_NONBLOCK`` keeps a FIFO from blocking the open (it is refused below).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkFound(f"{what} is a symlink") from None
        raise ReadError(f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReadError(f"{what} is {_file_type(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise ReadError(f"{what} is {st.st_size} bytes, over the limit of {limit} bytes")
        # Ask for one byte more than fstat reported: getting exactly st_size bytes
        # then means end of file, which saves the usual extra read() per file.
        want = st.st_size + 1
        data = os.read(fd, want)
        if len(data) == st.st_size:
            return data
        chunks = [data]
        size = len(data)
        while data:
            # Never more than limit+1 bytes in total: a file growing after fstat stays bounded.
            data = os.read(fd, min(1 << 20, limit + 1 - size))
            chunks.append(data)
            size += len(data)
            if size > limit:
                raise ReadError(f"{what} is over the limit of {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise ReadError(f"cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_confined(tree_real: str, path: str, limit: int, what: str) -> tuple[str, bytes]:
    """Confine then read ``path``; returns ``(real path, bytes)``."""
    real = confine(tree_real, path, what)
    return real, read_regular(real, limit, what)


def read_walked(tree_real: str, path: str, limit: int, what: str) -> tuple[str, bytes]:
    """Like :func:`read_confined` for a path from :func:`walk_manifests`.

    Its directories are already real (the walk starts at a real path and does
    not follow symlinks), so only a symlinked file needs ``realpath`` (an lstat
    per path component): try the path as is with ``O_NOFOLLOW`` first.
    """
    try:
        return path, read_regular(path, limit, what)
    except SymlinkFound:
        return read_confined(tree_real, path, limit, what)


def _file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"
