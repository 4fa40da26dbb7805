"""Stress: eight stacks under drift storms, commits and rollouts at once, one real agent.

For a minute (SETPOINT_STRESS_SECONDS overrides), a thread edits
managed files of every stack at random, another commits new content and rolls the
two Services out again (a new env value, a readiness probe that passes). Then the
storms stop, a last commit lands, and the test checks: every stack converged to that
commit (files and a `plan` with nothing to do), no "database is locked" and no
traceback in the agent's log, no path owned by two stacks, and a journal without
holes: every revert follows its drift, ids are consecutive.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import yaml

from conftest import GitRepo
from helpers import cli, manifest, start_agent, wait_for

STACKS = 8
FILES = 10
SECONDS = float(os.environ.get("SETPOINT_STRESS_SECONDS", "60"))
SLEEP = "sleep 617"  # the services' command: found and stopped at the end (they outlive agents)


def files(stack: int, version: int) -> dict[str, str]:
    docs = [
        manifest("File", f"f{i}", path=f"/srv/s{stack}/f{i}.txt", content=f"v{version} {i}\n")
        for i in range(FILES)
    ]
    out = {f"s{stack}/files.yaml": "---\n".join(docs)}
    if stack >= STACKS - 2:  # the last two stacks also roll a Service out
        out[f"s{stack}/svc.yaml"] = manifest(
            "Service",
            f"svc{stack}",
            command=[SLEEP],
            shell=True,
            env={"VERSION": str(version)},
            readiness={"exec": {"command": ["true"]}, "periodSeconds": 0.05},
            readyTimeout=10,
        )
    return out


def test_eight_stacks_under_storms_converge_with_a_consistent_journal(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    version = {s: 0 for s in range(STACKS)}
    initial: dict[str, str] = {}
    for s in range(STACKS):
        initial |= files(s, 0)
    git_repo.commit(initial)
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "root": str(root),
                "state": str(state),
                "listen": "127.0.0.1:0",
                "sources": [{"name": "s", "url": git_repo.url, "interval": 0.3}],
                "stacks": [
                    {"name": f"s{s}", "source": "s", "path": f"s{s}", "resync": 5}
                    for s in range(STACKS)
                ],
            }
        )
    )
    log = tmp_path / "agent.log"
    agent = start_agent("--config", config, log=log)
    stop = threading.Event()
    rng = random.Random(14)
    errors: list[BaseException] = []

    def storm() -> None:
        try:
            while not stop.is_set():
                s, i = rng.randrange(STACKS), rng.randrange(FILES)
                p = root / f"srv/s{s}/f{i}.txt"
                if p.exists():
                    p.write_text("drift\n")
                time.sleep(0.02)
        except BaseException as exc:
            errors.append(exc)

    try:
        wait_for(
            lambda: all((root / f"srv/s{s}/f0.txt").exists() for s in range(STACKS)),
            timeout=60,
            what="every stack applied",
        )
        storms = threading.Thread(target=storm)
        storms.start()
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            s = rng.randrange(STACKS)
            version[s] += 1
            git_repo.commit(files(s, version[s]), message=f"s{s} v{version[s]}")
            time.sleep(1.0)
        stop.set()
        storms.join()
        assert not errors
        final: dict[str, str] = {}
        for s in range(STACKS):
            version[s] += 1
            final |= files(s, version[s])
        git_repo.commit(final, message="final")

        def converged() -> bool:
            return all(
                (root / f"srv/s{s}/f{i}.txt").read_text() == f"v{version[s]} {i}\n"
                for s in range(STACKS)
                for i in range(FILES)
            )

        wait_for(converged, timeout=120, what="every stack at the final commit")
    finally:
        stop.set()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=120)
    text = log.read_text()
    assert "database is locked" not in text
    assert "Traceback" not in text
    try:
        # The services outlive the agent (by design): plan sees them running, then stop them.
        plan = cli("plan", "--config", config)
    finally:
        subprocess.run(["pkill", "-f", SLEEP], check=False)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    db = sqlite3.connect(state / "setpoint.db")
    try:
        twice = db.execute(
            "SELECT path, COUNT(*) FROM inventory WHERE path != '' "
            "GROUP BY path HAVING COUNT(*) > 1"
        ).fetchall()
        assert twice == []
        ids = [r[0] for r in db.execute("SELECT id FROM journal ORDER BY id")]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        drifted: set[tuple[str, str]] = set()
        reverts = 0
        for stack, event, resource in db.execute(
            "SELECT stack, event, resource FROM journal ORDER BY id"
        ):
            if event == "drift":
                drifted.add((stack, resource))
            elif event == "revert" and resource.startswith("File/"):
                assert (stack, resource) in drifted, f"a revert of {stack} {resource} without drift"
                reverts += 1
        assert reverts > SECONDS  # the storms were seen and undone throughout
    finally:
        db.close()
