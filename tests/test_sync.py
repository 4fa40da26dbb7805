"""`setpoint sync` against a running agent: an immediate fetch and pass, its outcome printed."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request

import test_watch
from helpers import cli, manifest
from test_watch import read

run_agent = test_watch.run_agent  # the shared fixture: a real agent process


def test_sync_applies_a_new_commit_now_and_prints_the_outcome(git_repo, root, state_dir, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v1\n")})
    run_agent()
    new = git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v2\n")})
    out = cli("sync", "web", "--state", state_dir, check=0).stdout
    # The command returns after the pass: the file is already there.
    assert read(root / "etc/motd") == "v2\n"
    assert f"stack web: converged at {new[:12]}" in out
    answer = json.loads(cli("sync", "--state", state_dir, "--json", check=0).stdout)
    assert answer["converged"] is True and [r["stack"] for r in answer["results"]] == ["web"]


def test_sync_needs_the_token_the_agent_wrote_with_mode_0600(git_repo, state_dir, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v1\n")})
    agent = run_agent()
    token_file = state_dir / "api-token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    for auth in ({}, {"Authorization": "Bearer wrong"}):
        req = urllib.request.Request(agent.url + "/sync", data=b"{}", method="POST", headers=auth)
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("sync without the right token was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
    token = token_file.read_text().strip()
    assert token not in agent.log.read_text()  # never logged
    unknown = cli("sync", "nope", "--state", state_dir, check=1)
    assert "no active stack named 'nope'" in unknown.stderr


def test_sync_without_a_running_agent_says_so(state_dir):
    state_dir.mkdir()
    res = cli("sync", "--state", state_dir, check=1)
    assert "no running agent" in res.stderr
