"""The fleet bus against a real nats-server and real agent processes.

Agents here poll Git once an hour, so a commit applied within seconds can only have
come over NATS (a webhook on another agent, or the relay). Status entries are read
with the real ``setpoint fleet status`` command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import GitRepo
from helpers import cli, manifest, stop_process, wait_for
from nats_support import NatsServer, free_port, nats_server  # noqa: F401 (the fixture)
from test_watch import FAST, RunningAgent, read
from test_webhook import SECRET, post, sign

HOUR = {"name": "infra", "ref": "main", "interval": 3600}


def motd(text: str) -> dict[str, str]:
    return {"m/a.yaml": manifest("File", "motd", path="/etc/motd", content=text)}


class Fleet:
    """Real agents, each with its own root, state dir, host name and labels."""

    def __init__(self, tmp: Path, repo: GitRepo, server: NatsServer) -> None:
        self.tmp, self.repo, self.server = tmp, repo, server
        self.agents: list[RunningAgent] = []

    def start(self, host: str, nats: dict[str, Any] | None = None, **extra: Any) -> RunningAgent:
        d = self.tmp / host
        (d / "root").mkdir(parents=True)
        cfg: dict[str, Any] = {
            "host": host,
            "sources": [{**HOUR, "url": self.repo.url}],
            "nats": {"url": self.server.url, **(nats or {})},
        }
        cfg.update(extra)
        a = RunningAgent(d, self.repo, d / "root", d / "state", **cfg)
        self.agents.append(a)
        return a

    def stop(self) -> None:
        for a in self.agents:
            a.stop()


@pytest.fixture
def fleet(tmp_path: Path, git_repo: GitRepo, nats_server: NatsServer):  # noqa: F811
    git_repo.commit(motd("v1\n"))
    f = Fleet(tmp_path, git_repo, nats_server)
    yield f
    f.stop()


def bus(agent: RunningAgent) -> dict[str, Any]:
    info: dict[str, Any] = agent.status()["agent"]["fleetbus"]
    return info


def connected(agent: RunningAgent) -> bool:
    return bool(bus(agent)["connected"])


def applied(agent: RunningAgent, text: str) -> bool:
    return read(agent.root / "etc/motd") == text


def fleet_config(tmp: Path, server: NatsServer) -> Path:
    p = tmp / "cli.yaml"
    p.write_text(json.dumps({
        "state": str(tmp / "cli-state"),
        "sources": [{"name": "x", "url": "/nonexistent"}],
        "stacks": [{"name": "x", "source": "x"}],
        "nats": {"url": server.url},
    }))
    return p


def fleet_status(tmp: Path, server: NatsServer, *args: str) -> list[dict[str, Any]]:
    out = cli("fleet", "status", "--config", fleet_config(tmp, server), "--json", *args, check=0)
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_a_webhook_on_one_agent_reaches_an_agent_no_webhook_reaches(fleet, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    hooked = fleet.start("edge-1", webhookSecretFile=str(secret))
    behind_nat = fleet.start("nat-1")
    for a in (hooked, behind_nat):
        wait_for(lambda a=a: applied(a, "v1\n") and connected(a), what="started")
    new = fleet.repo.commit(motd("v2\n"))
    body = json.dumps({"ref": "refs/heads/main", "after": new,
                       "repository": {"clone_url": fleet.repo.url}}).encode()
    status, _ = post(hooked.url, body, {"X-Hub-Signature-256": sign(body)})
    assert status == 202
    wait_for(lambda: applied(behind_nat, "v2\n"), timeout=FAST, what="commit fanned out")
    assert bus(hooked)["published"] == 1
    assert bus(behind_nat)["received"] == 1 and bus(behind_nat)["acted"] == 1
    assert behind_nat.journal("revision.fetched")[-1]["revision"] == new


def test_a_notice_for_another_branch_or_a_commit_already_fetched_costs_nothing(fleet, tmp_path):
    relay_port, relay = start_relay(tmp_path, fleet.server)
    try:
        a = fleet.start("host-1")
        wait_for(lambda: applied(a, "v1\n") and connected(a), what="started")
        checks = a.status()["agent"]["sources"]["infra"]["checks"]
        have = fleet.repo.git("rev-parse", "HEAD")
        for ref, commit in (("refs/heads/other", "a" * 40), ("refs/heads/main", have)):
            body = json.dumps({"ref": ref, "after": commit,
                               "repository": {"clone_url": fleet.repo.url}}).encode()
            headers = {"X-Hub-Signature-256": sign(body)}
            status, _ = post(f"http://127.0.0.1:{relay_port}", body, headers)
            assert status == 202
        wait_for(lambda: bus(a)["received"] == 2, timeout=FAST, what="notices received")
        assert bus(a)["acted"] == 0
        assert a.status()["agent"]["sources"]["infra"]["checks"] == checks
    finally:
        stop_process(relay, timeout=10)


def start_relay(tmp: Path, server: NatsServer) -> tuple[int, subprocess.Popen[bytes]]:
    secret = tmp / "relay-secret"
    secret.write_bytes(SECRET + b"\n")
    port = free_port()
    log = open(tmp / "relay.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "setpoint", "relay", "--nats", server.url,
         "--listen", f"127.0.0.1:{port}", "--webhook-secret-file", str(secret)],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp / "relay.log").read_text())
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_for(healthy, what="relay up and connected")
    return port, proc


def test_the_relay_turns_a_forge_webhook_into_fan_out(fleet, tmp_path):
    port, relay = start_relay(tmp_path, fleet.server)
    try:
        agents = [fleet.start(f"nat-{i}") for i in range(2)]
        for a in agents:
            wait_for(lambda a=a: applied(a, "v1\n") and connected(a), what="started")
        url = f"http://127.0.0.1:{port}"
        body = json.dumps({"repository": {"clone_url": fleet.repo.url}}).encode()
        assert post(url, body, {"X-Hub-Signature-256": sign(body, b"wrong")})[0] == 401
        assert post(url, b"{}", {"X-Hub-Signature-256": sign(b"{}")})[0] == 422
        fleet.repo.commit(motd("v2\n"))
        # GitLab's format: the token header, project.git_http_url, checkout_sha.
        new = fleet.repo.git("rev-parse", "HEAD")
        body = json.dumps({"ref": "refs/heads/main", "checkout_sha": new,
                           "project": {"git_http_url": fleet.repo.url + ".git/"}}).encode()
        status, answer = post(url, body, {"X-Gitlab-Token": SECRET.decode()})
        assert status == 202 and len(answer["published"]) == 1, answer
        for a in agents:
            wait_for(lambda a=a: applied(a, "v2\n"), timeout=FAST, what="commit fanned out")
    finally:
        stop_process(relay, timeout=10)


def test_status_entries_appear_and_fleet_status_lists_them(fleet, tmp_path):
    web = fleet.start("web-1.eu.example", labels={"role": "web"})
    db = fleet.start("db-1", labels={"role": "db"})

    def both() -> list[dict[str, Any]] | None:
        rows = fleet_status(tmp_path, fleet.server)
        return rows if len(rows) == 2 and all(r["ready"] for r in rows) else None

    rows = wait_for(both, timeout=FAST, what="two Ready entries")
    rev = fleet.repo.git("rev-parse", "HEAD")
    assert [(r["host"], r["stack"], r["revision"]) for r in rows] == [
        ("db-1", "web", rev), ("web-1.eu.example", "web", rev)]
    assert all(r["drifted"] == 0 and r["failed"] == 0 and r["age"] >= 0 for r in rows)
    assert [r["host"] for r in fleet_status(tmp_path, fleet.server, "--selector", "role=web")] \
        == ["web-1.eu.example"]
    # The text table names both hosts and sums the stack up.
    out = cli("fleet", "status", "--config", fleet_config(tmp_path, fleet.server), check=0).stdout
    assert "web-1.eu.example" in out and "stack web: 2/2 Ready, 0 unknown" in out
    assert web.stack()["conditions"] and db.stack()["conditions"]


def test_a_change_is_written_at_once_and_drift_is_counted(fleet, tmp_path):
    # Heartbeats every 10 minutes: what shows within seconds was written on the change.
    a = fleet.start("h1", nats={"heartbeatSeconds": 600},
                    stacks=[{"name": "web", "source": "infra", "path": "m", "drift": "report"}])
    wait_for(lambda: fleet_status(tmp_path, fleet.server), timeout=FAST, what="first entry")
    (a.root / "etc/motd").write_text("edited by hand\n")

    def drifted() -> bool:
        rows = fleet_status(tmp_path, fleet.server)
        return bool(rows and rows[0]["drifted"] == 1 and rows[0]["ready"] is False)

    wait_for(drifted, timeout=FAST, what="drift in the fleet status")


def test_an_entry_whose_heartbeat_stopped_is_shown_as_unknown(fleet, tmp_path):
    a = fleet.start("h1", nats={"heartbeatSeconds": 0.5})
    wait_for(lambda: [r for r in fleet_status(tmp_path, fleet.server) if r["ready"]],
             timeout=FAST, what="Ready entry")
    a.stop()

    def unknown() -> dict[str, Any] | None:
        rows = fleet_status(tmp_path, fleet.server)
        return rows[0] if rows and rows[0]["unknown"] else None

    row = wait_for(unknown, timeout=FAST, what="entry unknown after 3 missed heartbeats")
    # Stale once the age passes 3 periods (1.5 s); the JSON rounds it to 0.1 s, so an
    # entry that just went stale (say 1.52 s) shows 1.5.
    assert row["ready"] is None and row["age"] >= 1.5
    out = cli("fleet", "status", "--config", fleet_config(tmp_path, fleet.server), check=0).stdout
    assert "no heartbeat for 3 periods: unknown" in out


def test_without_nats_config_nats_is_never_imported(tmp_path, git_repo, root, state_dir):
    git_repo.commit(motd("v1\n"))
    code = f"""
