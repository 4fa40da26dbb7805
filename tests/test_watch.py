"""Drift undone as it happens: each drift case against a real agent process and real files.

The agents here poll Git every 300 s and resync every 300 s, so a restore within
seconds can only come from the inotify watches.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import GitRepo
from helpers import docs, manifest, start_agent, stop_process, wait_for
from setpoint.state import StateDB

FAST = 10.0  # seconds: far below the 300 s resync, far above a watch-driven restore


class RunningAgent:
    """A real ``setpoint agent`` with its API on a free loopback port."""

    def __init__(self, tmp: Path, repo: GitRepo, root: Path, state: Path, **extra: Any) -> None:
        self.root, self.state = root, state
        cfg: dict[str, Any] = {
            "root": str(root),
            "state": str(state),
            "listen": "127.0.0.1:0",
            "retry": {"base": 60, "max": 120},
            "sources": [{"name": "infra", "url": repo.url, "ref": "main", "interval": 300}],
            "stacks": [{"name": "web", "source": "infra", "path": "m", "resync": 300}],
        }
        env_extra = extra.pop("env", {})
        cfg.update(extra)
        path = tmp / "agent.json"
        path.write_text(json.dumps(cfg))
        self.log = tmp / "agent.log"
        old = dict(os.environ)
        os.environ.update(env_extra)
        try:
            self.proc = start_agent("--config", path, log=self.log)
        finally:
            os.environ.clear()
            os.environ.update(old)
        info = wait_for(self._info, what=f"agent API up (log: {self.log})")
        self.url = f"http://{info['listen']}"

    def _info(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited: {self.log.read_text()}")
        try:
            info = json.loads((self.state / "agent.json").read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == self.proc.pid else None

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/status", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def stack(self) -> dict[str, Any]:
        return next(s for s in self.status()["stacks"] if s["stack"] == "web")

    def watching(self) -> bool:
        st = self.status()
        w = st["agent"]["watch"].get("web")
        return bool(w and w["resources"])

    def passes(self) -> dict[str, Any]:
        p: dict[str, Any] = self.status()["agent"]["passes"]["web"]
        return p

    def journal(self, *events: str) -> list[dict[str, Any]]:
        db = StateDB(self.state)  # a reader beside the agent (WAL), quicker than the CLI
        try:
            entries = db.history(limit=5000, events=events or None)
        finally:
            db.close()
        return [dataclasses.asdict(e) for e in entries]

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)


@pytest.fixture
def run_agent(tmp_path: Path, git_repo: GitRepo, root: Path, state_dir: Path):  # type: ignore[no-untyped-def]
    agents: list[RunningAgent] = []

    def start(**extra: Any) -> RunningAgent:
        a = RunningAgent(tmp_path, git_repo, root, state_dir, **extra)
        agents.append(a)
        wait_for(a.watching, what="watches set up")
        return a

    yield start
    for a in agents:
        a.stop()


def read(p: Path) -> str | None:
    try:
        return p.read_text()
    except OSError:
        return None


def mode(p: Path) -> int | None:
    try:
        return stat.S_IMODE(os.lstat(p).st_mode)
    except OSError:
        return None


def reverted_by_watch(agent: RunningAgent, rid: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        hits = [e for e in agent.journal("revert") if e["resource"] == rid]
        return hits[-1] if hits else None

    entry: dict[str, Any] = wait_for(find, timeout=FAST, what=f"revert of {rid} journalled")
    assert entry["detail"]["trigger"] == "watch"
    ms = entry["detail"]["restore_ms"]  # event -> restored, rounded to the microsecond
    assert isinstance(ms, float) and 0 < ms < FAST * 1000, entry
    return entry


def test_content_edited_in_place_is_restored(git_repo, root, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "conf", path="/etc/app.conf", content="a=1\n")})
    agent = run_agent()
    f = root / "etc/app.conf"
    with open(f, "r+") as fh:  # same inode, new bytes
        fh.write("a=2")
    wait_for(lambda: read(f) == "a=1\n", timeout=FAST, what="in-place edit undone")
    entry = reverted_by_watch(agent, "File/conf")
    drift = [e for e in agent.journal("drift") if e["resource"] == "File/conf"]
    assert drift and "-a=2" in drift[-1]["detail"]["diff"]
    assert entry["ts"] >= drift[-1]["ts"]


def test_deleted_file_is_recreated(git_repo, root, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "conf", path="/etc/app.conf", content="x\n")})
    agent = run_agent()
    (root / "etc/app.conf").unlink()
    wait_for(lambda: read(root / "etc/app.conf") == "x\n", timeout=FAST, what="file recreated")
    reverted_by_watch(agent, "File/conf")


def test_file_replaced_by_rename_like_vim_is_restored(git_repo, root, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "conf", path="/etc/app.conf", content="x\n")})
    agent = run_agent()
    tmp = root / "etc/.app.conf.swp"
    tmp.write_text("saved by an editor\n")
    os.rename(tmp, root / "etc/app.conf")
    wait_for(lambda: read(root / "etc/app.conf") == "x\n", timeout=FAST, what="rename undone")
    reverted_by_watch(agent, "File/conf")


def test_mode_and_owner_changes_are_restored(git_repo, root, run_agent):
    git_repo.commit(
        {
            "m/a.yaml": manifest(
                "File", "key", path="/etc/key", content="k\n", mode="0600", owner="0", group="0"
            )
        }
    )
    agent = run_agent()
    f = root / "etc/key"
    os.chmod(f, 0o666)
    wait_for(lambda: mode(f) == 0o600, timeout=FAST, what="chmod undone")
    if os.geteuid() == 0:
        os.chown(f, 4321, 4321)
        wait_for(lambda: os.lstat(f).st_uid == 0, timeout=FAST, what="chown undone")
        assert os.lstat(f).st_gid == 0
    reverted_by_watch(agent, "File/key")


def test_managed_directory_removed_and_recreated_is_restored_with_contents(
    git_repo, root, run_agent
):
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("Directory", "d", path="/srv/d", mode="0750"),
                manifest("File", "inner", path="/srv/d/inner.txt", content="in\n"),
            )
        }
    )
    run_agent()
    gone = root.parent / "gone-d"
    os.rename(root / "srv/d", gone)  # the agent is quick: remove outside the root
    shutil.rmtree(gone)
    (root / "srv/d").mkdir(mode=0o755, exist_ok=True)
    os.chmod(root / "srv/d", 0o755)
    wait_for(
        lambda: mode(root / "srv/d") == 0o750 and read(root / "srv/d/inner.txt") == "in\n",
        timeout=FAST,
        what="directory mode and contents restored",
    )
    # And the new directory is watched in turn.
    (root / "srv/d/inner.txt").write_text("changed\n")
    wait_for(lambda: read(root / "srv/d/inner.txt") == "in\n", timeout=FAST, what="re-watched")


def test_a_path_that_does_not_exist_yet_is_watched_through_its_nearest_parent(
    git_repo, root, run_agent
):
    # /opt/app cannot be created while /opt is a file: the resource fails (retry in 60 s).
    (root / "opt").write_text("in the way")
    git_repo.commit({"m/a.yaml": manifest("File", "deep", path="/opt/app/conf/x", content="x\n")})
    agent = run_agent()
    wait_for(lambda: agent.stack()["resources"].get("File/deep") == "failed", what="failed first")
    (root / "opt").unlink()  # the root is the nearest existing parent: its watch sees this
    wait_for(lambda: read(root / "opt/app/conf/x") == "x\n", timeout=FAST, what="created at once")
    # Removing the whole chain again: the file comes back through the parent's watch.
    os.rename(root / "opt", root.parent / "gone-opt")
    wait_for(lambda: read(root / "opt/app/conf/x") == "x\n", timeout=FAST, what="recreated")


def test_a_burst_of_writes_is_coalesced_and_ends_restored(git_repo, root, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "conf", path="/etc/app.conf", content="x\n")})
    agent = run_agent()
    before = agent.passes()["partial"]
    f = root / "etc/app.conf"
    writes = 200
    for i in range(writes):
        with open(f, "a") as fh:
            fh.write(f"line {i}\n")
    wait_for(lambda: read(f) == "x\n", timeout=FAST, what="burst undone")
    wait_for(lambda: not agent.passes()["queued"], what="queue drained")
    passes = agent.passes()["partial"] - before
    assert 1 <= passes < writes / 4, passes


def test_a_watch_that_cannot_be_set_up_falls_back_to_polling_and_is_retried() -> None:
    from setpoint.engine.desired import Desired
    from setpoint.engine.graph import order_resources
    from setpoint.engine.watch import StackWatches
    from setpoint.model.resource import Location, Resource

    class Flaky:
        """A provider whose watch fails until ``ok`` (engine logic only: no target)."""

        ok = False

        def watch(self, resources: list[Resource], notify: object) -> object:
            if not self.ok:
                raise RuntimeError("inotify is unavailable")

            class W:
                def close(self) -> None:
                    pass

            return W()

        def unwatched(self) -> set[str]:  # the Watchable protocol's other half
            return set()

    flaky = Flaky()
    rs = [
        Resource(kind="Thing", name=n, spec=None, location=Location("m.yaml", 1))  # type: ignore[arg-type]
        for n in ("a", "b")
    ]
    desired = Desired("0" * 40, order_resources(rs, lambda r: ()))
    w = StackWatches("s", {"Thing": flaky}, lambda ids: None)  # type: ignore[dict-item]
    w.update(desired)
    assert w.unwatched() == {"Thing/a", "Thing/b"}  # polled by the agent meanwhile
    w.retry()
    assert w.unwatched() == {"Thing/a", "Thing/b"}
    flaky.ok = True
    w.retry()
    assert w.unwatched() == set()


def test_a_newly_declared_file_is_guarded_from_its_first_apply(
    git_repo: GitRepo, root: Path, run_agent: Any
) -> None:
    """An edit made right after the create, before the watch existed, is still undone."""
    git_repo.commit({"m/a.yaml": manifest("File", "a", path="/etc/a", content="a\n")})
    agent = run_agent(sources=[{"name": "infra", "url": git_repo.url, "interval": 0.2}])
    wait_for(lambda: "stack web: watching" in agent.log.read_text(), timeout=FAST, what="up")
    for i in range(5):
        git_repo.commit(
            {f"m/n{i}.yaml": manifest("File", f"n{i}", path=f"/etc/n{i}", content="new\n")}
        )
        f = root / f"etc/n{i}"
        wait_for(f.exists, timeout=FAST, interval=0.0005, what=f"n{i} created")
        f.write_text("edited at once\n")  # most likely before the pass set up its watch
        wait_for(lambda f=f: read(f) == "new\n", timeout=FAST, what=f"n{i} restored")
