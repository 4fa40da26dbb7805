"""Benchmark: what a watching agent costs when nothing changes (issue: drift undone in ms).

Starts a real ``setpoint agent`` over N managed files (default 10,000 in N/100
directories; polling and resync at 300 s), waits for the first pass and the
watches, then reads the agent's CPU time (utime + stime from /proc) over
SECONDS of idleness (default 60). Prints the CPU share of one core, the time
the agent took to set up its watches (its own figure, and start → watching),
and as baselines measured in the same run: one full pass (``POST /sync``) and
a plain Python stat+read loop over the same files.

Usage: .venv/bin/python bench/idle_cost.py [--files 10000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from drift_latency import Agent, make_repo, stat_loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    n = args.files
    with tempfile.TemporaryDirectory(prefix="setpoint-bench-") as tmp:
        base = Path(tmp)
        _work, url = make_repo(base, n)
        agent = Agent(base, url)
        try:
            w = agent.wait_watching()
            up = time.perf_counter() - agent.started
            full = statistics.median(agent.sync() for _ in range(3))
            loop = statistics.median(stat_loop(agent.root, n) for _ in range(3))
            c0, t0 = agent.cpu_seconds(), time.perf_counter()
            time.sleep(args.seconds)  # idle on purpose: this is what is measured
            c1, t1 = agent.cpu_seconds(), time.perf_counter()
            share = (c1 - c0) / (t1 - t0)
        finally:
            agent.stop()
    print(f"N={n} files watched with {w['watches']} inotify watches")
    print(f"watch set-up: {w['setup_ms']:.0f} ms (agent's own figure; target < 2 s); "
          f"process start -> first pass done and watching: {up:.2f} s")
    print(f"idle CPU over {t1 - t0:.0f} s: {c1 - c0:.3f} s = {share * 100:.3f}% of one core "
          f"(target < 1%)")
    print(f"baseline: one full pass (POST /sync) median {full * 1000:.0f} ms; plain stat+read "
          f"loop median {loop * 1000:.0f} ms")
    print(f"ratios: idle CPU per minute / full pass = {(c1 - c0) * 60 / (t1 - t0) / full:.3f}; "
          f"watch set-up / stat loop = {w['setup_ms'] / 1000 / loop:.2f}")


if __name__ == "__main__":
    main()
