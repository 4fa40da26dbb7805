"""Exported commit trees on disk: written durably, checked against Git before use.

:class:`~setpoint.source.git.GitSource` exports a commit into ``trees/<sha>`` and
then writes ``trees/<sha>.manifest``: git's own listing of the commit's tree
(``git ls-tree -r -t -l -z``: mode, type, object id, size and path of every
entry) under a header naming the commit and its tree id. Every file and
directory of the export is fsynced (:func:`fsync_tree`) before the rename
that publishes it, and the manifest is written (and fsynced) last, so after a
power loss a tree without its manifest is an unfinished export and is done again.

Before a tree is first used in a process, :func:`read_manifest` checks that the
manifest hashes to the tree id it names (a torn manifest does not) and
:func:`check_files` that the directory holds exactly those entries: same type,
mode, size and Git blob id (content hashed the way git does), nothing missing,
nothing extra. Any difference means the export is redone from the mirror.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from setpoint.atomic import write_atomic

MANIFEST_SUFFIX = ".manifest"
_HEADER = b"setpoint-export 1 "
_CHUNK = 1 << 20
_FSYNC_THREADS = 16


@dataclass(frozen=True)
class Entry:
    """One line of ``git ls-tree -r -t -l -z``."""

    mode: bytes  # b"100644", b"100755", b"120000", b"040000", b"160000"
    kind: bytes  # b"blob", b"tree", b"commit"
    oid: str
    size: int | None  # blobs only
    path: bytes


def parse_listing(raw: bytes) -> list[Entry]:
    """The entries of a listing; ValueError when it is malformed (or names unreadable blobs)."""
    entries = []
    for record in raw.split(b"\0"):
        if not record:
            continue
        meta, sep, path = record.partition(b"\t")
        fields = meta.split()
        if not sep or not path or len(fields) != 4:
            raise ValueError(f"malformed tree listing entry {record[:200]!r}")
        mode, kind, oid, size = fields
        if kind == b"blob":
            # ls-tree prints "BAD" as the size of a blob it cannot read.
            entries.append(Entry(mode, kind, oid.decode("ascii"), int(size), path))
        elif kind in (b"tree", b"commit"):
            entries.append(Entry(mode, kind, oid.decode("ascii"), None, path))
        else:
            raise ValueError(f"unexpected object type in tree listing: {record[:200]!r}")
    return entries


def tree_id(entries: list[Entry]) -> str:
    """Git's id of the root tree these entries make; ValueError when a listed subtree disagrees."""
    children: dict[bytes, list[tuple[bytes, bytes, bytes]]] = {b"": []}
    listed: dict[bytes, str] = {}
    for e in entries:
        parent, _, name = e.path.rpartition(b"/")
        # Tree objects store modes without the leading zero ls-tree prints ("40000").
        children.setdefault(parent, []).append((name, e.mode.lstrip(b"0"), bytes.fromhex(e.oid)))
        if e.kind == b"tree":
            children.setdefault(e.path, [])
            listed[e.path] = e.oid
    computed: dict[bytes, bytes] = {}
    # Deepest first, so each subtree's id is known before its parent's.
    for path in sorted(children, key=lambda p: p.count(b"/") + (p != b""), reverse=True):
        body = b""
        # git orders a tree's entries by name, a subtree's name compared as if it ended in "/".
        rows = sorted(children[path], key=lambda r: r[0] + b"/" if r[1] == b"40000" else r[0])
        for name, mode, oid in rows:
            if mode == b"40000":
                sub = path + b"/" + name if path else name
                if sub in computed:
                    oid = computed[sub]
            body += mode + b" " + name + b"\0" + oid
        digest = hashlib.sha1(b"tree %d\0" % len(body) + body, usedforsecurity=False).digest()
        if path and listed.get(path) != digest.hex():
            raise ValueError(f"subtree {path!r} does not hash to its listed id")
        computed[path] = digest
    return computed[b""].hex()


def manifest_path(tree_dir: Path) -> Path:
    return tree_dir.with_name(tree_dir.name + MANIFEST_SUFFIX)


