"""Benchmark: a commit reaching a fleet of real agents over NATS, and what an idle fleet costs.

Runs on :mod:`fleet_harness` (nats-server, a counting smart-HTTP Git server, the relay,
N ``setpoint agent`` processes with their own roots, state dirs, hosts and wave labels).
In one run:

1. fan-out to the first ``--small`` agents (default 20): commit, webhook to the relay,
   every agent converged (p50, p99, max over ``--rounds`` commits);
2. the rest of the N agents join; idle for ``--idle-seconds``: Git server requests per
   poll (GETs of ``info/refs``, ``ls-refs`` and ``fetch`` POSTs; target 1 / 0 / 0 per
   poll ... ls-refs is protocol v2's second half of the same ls-remote), the agents'
   total idle CPU, and per-agent memory (RSS, PSS, private);
3. fan-out to all N: latencies, and the CPU floor of the commit (the agents' CPU time
   spent on it divided by the cores): converged-all time / floor, target ≤ 1.5;
4. polling only (commit, no webhook) at the agents' interval ``--poll-interval``
   (default 60 s; when shorter, the 60 s figures are computed as measured × 60 / interval);
5. memory beside: ``--compare`` (default 5) more agents in the other mode join the idle
   fleet, and both groups' RSS are measured at the same moment.

The agents run with ``listen: off`` by default (``--api off``: a NATS fleet needs no
HTTP listener, and none of the HTTP stack is loaded); ``--api on`` runs them with their
API as before. Nothing here asks the agents' API: convergence is read from their roots,
status writes from the status bucket's stream, polls from the Git server's counts (one
``ls-refs`` POST per ls-remote; with ``--api on`` the agents' own counts are shown too).

Targets (issue 13): 20 agents p99 ≤ 2 s; N agents within 1.5x the CPU floor; idle poll =
1 ls-remote and 0 fetches; per-agent RSS ≤ 60 MB (decimal: 57.2 MiB).

Usage: .venv/bin/python bench/fleet.py [--agents 100] [--small 20] [--rounds 3]
       [--poll-interval 60] [--idle-seconds 60] [--api off|on] [--compare 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fleet_harness import FleetHarness, percentile, wait_until

CORES = len(os.sched_getaffinity(0))
TICK = os.sysconf("SC_CLK_TCK")


def fan_out_round(h: FleetHarness, version: int, agents: list[Any]) -> dict[str, float]:
    text = f"v{version}\n"
    req0, kv0 = h.git.counts(), h.kv_writes()  # before cpu0: not the agents' CPU
    cpu0, m0 = h.cpu_seconds(agents), machine_cpu()
    t0, sha = h.commit_motd(text)
    g0 = git_server_cpu(h)  # its git processes (after the push) and its handlers' Python
    h.webhook(sha)
    lat = list(h.wait_converged(text, timeout=120, since=t0, agents=agents).values())
    cpu, m1 = h.cpu_seconds(agents) - cpu0, machine_cpu()
    floor = cpu / CORES
    busy = (m1[0] - m0[0]) / max(m1[1] - m0[1], 1e-9)  # share of the cores busy meanwhile
    settle(h, 2.0)  # the passes' status writes land just after the file
    req1, kv1 = h.git.counts(), h.kv_writes()
    reqs = sum(req1.values()) - sum(req0.values())
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat),
            "cpu": cpu, "floor": floor, "ratio": max(lat) / floor if floor else 0.0,
            "git_cpu": git_server_cpu(h) - g0, "requests": reqs / len(agents),
            "fetches": (req1["fetch"] - req0["fetch"]) / len(agents),
            "kv": (kv1 - kv0) / len(agents), "busy": busy,
            "ours": (cpu + git_server_cpu(h) - g0) / max((m1[0] - m0[0]) / TICK, 1e-9)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = f[3] + f[4]
    return float(sum(f) - idle), float(sum(f))


def git_server_cpu(h: FleetHarness) -> float:
    """The Git server's CPU so far: its git processes (this process's waited-for
    children: nothing else runs here during a round) and its request handlers' Python."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + h.git.cpu_seconds()


def settle(h: FleetHarness, seconds: float = 3.0) -> None:
    """Let the passes' tails (watch set-up, status writes) finish before measuring again."""
    time.sleep(seconds)


def rounds(h: FleetHarness, first: int, count: int, agents: list[Any]) -> list[dict[str, float]]:
    out = []
    for k in range(count):
        settle(h)
        out.append(fan_out_round(h, first + k, agents))
    return out


def load() -> str:
    """The machine's 1-minute load average: other work on the cores skews every figure."""
    return f"load average {os.getloadavg()[0]:.1f}"


