"""The Service kind with real processes and real probes on loopback."""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import GitRepo
from helpers import cli, docs, manifest, start_agent, wait_for
from setpoint.atomic import write_json_atomic
from setpoint.providers.base import ProviderEvent
from setpoint.providers.services.common import start_time
from setpoint.providers.services.service_proc import Handle, log_files
from setpoint.providers.services.service_spec import ServiceSpec
from setpoint.providers.services.service_supervisor import Stopping, Supervisor
from setpoint.state import StateDB
from svc_support import Env, body, free_port, get, kill_recorded, release_doc, service_doc


@pytest.fixture
def env(git_repo: GitRepo, root: Path, state_dir: Path) -> Iterator[Env]:
    e = Env(git_repo, root, state_dir)
    yield e
    e.close()


def deploy(env: Env, version: str, port: int, broken: bool = False, **svc: object) -> str:
    path, data = env.ship(version, broken)
    return env.commit(
        {
            "m/app.yaml": docs(
                release_doc("app", version, data, path), service_doc("app", port, **svc)
            )
        },
        message=f"app {version}",
    )


def test_service_starts_from_its_release_and_is_healthy(env: Env) -> None:
    port = free_port()
    deploy(env, "1.0", port)
    result = env.sync()
    assert result.converged, result
    text = body(port)  # ready when apply returned: no waiting needed
    current = os.path.realpath(env.state / "releases/app/current")
    assert f"version=1.0 config= release={current}" in text
    status = env.ctl.db.load_status("web")
    assert status is not None
    assert status.health["Service/app"]["health"] == "Healthy"
    assert "200" in status.health["Service/app"]["message"]
    text_status = cli("status", "--state", env.state).stdout  # the text form shows it too
    assert f"Healthy: Service/app (GET http://127.0.0.1:{port}/health → 200)" in text_status
    assert "Healthy: Release/app (version 1.0 in place)" in text_status
    rec_dir = env.state / "services/app"
    assert oct(rec_dir.stat().st_mode & 0o777) == "0o700"
    assert oct((rec_dir / "record.json").stat().st_mode & 0o777) == "0o600"
    again = env.sync()
    assert again.converged and not again.changes
    assert f"pid={env.pid('app')}" in body(port)


def test_version_bump_becomes_ready_and_serves_the_new_version(env: Env) -> None:
    port = free_port()
    deploy(env, "1.0", port)
    env.sync()
    old_pid = env.pid("app")
    deploy(env, "2.0", port)
    result = env.sync()
    assert result.converged, result
    assert "version=2.0" in body(port)
    assert env.pid("app") != old_pid
    assert len(os.listdir(env.state / "releases/app/versions")) == 2  # 1.0 kept for rollback
    events = [e.event for e in env.ctl.db.history(limit=100) if e.resource == "Service/app"]
    assert events == ["apply", "apply"]  # a new release is a new declaration, not drift
    status = env.ctl.db.load_status("web")
    assert status is not None and status.condition("Ready").status is True


def test_a_release_that_never_becomes_ready_is_rolled_back_and_stalls(env: Env) -> None:
    port = free_port()
    deploy(env, "1.0", port)
    env.sync()
    good_pid = env.pid("app")
    current = env.state / "releases/app/current"
    good_link = os.readlink(current)
    bad = deploy(env, "2.0", port, broken=True, readyTimeout=1.5)
    result = env.sync()
    (svc,) = [o for o in result.outcomes if o.resource == "Service/app"]
    assert svc.state == "failed" and svc.stall == "RolledBack"
    assert "version=1.0" in body(port)  # the last healthy release serves again
    assert env.pid("app") != good_pid
    # The release's ``current`` is put back too, and held there (not switched again).
    assert os.readlink(current) == good_link
    release_applies = _events(env, "Release/app")
    status = env.ctl.db.load_status("web")
    assert status is not None
    stalled = status.condition("Stalled")
    assert stalled is not None and stalled.status and stalled.reason == "RolledBack"
    assert bad[:12] in stalled.message and "rolled back" in stalled.message
    # The same failing declaration is not retried: no restart on the next passes, even
    # at a later commit that changes something else; the failing revision stays named.
    pid = env.pid("app")
    for i in range(2):
        env.commit({f"m/other{i}.yaml": manifest("File", f"o{i}", path=f"/o{i}", content="x")})
        again = env.sync()
        assert env.pid("app") == pid
        status = env.ctl.db.load_status("web")
        stalled = status.condition("Stalled") if status else None
        assert stalled is not None and f"revision {bad[:12]} failed its rollout" in stalled.message
    assert again.count("failed") == 1
    (rel,) = [o for o in again.outcomes if o.resource == "Release/app"]
    assert rel.state == "in_sync" and os.readlink(current) == good_link
    assert _events(env, "Release/app") == release_applies  # no flapping
    status = env.ctl.db.load_status("web")
    assert status is not None
    held = status.health["Release/app"]
    assert held["health"] == "Degraded" and "held at version 1.0" in held["message"], held
    # A later commit is tried normally.
    deploy(env, "3.0", port, readyTimeout=15)
    fixed = env.sync()
    assert fixed.converged, fixed
    assert "version=3.0" in body(port)
    assert os.readlink(current).startswith("versions/3.0-")
    assert not (env.state / "releases/app/hold.json").exists()
    status = env.ctl.db.load_status("web")
    assert status is not None and status.condition("Stalled") is None
    assert status.health["Release/app"]["health"] == "Healthy"