import asyncio, sys
from setpoint.config import AgentConfig
from setpoint.engine.controller import Controller
from setpoint.engine.agent import Agent
import setpoint.cli
cfg = AgentConfig.model_validate({{"root": {str(root)!r}, "state": {str(state_dir)!r},
    "sources": [{{"name": "infra", "url": {git_repo.url!r}}}],
    "stacks": [{{"name": "web", "source": "infra", "path": "m"}}]}})
agent = Agent(Controller(cfg), api=False)
assert agent.fleetbus is None
loaded = sorted(m for m in sys.modules
                if m == "nats" or m.startswith(("nats.", "setpoint.fleetbus")))
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out


def test_an_unreachable_nats_server_does_not_stop_reconciling(tmp_path, git_repo):
    git_repo.commit(motd("v1\n"))
    down = NatsServer(tmp_path / "never-started")  # a free port nobody listens on
    fleet = Fleet(tmp_path, git_repo, down)
    try:
        a = fleet.start("h1", sources=[{**HOUR, "url": git_repo.url, "interval": 0.5}])
        wait_for(lambda: applied(a, "v1\n"), timeout=FAST, what="first pass without NATS")
        assert not connected(a) and bus(a)["error"]
        git_repo.commit(motd("v2\n"))
        wait_for(lambda: applied(a, "v2\n"), timeout=FAST, what="polling goes on")
        (a.root / "etc/motd").write_text("drift\n")
        wait_for(lambda: applied(a, "v2\n"), timeout=FAST, what="drift corrected")
        # NATS comes up later: the agent connects by itself and reports.
        down.start()
        try:
            wait_for(lambda: connected(a), timeout=60, what="connected once NATS is up")
            wait_for(lambda: fleet_status(tmp_path, down), timeout=FAST, what="entry written")
        finally:
            down.stop()
    finally:
        fleet.stop()


