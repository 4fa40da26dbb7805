"""Prune never deletes a path that a resource still declared in the same stack now owns."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import GitRepo
from helpers import manifest, one_pass, one_stack


def test_renaming_a_resource_keeps_its_file_and_hands_it_to_the_new_id(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    cfg = one_stack(git_repo.url, root, state_dir)
    git_repo.commit({"m/a.yaml": manifest("File", "old", path="/etc/app.conf", content="x\n")})
    result, *_ = one_pass(cfg)
    assert result.converged
    inode = os.stat(root / "etc/app.conf").st_ino

    git_repo.commit({"m/a.yaml": manifest("File", "new", path="/etc/app.conf", content="x\n")})
    kept = [
        ("File/old", "noop", "removed from Git, kept: /etc/app.conf is now declared by File/new")
    ]
    planned, *_ = one_pass(cfg, dry_run=True)
    assert [(p.resource, p.action.value, p.reason) for p in planned.prunes] == kept
    result, _status, journal, inv = one_pass(cfg)
    assert result.converged, result
    assert os.stat(root / "etc/app.conf").st_ino == inode  # never deleted, never recreated
    assert set(inv) == {"File/new"}
    assert [(p.resource, p.action.value, p.reason) for p in result.prunes] == kept
    (entry,) = [e for e in journal if e.event == "prune"]
    assert entry.resource == "File/old"
    assert entry.message == "released /etc/app.conf: /etc/app.conf is now declared by File/new"
    # The next pass has nothing to do: the file was not deleted behind File/new's back.
    result, *_ = one_pass(cfg)
    assert result.converged and not result.changes
