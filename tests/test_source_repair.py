"""git fsck's verdict: only reported corruption throws the mirror away (and re-clones it);
a check that could not run (timeout, killed, git missing, fsck failing for another reason)
keeps it. Exports are never thrown away with the mirror: the last good one keeps applying."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import manifest, one_pass, one_stack
from setpoint.engine.controller import Controller
from setpoint.model.errors import SourceError
from setpoint.source import GitSource, export

REAL_GIT = shutil.which("git") or "git"


def fsck_shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsck: str) -> None:
    """Put a ``git`` first on PATH that runs ``fsck`` (shell) instead of ``git fsck``."""
    bindir = tmp_path / "shim"
    bindir.mkdir()
    (bindir / "git").write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do [ "$a" = fsck ] && {{ {fsck}; }}; done\n'
        f"exec '{REAL_GIT}' \"$@\"\n"
    )
    (bindir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def commit(repo: GitRepo, content: str) -> str:
    return repo.commit(
        {"m/a.yaml": manifest("File", "f", path="/etc/f", source="f.txt"), "m/f.txt": content}
    )


def delete_object(git_dir: Path, repo: GitRepo, spec: str) -> None:
    """Delete one loose object (the blob or tree ``spec`` names) from the mirror."""
    oid = repo.git("rev-parse", spec)
    loose = git_dir / "objects" / oid[:2] / oid[2:]
    assert loose.is_file(), "expected a loose object (a small fetch unpacks them)"
    loose.unlink()


CANNOT_CHECK = {
    "timeout": ("exec sleep 600", r"git fsck timed out after 0\.5s; the mirror is kept"),
    "killed": ("kill -KILL $$", r"git fsck was killed by signal 9; the mirror is kept"),
    "fatal": (
        "echo 'fatal: Out of memory, malloc failed' >&2; exit 128",
        r"git fsck exited with 128 without reporting damage \(fatal: Out of memory, "
        r"malloc failed\); the mirror is kept, not re-cloned",
    ),
}


@pytest.mark.parametrize("case", [*CANNOT_CHECK, "no-git"])
def test_a_check_that_cannot_run_keeps_the_mirror(
    tmp_path: Path, git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    sha = commit(git_repo, "v1\n")
    if case in CANNOT_CHECK:
        fsck_shim(tmp_path, monkeypatch, CANNOT_CHECK[case][0])
    src = GitSource("test", git_repo.url, "main", tmp_path / "cache", fsck_timeout=0.5)
    assert src.fetch() == sha
    tree = src.tree(sha)
    mirror = tmp_path / "cache/repo.git"
    inode = mirror.stat().st_ino
    if case == "no-git":
        empty = tmp_path / "empty"
        empty.mkdir()
        src._env["PATH"] = str(empty)
        expected = r"git is not installed \(no git on PATH\); the mirror is kept"
    else:
        expected = CANNOT_CHECK[case][1]
    with pytest.raises(SourceError, match=expected):
        src.repair()
    assert mirror.stat().st_ino == inode
    src._env["PATH"] = os.environ["PATH"]
    git_repo.git("commit", "-q", "--allow-empty", "-m", "next")
    assert src.fetch() == git_repo.git("rev-parse", "HEAD")  # the same mirror, still in use
    assert mirror.stat().st_ino == inode
    assert (tree / "m/f.txt").read_text() == "v1\n"


def test_real_corruption_is_recloned_and_the_export_kept(
    tmp_path: Path, git_repo: GitRepo
) -> None:
    sha = commit(git_repo, "v1\n")
    src = GitSource("test", git_repo.url, "main", tmp_path / "cache")
    src.fetch()
    tree = src.tree(sha)
    inode = (tree / "m/f.txt").stat().st_ino
    mirror = tmp_path / "cache/repo.git"
    delete_object(mirror, git_repo, "HEAD:m/f.txt")
    assert src.repair() is True
    assert not mirror.exists()
    assert (tree / "m/f.txt").stat().st_ino == inode  # the export was not touched
    assert src.fetch() == sha  # cloned afresh
    assert src.repair() is False  # and sound
    assert GitSource("test", git_repo.url, "main", tmp_path / "cache").tree(sha) == tree
    assert (tree / "m/f.txt").stat().st_ino == inode


def test_while_recloning_fails_the_last_good_export_keeps_applying(
    tmp_path: Path, git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    good = commit(git_repo, "v1\n")
    cfg = one_stack(git_repo.url, root, state_dir)
    assert one_pass(cfg)[0].converged
    tree = state_dir / "sources/repo/trees" / good
    delete_object(state_dir / "sources/repo/repo.git", git_repo, "HEAD:m/f.txt")
    git_repo.path.rename(tmp_path / "away")  # the remote is unreachable: no re-clone
    (root / "etc/f").write_text("drift\n")
    for _ in range(2):  # and again, by a process that never saw the mirror whole
        result, status, journal, _ = one_pass(cfg)
        assert result.revision == good and result.fetch_error
        assert status.condition("Ready").reason == "SourceFailed"
        assert (root / "etc/f").read_text() == "v1\n"  # drift reverted from the export
        assert (tree / "m/f.txt").read_text() == "v1\n"
    assert [e.event for e in journal].count("source.repaired") == 1
    (tmp_path / "away").rename(git_repo.path)
    new = commit(git_repo, "v2\n")
    result, *_ = one_pass(cfg)
    assert result.converged and result.revision == new
    assert (root / "etc/f").read_text() == "v2\n"


def test_agent_keeps_the_mirror_when_fsck_times_out(
    tmp_path: Path,
    git_repo: GitRepo,
    root: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = commit(git_repo, "v1\n")
    cfg = one_stack(git_repo.url, root, state_dir)
    assert one_pass(cfg)[0].converged
    mirror = state_dir / "sources/repo/repo.git"
    inode = mirror.stat().st_ino
    fsck_shim(tmp_path, monkeypatch, "exec sleep 600")
    git_repo.path.rename(tmp_path / "away")  # the fetch fails: the controller checks the mirror
    (root / "etc/f").write_text("drift\n")
    ctl = Controller(cfg)
    try:
        ctl.sources["repo"].timeout = 5  # (before fsck had its own timeout, it had this one)
        ctl.sources["repo"].fsck_timeout = 0.5
        (result,) = ctl.run_once()
        journal = ctl.db.history(limit=100)
    finally:
        ctl.close()
    assert result.revision == good and result.fetch_error
    assert (root / "etc/f").read_text() == "v1\n"
    assert mirror.stat().st_ino == inode  # kept: a timeout is no verdict
    assert not any(e.event == "source.repaired" for e in journal)
    subprocess.run([REAL_GIT, f"--git-dir={mirror}", "fsck"], check=True, capture_output=True)
    assert export.read_manifest(export.manifest_path(mirror.parent / "trees" / good), good)