def _events(env: Env, rid: str) -> list[str]:
    return [e.event for e in env.ctl.db.history(limit=200) if e.resource == rid]


def test_kill_9_is_restarted_promptly_and_reported_to_the_watch(env: Env) -> None:
    port = free_port()
    deploy(env, "1.0", port)
    result = env.sync()
    assert result.converged
    events: list[set[str]] = []
    provider = env.services
    watcher = provider.watch([env.resource("Service/app")], events.append)
    pid = env.pid("app")
    assert pid is not None
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: env.pid("app") != pid and "version=1.0" in body(port), timeout=10)
    took = time.monotonic() - t0
    assert took < 5, took
    assert {"Service/app"} in events
    res = env.resource("Service/app")
    wait_for(lambda: "restarted 1x, last killed by SIGKILL" in env.services.health(res)[1])
    after = env.sync(only={"Service/app"})  # what the agent does on the notification
    assert after.converged, after
    watcher.close()


def test_restart_on_a_config_change(env: Env) -> None:
    port = free_port()
    conf = {"path": "/etc/app.conf", "content": "colour=blue\n"}
    path, data = env.ship("1.0")
    svc = service_doc(
        "app", port, env={"PORT": str(port), "CONFIG": str(env.root / "etc/app.conf")},
        restartOn=["File/conf"],
    )  # fmt: skip
    rel = release_doc("app", "1.0", data, path)
    env.commit({"m/app.yaml": docs(rel, svc, manifest("File", "conf", **conf))})
    result = env.sync()
    assert [o.resource for o in result.outcomes][-1] == "Service/app"  # after its config
    assert "config=colour=blue" in body(port)
    pid = env.pid("app")
    conf["content"] = "colour=green\n"
    env.commit({"m/app.yaml": docs(rel, svc, manifest("File", "conf", **conf))})
    result = env.sync()
    assert result.converged, result
    assert env.pid("app") != pid
    assert "config=colour=green" in body(port)


def test_reload_on_a_config_change_sends_sighup(env: Env) -> None:
    port = free_port()
    conf = {"path": "/etc/app.conf", "content": "a\n"}
    path, data = env.ship("1.0")
    rel = release_doc("app", "1.0", data, path)
    svc = service_doc("app", port, reloadOn=["File/conf"])
    env.commit({"m/app.yaml": docs(rel, svc, manifest("File", "conf", **conf))})
    env.sync()
    pid = env.pid("app")
    assert body(port, "/hups") == "0"
    conf["content"] = "b\n"
    env.commit({"m/app.yaml": docs(rel, svc, manifest("File", "conf", **conf))})
    result = env.sync()
    assert result.converged, result
    wait_for(lambda: body(port, "/hups") == "1", timeout=5, what="SIGHUP seen")
    assert env.pid("app") == pid
    assert env.sync().changes == []


def test_removed_from_git_stops_gracefully_and_collects_the_release(env: Env) -> None:
    port = free_port()
    deploy(env, "1.0", port)
    env.sync()
    pid = env.pid("app")
    assert pid is not None
    env.commit({"m/app.yaml": manifest("File", "other", path="/other", content="x")})
    result = env.sync()
    assert result.converged, result
    assert {p.resource for p in result.prunes} == {"Service/app", "Release/app"}
    assert get(port) is None
    assert start_time(pid) is None
    log = (env.state / "services/app/output.log").read_text()
    assert "stopping on SIGTERM" in log  # graceful: the stop signal, not SIGKILL
    assert not (env.state / "releases/app").exists()


