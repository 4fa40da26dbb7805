"""Reading what is at a declared path: the I/O half of the drift check (its hot path).

Called by :meth:`setpoint.providers.files.provider.FilesystemProvider.read`; the :class:`FsState`
it builds is compared with the declaration by :mod:`setpoint.providers.files.plan`.
Everything is read relative to the descriptor of the path's parent directory that
:func:`setpoint.providers.files.walk.cached_parent` opened without following a symlink, so
a planted symlink can never make the agent read another file (``/etc/shadow``) into a
diff. The leaf is never followed (``lstat``, ``O_NOFOLLOW``); file bytes are read only
when the sizes match (to compare) or when a diff will be shown.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Set

from setpoint.model.errors import ProviderError
from setpoint.providers.files.common import (
    DIFF_INPUT_LIMIT,
    DIR,
    FILE,
    LINK,
    OTHER,
    FsState,
    os_error,
)

# O_NONBLOCK: a FIFO swapped in after the lstat must not hang the pass.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


def lstat_or_none(dir_fd: int, name: str, path: str) -> os.stat_result | None:
    """lstat ``name`` in ``dir_fd``; None when nothing is there (or it vanished)."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        # ENOTDIR: a parent is a file, so the path is absent; apply will say why it
        # cannot create it.
        return None
    except OSError as err:
        raise os_error("inspect", path, err) from err


def observe(
    st: os.stat_result,
    at: tuple[int, str],
    path: str,
    want_size: int | None,
    purge: tuple[Set[str], Set[str]] | None,
    count: bool = False,
) -> FsState:
    """Build the FsState of what ``st`` describes; ``at`` is (parent descriptor, name).

    ``want_size`` is the declared File's size (None for other kinds: no bytes are read);
    ``purge`` is (declared paths, their ancestors) for a purging Directory; ``count``
    asks for the number of entries of a directory that a File or Symlink would replace.
    """
    dir_fd, name = at
    mode = st.st_mode
    if stat.S_ISREG(mode):
        content = digest = None
        if want_size is not None:
            size = st.st_size
            if size == want_size or size <= DIFF_INPUT_LIMIT:
                content = read_bytes(dir_fd, name, path, size)
            else:
                digest = sha256_file(dir_fd, name, path)
        return FsState(FILE, stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_size, content, digest)
    if stat.S_ISDIR(mode):
        strays = dir_strays(dir_fd, name, path, *purge) if purge is not None else ()
        entries = len(list_dir(dir_fd, name, path)) if count else None
        return FsState(
            DIR,
            stat.S_IMODE(mode),
            st.st_uid,
            st.st_gid,
            st.st_size,
            strays=strays,
            entries=entries,
        )
    if stat.S_ISLNK(mode):
        try:
            link = os.readlink(name, dir_fd=dir_fd)
        except OSError as err:
            raise os_error("read the symlink", path, err) from err
        return FsState(LINK, stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_size, link=link)
    return FsState(OTHER, stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_size)


def read_bytes(dir_fd: int, name: str, path: str, size: int) -> bytes:
    """All bytes of a regular file, without following a symlink at the leaf."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        raise _read_error(path, err) from err
    try:
        # Ask for one byte more than lstat said: a short read of a regular file
        # means EOF, so the usual case costs one read call (the drift check is a
        # hot path); a file that grew since lstat is read on to EOF, whole.
        first = os.read(fd, size + 1)
        if len(first) <= size:
            return first
        chunks = [first]
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return first if len(chunks) == 1 else b"".join(chunks)
    except OSError as err:
        raise _read_error(path, err) from err
    finally:
        os.close(fd)


def sha256_file(dir_fd: int, name: str, path: str) -> str:
    """SHA-256 of a large file, streamed (its bytes are not kept)."""
    h = hashlib.sha256()
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        raise _read_error(path, err) from err
    try:
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
    except OSError as err:
        raise _read_error(path, err) from err
    finally:
        os.close(fd)
    return h.hexdigest()


def _read_error(path: str, err: OSError) -> ProviderError:
    if err.errno == errno.ELOOP:  # the lstat saw a file; a symlink replaced it since
        return ProviderError(f"cannot read {path}: it changed into a symlink while being read")
    return os_error("read", path, err)


def dir_strays(
    dir_fd: int, name: str, path: str, declared: Set[str], ancestors: Set[str]
) -> tuple[str, ...]:
    """Entries of a purging directory that no resource declares (nor holds a declared path)."""
    names = list_dir(dir_fd, name, path)
    prefix = path + "/"
    return tuple(
        sorted(
            p for p in (prefix + name for name in names) if p not in declared and p not in ancestors
        )
    )


def list_dir(dir_fd: int, name: str, path: str) -> list[str]:
    """The entry names of directory ``name`` in ``dir_fd`` (a symlink there is refused)."""
    try:
        fd = os.open(name, _LIST_FLAGS, dir_fd=dir_fd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise os_error("list", path, err) from err


def declared_ancestors(declared: Set[str]) -> frozenset[str]:
    """Every proper ancestor of a declared path: purge keeps them (they hold declared paths)."""
    out: set[str] = set()
    for path in declared:
        parent = path.rpartition("/")[0]
        while parent and parent not in out:
            out.add(parent)
            parent = parent.rpartition("/")[0]
    return frozenset(out)
