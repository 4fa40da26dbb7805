"""One agent per state dir (flock), stale locks, and the modes of the agent's own files."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

from helpers import cli, manifest, start_agent, stop_process, wait_for
from setpoint.state import StateDB


def _args(repo, root, state):  # type: ignore[no-untyped-def]
    return ["--repo", repo.url, "--path", "m", "--stack", "web", "--root", root, "--state", state]


def _ready(state: Path) -> bool:
    if not (state / "setpoint.db").exists():
        return False
    db = StateDB(state)
    try:
        st = db.load_status("web")
        ready = st.condition("Ready") if st else None
        return bool(ready and ready.status)
    finally:
        db.close()


def test_second_agent_refuses_and_a_stale_lock_does_not_block(git_repo, root, state_dir, tmp_path):
    git_repo.commit({"m/a.yaml": manifest("File", "f", path="/etc/f", content="x\n")})
    first = start_agent(*_args(git_repo, root, state_dir), "--interval", "0.5", log=tmp_path / "1")
    try:
        wait_for(lambda: _ready(state_dir), what="the first agent to apply")
        assert f"pid {first.pid}" in (state_dir / "agent.lock").read_text()

        out = cli("agent", *_args(git_repo, root, state_dir), check=1, timeout=60)
        msg = out.stdout + out.stderr
        assert f"is in use by pid {first.pid}" in msg
        assert "only one setpoint agent may own a state dir" in msg
        out = cli("apply", *_args(git_repo, root, state_dir), check=1, timeout=60)
        assert f"is in use by pid {first.pid}" in out.stdout + out.stderr
        assert first.poll() is None  # the owner is unaffected

        first.send_signal(signal.SIGKILL)  # leaves agent.lock behind, with its pid in it
        first.wait(timeout=30)
        assert (state_dir / "agent.lock").exists()
        (root / "etc/f").write_text("drift\n")
        third = start_agent(
            *_args(git_repo, root, state_dir), "--interval", "0.5", log=tmp_path / "3"
        )
        try:
            wait_for(
                lambda: (root / "etc/f").read_text() == "x\n",
                what="the restarted agent to take the lock and revert drift",
            )
            assert f"pid {third.pid}" in (state_dir / "agent.lock").read_text()
        finally:
            stop_process(third)
    finally:
        stop_process(first)


def test_the_agents_own_files_are_not_readable_by_others(git_repo, root, state_dir, tmp_path):
    git_repo.commit({"m/a.yaml": manifest("File", "f", path="/etc/f", content="x\n")})
    old = os.umask(0)  # the most careless umask: the agent must not depend on it
    try:
        cli("apply", *_args(git_repo, root, state_dir), check=0)
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(os.lstat(p).st_mode)

    assert mode(state_dir) == 0o700
    for name in ("setpoint.db", "agent.lock"):
        assert mode(state_dir / name) == 0o600, name
    for extra in state_dir.glob("setpoint.db-*"):
        assert mode(extra) & 0o077 == 0, extra
    # 0700 itself: the state dir may become 0711 for services running from releases.
    assert mode(state_dir / "sources") == 0o700
    cache = state_dir / "sources" / "repo"
    assert mode(cache) == 0o700
    assert mode(cache / "lock") == 0o600
    # Everything else (mirror, exported trees) sits below a 0700 directory: no other
    # user can reach it whatever its own mode. Nothing directly in the state dir is open.
    for p in state_dir.iterdir():
        if p.is_dir():
            assert mode(p) & 0o077 == 0 or all(
                mode(c) & 0o077 == 0 for c in p.iterdir() if c.is_dir()
            ), p
        else:
            assert mode(p) & 0o077 == 0, p