def test_a_recycled_pid_is_never_signalled(env: Env) -> None:
    port = free_port()
    deploy(env, "1.0", port)
    env.sync()
    env.close()  # the agent goes away; its service too (killed by the test)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rec_path = env.state / "services/app/record.json"
        rec = env.record("app")
        real = start_time(stranger.pid)
        assert real is not None
        rec.update(pid=stranger.pid, started=real + 12345)  # same pid, another process
        write_json_atomic(rec_path, rec)
        fresh = Env(env.repo, env.root, env.state)
        try:
            result = fresh.sync()
            assert result.converged, result
            assert fresh.pid("app") != stranger.pid
            assert "version=1.0" in body(port)
            fresh.commit({"m/app.yaml": manifest("File", "x", path="/x", content="x")})
            rec = fresh.record("app")
            rec.update(pid=stranger.pid, started=real + 1)
            # the running service is stopped through its supervisor; the stranger untouched
            fresh.sync()
            assert stranger.poll() is None
            write_json_atomic(rec_path, rec)
            assert fresh.services.delete("Service", {"name": "app"}).endswith("not running")
            assert stranger.poll() is None
        finally:
            fresh.close()
    finally:
        stranger.kill()
        stranger.wait()


def test_restart_policy_on_failure_leaves_a_clean_exit_alone(env: Env) -> None:
    marker = env.root / "runs"
    cmd = f"echo run >> {marker}; exit 0"
    env.commit(
        {
            "m/s.yaml": manifest(
                "Service",
                "job",
                command=[cmd],
                shell=True,
                restart="on-failure",
                backoff={"initialSeconds": 0.05, "maxSeconds": 0.1},
            )
        }
    )
    env.sync()
    wait_for(lambda: env.record("job").get("exit") == "exited with status 0", timeout=5)
    result = env.sync()
    assert result.converged and not result.changes
    assert marker.read_text() == "run\n"


def test_crash_loop_backs_off_exponentially(env: Env) -> None:
    marker = env.root / "runs"
    cmd = f"echo $(date +%s.%N) >> {marker}; exit 3"
    env.commit(
        {
            "m/s.yaml": manifest(
                "Service",
                "crash",
                command=[cmd],
                shell=True,
                backoff={"initialSeconds": 0.2, "maxSeconds": 0.4},
            )
        }
    )
    env.sync()
    wait_for(lambda: marker.exists() and len(marker.read_text().split()) >= 5, timeout=10)
    times = [float(x) for x in marker.read_text().split()[:5]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] < 0.2  # the first restart is immediate
    assert 0.15 < gaps[1] < 0.6 and 0.3 < gaps[2] < 0.8 and 0.3 < gaps[3] < 0.8  # capped
    res = env.resource("Service/crash")
    health = wait_for(lambda: (h := env.services.health(res))[0] == "Degraded" and h, timeout=5)
    assert "exited with status 3; restarting in" in health[1]


def test_logs_are_rotated_and_shown_by_the_cli(env: Env) -> None:
    log = env.state / "services/chatty/output.log"
    # Three bursts of numbered lines; after each of the first two (5 KiB > maxBytes) the
    # writer waits for that rotation (output.log.1, then .2), so two rotations happen.
    burst = 'while [ $i -lt {} ]; do echo line-$i-xxxxxxxxxxxxxxxx; i=$((i+1)); done; '
    wait = 'while [ ! -e "{}" ]; do sleep 0.05; done; '
    cmd = "i=0; " + burst.format(200) + wait.format(f"{log}.1") + burst.format(400)
    cmd += wait.format(f"{log}.2")
    cmd += burst.format(410) + "sleep 60"
    env.commit(
        {
            "m/s.yaml": manifest(
                "Service",
                "chatty",
                command=[cmd],
                shell=True,
                logs={"maxBytes": 4096, "keep": 2},
            )
        }
    )
    env.sync()
    logs = env.state / "services/chatty"
    wait_for(lambda: "line-409-" in log.read_text(), timeout=10, what="the last burst")
    files = log_files(env.state, "chatty")
    assert [p.name for p in files] == ["output.log.2", "output.log.1", "output.log"]
    for p in logs.glob("output.log*"):
        assert p.stat().st_mode & 0o077 == 0
    lines = "".join(p.read_text() for p in files).splitlines()
    assert lines == [f"line-{i}-xxxxxxxxxxxxxxxx" for i in range(410)]  # none lost or doubled
    out = cli("logs", "chatty", "--state", env.state, "-n", "5", check=0).stdout
    assert out.splitlines() == lines[-5:]


