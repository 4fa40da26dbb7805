"""One slow stack never delays another: a never-ready rollout and drift elsewhere.

A real agent process with two stacks: ``slow`` rolls out a Service whose readiness
probe never succeeds (readyTimeout 20 s), ``fast`` holds a File. While ``slow`` waits,
edits to ``fast``'s file are reverted in well under a second, every time, and the
agent's status says what ``slow`` waits for.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from conftest import GitRepo
from helpers import docs, manifest, start_agent, wait_for
from svc_support import free_port

EDITS = 10


def agent_status(state: Path) -> dict[str, object]:
    info = json.loads((state / "agent.json").read_text())
    with urllib.request.urlopen(f"http://{info['listen']}/status", timeout=5) as resp:
        doc: dict[str, object] = json.loads(resp.read())
    return doc


def test_drift_is_reverted_at_once_while_another_stack_waits_for_a_rollout(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    dead_port = free_port()  # nothing listens there: the rollout never becomes ready
    service = manifest(
        "Service",
        "stuck",
        command=["sleep 313"],
        shell=True,
        readiness={"http": {"url": f"http://127.0.0.1:{dead_port}/"}, "periodSeconds": 0.1},
        readyTimeout=20,
    )
    git_repo.commit(
        {
            "slow/svc.yaml": service,
            "fast/f.yaml": docs(manifest("File", "conf", path="/etc/fast.conf", content="ok\n")),
        }
    )
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "root": str(root),
                "state": str(state),
                "listen": "127.0.0.1:0",
                "sources": [{"name": "s", "url": git_repo.url, "interval": 60}],
                "stacks": [
                    {"name": "slow", "source": "s", "path": "slow"},
                    {"name": "fast", "source": "s", "path": "fast"},
                ],
            }
        )
    )
    log = tmp_path / "agent.log"
    proc = start_agent("--config", config, log=log)
    conf = root / "etc/fast.conf"
    try:
        wait_for(lambda: "stack fast: watching" in log.read_text(), what="fast watched")

        def slow_waiting() -> str | None:
            if not (state / "agent.json").exists():
                return None  # the API is still starting
            passes = agent_status(state)["agent"]["passes"]  # type: ignore[index]
            return passes["slow"]["waiting"]  # type: ignore[no-any-return,index]

        waiting = wait_for(slow_waiting, what="the slow stack's rollout under way")
        assert waiting.startswith("rollout of Service/stuck: waiting for readiness, ")
        assert waiting.endswith(" s of 20")
        restore: list[float] = []
        for i in range(EDITS):
            conf.write_text(f"edit {i}\n")
            t0 = time.monotonic()
            wait_for(
                lambda: conf.read_text() == "ok\n",
                timeout=15,
                interval=0.005,
                what=f"edit {i} reverted",
            )
            restore.append(time.monotonic() - t0)
        # The rollout was still waiting the whole time: the reverts did not wait for it.
        assert slow_waiting() is not None
        assert max(restore) < 1.0, restore
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        subprocess.run(["pkill", "-f", "sleep 313"], check=False)  # services outlive agents
    history = log.read_text()
    assert "Traceback" not in history
