"""An agent with ``listen: off``: no HTTP listener, no HTTP stack loaded, the CLI still serves.

A real ``setpoint agent`` process (one-stack flags and ``--listen off``, or a config file
with ``listen: "off"``): it binds no port, never maps uvicorn's C HTTP parser,
``setpoint status`` and ``history`` read its state dir, and ``setpoint sync`` says the
agent has no listener instead of "no running agent". With a listener, the HTTP stack
is loaded on the first connection, which is answered.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from helpers import cli, manifest, start_agent, wait_for
from setpoint.config import ConfigError, load_config

LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp*


def listening_sockets(pid: int) -> list[str]:
    """The local addresses of TCP sockets in LISTEN state that ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == LISTEN and f[9] in inodes:
                found.append(f[1])
    return found


def agent_info(state: Path, pid: int) -> dict[str, Any] | None:
    try:
        info = json.loads((state / "agent.json").read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("pid") == pid else None


@pytest.fixture
def off_agent(tmp_path, git_repo, root, state_dir):  # type: ignore[no-untyped-def]
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v1\n")})
    log = tmp_path / "agent.log"
    proc = start_agent("--repo", git_repo.url, "--path", "m", "--stack", "web", "--root", root,
                       "--state", state_dir, "--listen", "off", log=log)
    try:
        wait_for(lambda: (root / "etc/motd").exists() or proc.poll() is not None,
                 what=f"the first pass (log: {log})")
        assert proc.poll() is None, log.read_text()
        yield proc, log
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_no_port_is_bound_and_no_http_stack_is_loaded(off_agent, state_dir):
    proc, log = off_agent
    info = wait_for(lambda: agent_info(state_dir, proc.pid), what="agent.json")
    assert info["listen"] is None
    assert not (state_dir / "api-token").exists()  # no API, no token for it
    assert listening_sockets(proc.pid) == []
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "httptools" not in maps  # uvicorn's parser: the HTTP stack was never imported
    assert "API listening" not in log.read_text()


def test_status_and_history_read_the_state_dir(off_agent, state_dir):
    proc, _log = off_agent
    wait_for(lambda: agent_info(state_dir, proc.pid), what="agent.json")

    def converged() -> dict[str, Any] | None:
        res = cli("status", "--state", state_dir, "--json")
        doc = json.loads(res.stdout) if res.returncode == 0 else None
        return doc

    doc = wait_for(converged, what="setpoint status: converged")
    stacks = doc["stacks"] if isinstance(doc, dict) else doc
    assert [s["stack"] for s in stacks] == ["web"]
    res = cli("status", "--state", state_dir, check=0)
    assert "warning" not in res.stderr  # not a failed call to an agent: none was tried
    hist = cli("history", "--state", state_dir, check=0)
    assert "revision" in hist.stdout and "warning" not in hist.stderr


def test_sync_says_the_agent_has_no_listener(off_agent, state_dir):
    proc, _log = off_agent
    wait_for(lambda: agent_info(state_dir, proc.pid), what="agent.json")
    res = cli("sync", "--state", state_dir, check=1)
    assert f"(pid {proc.pid}) has no HTTP listener (listen: off)" in res.stderr
    assert "listen: HOST:PORT" in res.stderr  # what to do


def test_listen_off_in_a_config_file(tmp_path):
    base = {"sources": [{"name": "s", "url": "file:///nowhere"}],
            "stacks": [{"name": "web", "source": "s"}]}
    for listen, api_on in (("off", False), ("127.0.0.1:0", True)):
        p = tmp_path / "c.yaml"
        p.write_text(json.dumps({**base, "listen": listen}))
        assert load_config(p).api_on is api_on
    p.write_text(json.dumps({**base, "listen": "Off"}))
    with pytest.raises(ConfigError, match="listen"):
        load_config(p)


def test_a_bad_listen_flag_names_off(tmp_path):
    res = cli("agent", "--repo", "file:///nowhere", "--state", tmp_path / "s", "--root",
              tmp_path, "--listen", "nowhere", check=1)
    assert "give HOST:PORT, e.g. 127.0.0.1:9090, or off" in res.stderr


def test_with_a_listener_the_http_stack_loads_on_the_first_request(tmp_path, git_repo, root,
                                                                   state_dir):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v1\n")})
    log = tmp_path / "agent.log"
    proc = start_agent("--repo", git_repo.url, "--path", "m", "--stack", "web", "--root", root,
                       "--state", state_dir, "--listen", "127.0.0.1:0", log=log)
    try:
        info = wait_for(lambda: agent_info(state_dir, proc.pid), what=f"agent.json ({log})")
        wait_for(lambda: (root / "etc/motd").exists(), what="the first pass")
        assert len(listening_sockets(proc.pid)) == 1  # bound at start
        maps = Path(f"/proc/{proc.pid}/maps")
        assert "httptools" not in maps.read_text()  # nobody asked yet
        with urllib.request.urlopen(f"http://{info['listen']}/status", timeout=60) as r:
            doc = json.loads(r.read())  # waited in the backlog during the import
        assert [s["stack"] for s in doc["stacks"]] == ["web"]
        assert "httptools" in maps.read_text()
        assert cli("sync", "--state", state_dir, check=0).returncode == 0
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_taken_address_is_reported_at_start_and_reconciling_goes_on(tmp_path, git_repo, root,
                                                                      state_dir):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v1\n")})
    log = tmp_path / "agent.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = start_agent("--repo", git_repo.url, "--path", "m", "--stack", "web", "--root",
                           root, "--state", state_dir, "--listen", f"127.0.0.1:{port}", log=log)
        try:
            wait_for(lambda: "cannot listen on" in log.read_text(), what=f"the error ({log})")
            wait_for(lambda: (root / "etc/motd").exists(), what="the first pass")
            assert f"cannot listen on 127.0.0.1:{port}" in log.read_text()
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=20)
