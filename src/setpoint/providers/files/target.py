"""The file-system provider's target: the root and its per-pass state.

Owned by :class:`~setpoint.providers.files.provider.FilesystemProvider` (one per agent,
shared by every stack: ``Directory.purge`` must keep what *any* stack declares); the
engine never sees it and talks to it only through the provider's ``begin_pass`` /
``end_pass`` (:class:`~setpoint.providers.base.PassAware`). Used by every module of
this package that reaches a path (``walk``, ``apply``, ``watch``, ``guard``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FileTarget:
    """A root directory under which absolute paths are placed, and the pass's state.

    ``declared`` holds every key any resource claims in this pass (all stacks), so
    that ``Directory.purge`` knows what to keep. ``touched_dirs`` collects the
    directories whose entries changed, for one batched fsync. ``links`` maps the path
    of each declared Symlink to its declared target: only those symlinks may be
    followed on the way to a managed path, and only while the path is still declared.
    ``dir_fds`` caches the directory descriptors opened for reading in this pass (see
    :mod:`setpoint.providers.files.walk`), ``absent_dirs`` the directories such a read
    found missing (a first apply's look-ahead reads every file of a directory not made
    yet); any walk that may create empties it.
    """

    root: Path
    state_dir: Path | None = None  # the agent's own data: never purged (files.guard)
    declared: AbstractSet[str] = field(default_factory=frozenset)
    touched_dirs: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)
    dir_fds: dict[str, int] = field(default_factory=dict, repr=False)
    absent_dirs: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))
        # In the names of our temporary files (``.NAME.setpoint-<token>.tmp``): a user's
        # file of a similar name is never taken for ours, and another agent's (another
        # state dir) are left to it.
        self.tmp_token = tmp_token(self.state_dir)

    def host_path(self, path: str) -> str:
        """The real path of a declared absolute path under the root (no resolution)."""
        if str(self.root) == "/":
            return path
        return str(self.root) + path

    def forget_parents(self) -> None:
        """Start of a pass: close the directory descriptors cached by the last one."""
        self.close_dirs()

    def close_dirs(self) -> None:
        """Close the cached directory descriptors (they pin directories and mounts)."""
        self.absent_dirs.clear()
        fds = self.dir_fds
        while fds:
            os.close(fds.popitem()[1])

    def fsync_touched(self) -> None:
        """fsync every directory whose entries changed, once each (batched per pass).

        The end of a pass: the cached directory descriptors are closed too.
        """
        self.close_dirs()
        for d in sorted(self.touched_dirs):
            try:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.touched_dirs.clear()


def tmp_token(state_dir: Path | None) -> str:
    """The token in our temporary files' names for the agent of ``state_dir``."""
    where = os.path.realpath(state_dir) if state_dir is not None else ""
    return hashlib.sha256(where.encode()).hexdigest()[:8]
