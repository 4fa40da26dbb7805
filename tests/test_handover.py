"""A path moving from one stack to another in one commit is handed over, never lost.

Stack ``a`` declares /etc/moved; one commit moves the declaration to stack ``b``.
Whichever stack's pass runs first, the file is never deleted (same inode), never
owned by both stacks nor by neither, and ends up owned by ``b``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import manifest
from setpoint.config import AgentConfig
from setpoint.engine.controller import Controller

MOVED = manifest("File", "moved", path="/etc/moved", content="keep me\n")


def owners(ctl: Controller) -> list[str]:
    return sorted(
        st
        for st in ("a", "b")
        if any(r.path == "/etc/moved" for r in ctl.db.inventory(st).values())
    )


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_a_path_moved_between_stacks_in_one_commit_is_handed_over(
    git_repo: GitRepo, tmp_path: Path, order: tuple[str, str]
) -> None:
    git_repo.commit(
        {
            "a/moved.yaml": MOVED,
            "a/other.yaml": manifest("File", "a-own", path="/etc/a", content="a\n"),
            "b/other.yaml": manifest("File", "b-own", path="/etc/b", content="b\n"),
        }
    )
    root = tmp_path / "root"
    root.mkdir()
    cfg = AgentConfig.model_validate(
        {
            "root": str(root),
            "state": str(tmp_path / "state"),
            "sources": [{"name": "s", "url": git_repo.url}],
            "stacks": [
                {"name": "a", "source": "s", "path": "a"},
                {"name": "b", "source": "s", "path": "b"},
            ],
        }
    )
    ctl = Controller(cfg)
    try:
        assert all(r.converged for r in ctl.run_once())
        inode = (root / "etc/moved").stat().st_ino
        assert owners(ctl) == ["a"]
        git_repo.remove("a/moved.yaml")
        git_repo.commit({"b/moved.yaml": MOVED})
        ctl.fetch("s")
        first, second = (ctl.reconcile(name) for name in order)
        assert (root / "etc/moved").stat().st_ino == inode  # never deleted nor rewritten
        assert len(owners(ctl)) == 1  # never both
        assert first.errors == [] and second.errors == []
        assert first.converged and second.converged
        assert owners(ctl) == ["b"]
        journal = ctl.db.history(limit=100)
        handover = [e for e in journal if e.event == "handover"]
        assert [(e.stack, e.resource) for e in handover] == [("b", "File/moved")]
        assert not [e for e in journal if e.event == "prune" and e.resource == "File/moved"]
        for r in ctl.run_once():  # and it stays settled
            assert r.converged and not r.changes and not r.prunes
    finally:
        ctl.close()
