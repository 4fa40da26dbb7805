"""The exported trees of one Git source: ``trees/<sha>/`` plus its manifest, kept and aged.

:meth:`GitSource.tree <setpoint.source.git.GitSource.tree>` calls :meth:`TreeStore.get`
while it holds the source's locks; the file-level work (manifests, checks, fsync)
is in :mod:`setpoint.source.export`. An export is checked against its manifest
and the mirror the first time it is used in a process; one that fails the
check (or has no manifest: an export cut short) is exported again, and the old
directory is swapped out only once the new one is complete and fsynced.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from setpoint.atomic import fsync_dir
from setpoint.model.errors import SourceError
from setpoint.source import export

log = logging.getLogger("setpoint.source")

TMP_PREFIX = ".tmp-"


class TreeStore:
    """Exports of commits under ``trees_dir``; the caller serialises calls (locks).

    ``git(args, what=...)`` runs git on the mirror and returns its stdout (raising
    SourceError); ``rev_parse(spec)`` resolves an object id or returns None;
    ``url()`` is the source's URL as messages may show it.
    """

    def __init__(
        self,
        source: str,
        trees_dir: Path,
        keep: int,
        git: Callable[..., bytes],
        rev_parse: Callable[[str], str | None],
        url: Callable[[], str],
    ) -> None:
        self.source = source
        self.trees_dir = trees_dir
        self.keep = keep
        self._git = git
        self._rev_parse = rev_parse
        self._url = url
        self._last_use_ns = 0
        # Exports checked in this process: sha -> (st_dev, st_ino) of the manifest checked.
        self._verified: dict[str, tuple[int, int]] = {}

    def clean(self) -> None:
        """Create ``trees_dir``; remove what a killed export or removal left behind."""
        self.trees_dir.mkdir(exist_ok=True)
        # Safe: the caller holds the flock, so no export or removal runs elsewhere.
        for p in self.trees_dir.iterdir():
            if p.name.startswith(TMP_PREFIX):
                export.remove_tree(p)
            elif p.name.endswith(export.MANIFEST_SUFFIX):
                tree = p.with_name(p.name[: -len(export.MANIFEST_SUFFIX)])
                if not tree.is_dir():
                    p.unlink()  # its tree was removed by an older version or by hand

    def get(self, sha: str) -> Path:
        """The checked export of ``sha`` (exported now if needed); older trees aged out."""
        dest = self.trees_dir / sha
        problem = self._problem(sha, dest)
        if problem is not None:
            if dest.exists() or dest.is_symlink():
                log.warning(
                    "source %s: the export of %s is not what git holds (%s); exporting it again",
                    self.source,
                    sha,
                    problem,
                )
            if self._rev_parse(f"{sha}^{{commit}}") != sha:
                raise SourceError(
                    f"source {self.source}: commit {sha} is not in the local mirror of "
                    f"{self._url()} (fetch it first)"
                )
            self._export(sha, dest)
        self._mark_used(dest)
        self._remove_old(keep=dest)
        return dest

    def _problem(self, sha: str, dest: Path) -> str | None:
        """None when ``dest`` can be used as it is; else what is wrong with it."""
        manifest = export.manifest_path(dest)
        try:
            st = manifest.stat()
            is_dir = stat.S_ISDIR(dest.lstat().st_mode)
        except FileNotFoundError:
            if dest.exists() or dest.is_symlink():
                return "no manifest: an export cut short"
            return "not exported"
        ident = (st.st_dev, st.st_ino)
        if not is_dir:
            return "not a directory"
        if self._verified.get(sha) == ident:
            return None
        found = export.read_manifest(manifest, sha)
        if found is None:
            return "its manifest is incomplete or damaged"
        tree, entries = found
        # A mirror that lost the commit (being re-cloned) cannot answer: the manifest,
        # which hashes to the tree id it names, then stands on its own.
        known = self._rev_parse(f"{sha}^{{tree}}")
        if known is not None and known != tree:
            return f"its manifest is for tree {tree}, the commit has tree {known}"
        problem = export.check_files(dest, entries)
        if problem is None:
            self._verified[sha] = ident
        return problem

    def _export(self, sha: str, dest: Path) -> None:
        """Export ``sha`` into ``dest`` durably, via a temp dir and one rename.

        Never half a tree: files and directories are fsynced before the rename,
        the manifest written last; an old ``dest`` is swapped out only then.
        """
        # Staged beside its final name: a rename within one directory needs no write
        # permission on the (read-only) tree itself, one to another directory does.
        staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.trees_dir))
        archive = staging.with_name(staging.name + ".tar")
        old = self.trees_dir / f"{TMP_PREFIX}old-{sha}-{os.getpid()}"
        try:
            staging.chmod(0o755)  # as git archive's own directories (0700 from mkdtemp)
            listing = self._run(["ls-tree", "-r", "-t", "-l", "-z", "--full-tree", sha], sha)
            entries = export.parse_listing(listing)
            tree = export.tree_id(entries)
            if tree != self._rev_parse(f"{sha}^{{tree}}"):
                raise SourceError(f"source {self.source}: the listing of {sha} is not its tree")
            self._run(["archive", "--format=tar", f"--output={archive}", sha], sha)
            with tarfile.open(archive) as tar:
                # The "tar" filter refuses members that would land outside the
                # directory (absolute, "..", or through a symlink extracted
                # earlier), so a hostile tree cannot write elsewhere. It keeps
                # symlinks as they are and drops setuid/setgid bits.
                tar.extractall(staging, filter="tar")
            archive.unlink()
            export.make_read_only(staging)
            problem = export.check_files(staging, entries)
            if problem is not None:
                raise SourceError(
                    f"source {self.source}: the export of {sha} differs from what git holds: "
                    f"{problem}"
                )
            export.fsync_tree(staging)
            manifest = export.manifest_path(dest)
            # From here until the new manifest is written, dest counts as unfinished.
            manifest.unlink(missing_ok=True)
            if dest.exists() or dest.is_symlink():
                export.remove_tree(old)
                dest.rename(old)  # removed below, once the new tree is in place
            staging.rename(dest)
            fsync_dir(self.trees_dir)
            export.write_manifest(manifest, sha, tree, listing)
            st = manifest.stat()
            self._verified[sha] = (st.st_dev, st.st_ino)
        finally:
            for leftover in (staging, archive, old):
                export.remove_tree(leftover)

    def _run(self, args: Sequence[str], sha: str) -> bytes:
        return self._git(args, what=f"export commit {sha}")

    def _mark_used(self, tree: Path) -> None:
        # The directory's mtime records its last use (the tree itself is read-only
        # and never changes); strictly increasing so the order is never a tie.
        now = max(time.time_ns(), self._last_use_ns + 1)
        self._last_use_ns = now
        os.utime(tree, ns=(now, now))

    def _remove_old(self, keep: Path) -> None:
        others = [
            p
            for p in self.trees_dir.iterdir()
            if p != keep and _is_sha(p.name) and p.is_dir() and not p.is_symlink()
        ]
        others.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in others[self.keep - 1 :]:
            # Manifest first: a tree without one is never used. Then rename so the
            # tree disappears at once; an interrupted removal is cleaned next call.
            export.manifest_path(old).unlink(missing_ok=True)
            self._verified.pop(old.name, None)
            doomed = self.trees_dir / f"{TMP_PREFIX}old-{old.name}-{os.getpid()}"
            old.rename(doomed)
            export.remove_tree(doomed)


def _is_sha(name: str) -> bool:
    return len(name) == 40 and all(c in "0123456789abcdef" for c in name)