def test_failing_liveness_restarts_the_process(env: Env) -> None:
    port = free_port()
    dead = env.root / "dead"
    live = {
        "exec": {"command": ["/bin/sh", "-c", f"test ! -e {dead}"]},
        "periodSeconds": 0.05,
        "failureThreshold": 2,
    }
    deploy(env, "1.0", port, liveness=live)
    assert env.sync().converged
    pid = env.pid("app")
    dead.write_text("x")
    wait_for(lambda: env.pid("app") != pid, timeout=10, what="a restart on liveness")
    dead.unlink()
    wait_for(lambda: "version=1.0" in body(port), timeout=10)
    res = env.resource("Service/app")
    wait_for(lambda: env.services.health(res)[0] == "Healthy", timeout=10)


def _status(state: Path) -> dict[str, Any]:
    """The stack's status as ``setpoint status --json`` shows it (read in process: faster)."""
    if not (state / "setpoint.db").exists():
        return {}
    db = StateDB(state)
    try:
        st = db.load_status("web")
    finally:
        db.close()
    return st.to_json() if st else {}


def _repair(state: Path, pid: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The journal's drift and revert entries for the exit of ``pid`` (via the CLI)."""
    out = cli("history", "--state", state, "--json", "-n", "50", check=0).stdout
    entries = [e for e in json.loads(out) if e["resource"] == "Service/app"]
    entries.sort(key=lambda e: e["id"])
    for i, e in enumerate(entries):
        if e["event"] == "drift" and e["detail"].get("pid") == pid:
            later = [r for r in entries[i + 1 :] if r["event"] == "revert"]
            return (e, later[0]) if later else None
    return None


def test_agent_restart_adopts_healthy_services_without_restarting(
    git_repo: GitRepo, root: Path, state_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = Env(git_repo, root, state_dir)
    deploy(env, "1.0", port)
    env.ctl.close()
    # Long poll and resync: anything after the first pass is event-driven.
    args = ["--repo", git_repo.url, "--path", "m", "--stack", "web", "--root", root,
            "--state", state_dir, "--interval", "300", "--resync", "300",
            "--listen", "127.0.0.1:0"]  # fmt: skip
    agent = start_agent(*args, log=tmp_path / "agent1.log")
    try:
        wait_for(lambda: "version=1.0" in body(port), timeout=30, what="first start")
        pid = env.pid("app")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        assert f"pid={pid}" in body(port)  # survived the agent
        before = _status(state_dir)["last_pass"]
        agent = start_agent(*args, log=tmp_path / "agent2.log")
        first = wait_for(
            lambda: (st := _status(state_dir)).get("last_pass", 0) > before and st,
            timeout=30,
            what="the new agent's first pass",
        )
        assert first["health"]["Service/app"]["health"] == "Healthy"
        log2 = tmp_path / "agent2.log"
        wait_for(lambda: "watching" in log2.read_text(), timeout=10, what="adoption (watch)")
        assert env.pid("app") == pid and f"pid={pid}" in body(port)  # adopted, not restarted
        # The adopted process is supervised through its pidfd: kill -9 brings it back
        # promptly, and the exit is reported to the agent (a pass long before the resync).
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: env.pid("app") != pid and "version=1.0" in body(port), timeout=10)
        wait_for(
            lambda: _status(state_dir).get("last_pass", 0) > first["last_pass"],
            timeout=10,
            what="an event-driven pass",
        )
        # The supervisor's repairs reach the journal (drained by the agent's passes). An
        # adopted process is not the agent's child: its exit status is unknown.
        new_pid = env.pid("app")
        drift, revert = wait_for(lambda: _repair(state_dir, pid), timeout=10, what="journal")
        assert "exit status unknown" in drift["message"], drift
        assert f"restarted (pid {new_pid}), ready after" in revert["message"], revert
        assert drift["revision"] and revert["detail"]["restore_ms"] > 0
        # The restarted process is the agent's child: kill -9 is reported as such.
        os.kill(new_pid, signal.SIGKILL)
        drift, revert = wait_for(lambda: _repair(state_dir, new_pid), timeout=10, what="journal")
        assert drift["message"] == (
            f"Service/app killed by SIGKILL (pid {new_pid}) outside setpoint"
        ), drift
        assert drift["detail"]["status"] == -signal.SIGKILL
        assert "ready after" in revert["message"] and f"pid={env.pid('app')}" in body(port)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        kill_recorded(state_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")
def test_user_runs_the_process_as_that_user(env: Env) -> None:
    env.commit(
        {"m/s.yaml": manifest("Service", "idle", command=["/bin/sleep", "60"], user="nobody")}
    )
    result = env.sync()
    assert result.converged, result
    pid = env.pid("idle")
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(pwd.getpwnam("nobody").pw_uid)] * 4


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")
def test_user_runs_from_a_release(git_repo: GitRepo, root: Path) -> None:
    # A state dir whose parents are traversable, as /var/lib is (pytest's tmp is 0700).
    state = Path(tempfile.mkdtemp(prefix="setpoint-state-"))
    env = Env(git_repo, root, state)
    try:
        path, data = env.ship("1.0")
        # An absolute path into the release: every directory above it must be traversable.
        cmd = 'read v < "$SETPOINT_RELEASE/version.txt" || exit 3; echo "has $v"; exec sleep 60'
        svc = manifest(
            "Service", "idle", command=[cmd], shell=True, user="nobody", release="Release/app"
        )
        env.commit({"m/s.yaml": docs(release_doc("app", "1.0", data, path), svc)})
        result = env.sync()
        assert result.converged, result
        log = state / "services/idle/output.log"
        wait_for(lambda: "has 1.0" in log.read_text(), timeout=10, what="the release read")
        pid = env.pid("idle")
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1] == str(pwd.getpwnam("nobody").pw_uid)
        assert oct(state.stat().st_mode & 0o777) == "0o711"  # traversable, not listable
        assert oct((state / "services").stat().st_mode & 0o777) == "0o700"
    finally:
        env.close()
        shutil.rmtree(state, ignore_errors=True)


