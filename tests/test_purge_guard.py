"""Directory.purge never removes the agent's own state dir (state DB, git cache, release store)."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import GitRepo
from helpers import docs, manifest, one_pass, one_stack
from setpoint.providers.files import apply as fs_apply
from setpoint.providers.files.target import FileTarget


def _purging_var(repo: GitRepo) -> int:
    """Commit a File and a purging Directory /var; return the Directory's line."""
    text = docs(
        manifest("File", "motd", path="/etc/motd", content="hi\n"),
        manifest("Directory", "var", path="/var", purge=True),
    )
    repo.commit({"m/a.yaml": text})
    return text.splitlines().index("---") + 2  # the document after the separator


def test_purge_of_a_directory_holding_the_state_dir_is_refused_with_file_line(
    git_repo: GitRepo, root: Path
) -> None:
    state = root / "var/lib/setpoint"
    (root / "var").mkdir()
    (root / "var/stray").write_text("not declared\n")
    line = _purging_var(git_repo)
    result, status, journal, inv = one_pass(one_stack(git_repo.url, root, state))
    assert result.refused is not None
    assert result.refused_reason == "ValidationFailed"
    assert len(result.errors) == 1, result.errors
    err = result.errors[0]
    assert err.startswith(f"m/a.yaml:{line}: Directory/var: purge: true on /var would remove ")
    assert f"the agent's own state dir {state} (state DB, git cache, release store)" in err
    assert f"which lies below {root}/var;" in err
    # Nothing applied, nothing purged: the stray, the state DB and the git cache are there.
    assert not (root / "etc/motd").exists()
    assert (root / "var/stray").read_text() == "not declared\n"
    assert (state / "setpoint.db").is_file()
    assert (state / "sources/repo/repo.git").is_dir()
    assert inv == {}
    assert status.condition("Stalled").reason == "ValidationFailed"
    assert any(e.event == "revision.refused" for e in journal)


def test_purge_with_the_state_dir_outside_the_root_is_applied(
    git_repo: GitRepo, root: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"  # beside the root, not under it: nothing to protect there
    (root / "var/lib/setpoint").mkdir(parents=True)
    (root / "var/stray").write_text("not declared\n")
    _purging_var(git_repo)
    result, *_ = one_pass(one_stack(git_repo.url, root, state))
    assert result.refused is None and result.converged, result
    assert sorted(os.listdir(root / "var")) == []  # lib/ (no state there) and stray purged
    assert (state / "setpoint.db").is_file()


def test_the_state_dir_itself_cannot_be_purged(git_repo: GitRepo, root: Path) -> None:
    state = root / "var/lib/setpoint"
    git_repo.commit({"m/a.yaml": manifest("Directory", "st", path="/var/lib/setpoint", purge=True)})
    result, *_ = one_pass(one_stack(git_repo.url, root, state))
    assert result.refused is not None
    assert result.errors[0].startswith(
        "m/a.yaml:1: Directory/st: purge: true on /var/lib/setpoint would remove"
    )
    assert f"which lies at {state};" in result.errors[0]
    assert (state / "setpoint.db").is_file()


def test_a_symlinked_state_dir_is_recognised_below_the_purged_directory(
    git_repo: GitRepo, root: Path, tmp_path: Path
) -> None:
    # The config names the state dir through a symlink outside the root: its real
    # place is under the purged /srv all the same.
    (root / "srv/agent").mkdir(parents=True)
    alias = tmp_path / "state-alias"
    alias.symlink_to(root / "srv/agent")
    git_repo.commit({"m/a.yaml": manifest("Directory", "srv", path="/srv", purge=True)})
    result, *_ = one_pass(one_stack(git_repo.url, root, alias))
    assert result.refused is not None, result
    assert "Directory/srv: purge: true on /srv" in result.errors[0]
    assert (root / "srv/agent/setpoint.db").is_file()


def test_fs_purge_skips_an_entry_holding_the_state_dir(tmp_path: Path) -> None:
    """The second guard: the provider's purge itself, whoever calls it."""
    from setpoint.providers.files.guard import holds_state_dir

    root = tmp_path / "root"
    state = root / "var/lib/setpoint"
    state.mkdir(parents=True)
    (state / "setpoint.db").write_text("db")
    (root / "var/stray").write_text("x")
    target = FileTarget(root, state_dir=state)
    assert holds_state_dir(target, str(root / "var/lib"))
    assert holds_state_dir(target, str(state))
    assert not holds_state_dir(target, str(root / "var/stray"))
    assert not holds_state_dir(target, str(root / "var/lib/setpoint-other"))
    fs_apply.purge(target, "/var", ("/var/lib", "/var/stray"))
    assert (state / "setpoint.db").read_text() == "db"
    assert not (root / "var/stray").exists()


def test_fs_purge_may_remove_a_symlink_that_leads_to_the_state_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    state = root / "var/lib/setpoint"
    state.mkdir(parents=True)
    (root / "var/link").symlink_to(state)
    target = FileTarget(root, state_dir=state)
    from setpoint.providers.files.guard import holds_state_dir

    # Unlinking the link never touches what it points to: no reason to keep it.
    assert not holds_state_dir(target, str(root / "var/link"))
    fs_apply.purge(target, "/var", ("/var/link",))
    assert not os.path.lexists(root / "var/link")
    assert state.is_dir()
