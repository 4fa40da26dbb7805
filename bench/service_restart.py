"""Benchmark: a Service's recovery and rollout times with a real agent (issue: services).

Runs ``setpoint agent`` (poll and resync 300 s: nothing here is timer-driven) on a
temporary Git repository holding a Release (a small HTTP server archive) and a Service
with an HTTP readiness probe on loopback, then measures:

  (a) kill -9 of the service → its readiness URL answering 200 again from a new
      process (p50 / p90 / max over --runs, default 20);
  (b) a pushed version bump → the new version serving, with ``setpoint sync`` asking
      the agent for the pass (p50 over --bumps, default 5). Includes the commit, the
      fetch, the unpack, the graceful stop of the old process and the readiness wait.

Usage: .venv/bin/python bench/service_restart.py [--runs 20] [--bumps 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import GitRepo
from helpers import docs, start_agent
from setpoint.providers.services.common import RECORD, read_json
from svc_support import (
    app_archive,
    body,
    free_port,
    kill_recorded,
    release_doc,
    service_doc,
)


def wait(pred, timeout: float = 30.0, step: float = 0.002):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise SystemExit("timed out")


def cold_start(release: Path, port: int) -> float:
    """Seconds from spawning the release's server by hand to its answering on ``port``."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "server.py"], cwd=release, env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait(lambda: body(port, "/health") == "ok")
        return time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bumps", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sp-bench-svc-"))
    repo, root, state = GitRepo(tmp / "repo"), tmp / "root", tmp / "state"
    root.mkdir()
    port = free_port()

    def commit(version: str) -> None:
        data = app_archive(version)
        path = f"/dist/app-{version}.tar.gz"
        (root / "dist").mkdir(exist_ok=True)
        (root / path.lstrip("/")).write_bytes(data)
        # Killed every ~0.2 s: without resetSeconds that is a crash loop (and back-off).
        svc = service_doc("app", port, backoff={"initialSeconds": 1, "resetSeconds": 0.1})
        repo.commit({"m/app.yaml": docs(release_doc("app", version, data, path), svc)})

    def pid() -> int | None:
        rec = read_json(state / "services/app" / RECORD) or {}
        return rec.get("pid")

    commit("1")
    agent = start_agent(
        "--repo", repo.url, "--path", "m", "--stack", "web", "--root", root,
        "--state", state, "--interval", "300", "--resync", "300", "--listen", "127.0.0.1:0",
        log=tmp / "agent.log",
    )  # fmt: skip
    try:
        wait(lambda: "version=1 " in body(port), timeout=60)
        kills = []
        for _ in range(args.runs):
            old = pid()
            assert old
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            wait(lambda old=old: pid() != old and f"pid={pid()}" in body(port, "/"))
            kills.append(time.monotonic() - t0)
            time.sleep(0.2)
        bumps = []
        for i in range(2, 2 + args.bumps):
            t0 = time.monotonic()
            commit(str(i))
            subprocess.run(
                [sys.executable, "-m", "setpoint", "sync", "--state", str(state)],
                check=True, capture_output=True,
            )  # fmt: skip
            wait(lambda i=i: f"version={i} " in body(port))
            bumps.append(time.monotonic() - t0)
        # Baselines, same run: (a) the server started by hand until it answers (the
        # floor for a restart: Python start-up + bind); (b) a `setpoint sync` with
        # nothing to change (the CLI + API round trip and a no-op pass).
        cold = [cold_start(state / "releases/app/current", free_port()) for _ in range(5)]
        noop = []
        for _ in range(5):
            t0 = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "setpoint", "sync", "--state", str(state)],
                check=True, capture_output=True,
            )  # fmt: skip
            noop.append(time.monotonic() - t0)
        cold_ms, noop_ms = statistics.median(cold) * 1000, statistics.median(noop) * 1000
        print(f"baselines: server started by hand -> answering, p50 {cold_ms:.0f} ms; "
              f"no-op setpoint sync, p50 {noop_ms:.0f} ms")
        q = statistics.quantiles(kills, n=10)
        ms = 1000
        print(
            f"kill -9 -> ready again ({len(kills)} runs): p50 {statistics.median(kills) * ms:.0f}"
            f" ms, p90 {q[8] * ms:.0f} ms, max {max(kills) * ms:.0f} ms; p50 / hand start = "
            f"{statistics.median(kills) * ms / cold_ms:.2f}"
        )
        print(
            f"version bump -> new version serving ({len(bumps)} runs, commit + setpoint sync): "
            f"p50 {statistics.median(bumps) * ms:.0f} ms, max {max(bumps) * ms:.0f} ms; "
            f"p50 / no-op sync = {statistics.median(bumps) * ms / noop_ms:.2f}"
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
        kill_recorded(state)


if __name__ == "__main__":
    main()
