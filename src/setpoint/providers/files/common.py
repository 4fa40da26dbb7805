"""Shared pieces of the file-system provider: the observed state, error mapping, id lookups.

Used by :mod:`setpoint.providers.files.read`, :mod:`setpoint.providers.files.plan` and
:mod:`setpoint.providers.files.apply`; the public face is :mod:`setpoint.providers.files.provider`.
"""

from __future__ import annotations

import errno
import grp
import pwd
import time
from dataclasses import dataclass

from pydantic import BaseModel

from setpoint.model.errors import ProviderError
from setpoint.model.resource import Resource
from setpoint.providers.files.quick import IdLookup
from setpoint.providers.files.spec import DirectorySpec, FileSpec, SymlinkSpec

# What lstat found at a path.
FILE, DIR, LINK, OTHER = "file", "dir", "link", "other"
TYPE_WORDS = {FILE: "regular file", DIR: "directory", LINK: "symlink", OTHER: "special file"}
KIND_TYPES = {"File": FILE, "Directory": DIR, "Symlink": LINK}

# Old content is read for a diff only up to this size, and difflib only runs below it
# (SequenceMatcher is quadratic in bad cases); larger files are compared by SHA-256.
DIFF_INPUT_LIMIT = 256 * 1024
DIFF_OUTPUT_LIMIT = 64 * 1024
def tmp_name(name: str, token: str) -> str:
    """The temporary name under which ``name`` is written before its atomic rename."""
    return f".{name}.setpoint-{token}.tmp"


def is_tmp_name(entry: str, token: str) -> bool:
    """Whether ``entry`` is one of our temporary names (this state dir's token)."""
    return entry.startswith(".") and entry.endswith(f".setpoint-{token}.tmp") and len(entry) > 20


@dataclass(frozen=True, slots=True)
class FsState:
    """What lstat (and, when needed, a read) found at a declared path.

    ``content`` holds a regular file's bytes when a File was compared (sizes equal, or
    small enough for a diff); otherwise ``sha256`` holds the digest of a large file.
    ``link`` is the raw ``readlink`` text; ``strays`` the entries of a purging Directory
    that nothing declares, as declared-style absolute paths; ``entries`` the number of
    entries of a directory standing where a File or Symlink is declared.
    """

    type: str
    mode: int
    uid: int
    gid: int
    size: int
    content: bytes | None = None
    sha256: str | None = None
    link: str | None = None
    strays: tuple[str, ...] = ()
    entries: int | None = None


FsSpec = FileSpec | DirectorySpec | SymlinkSpec


def fs_spec(resource: Resource) -> FsSpec:
    spec: BaseModel = resource.spec
    if isinstance(spec, FileSpec | DirectorySpec | SymlinkSpec):
        return spec
    raise ProviderError(
        f"{resource.id}: the file-system provider cannot handle a {type(spec).__name__}",
        transient=False,
    )


def desired_bytes(resource: Resource, spec: FileSpec) -> bytes:
    """The bytes a File must hold: the renderer's blob, else the inline content."""
    if resource.blob is not None:
        return resource.blob
    if spec.content is not None:
        return spec.content.encode("utf-8")
    raise ProviderError(
        f"{resource.id} ({resource.location}): source {spec.source!r} was not resolved "
        "to data by the renderer",
        transient=False,
    )


_HINTS = {
    errno.EACCES: "; setpoint lacks the permission (is it running as the right user?)",
    errno.EPERM: "; setpoint lacks the privilege (is it running as root?)",
    errno.EROFS: "; the file system is mounted read-only",
    errno.ENOSPC: "; the file system is full",
    errno.EDQUOT: "; the disk quota is exhausted",
    errno.ENOTDIR: "; something in its parent chain is not a directory",
    errno.EISDIR: "; a directory is in the way",
    errno.ELOOP: "; a symlink is in the way",
}
# Errors that only a change of the declaration can fix; everything else on the host may
# be fixed by an operator (or go away), so it is retried with back-off.
_PERMANENT = {errno.ENAMETOOLONG}


def os_error(verb: str, path: str, err: OSError) -> ProviderError:
    """An operator-readable ProviderError for an OSError met while acting on ``path``."""
    code = errno.errorcode.get(err.errno or 0, "unknown error")
    why = err.strerror or str(err)
    hint = _HINTS.get(err.errno or 0, "")
    return ProviderError(
        f"cannot {verb} {path}: {why} ({code}){hint}", transient=err.errno not in _PERMANENT
    )


class IdCache(IdLookup):
    """Memoised user/group lookups (pwd/grp), forgotten every ``ttl`` seconds.

    Names resolve in the host's user database, also when the target root is not ``/``.
    The cache keeps the hot path free of NSS calls; the expiry lets a user created after
    the first lookup (by hand or by another resource) be seen on a later pass.
    """

    def __init__(self, ttl: float = 60.0) -> None:
        super().__init__()
        self._ttl = ttl
        self._born = time.monotonic()
        self._user_names: dict[int, str] = {}
        self._group_names: dict[int, str] = {}

    def _check_age(self) -> None:
        now = time.monotonic()
        if now - self._born > self._ttl:
            self._born = now
            self.users.clear()
            self.groups.clear()
            self._user_names.clear()
            self._group_names.clear()

    def uid(self, owner: str | int) -> int | None:
        """The numeric id of a declared owner; ``None`` for an unknown name."""
        self._check_age()
        return super().uid(owner)

    def gid(self, group: str | int) -> int | None:
        self._check_age()
        return super().gid(group)

    def user_name(self, uid: int) -> str:
        """A uid as a name when the host knows one, else as the number."""
        self._check_age()
        name = self._user_names.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._user_names[uid] = name
        return name

    def group_name(self, gid: int) -> str:
        self._check_age()
        name = self._group_names.get(gid)
        if name is None:
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = str(gid)
            self._group_names[gid] = name
        return name

    def resolve(self, spec: FileSpec | DirectorySpec, path: str) -> tuple[int, int]:
        """Declared owner and group as ids for chown (-1 when not declared).

        Raises a permanent ProviderError for a name the host does not know.
        """
        uid = gid = -1
        if spec.owner is not None:
            found = self.uid(spec.owner)
            if found is None:
                raise ProviderError(
                    f"cannot set the owner of {path}: no user named {spec.owner!r} on this "
                    "host (create the user first or declare a numeric uid)",
                    transient=False,
                )
            uid = found
        if spec.group is not None:
            found = self.gid(spec.group)
            if found is None:
                raise ProviderError(
                    f"cannot set the group of {path}: no group named {spec.group!r} on this "
                    "host (create the group first or declare a numeric gid)",
                    transient=False,
                )
            gid = found
        return uid, gid