def med(rs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def show_rounds(label: str, rs: list[dict[str, float]]) -> None:
    print(f"{label}: medians over {len(rs)} commits: p50 {med(rs, 'p50') * 1000:.0f} ms, "
          f"p99 {med(rs, 'p99') * 1000:.0f} ms, max {med(rs, 'max') * 1000:.0f} ms; "
          f"agents' CPU on the commit {med(rs, 'cpu'):.2f} s -> floor {med(rs, 'floor'):.2f} s "
          f"on {CORES} cores; max / floor = {med(rs, 'ratio'):.2f} (Git server CPU "
          f"{med(rs, 'git_cpu'):.2f} s besides); {load()}")
    print(f"    meanwhile the cores were {med(rs, 'busy') * 100:.0f}% busy, "
          f"{med(rs, 'ours') * 100:.0f}% of that the agents and the Git server")
    print(f"    per agent and commit: {med(rs, 'requests'):.2f} Git requests "
          f"({med(rs, 'fetches'):.2f} fetches), {med(rs, 'kv'):.2f} status writes, "
          "1 notice received")
    worst = max(r["p99"] for r in rs)
    each = ", ".join(f"{r['p99'] * 1000:.0f}" for r in rs)
    print(f"    per commit p99 (ms): {each}; worst {worst * 1000:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--small", type=int, default=20, help="agents of the first fan-out phase")
    ap.add_argument("--rounds", type=int, default=3, help="commits per fan-out phase")
    ap.add_argument("--poll-interval", type=float, default=60.0)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--heartbeat", type=float, default=30.0)
    ap.add_argument("--no-polling-phase", action="store_true")
    ap.add_argument("--api", choices=("off", "on"), default="off",
                    help="the agents' HTTP API: off (listen: off) or on a loopback port")
    ap.add_argument("--compare", type=int, default=5,
                    help="agents of the other --api mode started at the end to compare memory")
    ap.add_argument("--keep", type=Path, help="run in this directory and keep it (logs)")
    args = ap.parse_args()
    n, small = args.agents, min(args.small, args.agents)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(Path(args.keep), n, small, args)
    else:
        with tempfile.TemporaryDirectory(prefix="setpoint-fleet-") as tmp:
            run(Path(tmp), n, small, args)


def run(base: Path, n: int, small: int, args: argparse.Namespace) -> None:
    P = args.poll_interval
    api = args.api == "on"
    with FleetHarness(base, n, poll_interval=P, heartbeat=args.heartbeat, api=api) as h:
        t = time.monotonic()
        h.start(agents=small)
        h.wait_converged("v1\n", timeout=300)
        wait_until(h.bus_connected, 60, "agents connected to NATS", every=0.5)
        print(f"{small} agents up and converged in {time.monotonic() - t:.1f} s "
              f"({CORES} cores, poll interval {P:g} s, heartbeat {args.heartbeat:g} s, "
              f"API {'on' if api else 'off (listen: off)'})")
        first = rounds(h, 2, args.rounds, h.agents)
        show_rounds(f"fan-out, {small} agents (commit -> all converged)", first)
        version = 2 + args.rounds

        if n > small:
            t = time.monotonic()
            h.start_agents(n - small)
            h.wait_converged(f"v{version - 1}\n", timeout=600)
            wait_until(h.bus_connected, 120, "agents connected to NATS", every=1.0)
            print(f"{n - small} more agents up and converged in {time.monotonic() - t:.1f} s")

        settle(h, 10.0)
        kw0 = h.kv_writes()
        p0 = h.polls() if api else 0
        c0, cpu0, t0 = h.git.counts(), h.cpu_seconds(), time.monotonic()
        time.sleep(args.idle_seconds)  # idle on purpose: this is what is measured
        c1, cpu1, t1 = h.git.counts(), h.cpu_seconds(), time.monotonic()
        kw1 = h.kv_writes()
        d = {k: c1[k] - c0[k] for k in c1}
        polls = d["ls_refs"]  # one per ls-remote (protocol v2), counted by the Git server
        counted = f"; the agents counted {h.polls() - p0}" if api else ""
        idle = (cpu1 - cpu0) / (t1 - t0)
        print(f"idle {t1 - t0:.0f} s, {n} agents: {polls} polls (ls-refs POSTs{counted}); "
              f"Git server: {d['info_refs']} GETs of info/refs, {d['fetch']} fetches, "
              f"{d['other']} other")
        if polls:
            print(f"    per poll: {d['info_refs'] / polls:.2f} info/refs GETs, "
                  f"{d['fetch'] / polls:.2f} fetches (target 1 and 0)")
        print(f"    agents' idle CPU: {idle * 100:.2f}% of one core in total, "
              f"{idle * 100 / n:.3f}% per agent ({(cpu1 - cpu0) / n * 1000:.0f} ms per agent "
              f"over {t1 - t0:.0f} s); {load()}")
        print(f"    status writes: {(kw1 - kw0) * 60 / (t1 - t0) / n:.2f} per agent per minute "
              f"(heartbeat {args.heartbeat:g} s, one stack each)")
        show_memory(f"API {args.api}", h.memory_kib())

        polled: tuple[float, float] | None = None
        if not args.no_polling_phase:
            settle(h)
            text = f"v{version}\n"
            t0w, _sha = h.commit_motd(text)  # no webhook: only the agents' polls find it
            lat = list(h.wait_converged(text, timeout=P * 1.2 + 120, since=t0w).values())
            scale = 60.0 / P
            print(f"polling only at {P:g} s, {n} agents: p50 {percentile(lat, 50):.1f} s, "
                  f"p99 {percentile(lat, 99):.1f} s, max {max(lat):.1f} s"
                  + (f"; at 60 s: p50 {percentile(lat, 50) * scale:.1f} s, "
                     f"max {max(lat) * scale:.1f} s (computed)" if P != 60 else "")
                  + f"; {load()}")
            polled = (percentile(lat, 50) * scale, max(lat) * scale)
            version += 1

        if n > small:
            full = rounds(h, version, args.rounds, h.agents)
            show_rounds(f"fan-out, {n} agents (commit -> all converged)", full)
            version += args.rounds
        else:
            full = first

        if polled is not None:
            print(f"ratio fan-out / polling at 60 s: p50 {med(full, 'p50') / polled[0]:.4f}, "
                  f"max {med(full, 'max') / polled[1]:.4f} "
                  f"({polled[0] / med(full, 'p50'):.0f}x and {polled[1] / med(full, 'max'):.0f}x "
                  "faster)")

        if args.compare > 0:
            compare_memory(h, api, args.compare, version - 1)

        ok20 = med(first, "p99") <= 2.0  # medians over the commits, like every figure here
        okcpu = med(full, "ratio") <= 1.5
        rss = statistics.median(m["rss"] for m in h.memory_kib()[:n]) * 1024 / 1e6
        print(f"targets (medians over the commits): {small} agents p99 <= 2 s: "
              f"{'met' if ok20 else 'NOT met'}; "
              f"{n} agents max <= 1.5x CPU floor: {'met' if okcpu else 'NOT met'} "
              f"({med(full, 'ratio'):.2f}); per-agent RSS <= 60 MB with the API {args.api}: "
              f"{'met' if rss <= 60 else 'NOT met'} ({rss:.1f} MB)")


def show_memory(label: str, mem: list[dict[str, int]]) -> None:
    """Medians and maxima of RSS, PSS and private memory; RSS in MiB and (decimal) MB."""
    for key, name in (("rss", "RSS"), ("pss", "PSS"), ("uss", "private")):
        vals = [m[key] / 1024 for m in mem]
        mid = statistics.median(vals)
        extra = f" = {mid * 1.048576:.1f} MB (target <= 60 MB)" if key == "rss" else ""
        print(f"    per-agent {name}, {label}, {len(vals)} agents: median {mid:.1f} MiB{extra}, "
              f"max {max(vals):.1f} MiB")


def compare_memory(h: FleetHarness, api: bool, count: int, version: int) -> None:
    """``count`` agents of the other mode join; both groups' memory at the same moment."""
    first = len(h.agents)
    t = time.monotonic()
    others = h.start_agents(count, api=not api)
    h.wait_converged(f"v{version}\n", timeout=300, agents=others)
    took = time.monotonic() - t
    settle(h, 20.0)  # their first pass's tail, the bus connection, a status heartbeat
    mem = h.memory_kib()
    print(f"memory beside: {count} agents with the API {'on' if not api else 'off'} joined "
          f"and converged in {took:.1f} s; 20 s later, at the same moment:")
    show_memory(f"API {'on' if api else 'off'}", mem[:first])
    show_memory(f"API {'on' if not api else 'off'}", mem[first:])
    a = statistics.median(m["rss"] for m in mem[:first])
    b = statistics.median(m["rss"] for m in mem[first:])
    off, on = (b, a) if api else (a, b)
    print(f"    RSS median, API off / API on = {off / on:.3f} ({(on - off) / 1024:.1f} MiB less)")
    if not api:
        # An agent loads its HTTP stack on the first request: ask each once, as a
        # monitoring probe would, and measure again.
        for agent in others:
            agent.status()
        settle(h, 5.0)
        show_memory("API on, after one GET /status", h.memory_kib()[first:])


if __name__ == "__main__":
    main()
