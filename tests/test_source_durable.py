"""What the agent reads from disk is what Git holds: exports are fsynced before they are
published, checked against their manifest and the mirror before use, and exported again
when damaged (a torn write, a lost manifest, a planted file)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import GIT_ENV, GitRepo
from helpers import manifest, one_pass, one_stack
from setpoint.model.errors import SourceError
from setpoint.source import GitSource, export

MOTD = "".join(f"line {i}: the message of the day\n" for i in range(200))


@pytest.fixture
def repo(git_repo: GitRepo) -> GitRepo:
    git_repo.write("bin/tool.sh", "#!/bin/sh\necho hi\n")
    (git_repo.path / "bin/tool.sh").chmod(0o755)
    os.symlink("../m/motd.txt", git_repo.path / "bin/motd")
    git_repo.commit(
        {
            "m/a.yaml": manifest("File", "motd", path="/etc/motd", source="motd.txt"),
            "m/motd.txt": MOTD,
            "deep/er/still/x.txt": "x\n",
        }
    )
    return git_repo


def fresh(tmp_path: Path, repo: GitRepo) -> GitSource:
    """A new GitSource on the same cache: what a restarted agent (or the CLI) would make."""
    return GitSource("test", repo.url, "main", tmp_path / "cache")


def writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | 0o200)


def read_only(path: Path) -> None:
    path.chmod(path.stat().st_mode & ~0o222)


def exported(tmp_path: Path, repo: GitRepo) -> tuple[str, Path]:
    src = fresh(tmp_path, repo)
    sha = src.fetch()
    return sha, src.tree(sha)


# -- checks against the manifest ---------------------------------------------------------


def test_sound_export_is_reused_by_the_next_process(tmp_path: Path, repo: GitRepo) -> None:
    sha, tree = exported(tmp_path, repo)
    inode = (tree / "m/motd.txt").stat().st_ino
    assert fresh(tmp_path, repo).tree(sha) == tree
    assert (tree / "m/motd.txt").stat().st_ino == inode  # checked, not exported again


@pytest.mark.parametrize("damage", ["truncated", "same-size", "marker-removed", "extra-file",
                                    "file-removed", "torn-manifest", "chmod"])  # fmt: skip
def test_damaged_export_is_exported_again(tmp_path: Path, repo: GitRepo, damage: str) -> None:
    sha, tree = exported(tmp_path, repo)
    motd = tree / "m/motd.txt"
    inode = motd.stat().st_ino
    mfst = export.manifest_path(tree)
    if damage == "truncated":  # a torn write: the first blocks only
        writable(motd)
        os.truncate(motd, 4096)
        read_only(motd)
    elif damage == "same-size":  # blocks never written: zeros of the right size
        writable(motd)
        motd.write_bytes(b"\0" * len(MOTD))
        read_only(motd)
    elif damage == "marker-removed":
        mfst.unlink()
    elif damage == "extra-file":
        writable(tree / "m")
        (tree / "m/planted.yaml").write_text(manifest("File", "x", path="/etc/x", content="x"))
        read_only(tree / "m")
    elif damage == "file-removed":
        writable(tree / "deep/er/still")
        (tree / "deep/er/still/x.txt").unlink()
    elif damage == "torn-manifest":
        data = mfst.read_bytes()
        mfst.write_bytes(data[: len(data) // 2])
    elif damage == "chmod":
        (tree / "bin/tool.sh").chmod(0o444)
    src = fresh(tmp_path, repo)
    assert src.tree(sha) == tree
    assert motd.read_text() == MOTD
    assert (tree / "deep/er/still/x.txt").read_text() == "x\n"
    assert not (tree / "m/planted.yaml").exists()
    assert (tree / "bin/tool.sh").stat().st_mode & 0o111
    assert motd.stat().st_ino != inode  # a new export
    assert export.read_manifest(mfst, sha) is not None
    assert sorted(p.name for p in tree.parent.iterdir()) == [sha, f"{sha}.manifest"]


def test_export_is_checked_once_per_process(
    tmp_path: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha, _ = exported(tmp_path, repo)
    calls: list[Path] = []
    real = export.check_files

    def counting(root: Path, entries: list[export.Entry]) -> str | None:
        calls.append(root)
        return real(root, entries)

    monkeypatch.setattr(export, "check_files", counting)
    src = fresh(tmp_path, repo)
    for _ in range(3):
        src.tree(sha)
    assert len(calls) == 1


def test_damaged_export_is_not_used_nor_deleted_while_it_cannot_be_redone(
    tmp_path: Path, repo: GitRepo
) -> None:
    sha, tree = exported(tmp_path, repo)
    export.remove_tree(tmp_path / "cache/repo.git")  # the mirror is gone (being re-cloned)
    assert fresh(tmp_path, repo).tree(sha) == tree  # sound: its manifest stands on its own

    motd = tree / "m/motd.txt"
    writable(motd)
    os.truncate(motd, 10)
    read_only(motd)
    repo.path.rename(tmp_path / "away")
    with pytest.raises(SourceError, match=f"commit {sha} is not in the local mirror"):
        fresh(tmp_path, repo).tree(sha)
    assert motd.stat().st_size == 10  # kept as it was until a new export is complete
    (tmp_path / "away").rename(repo.path)
    src = fresh(tmp_path, repo)
    src.fetch()
    assert (src.tree(sha) / "m/motd.txt").read_text() == MOTD


def test_pass_applies_the_committed_content_after_a_torn_export(
    repo: GitRepo, root: Path, state_dir: Path
) -> None:
    cfg = one_stack(repo.url, root, state_dir)
    result, *_ = one_pass(cfg)
    assert result.converged, result
    assert (root / "etc/motd").read_text() == MOTD
    tree = state_dir / "sources/repo/trees" / result.revision
    motd = tree / "m/motd.txt"
    writable(motd)
    os.truncate(motd, 100)  # as after a power cut, before this version fsynced exports
    read_only(motd)
    (root / "etc/motd").write_text("drift\n")
    result, *_ = one_pass(cfg)
    assert result.converged, result
    assert (root / "etc/motd").read_text() == MOTD


# -- durable writes ----------------------------------------------------------------------


def test_every_file_and_directory_is_fsynced_before_the_export_is_published(
    tmp_path: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = fresh(tmp_path, repo)
    sha = src.fetch()
    events: list[tuple[str, ...]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))  # once done

    def rename(a: str | Path, b: str | Path) -> None:
        events.append(("rename", str(a), str(b)))
        real_rename(a, b)

    def replace(a: str | Path, b: str | Path) -> None:
        events.append(("rename", str(a), str(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    tree = src.tree(sha)
    monkeypatch.undo()

    trees = str(tree.parent)
    (publish,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(tree)]
    staging = events[publish][1]
    synced = {e[1] for e in events[:publish] if e[0] == "fsync"}
    staged = {p[len(staging) + 1 :] for p in synced if p.startswith(staging + "/")}
    on_disk = {
        str(p.relative_to(tree))
        for p in tree.rglob("*")
        if not p.is_symlink()  # a symlink lives in its directory, fsynced too
    }
    assert len(on_disk) > 5 and on_disk == staged
    assert staging in synced  # the top directory itself
    mfst = str(export.manifest_path(tree))
    (written,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == mfst]
    assert publish < written  # the manifest last...
    assert ("fsync", trees) in events[publish:written]  # ...after the rename is durable
    assert events[-1] == ("fsync", trees)  # and itself made durable


# -- the tree id computed from a listing is git's --------------------------------------


def test_tree_id_of_a_listing_is_gits_own(tmp_path: Path, git_repo: GitRepo) -> None:
    def plumb(*args: str, data: str = "") -> str:
        return subprocess.run(
            ["git", *args], cwd=git_repo.path, input=data, check=True, capture_output=True,
            text=True, env={**os.environ, **GIT_ENV},
        ).stdout.strip()  # fmt: skip

    # Names that sort differently as files and as trees ("a" < "a-b" < "a/"), an empty
    # tree, a submodule, a symlink and an executable.
    blob = plumb("hash-object", "-w", "--stdin", data="hi\n")
    empty = plumb("mktree", data="")
    inner = plumb("mktree", data=f"100644 blob {blob}\tf\n040000 tree {empty}\tnothing\n")
    top = plumb(
        "mktree",
        "--missing",
        data=(
            f"040000 tree {inner}\ta\n100755 blob {blob}\ta-b\n100644 blob {blob}\ta.c\n"
            f"120000 blob {blob}\tlink\n160000 commit {'1' * 40}\tsub\n"
        ),
    )
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "-t", "-l", "-z", "--full-tree", top],
        cwd=git_repo.path, capture_output=True, check=True,
    ).stdout  # fmt: skip
    entries = export.parse_listing(listing)
    assert export.tree_id(entries) == top
    # A changed blob id or a lost entry changes the id; a subtree that no longer hashes
    # to its listed id is refused.
    changed = listing.replace(blob.encode(), b"0" * 40, 1)
    assert export.tree_id(export.parse_listing(changed)) != top
    records = listing.split(b"\0")
    assert export.tree_id(export.parse_listing(b"\0".join(records[:-2]))) != top
    without = b"\0".join(r for r in records if not r.endswith(b"\ta/nothing"))
    with pytest.raises(ValueError, match="subtree b'a'"):
        export.tree_id(export.parse_listing(without))
