"""The agent logs events, not screens: one line per event, text or JSON, no diffs at INFO."""

from __future__ import annotations

import json
import os

import test_watch
from api_support import call
from helpers import manifest, wait_for
from test_watch import FAST, read

run_agent = test_watch.run_agent  # the shared fixture: a real agent process


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_log_has_one_line_per_event_with_stable_fields_and_no_diff(
    git_repo, root, state_dir, run_agent
):
    sha = git_repo.commit(
        {"m/a.yaml": manifest("File", "conf", path="/etc/app.conf", content="secret=1\n")}
    )
    agent = run_agent(logFormat="json")
    f = root / "etc/app.conf"
    before = len(agent.log.read_text().splitlines())
    f.write_text("secret=hand-edited\n")
    wait_for(lambda: read(f) == "secret=1\n", timeout=FAST, what="restored")
    wait_for(lambda: any(e.get("event") == "revert" for e in json_lines(agent.log.read_text())),
             timeout=FAST, what="revert logged")  # fmt: skip
    text = agent.log.read_text()
    new = text.splitlines()[before:]
    assert all(line.startswith("{") for line in new), new  # every line is JSON
    lines = json_lines("\n".join(new))
    drift = next(e for e in lines if e.get("event") == "drift")
    revert = next(e for e in lines if e.get("event") == "revert")
    for e in (drift, revert):
        assert e["stack"] == "web" and e["resource"] == "File/conf"
        assert e["revision"] == sha[:12] and e["level"] == "INFO"
    assert 0 < revert["ms"] <= revert["restore_ms"] < FAST * 1000
    # One drift and one revert line per edit: the pass that undid it says nothing more at INFO.
    assert [e.get("event") for e in lines] == ["drift", "revert"], lines  # no pass.start at INFO
    assert "hand-edited" not in text  # the diff stays in the journal
    # A pass that changes nothing logs nothing.
    token = (state_dir / "api-token").read_text().strip()
    n = len(agent.log.read_text().splitlines())
    assert call(agent.url + "/api/v1/stacks/web/sync", "POST", token)[0] == 200
    assert len(agent.log.read_text().splitlines()) == n


def test_text_log_is_key_value_and_debug_shows_the_diff(git_repo, root, tmp_path):
    git_repo.commit({"m/a.yaml": manifest("File", "conf", path="/etc/app.conf", content="a\n")})
    agent = test_watch.RunningAgent(tmp_path, git_repo, root, tmp_path / "st")
    agent.proc.terminate()
    agent.proc.wait()
    # Again at DEBUG (the config's logFormat left at text).
    cfg = tmp_path / "agent.json"
    agent.proc = test_watch.start_agent("--config", cfg, "--log-level", "debug", log=agent.log)
    try:
        wait_for(lambda: "watching 1 resource" in agent.log.read_text(), timeout=FAST,
                 what="agent up")  # fmt: skip
        # In one step (a new file renamed over it): an in-place write truncates first,
        # and the agent may see the empty file, whose diff has no "-b" line.
        (root / "etc/.app.conf.new").write_text("b\n")
        os.replace(root / "etc/.app.conf.new", root / "etc/app.conf")
        wait_for(lambda: "revert stack=web" in agent.log.read_text(), timeout=FAST,
                 what="revert logged")  # fmt: skip
        text = agent.log.read_text()
        line = next(x for x in text.splitlines() if " INFO drift " in x)
        assert "stack=web resource=File/conf" in line and "path=/etc/app.conf" in line
        assert " DEBUG drift.diff " in text and "-b" in text  # the diff, at DEBUG only
        assert " DEBUG pass.start stack=web" in text  # a pass's start, at DEBUG only
    finally:
        agent.stop()