def test_agents_reconnect_after_nats_restarts_and_fan_out_resumes(fleet, tmp_path):
    port, relay = start_relay(tmp_path, fleet.server)
    try:
        a = fleet.start("h1", nats={"heartbeatSeconds": 1})
        wait_for(lambda: applied(a, "v1\n") and connected(a), what="started")
        fleet.server.restart()
        wait_for(lambda: bus(a)["connected"], timeout=30, what="agent reconnected")
        new = fleet.repo.commit(motd("v2\n"))
        body = json.dumps({"after": new, "repository": {"clone_url": fleet.repo.url}}).encode()

        def published() -> bool:
            return post(f"http://127.0.0.1:{port}", body,
                        {"X-Hub-Signature-256": sign(body)})[0] == 202

        wait_for(published, timeout=30, interval=0.5, what="relay reconnected and published")
        wait_for(lambda: applied(a, "v2\n"), timeout=FAST, what="fan-out after the restart")
        rows = wait_for(lambda: [r for r in fleet_status(tmp_path, fleet.server)
                                 if r["revision"] == new and r["ready"]],
                        timeout=FAST, what="status written after the restart")
        assert rows[0]["host"] == "h1"
    finally:
        stop_process(relay, timeout=10)


def test_fleet_watch_follows_changes_live(fleet, tmp_path):
    import queue
    import threading

    a = fleet.start("h1", nats={"heartbeatSeconds": 0.5})
    wait_for(lambda: fleet_status(tmp_path, fleet.server), timeout=FAST, what="first entry")
    proc = subprocess.Popen(
        [sys.executable, "-m", "setpoint", "fleet", "watch", "--json",
         "--config", str(fleet_config(tmp_path, fleet.server))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
    )
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                lines.put(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()

    def seen(pred: Any) -> Any:
        def find() -> Any:
            while not lines.empty():
                row = lines.get()
                if pred(row):
                    return row
            return None
        return find

    try:
        new = fleet.repo.commit(motd("v2\n"))
        a.stop()  # no more heartbeats: the watch turns the entry unknown by itself
        wait_for(seen(lambda r: r["host"] == "h1" and r["unknown"]), timeout=FAST,
                 what="unknown row")
        fleet.start("h2", sources=[{**HOUR, "url": fleet.repo.url, "interval": 0.5}])
        wait_for(seen(lambda r: r["host"] == "h2" and r["revision"] == new and r["ready"]),
                 timeout=FAST, what="a new host's row")
    finally:
        stop_process(proc, signal.SIGINT, timeout=10)


def test_the_relay_answers_503_while_nats_is_down_so_the_forge_retries(tmp_path, git_repo):
    down = NatsServer(tmp_path / "never-started")
    secret = tmp_path / "relay-secret"
    secret.write_bytes(SECRET)
    port = free_port()
    with open(tmp_path / "relay.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "setpoint", "relay", "--nats", down.url,
             "--listen", f"127.0.0.1:{port}", "--webhook-secret-file", str(secret)],
            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        body = json.dumps({"repository": {"clone_url": git_repo.url}}).encode()

        headers = {"X-Hub-Signature-256": sign(body)}

        def answer() -> int | None:
            try:
                return post(f"http://127.0.0.1:{port}", body, headers)[0]
            except OSError:
                return None  # not listening yet

        assert wait_for(answer, what="relay listening") == 503
        log = tmp_path / "relay.log"
        wait_for(lambda: "cannot connect" in log.read_text(), what="the relay says why")
        assert SECRET.decode() not in log.read_text()
    finally:
        stop_process(proc, timeout=10)


def test_reading_the_status_bucket_sees_every_entry_while_hosts_keep_writing(nats_server):  # noqa: F811
    import asyncio

    import nats

    from setpoint.fleetbus.bus import status_bucket
    from setpoint.fleetbus.status import Entry, read_all, status_key

    async def run() -> list[int]:
        nc = await nats.connect(nats_server.url)
        try:
            kv = await status_bucket(nc)
            keys = [status_key(f"host-{i}.example", "web") for i in range(200)]
            for i, k in enumerate(keys):
                await kv.put(k, Entry(host=f"host-{i}.example", stack="web").encode())
            stop = asyncio.Event()

            async def heartbeats() -> None:  # every host rewriting its entry meanwhile
                while not stop.is_set():
                    for i, k in enumerate(keys):
                        await kv.put(k, Entry(host=f"host-{i}.example", stack="web").encode())

            writer = asyncio.create_task(heartbeats())
            sizes = [len(await read_all(nc.jetstream())) for _ in range(20)]
            stop.set()
            await writer
            return sizes
        finally:
            await nc.close()

    assert asyncio.run(run()) == [200] * 20


def test_tls_to_nats_with_the_configured_ca(tmp_path, git_repo):
    from helpers import self_signed

    git_repo.commit(motd("v1\n"))
    crt, key = self_signed(tmp_path)
    other, _ = self_signed(tmp_path, "other")
    server = NatsServer(tmp_path / "tls-store", tls=(crt, key))
    server.start()
    fleet = Fleet(tmp_path, git_repo, server)
    try:
        good = fleet.start("good", nats={"tls": {"caFile": str(crt)}})
        wrong = fleet.start("wrong", nats={"tls": {"caFile": str(other)}})
        wait_for(lambda: connected(good), timeout=FAST, what="TLS connection")
        wait_for(lambda: applied(wrong, "v1\n"), what="the agent works without its bus")
        wait_for(lambda: bus(wrong)["error"], what="the refused certificate reported")
        assert not connected(wrong) and "certificate" in bus(wrong)["error"].lower()
        cfg = tmp_path / "tls-cli.yaml"
        cfg.write_text(json.dumps({
            "state": str(tmp_path / "cli-state"),
            "sources": [{"name": "x", "url": "/nonexistent"}],
            "stacks": [{"name": "x", "source": "x"}],
            "nats": {"url": server.url, "tls": {"caFile": str(crt)}},
        }))

        def hosts() -> list[str]:
            out = cli("fleet", "status", "--config", cfg, "--json", check=0).stdout
            return [r["host"] for r in json.loads(out)]

        wait_for(lambda: hosts() == ["good"], timeout=FAST, what="status over TLS")
    finally:
        fleet.stop()
        server.stop()
