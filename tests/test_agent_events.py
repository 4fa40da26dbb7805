"""Watch events in the agent: no loop on its own writes, polling fallback at the watch limit."""

from __future__ import annotations

import time

import test_watch
from helpers import docs, manifest, wait_for
from test_watch import FAST, read

run_agent = test_watch.run_agent  # the shared fixture: a real agent process


def test_own_writes_do_not_loop(git_repo, root, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "conf", path="/etc/app.conf", content="x\n")})
    agent = run_agent()
    before = agent.passes()
    (root / "etc/app.conf").write_text("drift\n")
    wait_for(lambda: read(root / "etc/app.conf") == "x\n", timeout=FAST, what="restored")

    def quiet() -> bool:
        # Idle: nothing queued and no pass for a while (a loop would keep passing).
        p = agent.passes()
        return not p["queued"] and p["last"] is not None and time.time() - p["last"] > 0.5

    wait_for(quiet, timeout=FAST, what="the agent to go quiet after its own write")
    after = agent.passes()
    # The drift pass, plus at most the re-checks its own rename set off (each a no-op).
    assert 1 <= after["partial"] - before["partial"] <= 3
    assert after["total"] - before["total"] == after["partial"] - before["partial"]
    reverts = [e for e in agent.journal("revert") if e["resource"] == "File/conf"]
    assert len(reverts) == 1


def test_at_the_watch_limit_unwatched_resources_are_polled_and_status_says_so(
    git_repo, root, run_agent
):
    git_repo.commit(
        {
            "m/a.yaml": docs(
                manifest("File", "a", path="/one/a", content="a\n"),
                manifest("File", "b", path="/two/b", content="b\n"),
            )
        }
    )
    agent = run_agent(env={"SETPOINT_MAX_WATCHES": "1", "SETPOINT_WATCH_POLL": "0.3"})
    # The watch info and the Watching condition are written one after the other:
    # wait for both, not just the first.
    watch = wait_for(
        lambda: agent.status()["agent"]["watch"].get("web", {}).get("unwatched"),
        what="watch info",
    ) and agent.status()["agent"]["watch"]["web"]
    (missing,) = watch["unwatched"]
    assert watch["watches"] == 1
    cond = wait_for(
        lambda: next((c for c in agent.stack()["conditions"] if c["type"] == "Watching"), None),
        what="the Watching condition",
    )
    assert cond["status"] is False and cond["reason"] == "WatchLimitReached"
    assert missing in cond["message"] and "polling" in cond["message"]
    assert any(e["event"] == "watch.limited" for e in agent.journal())
    path = root / ("one/a" if missing == "File/a" else "two/b")
    want = read(path)
    path.write_text("drift on an unwatched file\n")
    wait_for(lambda: read(path) == want, timeout=FAST, what="unwatched file restored by polling")
    (revert,) = [e for e in agent.journal("revert") if e["resource"] == missing]
    assert "trigger" not in revert["detail"]  # a poll, not a watch event


def test_a_commit_elsewhere_in_the_monorepo_costs_no_re_render(git_repo, root, state_dir):
    from setpoint.config import AgentConfig
    from setpoint.engine.controller import Controller

    git_repo.commit({"m/a.yaml": manifest("File", "a", path="/a", content="a\n")})
    cfg = AgentConfig.model_validate(
        {
            "root": str(root),
            "state": str(state_dir),
            "sources": [{"name": "infra", "url": git_repo.url}],
            "stacks": [{"name": "web", "source": "infra", "path": "m"}],
        }
    )
    ctl = Controller(cfg)
    try:
        ctl.run_once()
        other = git_repo.commit({"other/readme.txt": "not the stack\n"})
        (second,) = ctl.run_once()
        assert second.revision == other and second.converged
        assert ctl.reconciler.renders == 1
        git_repo.commit({"m/a.yaml": manifest("File", "a", path="/a", content="b\n")})
        ctl.run_once()
        assert ctl.reconciler.renders == 2 and (root / "a").read_text() == "b\n"
    finally:
        ctl.close()
