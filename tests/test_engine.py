"""The reconcile pass end to end, in process: real Git repos, real files under a temp root."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from pydantic import BaseModel

from conftest import GitRepo
from helpers import docs, manifest, one_pass, one_stack
from setpoint.config import AgentConfig
from setpoint.engine.controller import Controller
from setpoint.model.fields import STRICT
from setpoint.model.resource import Resource
from setpoint.providers.base import ProviderContext
from setpoint.providers.registry import default_registry


def make_config(repo: GitRepo, root: Path, state: Path, **stack: object) -> AgentConfig:
    return one_stack(repo.url, root, state, stack=stack)


def run(repo: GitRepo, root: Path, state: Path, dry_run: bool = False, **stack: object):  # type: ignore[no-untyped-def]
    return one_pass(make_config(repo, root, state, **stack), dry_run)


def test_first_apply_creates_everything_in_dependency_order(git_repo, root, state_dir):
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest(
                    "File", "conf", path="/srv/app/conf/app.ini", content="x=1\n", mode="0600"
                ),
                manifest("Directory", "app", path="/srv/app", mode="0750"),
                manifest(
                    "Symlink",
                    "cur",
                    path="/srv/current",
                    target="/srv/app",
                    dependsOn=["Directory/app"],
                ),
            )
        }
    )
    result, status, journal, inv = run(git_repo, root, state_dir)
    assert result.converged, result
    assert (root / "srv/app/conf/app.ini").read_text() == "x=1\n"
    assert stat.S_IMODE(os.stat(root / "srv/app").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(root / "srv/app/conf/app.ini").st_mode) == 0o600
    # undeclared parent created 0755 and not owned
    assert stat.S_IMODE(os.stat(root / "srv/app/conf").st_mode) == 0o755
    assert os.readlink(root / "srv/current") == str(root / "srv/app")
    applied = [e.resource for e in journal if e.event == "apply"]
    assert applied.index("Directory/app") < applied.index("File/conf")
    assert applied.index("Directory/app") < applied.index("Symlink/cur")
    assert set(inv) == {"File/conf", "Directory/app", "Symlink/cur"}
    assert status.condition("Ready").status is True


def test_second_pass_changes_nothing_not_even_mtimes(git_repo, root, state_dir):
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "f", path="/etc/f", content="hello\n"),
                manifest("Directory", "d", path="/var/d"),
                manifest("Symlink", "l", path="/etc/l", target="f"),
            )
        }
    )
    run(git_repo, root, state_dir)
    before = {p: os.lstat(p) for p in [root / "etc/f", root / "var/d", root / "etc/l"]}
    result, *_ = run(git_repo, root, state_dir)
    assert result.converged and not result.changes
    for p, st in before.items():
        now = os.lstat(p)
        assert (now.st_mtime_ns, now.st_ino, now.st_ctime_ns) == (
            st.st_mtime_ns,
            st.st_ino,
            st.st_ctime_ns,
        ), p
    plan, *_ = run(git_repo, root, state_dir, dry_run=True)
    assert not plan.changes


def test_a_failed_resource_blocks_only_its_dependents(git_repo, root, state_dir):
    (root / "blocker").write_text("a file where a directory is needed")
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "bad", path="/blocker/x/bad.txt", content="x"),
                manifest(
                    "File", "after-bad", path="/ok/after.txt", content="y", dependsOn=["File/bad"]
                ),
                manifest("File", "independent", path="/ok/independent.txt", content="z"),
            )
        }
    )
    result, status, journal, inv = run(git_repo, root, state_dir)
    states = {o.resource: o.state for o in result.outcomes}
    assert states == {
        "File/bad": "failed",
        "File/after-bad": "waiting",
        "File/independent": "changed",
    }
    assert (root / "ok/independent.txt").read_text() == "z"
    assert not (root / "ok/after.txt").exists()
    assert not result.converged
    ready = status.condition("Ready")
    assert ready.status is False and ready.reason == "ApplyFailed"
    assert "File/bad" not in inv and "File/independent" in inv
    assert any(e.event == "failure" and e.resource == "File/bad" for e in journal)


def test_dependency_cycle_is_refused_naming_the_cycle(git_repo, root, state_dir):
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "a", path="/a", content="a", dependsOn=["File/b"]),
                manifest("File", "b", path="/b", content="b", dependsOn=["File/a"]),
            )
        }
    )
    result, status, *_ = run(git_repo, root, state_dir)
    assert result.refused and not result.converged
    assert "dependency cycle: File/a → File/b → File/a" in result.errors[0]
    assert status.condition("Stalled").reason == "DependencyCycle"
    assert not (root / "a").exists()


def test_prune_deletes_only_what_the_stack_owns(git_repo, root, state_dir):
    (root / "etc").mkdir()
    (root / "etc/unmanaged").write_text("mine")
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "keep", path="/etc/keep", content="k"),
                manifest("File", "gone", path="/etc/gone", content="g"),
                manifest("Directory", "dir", path="/srv/d"),
                manifest(
                    "File",
                    "held",
                    path="/etc/held",
                    content="h",
                    labels={"setpoint/prune": "disabled"},
                ),
            )
        }
    )
    run(git_repo, root, state_dir)
    (root / "srv/d/user-file").write_text("not managed")
    git_repo.commit({"m/a.yaml": manifest("File", "keep", path="/etc/keep", content="k")})
    _result, _, journal, inv = run(git_repo, root, state_dir)
    assert not (root / "etc/gone").exists()
    assert (root / "etc/held").read_text() == "h"  # label keeps it
    assert (root / "srv/d/user-file").exists()  # a directory holding unmanaged entries is kept
    assert (root / "etc/unmanaged").read_text() == "mine"
    assert set(inv) == {"File/keep"}
    assert {e.resource for e in journal if e.event == "prune"} == {
        "File/gone",
        "File/held",
        "Directory/dir",
    }


def test_prune_disabled_on_the_stack_keeps_removed_resources(git_repo, root, state_dir):
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "a", path="/a", content="a"),
                manifest("File", "b", path="/b", content="b"),
            )
        }
    )
    run(git_repo, root, state_dir, prune=False)
    git_repo.commit({"m/a.yaml": manifest("File", "a", path="/a", content="a")})
    result, *_ = run(git_repo, root, state_dir, prune=False)
    assert (root / "b").read_text() == "b"
    assert result.converged


def test_a_preexisting_file_is_taken_over_and_then_owned(git_repo, root, state_dir):
    (root / "etc").mkdir()
    (root / "etc/app.conf").write_text("old\n")
    git_repo.commit({"m/a.yaml": manifest("File", "c", path="/etc/app.conf", content="new\n")})
    plan, *_ = run(git_repo, root, state_dir, dry_run=True)
    (change,) = plan.changes
    assert change.action.value == "update" and "-old\n+new" in (change.diff or "")
    run(git_repo, root, state_dir)
    git_repo.commit({"m/a.yaml": ""})
    run(git_repo, root, state_dir)
    assert not (root / "etc/app.conf").exists()


@pytest.mark.parametrize("mode", ["revert", "report"])
def test_drift_is_found_recorded_with_a_diff_and_reverted_or_reported(
    git_repo, root, state_dir, mode
):
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "motd", path="/etc/motd", content="line one\nline two\n"),
                manifest("File", "gone", path="/etc/gone", content="x"),
                manifest("File", "perm", path="/etc/perm", content="p", mode="0600"),
                manifest("Directory", "dir", path="/srv/dir"),
            )
        }
    )
    run(git_repo, root, state_dir, drift=mode)
    (root / "etc/motd").write_text("line one\nhacked\n")
    (root / "etc/gone").unlink()
    os.chmod(root / "etc/perm", 0o666)
    (root / "srv/dir").rmdir()
    (root / "srv/dir").write_text("a file where a dir belongs")
    result, status, journal, _ = run(git_repo, root, state_dir, drift=mode)
    drift = {e.resource: e for e in journal if e.event == "drift"}
    assert set(drift) == {"File/motd", "File/gone", "File/perm", "Directory/dir"}
    assert "-hacked\n+line two" in drift["File/motd"].detail["diff"]
    assert drift["File/perm"].detail["fields"] == [{"field": "mode", "old": "0666", "new": "0600"}]
    if mode == "revert":
        assert result.converged
        assert (root / "etc/motd").read_text() == "line one\nline two\n"
        assert (root / "etc/gone").exists()
        assert stat.S_IMODE(os.stat(root / "etc/perm").st_mode) == 0o600
        assert (root / "srv/dir").is_dir()
        assert {e.resource for e in journal if e.event == "revert"} == set(drift)
        assert status.counts["drifted"] == 0
    else:
        assert not result.converged
        assert (root / "etc/motd").read_text() == "line one\nhacked\n"
        assert not (root / "etc/gone").exists()
        assert status.counts["drifted"] == 4
        assert status.condition("Ready").reason == "DriftDetected"
        # A drift that lasts is journalled once, not on every pass.
        _, _, journal2, _ = run(git_repo, root, state_dir, drift=mode)
        assert sum(1 for e in journal2 if e.event == "drift") == 4


def test_broken_revision_never_half_applies_and_last_good_is_enforced(git_repo, root, state_dir):
    good = git_repo.commit({"m/a.yaml": manifest("File", "a", path="/etc/a", content="v1\n")})
    run(git_repo, root, state_dir)
    bad = git_repo.commit(
        {
            "m/a.yaml": manifest("File", "a", path="/etc/a", content="v2\n"),
            "m/b.yaml": manifest("File", "b", path="/etc/b", content="b\n", mode="rwx"),
        }
    )
    (root / "etc/a").write_text("drifted\n")
    result, status, journal, _ = run(git_repo, root, state_dir)
    assert not result.converged
    assert result.refused == bad and result.revision == good
    assert (root / "etc/a").read_text() == "v1\n"  # drift repaired against the last good one
    assert not (root / "etc/b").exists()
    stalled = status.condition("Stalled")
    assert stalled.status and stalled.reason == "ValidationFailed"
    assert "m/b.yaml:" in stalled.message and "mode" in stalled.message
    assert status.last_good_revision == good
    assert any(e.event == "revision.refused" and e.revision == bad for e in journal)
    fixed = git_repo.commit({"m/b.yaml": manifest("File", "b", path="/etc/b", content="b\n")})
    result, status, *_ = run(git_repo, root, state_dir)
    assert result.converged and status.last_good_revision == fixed
    assert (root / "etc/a").read_text() == "v2\n" and (root / "etc/b").read_text() == "b\n"
    assert status.condition("Stalled") is None


def test_two_stacks_claiming_one_path_refuse_the_newcomer(git_repo, root, state_dir):
    git_repo.commit(
        {
            "one/a.yaml": manifest("File", "a", path="/etc/shared", content="one"),
            "two/b.yaml": docs(
                manifest("File", "b", path="/etc/shared", content="two"),
                manifest("File", "other", path="/etc/other", content="o"),
            ),
        }
    )
    cfg = AgentConfig.model_validate(
        {
            "root": str(root),
            "state": str(state_dir),
            "sources": [{"name": "repo", "url": git_repo.url}],
            "stacks": [
                {"name": "one", "source": "repo", "path": "one"},
                {"name": "two", "source": "repo", "path": "two"},
            ],
        }
    )
    ctl = Controller(cfg)
    try:
        one, two = ctl.run_once()
        assert one.converged and not two.converged
        assert (root / "etc/shared").read_text() == "one"
        assert not (root / "etc/other").exists()  # nothing of the offending stack
        (msg,) = two.errors
        assert "two/b.yaml:" in msg and "one/a.yaml:" in msg and "File/a" in msg
        assert ctl.db.load_status("two").condition("Stalled").reason == "Conflict"
    finally:
        ctl.close()


def test_symlinked_parent_leading_outside_the_root_is_refused(git_repo, root, state_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "etc").symlink_to(outside)
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "x", path="/etc/x", content="x"),
                manifest("File", "y", path="/ok/y", content="y"),
            )
        }
    )
    result, _status, *_ = run(git_repo, root, state_dir)
    states = {o.resource: (o.state, o.error) for o in result.outcomes}
    assert states["File/x"][0] == "failed" and "outside the target root" in states["File/x"][1]
    assert states["File/y"][0] == "changed"
    assert list(outside.iterdir()) == []


def test_state_survives_a_restart(git_repo, root, state_dir):
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "a", path="/a", content="a"),
                manifest("File", "b", path="/b", content="b"),
            )
        }
    )
    run(git_repo, root, state_dir)  # one process
    git_repo.commit({"m/a.yaml": manifest("File", "a", path="/a", content="a")})
    _, _status, journal, inv = run(git_repo, root, state_dir)  # another: knows it owns /b
    assert not (root / "b").exists()
    assert set(inv) == {"File/a"}
    assert sum(1 for e in journal if e.event == "revision.applied") == 2


def test_purge_removes_undeclared_entries_only(git_repo, root, state_dir):
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("Directory", "conf", path="/etc/conf.d", purge=True),
                manifest("File", "one", path="/etc/conf.d/one.conf", content="1"),
            )
        }
    )
    (root / "etc/conf.d").mkdir(parents=True)
    (root / "etc/conf.d/stray.conf").write_text("stray")
    (root / "etc/conf.d/sub").mkdir()
    (root / "etc/conf.d/sub/deep").write_text("deep")
    result, *_ = run(git_repo, root, state_dir)
    assert result.converged
    assert sorted(os.listdir(root / "etc/conf.d")) == ["one.conf"]


class _BuggySpec(BaseModel):
    model_config = STRICT
    path: str
    dependsOn: list[str] = []


class _BuggyProvider:
    """A fake provider with a bug (it raises a plain RuntimeError): engine logic only."""

    kinds = ("Buggy",)

    def __init__(self, ctx: ProviderContext) -> None:
        self.ctx = ctx

    def claims(self, resource: Resource) -> tuple[str, ...]:
        return (resource.spec.path,)  # type: ignore[attr-defined]

    def record(self, resource: Resource) -> dict[str, str]:
        return {"path": resource.spec.path}  # type: ignore[attr-defined]

    def implicit_dependencies(self, resource: Resource, by_path: dict[str, str]) -> tuple[()]:
        return ()

    def read(self, resource: Resource) -> None:
        raise RuntimeError("boom")

    def plan(self, resource: Resource, observed: None) -> None:
        raise AssertionError("not reached: read raised")


def test_a_provider_bug_becomes_a_failed_outcome_and_the_pass_goes_on(git_repo, root, state_dir):
    registry = default_registry()
    registry.register("Buggy", _BuggySpec, _BuggyProvider)  # type: ignore[arg-type]
    git_repo.commit({"m/a.yaml": docs(
        manifest("Buggy", "b", path="/b"),
        manifest("File", "fine", path="/fine", content="ok"),
    )})
    ctl = Controller(make_config(git_repo, root, state_dir), registry)
    try:
        (result,) = ctl.run_once()
        states = {o.resource: (o.state, o.error) for o in result.outcomes}
        assert states["File/fine"] == ("changed", None)
        assert states["Buggy/b"][0] == "failed"
        assert "internal error in the Buggy provider: RuntimeError('boom')" in states["Buggy/b"][1]
        assert ctl.db.load_status("web").condition("Ready").reason == "ApplyFailed"
    finally:
        ctl.close()
    assert (root / "fine").read_text() == "ok"


def test_a_sensitive_files_content_never_reaches_plan_or_journal(git_repo, root, state_dir):
    secret = "db-password=hunter2-ZX81\n"
    git_repo.commit({"m/a.yaml": manifest("File", "creds", path="/etc/creds", content=secret,
                                          mode="0600", sensitive=True)})
    plan, *_ = run(git_repo, root, state_dir, dry_run=True)
    run(git_repo, root, state_dir)
    assert (root / "etc/creds").read_text() == secret
    (root / "etc/creds").write_text("db-password=changed-by-hand\n")
    result, _, journal, _ = run(git_repo, root, state_dir)
    assert result.converged and (root / "etc/creds").read_text() == secret
    (drift,) = [e for e in journal if e.event == "drift"]
    assert drift.detail["fields"] == [{"field": "content", "old": "(sensitive, 28 bytes)",
                                       "new": "(sensitive, 25 bytes)"}]
    shown = repr([plan.changes, [(e.message, e.detail) for e in journal]])
    for leak in ("hunter2", "changed-by-hand", hashlib.sha256(secret.encode()).hexdigest()[:12]):
        assert leak not in shown
