"""Benchmark: drift latency of one stack while another stack rolls out (issue 14).

Two runs of a real ``setpoint agent`` in the same process of measurement:

- *alone*: one stack ``fast`` of N files (default 200); CHANGES edits (default 50),
  one at a time, each timed from the write to the restored content;
- *beside a rollout*: the same stack plus a stack ``slow`` whose Service never
  becomes ready (readiness probe on a port nothing listens on, readyTimeout 60 s),
  so ``slow``'s pass waits for the whole measurement; the same edits.

Prints p50/p99/max of both and their ratio. Before stacks reconciled concurrently,
the second run's worst case was the rollout's readyTimeout (seconds, not ms).

Usage: .venv/bin/python bench/concurrent_drift.py [--files 200] [--changes 50]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from drift_latency import git  # noqa: E402

PY = sys.executable


def wait_until(pred: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_repo(work: Path, files: int) -> None:
    work.mkdir(parents=True)
    git(work, "init", "-q", "-b", "main")
    docs = [
        {
            "apiVersion": "setpoint/v1",
            "kind": "File",
            "metadata": {"name": f"f{i}"},
            "spec": {"path": f"/srv/fast/f{i}.txt", "content": f"file {i}\n"},
        }
        for i in range(files)
    ]
    (work / "fast").mkdir()
    (work / "fast/files.yaml").write_text(yaml.safe_dump_all(docs))
    svc = {
        "apiVersion": "setpoint/v1",
        "kind": "Service",
        "metadata": {"name": "stuck"},
        "spec": {
            "command": ["sleep 599"],
            "shell": True,
            "readiness": {
                "http": {"url": f"http://127.0.0.1:{free_port()}/"},
                "periodSeconds": 0.2,
            },
            "readyTimeout": 60,
        },
    }
    (work / "slow").mkdir()
    (work / "slow/svc.yaml").write_text(yaml.safe_dump(svc))
    git(work, "add", "-A")
    git(work, "commit", "-qm", "bench")


def agent_waiting(state: Path) -> str | None:
    try:
        info = json.loads((state / "agent.json").read_text())
        with urllib.request.urlopen(f"http://{info['listen']}/status", timeout=5) as resp:
            doc = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    passes = doc["agent"]["passes"]
    return passes.get("slow", {}).get("waiting") if "slow" in passes else None


def run(tmp: Path, repo: Path, files: int, changes: int, with_rollout: bool) -> list[float]:
    root, state = tmp / "root", tmp / "state"
    root.mkdir(parents=True)
    stacks = [{"name": "fast", "source": "s", "path": "fast", "resync": 300}]
    if with_rollout:
        stacks.append({"name": "slow", "source": "s", "path": "slow", "resync": 300})
    config = tmp / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "root": str(root),
                "state": str(state),
                "listen": "127.0.0.1:0",
                "sources": [{"name": "s", "url": str(repo), "interval": 300}],
                "stacks": stacks,
            }
        )
    )
    log = open(tmp / "agent.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [PY, "-m", "setpoint", "agent", "--config", str(config)], stdout=log, stderr=log
    )
    times: list[float] = []
    try:
        text = tmp / "agent.log"
        wait_until(lambda: "stack fast: watching" in text.read_text(), 120)
        if with_rollout:
            wait_until(lambda: agent_waiting(state) is not None, 60)
        for k in range(changes):
            path = root / f"srv/fast/f{k % files}.txt"
            want = f"file {k % files}\n"
            path.write_text(f"drift {k}\n")
            t0 = time.perf_counter()
            while path.read_text() != want:
                if time.perf_counter() - t0 > 120:
                    raise SystemExit(f"edit {k} was not reverted within 120 s")
                time.sleep(0.0005)
            times.append(time.perf_counter() - t0)
        if with_rollout and agent_waiting(state) is None:
            raise SystemExit("the rollout stopped waiting during the measurement: rerun")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()
        subprocess.run(["pkill", "-f", "sleep 599"], check=False)
    return times


def summary(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return statistics.median(xs) * 1000, q[98] * 1000, max(xs) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--changes", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="setpoint-bench-") as d:
        tmp = Path(d)
        make_repo(tmp / "repo", args.files)
        alone = summary(run(tmp / "alone", tmp / "repo", args.files, args.changes, False))
        beside = summary(run(tmp / "beside", tmp / "repo", args.files, args.changes, True))
    print(f"drift restore, {args.changes} edits, stack of {args.files} files (ms)")
    print(f"{'':28} {'p50':>8} {'p99':>8} {'max':>8}")
    print(f"{'alone':28} {alone[0]:8.1f} {alone[1]:8.1f} {alone[2]:8.1f}")
    print(f"{'beside a never-ready rollout':28} {beside[0]:8.1f} {beside[1]:8.1f} {beside[2]:8.1f}")
    print(
        f"{'ratio':28} {beside[0] / alone[0]:8.2f} {beside[1] / alone[1]:8.2f} "
        f"{beside[2] / alone[2]:8.2f}"
    )


if __name__ == "__main__":
    main()
