"""Where the machine's CPU goes during a fan-out: every process's CPU before and after.

A diagnostic beside ``bench/fleet.py``: starts a :class:`fleet_harness.FleetHarness`
fleet (``listen: off``), then for each of ``--rounds`` commits samples ``/proc/*/stat``
of every process (and the harness's own threads) and ``/proc/stat`` before the commit
and after all agents converged, and prints the CPU per kind of process (agents, their
git children, nats-server, relay, the harness and its git http-backend children,
kernel threads) and the machine's user/system/softirq/iowait. With ``--strace-one``
it also lists the programs one agent ran during the last commit.

Usage: .venv/bin/python bench/fleet_profile.py [--agents 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import tempfile
import time
from pathlib import Path

from fleet_harness import FleetHarness, wait_until

TICK = os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, tuple[str, int, float, float]]:
    """pid -> (comm, ppid, own CPU s, waited-for children's CPU s)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        f = raw.rsplit(")", 1)[1].split()
        out[int(d)] = (comm, int(f[1]), (int(f[11]) + int(f[12])) / TICK,
                       (int(f[13]) + int(f[14])) / TICK)
    return out


def threads(pid: int) -> dict[str, float]:
    out: dict[str, float] = collections.Counter()
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = Path(f"/proc/{pid}/task/{t}/stat").read_text()
        except OSError:
            continue
        f = raw.rsplit(")", 1)[1].split()
        name = raw[raw.index("(") + 1: raw.rindex(")")]
        out[name] += (int(f[11]) + int(f[12])) / TICK
    return out


def machine() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def classify(pid: int, comm: str, ppid: int, h: FleetHarness, table: dict) -> str:
    agents = {a.pid for a in h.agents}
    if pid == os.getpid():
        return "harness (own)"
    if pid in agents:
        return "agents (own)"
    if ppid in agents:
        return "agents' live children"
    if h.nats_proc and pid == h.nats_proc.pid:
        return "nats-server"
    if h.relay_proc and pid == h.relay_proc.pid:
        return "relay"
    if ppid == os.getpid():
        return "harness's live children"
    if ppid == 2 or pid == 2:
        return "kthread " + comm.split("/")[0].split(":")[0]
    return "other " + comm


def snapshot(h: FleetHarness) -> tuple[dict[str, float], list[int], dict[str, float]]:
    t = proc_table()
    by: dict[str, float] = collections.Counter()
    agents = {a.pid for a in h.agents}
    for pid, (comm, ppid, own, kids) in t.items():
        by[classify(pid, comm, ppid, h, t)] += own
        if pid in agents:
            by["agents' waited children (git)"] += kids
        elif pid == os.getpid():
            by["harness's waited children (http-backend, git)"] += kids
        elif kids:
            by["other waited children"] += kids
    return by, machine(), threads(os.getpid())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--strace-one", action="store_true")
    ap.add_argument("--keep", type=Path, help="run in this directory and keep it (logs)")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="setpoint-prof-", dir=args.keep) as tmp, \
            FleetHarness(Path(tmp), args.agents, api=False) as h:
        h.start()
        h.wait_converged("v1\n", timeout=600)
        wait_until(h.bus_connected, 120, "agents on the bus", every=1.0)
        time.sleep(10)
        for r in range(args.rounds):
            text = f"v{r + 2}\n"
            st = None
            if args.strace_one and r == args.rounds - 1:
                log = Path(tmp) / "strace.log"
                st = subprocess.Popen(["strace", "-f", "-qq", "-s", "300", "-e", "trace=execve",
                                       "-o", str(log), "-p", str(h.agents[-1].pid)])
                time.sleep(1.0)
            time.sleep(3)
            b0, m0, th0 = snapshot(h)
            w0 = time.monotonic()
            t0, sha = h.commit_motd(text)
            h.webhook(sha)
            lat = h.wait_converged(text, timeout=120, since=t0)
            wall = time.monotonic() - w0
            time.sleep(2.0)
            b1, m1, th1 = snapshot(h)
            wall2 = time.monotonic() - w0
            slow = [(i, round(t, 2)) for i, t in sorted(lat.items(), key=lambda kv: -kv[1])[:3]]
            for i, t in slow:
                if t > 8:
                    log_text = h.agents[i].log.read_text()
                    print(f"--- agent {i} converged after {t:.1f} s; its log's tail:")
                    print(log_text[-3000:])
            print(f"round {r + 1}: slowest (agent, s) {slow}; max {max(lat.values()):.2f} s; "
                  f"sampled {wall2:.2f} s (converged after {wall:.2f} s); "
                  f"load {os.getloadavg()[0]:.1f}")
            keys = sorted(set(b0) | set(b1), key=lambda k: -(b1.get(k, 0) - b0.get(k, 0)))
            total = 0.0
            for k in keys:
                d = b1.get(k, 0) - b0.get(k, 0)
                total += d
                if abs(d) >= 0.01:
                    print(f"    {k:50s} {d:7.2f} s")
            dm = [b - a for a, b in zip(m0, m1, strict=True)]
            names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
            print(f"    sum of processes {total:.2f} s; machine: " + ", ".join(
                f"{n} {v / TICK:.2f}" for n, v in zip(names, dm, strict=True)))
            print("    harness threads: " + ", ".join(
                f"{k} {th1.get(k, 0) - th0.get(k, 0):.2f}" for k in th1
                if th1.get(k, 0) - th0.get(k, 0) >= 0.01))
            if st is not None:
                time.sleep(1)
                st.terminate()
                st.wait()
                progs = collections.Counter()
                for line in log.read_text().splitlines():
                    if "execve(" in line and "= 0" in line:
                        argv = line.split("[", 1)[1].split("]", 1)[0]
                        words = [w.strip(' "') for w in argv.split(",")]
                        sub = next((w for w in words[1:] if not w.startswith("-")
                                    and "=" not in w and w not in ("-c",)), "")
                        progs[f"{words[0]} {sub}"] += 1
                print("    one agent's execs: " + ", ".join(f"{k} x{v}" for k, v in progs.items()))
                for line in log.read_text().splitlines():
                    if "execve(" in line and "= 0" in line:
                        argv = line.split("[", 1)[1].split("]", 1)[0]
                        print("      " + " ".join(w.strip(' "') for w in argv.split(",")
                                             if "=" not in w and w.strip(' "') != "-c")[:160])


if __name__ == "__main__":
    main()
