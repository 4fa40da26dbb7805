"""Stacks that leave the config: reported as orphaned, released by `setpoint forget`.

Real Git repositories, the real `setpoint` command in child processes and a real agent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import GitRepo
from helpers import cli, docs, manifest, start_agent, stop_process, wait_for
from setpoint.config import load_config
from setpoint.engine.controller import Controller
from setpoint.model.errors import SetpointError
from setpoint.state import StateDB


def write_config(path: Path, repo: GitRepo, root: Path, state: Path, *stacks: str) -> Path:
    """A config with source ``repo``; each stack ``NAME`` or ``NAME:DIR`` (default dir m)."""
    doc: dict[str, Any] = {
        "root": str(root),
        "state": str(state),
        "listen": "127.0.0.1:0",
        "sources": [{"name": "repo", "url": repo.url, "ref": "main", "interval": 0.5}],
        "stacks": [
            {"name": s.partition(":")[0], "source": "repo", "path": s.partition(":")[2] or "m"}
            for s in stacks
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def orphan_line(stack: str, n: int) -> str:
    return (
        f"stack {stack} is no longer in the config and still owns {n} resources: run "
        f"`setpoint forget {stack} --prune` to delete them or `setpoint forget {stack} --to NEW` "
        "to hand them to NEW"
    )


def three_files(repo: GitRepo) -> None:
    repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "conf", path="/etc/app.conf", content="x=1\n"),
                manifest("Directory", "data", path="/srv/data"),
                manifest("File", "seed", path="/srv/data/seed", content="s\n"),
            ),
            "n/b.yaml": manifest("File", "b", path="/etc/b", content="b\n"),
        }
    )


def _db(state: Path) -> StateDB:
    return StateDB(state)


def _read(state: Path, fn: Any) -> Any:
    db = _db(state)
    try:
        return fn(db)
    finally:
        db.close()


def _ready(state: Path, stack: str) -> bool:
    st = _read(state, lambda db: db.load_status(stack))
    ready = st.condition("Ready") if st else None
    return bool(ready and ready.status)


def test_renamed_stack_is_reported_then_handed_over_without_recreating(
    git_repo: GitRepo, root: Path, state_dir: Path, tmp_path: Path
) -> None:
    three_files(git_repo)
    cfg = write_config(tmp_path / "c.yaml", git_repo, root, state_dir, "old")
    cli("apply", "--config", cfg, check=0)
    inodes = {p: os.stat(root / p).st_ino for p in ("etc/app.conf", "srv/data/seed", "srv/data")}

    write_config(cfg, git_repo, root, state_dir, "new")  # the stack renamed
    agent = start_agent("--config", cfg, log=tmp_path / "agent1.log")
    try:
        # Today's behaviour, kept: the renamed stack is refused for the conflict ...
        new_st = wait_for(
            lambda: _read(state_dir, lambda db: db.load_status("new")),
            what="the renamed stack's first pass",
        )
        stalled = new_st.condition("Stalled")
        assert stalled is not None and stalled.reason == "Conflict"
        assert "already managed by stack 'old'" in new_st.refused_message
        assert "run `setpoint forget old --to new`" in new_st.refused_message
        # ... and now the orphan is reported: status, journal (once), `setpoint status`.
        old_st = _read(state_dir, lambda db: db.load_status("old"))
        ready = old_st.condition("Ready")
        assert (ready.status, ready.reason, ready.message) == (
            False,
            "Orphaned",
            orphan_line("old", 3),
        )
        out = cli("status", "--state", state_dir, check=0).stdout
        assert orphan_line("old", 3) in out
        entries = _read(state_dir, lambda db: db.history(stack="old", events={"orphaned"}))
        assert [e.message for e in entries] == [orphan_line("old", 3)]

        # forget refuses while the agent owns the state dir; nothing changes.
        out = cli("forget", "old", "--to", "new", "--config", cfg, check=1)
        assert (
            f"cannot forget stack 'old' while an agent owns the state dir {state_dir} "
            f"(pid {agent.pid})" in out.stderr
        )
        assert len(_read(state_dir, lambda db: db.inventory("old"))) == 3
    finally:
        stop_process(agent)

    out = cli("forget", "old", "--to", "new", "--config", cfg, check=0)
    assert "stack old: 3 resource(s) handed to stack new" in out.stdout
    assert _read(state_dir, lambda db: db.inventory("old")) == {}
    assert set(_read(state_dir, lambda db: db.inventory("new"))) == {
        "File/conf",
        "Directory/data",
        "File/seed",
    }
    assert _read(state_dir, lambda db: db.load_status("old")) is None
    forgets = _read(state_dir, lambda db: db.history(events={"forget"}))
    assert [(e.stack, e.message) for e in forgets] == [
        ("old", "forgot stack old: handed 3 resources to stack new"),
        ("new", "took over 3 resources from stack old (setpoint forget old --to new)"),
    ]
    last_id = _read(state_dir, lambda db: db.history(limit=1))[0].id

    agent = start_agent("--config", cfg, log=tmp_path / "agent2.log")
    try:
        wait_for(lambda: _ready(state_dir, "new"), what="the renamed stack to be Ready")
    finally:
        stop_process(agent)
    since = _read(state_dir, lambda db: db.history(after_id=last_id, limit=1000))
    # Taken over as they are: nothing applied, deleted or re-created; no orphan left.
    assert not [e for e in since if e.event in ("apply", "prune", "revert", "orphaned")], since
    assert {p: os.stat(root / p).st_ino for p in inodes} == inodes
    assert (root / "etc/app.conf").read_text() == "x=1\n"


def test_forget_prune_deletes_the_files_then_the_inventory(
    git_repo: GitRepo, root: Path, state_dir: Path, tmp_path: Path
) -> None:
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "a", path="/etc/a", content="a\n"),
                manifest("Directory", "d", path="/srv/d"),
                manifest("File", "f", path="/srv/d/f", content="f\n"),
                manifest(
                    "File",
                    "keep",
                    labels={"setpoint/prune": "disabled"},
                    path="/etc/keep",
                    content="k\n",
                ),
            ),
            "n/b.yaml": manifest("File", "b", path="/etc/b", content="b\n"),
        }
    )
    cfg = write_config(tmp_path / "c.yaml", git_repo, root, state_dir, "old", "other:n")
    cli("apply", "--config", cfg, check=0)
    write_config(cfg, git_repo, root, state_dir, "other:n")  # old removed from the config

    out = cli("forget", "old", "--prune", "--config", cfg, check=0)
    assert "stack old forgotten: 3 deleted, 1 kept on the host" in out.stdout
    assert not (root / "etc/a").exists()
    assert not (root / "srv/d").exists()
    assert (root / "etc/keep").read_text() == "k\n"  # the opt-out label: released, kept
    assert (root / "etc/b").read_text() == "b\n"  # another stack's file: untouched
    assert _read(state_dir, lambda db: db.inventory("old")) == {}
    assert set(_read(state_dir, lambda db: db.inventory("other"))) == {"File/b"}
    assert _read(state_dir, lambda db: db.load_status("old")) is None
    journal = _read(state_dir, lambda db: db.history(stack="old", events={"prune", "forget"}))
    assert sorted(e.resource or "" for e in journal if e.event == "prune") == [
        "Directory/d",
        "File/a",
        "File/f",
        "File/keep",
    ]
    assert journal[-1].message == "forgot stack old: 3 deleted, 1 kept on the host (released)"


def test_forget_prune_keeps_what_failed_to_delete_and_exits_1_naming_it(
    git_repo: GitRepo, root: Path, state_dir: Path, tmp_path: Path
) -> None:
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "a", path="/etc/a", content="a\n"),
                manifest("File", "f", path="/srv/d/f", content="f\n"),
            ),
            "n/b.yaml": manifest("File", "b", path="/etc/b", content="b\n"),
        }
    )
    cfg = write_config(tmp_path / "c.yaml", git_repo, root, state_dir, "old", "other:n")
    cli("apply", "--config", cfg, check=0)
    write_config(cfg, git_repo, root, state_dir, "other:n")
    # /srv/d now leads out of the root: deleting /srv/d/f through it is refused.
    outside = tmp_path / "outside"
    (root / "srv/d").rename(outside)
    (root / "srv/d").symlink_to(outside)

    out = cli("forget", "old", "--prune", "--config", cfg, check=1)
    assert "stay in its inventory: File/f" in out.stderr
    assert "! File/f: cannot delete /srv/d/f:" in out.stdout
    assert (outside / "f").read_text() == "f\n"
    assert not (root / "etc/a").exists()
    assert set(_read(state_dir, lambda db: db.inventory("old"))) == {"File/f"}
    assert _read(state_dir, lambda db: db.load_status("old")) is not None
    (last,) = _read(state_dir, lambda db: db.history(stack="old", events={"forget"}))
    assert last.message.endswith("1 could not be deleted and stay in its inventory: File/f")

    (root / "srv/d").unlink()  # fixed: the next forget finishes the job
    (root / "srv/d").mkdir()
    (root / "srv/d/f").write_text("f\n")
    cli("forget", "old", "--prune", "--config", cfg, check=0)
    assert not (root / "srv/d/f").exists()
    assert _read(state_dir, lambda db: db.stack_sizes()) == {"other": 1}


def test_plain_forget_keeps_the_files_and_drops_ownership(
    git_repo: GitRepo, root: Path, state_dir: Path, tmp_path: Path
) -> None:
    three_files(git_repo)
    cfg = write_config(tmp_path / "c.yaml", git_repo, root, state_dir, "old")
    cli("apply", "--config", cfg, check=0)
    git_repo.commit({"n/b.yaml": manifest("File", "conf", path="/etc/app.conf", content="x=2\n")})
    write_config(cfg, git_repo, root, state_dir, "other:n")

    out = cli("forget", "old", "--state", state_dir, check=0)  # no config needed
    assert "stack old forgotten: 3 resource(s) released" in out.stdout
    for p in ("etc/app.conf", "srv/data/seed"):
        assert (root / p).exists(), p
    assert _read(state_dir, lambda db: db.stack_sizes()) == {}
    (entry,) = _read(state_dir, lambda db: db.history(events={"forget"}))
    assert entry.message == (
        "forgot stack old: released 3 resources; the files stay on the host, no longer "
        "managed by setpoint"
    )
    # Unmanaged now: another stack may declare the path, and nothing prunes the rest.
    cli("apply", "--config", cfg, check=0)
    assert (root / "etc/app.conf").read_text() == "x=2\n"
    assert (root / "srv/data/seed").read_text() == "s\n"
    assert set(_read(state_dir, lambda db: db.inventory("other"))) == {"File/conf"}


def test_hand_over_is_refused_when_new_has_one_of_the_ids_elsewhere(
    git_repo: GitRepo, root: Path, state_dir: Path, tmp_path: Path
) -> None:
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "conf", path="/etc/old.conf", content="o\n"),
                manifest("File", "other", path="/etc/other", content="o\n"),
            ),
            "n/b.yaml": manifest("File", "conf", path="/etc/new.conf", content="n\n"),
        }
    )
    cfg = write_config(tmp_path / "c.yaml", git_repo, root, state_dir, "old", "new:n")
    cli("apply", "--config", cfg, check=0)
    write_config(cfg, git_repo, root, state_dir, "new:n")

    out = cli("forget", "old", "--to", "new", "--config", cfg, check=1)
    assert (
        "cannot hand stack old's resources to stack new; nothing was changed:\n"
        "  File/conf: stack new already has File/conf at /etc/new.conf; stack old's is at "
        "/etc/old.conf" in out.stderr
    )
    assert set(_read(state_dir, lambda db: db.inventory("old"))) == {"File/conf", "File/other"}
    assert set(_read(state_dir, lambda db: db.inventory("new"))) == {"File/conf"}
    assert _read(state_dir, lambda db: db.history(events={"forget"})) == []


def test_forget_refuses_a_configured_stack_an_unknown_one_and_a_missing_new(
    git_repo: GitRepo, root: Path, state_dir: Path, tmp_path: Path
) -> None:
    three_files(git_repo)
    cfg = write_config(tmp_path / "c.yaml", git_repo, root, state_dir, "old")
    cli("apply", "--config", cfg, check=0)
    out = cli("forget", "old", "--prune", "--config", cfg, check=1)
    assert "stack 'old' is still in the config" in out.stderr
    write_config(cfg, git_repo, root, state_dir, "new")
    out = cli("forget", "nope", "--config", cfg, check=1)
    assert "knows no stack named 'nope' (known: old)" in out.stderr
    out = cli("forget", "old", "--to", "typo", "--config", cfg, check=1)
    assert "no stack named 'typo' (known: new)" in out.stderr
    out = cli("forget", "old", "--prune", "--state", state_dir, check=1)
    assert "--prune and --to need the agent's config" in out.stderr
    assert len(_read(state_dir, lambda db: db.inventory("old"))) == 3
    assert (root / "etc/app.conf").exists()


def test_orphans_are_journaled_once_per_start_and_not_by_a_dry_run(
    git_repo: GitRepo, root: Path, state_dir: Path, tmp_path: Path
) -> None:
    three_files(git_repo)
    cfg_path = write_config(tmp_path / "c.yaml", git_repo, root, state_dir, "old", "other:n")
    cli("apply", "--config", cfg_path, check=0)
    write_config(cfg_path, git_repo, root, state_dir, "other:n")
    cfg = load_config(cfg_path)

    def orphaned() -> int:
        return len(_read(state_dir, lambda db: db.history(events={"orphaned"})))

    ctl = Controller(cfg)
    try:
        ctl.run_once(dry_run=True)
        assert orphaned() == 0
        assert [(o.stack, o.owned) for o in ctl.orphans()] == [("old", 3)]
        ctl.run_once()
        ctl.run_once()
        assert orphaned() == 1
        with pytest.raises(SetpointError, match="stack 'other' is in the config"):
            ctl.prune_stack("other")
    finally:
        ctl.close()
    ctl = Controller(cfg)
    try:
        ctl.run_once()
        assert orphaned() == 2
    finally:
        ctl.close()


def test_prune_stack_deletes_a_whole_stack_in_process(
    git_repo: GitRepo, root: Path, state_dir: Path, tmp_path: Path
) -> None:
    """The operation Fleet will call for stacks that stop applying to a host."""
    three_files(git_repo)
    cfg_path = write_config(tmp_path / "c.yaml", git_repo, root, state_dir, "old", "other:n")
    cli("apply", "--config", cfg_path, check=0)
    write_config(cfg_path, git_repo, root, state_dir, "other:n")
    ctl = Controller(load_config(cfg_path))
    try:
        result = ctl.prune_stack("old")
        assert result.ok
        assert sorted(result.deleted) == ["Directory/data", "File/conf", "File/seed"]
        assert ctl.db.inventory("old") == {}
    finally:
        ctl.close()
    assert not (root / "srv/data").exists()
    assert not (root / "etc/app.conf").exists()
