"""The versioned API (/api/v1), its OpenAPI document, and who may call it (a real agent)."""

from __future__ import annotations

import subprocess
import sys

import test_watch
from api_support import call, token_file
from helpers import cli, docs, manifest, self_signed, wait_for
from test_watch import FAST, read

run_agent = test_watch.run_agent  # the shared fixture: a real agent process


def two_files() -> dict[str, str]:
    return {
        "m/a.yaml": docs(
            manifest("File", "motd", path="/etc/motd", content="hello\n"),
            manifest("Directory", "app", path="/srv/app"),
        )
    }


def test_stacks_resources_and_one_resource_are_served_and_described_in_openapi(
    git_repo, run_agent
):
    sha = git_repo.commit(two_files(), message="add motd and app")
    agent = run_agent()
    status, body = call(agent.url + "/api/v1/stacks")
    assert status == 200
    (st,) = body["stacks"]
    assert st["name"] == "web" and st["sync"] == "Synced" and st["health"] == "Healthy"
    assert st["revision"]["sha"] == sha and st["revision"]["subject"] == "add motd and app"
    assert st["revision"]["author"].startswith("setpoint tests") and st["revision"]["date"]
    assert {c["type"] for c in st["conditions"]} >= {"Ready"}
    status, res = call(agent.url + "/api/v1/stacks/web/resources")
    assert status == 200
    by_id = {r["id"]: r for r in res["resources"]}
    assert set(by_id) == {"File/motd", "Directory/app"}
    assert by_id["File/motd"]["sync"] == "Synced" and by_id["File/motd"]["path"] == "/etc/motd"
    status, one = call(agent.url + "/api/v1/stacks/web/resources/File/motd")
    assert status == 200 and one["location"] == "m/a.yaml:1"
    assert [e["event"] for e in one["journal"]] == ["apply"]
    assert call(agent.url + "/api/v1/stacks/nope")[0] == 404
    assert call(agent.url + "/api/v1/stacks/web/resources/File/nope")[0] == 404
    status, spec = call(agent.url + "/openapi.json")
    assert status == 200
    for path in (
        "/api/v1/stacks", "/api/v1/stacks/{stack}", "/api/v1/stacks/{stack}/resources",
        "/api/v1/stacks/{stack}/resources/{kind}/{name}",
        "/api/v1/stacks/{stack}/resources/{kind}/{name}/diff", "/api/v1/journal",
        "/api/v1/stacks/{stack}/sync", "/api/v1/stacks/{stack}/suspend",
        "/api/v1/stacks/{stack}/resume", "/events", "/metrics", "/status", "/sync", "/hooks/git",
    ):  # fmt: skip
        assert path in spec["paths"], path
    # Today's endpoint keeps working.
    assert call(agent.url + "/status")[1]["stacks"][0]["stack"] == "web"


def test_live_diff_reads_the_target_now(git_repo, root, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="hello\n")})
    agent = run_agent(stacks=[{"name": "web", "source": "infra", "path": "m", "drift": "report"}])
    url = agent.url + "/api/v1/stacks/web/resources/File/motd/diff"
    status, d = call(url)
    assert status == 200 and d["inSync"] is True and d["change"]["action"] == "noop"
    (root / "etc/motd").write_text("hello\nedited by hand\n")
    status, d = call(url)
    assert d["inSync"] is False and d["drift"] is True
    assert "-edited by hand" in d["change"]["diff"]
    # Report mode: the live diff read the file; nothing wrote it back.
    assert read(root / "etc/motd") == "hello\nedited by hand\n"
    wait_for(lambda: call(agent.url + "/api/v1/stacks/web/resources")[1]["resources"][0]["sync"]
             == "OutOfSync", timeout=FAST, what="the resource shown OutOfSync")  # fmt: skip