def write_manifest(path: Path, commit: str, tree: str, listing: bytes) -> None:
    """Write the manifest through a temp file, fsynced, renamed, directory fsynced."""
    data = _HEADER + f"{commit} {tree}\n".encode() + listing
    # ".tmp-": what the trees' cleaner removes after a crash (source/trees.py).
    write_atomic(path, data, sync_dir=True, tmp_prefix=".tmp-manifest-", tmp_suffix="")


def read_manifest(path: Path, commit: str) -> tuple[str, list[Entry]] | None:
    """(tree id, entries) when the manifest is whole and for ``commit``; None otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    header, _, listing = data.partition(b"\n")
    if not header.startswith(_HEADER):
        return None
    names = header[len(_HEADER) :].decode("ascii", "replace").split()
    if len(names) != 2 or names[0] != commit:
        return None
    try:
        entries = parse_listing(listing)
        if tree_id(entries) != names[1]:
            return None
    except ValueError:
        return None
    return names[1], entries


def check_files(root: Path, entries: list[Entry]) -> str | None:
    """None when ``root`` holds exactly ``entries`` (read-only); else the first difference."""
    expected = {e.path: e for e in entries}
    seen: set[bytes] = set()
    base = os.fsencode(root)
    if os.lstat(base).st_mode & 0o222:
        return "the export's top directory is writable"
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        for name in (*dirnames, *filenames):
            rel = name if rel_dir == b"." else os.path.join(rel_dir, name)
            seen.add(rel)
            why = _check_entry(os.path.join(dirpath, name), expected.get(rel))
            if why:
                return f"{os.fsdecode(rel)}: {why}"
    for e in entries:
        # git archive leaves out empty subtrees: only files and submodules must be there.
        if e.kind != b"tree" and e.path not in seen:
            return f"{os.fsdecode(e.path)}: missing"
    return None


def _check_entry(path: bytes, entry: Entry | None) -> str | None:
    st = os.lstat(path)
    if entry is None:
        return "not in the commit"
    if entry.kind != b"blob":
        if not stat.S_ISDIR(st.st_mode):
            return "is not a directory"
        return "is writable" if st.st_mode & 0o222 else None
    if entry.mode == b"120000":
        if not stat.S_ISLNK(st.st_mode):
            return "is not a symlink"
        return _compare_blob(entry, [os.readlink(path)])
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size != entry.size:
        return f"size {st.st_size}, expected {entry.size}"
    if bool(st.st_mode & 0o100) != (entry.mode == b"100755"):
        return "executable bit differs from the commit"
    if st.st_mode & 0o222:
        return "is writable"
    with open(path, "rb") as f:
        return _compare_blob(entry, iter(lambda: f.read(_CHUNK), b""))


def _compare_blob(entry: Entry, chunks: Iterable[bytes]) -> str | None:
    h = hashlib.sha1(b"blob %d\0" % (entry.size or 0), usedforsecurity=False)
    n = 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    if n != entry.size or h.hexdigest() != entry.oid:
        return "content differs from the commit"
    return None


# -- durable writes and removal ---------------------------------------------------------


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root``, so that a rename publishing ``root``
    never publishes unwritten data (symlinks live in their directory: fsynced with it).

    Many at once: the file system's journal commits concurrent fsyncs together, 3-5
    times faster than one after another for 2,000 files (``bench/export_cost.py``).
    (``syncfs(2)`` would be faster still, but would also wait for every other
    process's unwritten data on that file system.)
    """
    paths: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                paths.append(path)
        paths.append(dirpath)
    with ThreadPoolExecutor(max_workers=min(_FSYNC_THREADS, len(paths))) as pool:
        for _ in pool.map(_fsync_path, paths):
            pass  # re-raises the first error


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_read_only(root: Path) -> None:
    """Drop write permission below ``root`` (symlinks untouched: chmod would follow them)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in (*filenames, *dirnames):
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode):
                os.chmod(path, stat.S_IMODE(mode) & ~0o222)
    os.chmod(root, stat.S_IMODE(os.lstat(root).st_mode) & ~0o222)


def remove_tree(path: Path) -> None:
    """``rm -rf`` for our read-only trees: give directories back write permission first."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, _files in os.walk(path):
            os.chmod(dirpath, 0o700)
            # os.walk does not descend into symlinked dirs; keep them out of chmod too.
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        shutil.rmtree(path)
    else:
        path.unlink()