def test_logs_follow_shows_new_output(env: Env) -> None:
    cmd = "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.05; done"
    env.commit({"m/s.yaml": manifest("Service", "ticker", command=[cmd], shell=True)})
    env.sync()
    log = env.state / "services/ticker/output.log"
    wait_for(lambda: log.exists() and "tick-2" in log.read_text(), timeout=10)
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "setpoint",
            "logs",
            "ticker",
            "--state",
            str(env.state),
            "-n",
            "1",
            "-f",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        first = int(follow.stdout.readline().strip().split("-")[1])
        later = [follow.stdout.readline().strip() for _ in range(3)]
        assert [int(x.split("-")[1]) for x in later] == [first + 1, first + 2, first + 3]
    finally:
        follow.terminate()
        follow.wait(10)


def test_an_adopted_process_exit_has_unknown_status_and_the_journal_says_why(
    tmp_path: Path,
) -> None:
    """An adopted process is not the agent's child: its exit status cannot be known."""
    proc = subprocess.Popen(["/bin/sleep", "60"])
    started = start_time(proc.pid)
    assert started is not None
    handle = Handle.adopt(proc.pid, started)
    assert handle is not None
    events: list[ProviderEvent] = []

    class Host:
        def notify(self, name: str) -> None:
            pass

        def log_path(self, name: str) -> Path:
            return tmp_path / "output.log"

        def respawn(self, name: str, stopping: threading.Event | None = None) -> Handle:
            assert stopping is not None
            stopping.wait()  # the restart itself is not under test: wait for the shutdown
            raise Stopping

        def record_exit(self, name: str, exit: str, code: int | None) -> None:
            pass

        def probe_context(self, name: str) -> tuple[None, None]:
            return None, None

        def emit(self, event: ProviderEvent) -> None:
            events.append(event)

    spec = ServiceSpec.model_validate({"command": ["/bin/sleep"], "restart": "on-failure"})
    sup = Supervisor(Host(), "job", spec, handle)
    try:
        proc.terminate()
        proc.wait()  # the test, not the supervisor, is the parent: it gets the status
        (drift,) = wait_for(lambda: events, timeout=10, what="the exit event")
        assert drift.event == "drift" and drift.resource == "Service/job"
        assert "exit status unknown" in drift.message
        assert "on-failure counts that as a failure" in drift.message
        assert not sup.gave_up  # unknown counts as a failure: restarted, not given up
    finally:
        sup.shutdown(stop_process=False)