def test_journal_filters_and_cursor_paging(git_repo, root, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    agent = run_agent()
    for i in range(3):
        (root / "etc/motd").write_text(f"drift {i}\n")
        wait_for(lambda i=i: len(agent.journal("revert")) == i + 1, timeout=FAST, what="revert")
    j = agent.url + "/api/v1/journal"
    _, all_ = call(j + "?limit=500")
    ids = [e["id"] for e in all_["entries"]]
    assert ids == sorted(ids, reverse=True) and all_["next"] is None  # newest first, one page
    _, drift = call(j + "?event=drift,revert&resource=File/motd&stack=web")
    assert [e["event"] for e in drift["entries"]] == ["revert", "drift"] * 3
    # Pages of 2 with the cursor cover the same entries, without overlap or gap.
    seen, cursor = [], None
    while True:
        _, page = call(j + "?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        seen += [e["id"] for e in page["entries"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ids
    # Time range: since the second revert (inclusive), until before the third drift.
    reverts = [e for e in drift["entries"] if e["event"] == "revert"]
    _, ranged = call(j + f"?event=revert&since={reverts[1]['ts']}&until={reverts[0]['ts']}")
    assert [e["id"] for e in ranged["entries"]] == [reverts[1]["id"]]
    assert call(j + "?since=yesterday")[0] == 400


def test_writes_need_a_write_token_and_suspend_stops_passes_until_resume(
    git_repo, root, state_dir, tmp_path, run_agent
):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    reader = token_file(tmp_path / "read.token", "read-token-123")
    agent = run_agent(api={"tokens": [{"file": str(reader), "scope": "read"}]})
    write = (state_dir / "api-token").read_text().strip()
    base = agent.url + "/api/v1/stacks/web"
    for token in (None, "wrong", "read-token-123"):
        assert call(base + "/sync", "POST", token)[0] == 401
        assert call(base + "/suspend", "POST", token)[0] == 401
    status, answer = call(base + "/sync", "POST", write)
    assert status == 200 and answer["converged"] is True
    assert call(base + "/suspend", "POST", write) == (200, {"stack": "web", "suspended": True})
    assert call(agent.url + "/api/v1/stacks")[1]["stacks"][0]["suspended"] is True
    assert call(base + "/sync", "POST", write)[0] == 409
    (root / "etc/motd").write_text("changed while suspended\n")
    passes = agent.passes()["total"] if "web" in agent.status()["agent"]["passes"] else None
    assert passes is None  # no queue: no pass runs while suspended
    assert read(root / "etc/motd") == "changed while suspended\n"
    assert call(base + "/resume", "POST", write)[1]["suspended"] is False
    wait_for(lambda: read(root / "etc/motd") == "x\n", timeout=FAST, what="resumed and reverted")
    assert {"suspended", "resumed"} <= {e["event"] for e in agent.journal()}
    log = agent.log.read_text()
    assert write not in log and "read-token-123" not in log and "wrong" not in log


def test_anonymous_reads_off_needs_a_read_token(git_repo, tmp_path, root, state_dir):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    reader = token_file(tmp_path / "read.token", "r3ad")
    api = {"anonymousRead": False, "tokens": [{"file": str(reader)}]}
    agent = test_watch.RunningAgent(tmp_path, git_repo, root, state_dir, api=api)
    try:
        for path in ("/api/v1/stacks", "/status", "/metrics", "/api/v1/journal", "/events"):
            assert call(agent.url + path)[0] == 401, path
        for path in ("/api/v1/stacks", "/status", "/metrics", "/api/v1/journal"):
            assert call(agent.url + path, token="r3ad")[0] == 200, path
        status, page = call(agent.url + "/")
        assert status == 401 and "Token needed" in page
    finally:
        agent.stop()


def agent_refuses(cfg_path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "setpoint", "agent", "--config", str(cfg_path), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stderr


def test_agent_refuses_a_readable_token_file_and_a_clear_text_public_listener(
    git_repo, tmp_path, root, state_dir
):
    import json

    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    loose = token_file(tmp_path / "loose.token", "t0k3n", mode=0o644)
    base = {
        "root": str(root), "state": str(state_dir), "listen": "127.0.0.1:0",
        "sources": [{"name": "infra", "url": git_repo.url}],
        "stacks": [{"name": "web", "source": "infra", "path": "m"}],
    }  # fmt: skip
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(base | {"api": {"tokens": [{"file": str(loose)}]}}))
    err = agent_refuses(cfg)
    assert f"{loose} has mode 0644" in err and "chmod 600" in err and "t0k3n" not in err
    cfg.write_text(json.dumps(base | {"listen": "0.0.0.0:0"}))
    err = agent_refuses(cfg)
    assert "not a loopback address" in err and "tls" in err
    assert not (state_dir / "setpoint.db").exists()  # refused before doing anything


def test_status_history_and_sync_go_through_a_running_agent(git_repo, state_dir, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    agent = run_agent()
    out = cli("status", "--state", state_dir, check=0).stdout
    assert "stack web" in out and "Ready=True" in out
    hist = cli("history", "--state", state_dir, "--stack", "web", check=0).stdout
    assert "apply File/motd" in hist
    cli("sync", "web", "--state", state_dir, check=0)
    agent.stop()
    # The agent is gone (agent.json names a dead pid): the state dir answers.
    assert "stack web" in cli("status", "--state", state_dir, check=0).stdout
    assert "apply File/motd" in cli("history", "--state", state_dir, check=0).stdout


def test_with_tls_the_api_speaks_https_and_the_cli_follows(git_repo, tmp_path, root, state_dir):
    import json
    import ssl
    import urllib.request

    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    crt, key = self_signed(tmp_path)
    api = {"tls": {"certFile": str(crt), "keyFile": str(key)}}
    agent = test_watch.RunningAgent(tmp_path, git_repo, root, state_dir, api=api)
    try:
        info = json.loads((state_dir / "agent.json").read_text())
        assert info["scheme"] == "https"
        ctx = ssl.create_default_context(cafile=str(crt))
        url = f"https://{info['listen']}/api/v1/stacks"
        wait_for(lambda: json.loads(urllib.request.urlopen(url, context=ctx, timeout=10).read())
                 ["stacks"], timeout=FAST, what="a stack over https")  # fmt: skip
        out = cli("status", "--state", state_dir, check=0)
        assert "stack web" in out.stdout and "warning" not in out.stderr
    finally:
        agent.stop()
