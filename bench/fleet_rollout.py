"""Benchmark: rollouts in waves across a fleet of real agents (issue 13's rollout figures).

Runs on :mod:`fleet_harness` (nats-server, a counting smart-HTTP Git server, the relay, N
``setpoint agent`` processes with their own roots, state dirs and hosts). The agents read
a Fleet file whose stack ``app`` rolls out in three waves by the harness's ``wave`` label:
``canary`` (wave=1, ~5% of the hosts), ``early`` (wave=2, up to a third), ``rest`` (every
host left, ``maxParallel: --max-parallel``), ``healthyFor: --healthy-for``. Every commit
is announced through the relay (fan-out), so the figures are the rollout's, not polling's.

Phases, in one run:

1. baseline: the same fleet with the Fleet file's ``rollout`` removed; commit → every
   agent converged (the time a commit takes with no waves);
2. three-wave rollout (``--rounds`` commits): commit → every agent converged, per wave
   first admission and last Ready; proof of order from the agents' journals: no host of
   wave k was admitted (``revision.admitted``) before every host of waves < k had applied
   (``revision.applied``) the revision ``healthyFor`` seconds earlier; ratio to the
   baseline and to the floor (2 × healthyFor);
3. bad canary: a revision the canary refuses; after it is Stalled and every later host
   holds it (``revision.held`` naming the canary), ``--hold`` more seconds: hosts of later
   waves that applied it (target 0); then a fix starts a new rollout that completes;
4. maxParallel: the most hosts of wave ``rest`` between admission and Ready at once, over
   every rollout of the run, from the journals (target ≤ the wave's slots);
5. nats-server stopped mid-rollout (once the canary is Ready), a drifted file reverted
   while it is down, then started again: admissions while down (target 0), the rollout
   completing in order afterwards.

Usage: .venv/bin/python bench/fleet_rollout.py [--agents 100] [--healthy-for 2]
       [--max-parallel 20%] [--rounds 3] [--hold 5] [--down 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from fleet_harness import AgentProc, FleetHarness, _terminate, wait_until
from setpoint.render.fleet import Wave
from setpoint.state.db import DB_NAME

STACK = "app"
REL = "etc/app.conf"
WAVES = ("canary", "early", "rest")


def fleet_yaml(healthy_for: float, max_parallel: str, waves: bool = True) -> str:
    st: dict[str, Any] = {"name": STACK, "path": STACK, "resync": 3600}
    if waves:
        st["rollout"] = {
            "healthyFor": healthy_for,
            "waves": [
                {"name": "canary", "selector": {"matchLabels": {"wave": "1"}}},
                {"name": "early", "selector": {"matchLabels": {"wave": "2"}}},
                {"name": "rest", "maxParallel": _mp(max_parallel)},
            ],
        }
    doc = {"apiVersion": "setpoint/v1", "kind": "Fleet", "metadata": {"name": "bench"},
           "stacks": [st]}
    return yaml.safe_dump(doc, sort_keys=False)


def _mp(v: str) -> int | str:
    return int(v) if v.isdigit() else v


def app(text: str) -> dict[str, str]:
    doc = {"apiVersion": "setpoint/v1", "kind": "File", "metadata": {"name": "conf"},
           "spec": {"path": "/etc/app.conf", "content": text}}
    return {f"{STACK}/conf.yaml": json.dumps(doc) + "\n"}


BAD = {f"{STACK}/conf.yaml": json.dumps(
    {"apiVersion": "setpoint/v1", "kind": "File", "metadata": {"name": "conf"},
     "spec": {"path": "/etc/app.conf", "contents": "typo"}}) + "\n"}


def wave_label(i: int, n: int) -> int:
    canary = max(1, n // 20)
    return 1 if i < canary else 2 if i < max(canary + 1, n // 3) else 3


def to_fleet(i: int, cfg: dict[str, Any]) -> dict[str, Any]:
    cfg.pop("stacks", None)
    cfg["fleet"] = {"source": "infra", "path": "fleet.yaml"}
    return cfg


def journal(a: AgentProc, *events: str) -> list[dict[str, Any]]:
    db = a.state / DB_NAME
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.OperationalError:
        return []
    try:
        rows = conn.execute(
            "SELECT ts, event, revision, message FROM journal WHERE stack = ? ORDER BY id",
            (STACK,)).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [{"ts": ts, "event": ev, "revision": rev, "message": m} for ts, ev, rev, m in rows
            if not events or ev in events]


def first(a: AgentProc, event: str, rev: str) -> float | None:
    return next((e["ts"] for e in journal(a, event) if e["revision"] == rev), None)


def spans(h: FleetHarness, rev: str) -> dict[int, tuple[float, float]]:
    """Agent index -> (admitted, applied) of ``rev``, from each agent's own journal."""
    out = {}
    for a in h.agents:
        s, e = first(a, "revision.admitted", rev), first(a, "revision.applied", rev)
        if s is not None and e is not None:
            out[a.index] = (s, e)
    return out


def wave_of(h: FleetHarness, a: AgentProc) -> int:
    return wave_label(a.index, h.n)


def order_violations(h: FleetHarness, rev: str, healthy_for: float) -> int:
    """Hosts admitted before every host of the earlier waves was Ready for healthyFor."""
    sp = spans(h, rev)
    ready_by = {w: max((sp[a.index][1] for a in h.agents if wave_of(h, a) == w), default=0.0)
                for w in (1, 2, 3)}
    bad = 0
    for a in h.agents:
        w = wave_of(h, a)
        need = max((ready_by[v] for v in range(1, w)), default=0.0) + (healthy_for if w > 1
                                                                       else 0.0)
        if sp[a.index][0] < need:
            bad += 1
            print(f"  !! {a.host} (wave {w}) admitted {need - sp[a.index][0]:.3f} s early: "
                  + "; ".join(f"{e['event']} {e['message'][:150]}" for e in journal(a)
                              if e["revision"] == rev))
    return bad


def max_overlap(items: list[tuple[float, float]]) -> int:
    pts = sorted([(s, 1) for s, _ in items] + [(e, -1) for _, e in items])
    cur = best = 0
    for _, d in pts:
        cur += d
        best = max(best, cur)
    return best


def rollout(h: FleetHarness, text: str, healthy_for: float) -> dict[str, Any]:
    """Commit ``text``, announce it, wait for every agent; times and proof of order."""
    t0 = time.time()
    sha = h.commit(app(text), f"app {text.strip()}")
    h.webhook(sha)
    done = h.wait_converged(text, timeout=600, rel=REL, since=t0)
    wait_until(lambda: len(spans(h, sha)) == h.n, 60, "every journal has the revision")
    sp = spans(h, sha)
    per_wave = {}
    for w in (1, 2, 3):
        mine = [sp[a.index] for a in h.agents if wave_of(h, a) == w]
        if mine:
            per_wave[WAVES[w - 1]] = (min(s for s, _ in mine) - t0, max(e for _, e in mine) - t0)
    rest = [sp[a.index] for a in h.agents if wave_of(h, a) == 3]
    return {"sha": sha, "total": max(done.values()), "waves": per_wave,
            "violations": order_violations(h, sha, healthy_for), "rest_overlap":
            max_overlap(rest)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--healthy-for", type=float, default=2.0)
    ap.add_argument("--max-parallel", default="20%")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to watch a halted rollout")
    ap.add_argument("--heartbeat", type=float, default=2.0)
    ap.add_argument("--down", type=float, default=10.0, help="seconds nats-server stays down")
    ap.add_argument("--keep", type=Path, help="keep the fleet's files here")
    args = ap.parse_args()
    hf = args.healthy_for
    base = args.keep or Path(tempfile.mkdtemp(prefix="setpoint-rollout-bench-"))
    files = {"fleet.yaml": fleet_yaml(hf, args.max_parallel, waves=False), **app("v0\n")}
    with FleetHarness(base, args.agents, poll_interval=60, heartbeat=args.heartbeat,
                      wave_of=wave_label, files=files, agent_config=to_fleet) as h:
        t = time.time()
        h.start()
        h.wait_converged("v0\n", timeout=600, rel=REL)
        sizes = [sum(1 for a in h.agents if wave_of(h, a) == w) for w in (1, 2, 3)]
        slots = Wave.model_validate({"name": "rest", "maxParallel": _mp(args.max_parallel)}
                                    ).slots(sizes[2])
        print(f"{args.agents} agents up in {time.time() - t:.1f} s; waves {sizes} "
              f"(canary, early, rest); healthyFor {hf:g} s; rest maxParallel "
              f"{args.max_parallel} = {slots} slots")

        # 1. Baseline: no waves.
        base_times = []
        for r in range(args.rounds):
            t0 = time.time()
            sha = h.commit(app(f"b{r}\n"))
            h.webhook(sha)
            base_times.append(max(h.wait_converged(f"b{r}\n", 600, rel=REL, since=t0).values()))
        baseline = statistics.median(base_times)
        print(f"baseline (no waves): commit -> all converged median {baseline:.2f} s "
              f"(runs {', '.join(f'{x:.2f}' for x in base_times)})")

        # 2. Three-wave rollouts.
        t0 = time.time()
        sha = h.commit({"fleet.yaml": fleet_yaml(hf, args.max_parallel)}, "waves on")
        h.webhook(sha)
        wait_until(lambda: all(first(a, "revision.applied", sha) for a in h.agents), 600,
                   "the waves' Fleet file everywhere")
        results = [rollout(h, f"v{r}\n", hf) for r in range(1, args.rounds + 1)]
        totals = [r["total"] for r in results]
        med = statistics.median(totals)
        for r in results:
            waves = "; ".join(f"{w} {s:.2f}..{e:.2f} s" for w, (s, e) in r["waves"].items())
            print(f"  rollout {r['sha'][:12]}: all converged {r['total']:.2f} s ({waves}); "
                  f"order violations {r['violations']}; rest at once max {r['rest_overlap']}")
        print(f"three-wave rollout: median {med:.2f} s; ratio to baseline {med / baseline:.1f}x; "
              f"floor 2 x healthyFor = {2 * hf:g} s, ratio {med / (2 * hf):.2f}x; "
              f"order violations {sum(r['violations'] for r in results)} (target 0)")

        # 3. Bad canary.
        t0 = time.time()
        bad = h.commit(BAD, "bad")
        h.webhook(bad)
        canaries = [a for a in h.agents if wave_of(h, a) == 1]
        later = [a for a in h.agents if wave_of(h, a) > 1]
        wait_until(lambda: all(first(a, "revision.refused", bad) for a in canaries), 120,
                   "canaries refused the bad revision")
        wait_until(lambda: all(any(e["revision"] == bad and "Stalled" in e["message"]
                                   for e in journal(a, "revision.held")) for a in later),
                   120, "every later host holding the bad revision")
        halted = time.time() - t0
        time.sleep(args.hold)  # a fixed watch window on purpose: nothing must happen in it
        culprits = [a for a in later if first(a, "revision.admitted", bad)
                    or first(a, "apply", bad) or first(a, "revision.applied", bad)]
        applied = len(culprits)
        for a in culprits:
            print(f"  !! {a.host} (wave {wave_of(h, a)}) applied the bad revision: "
                  + "; ".join(f"{e['event']} {e['message'][:120]}" for e in journal(a)
                              if e["revision"] == bad))
        print(f"bad canary: every later host holding it {halted:.2f} s after the commit; "
              f"after {args.hold:g} s more, later-wave hosts that applied it: {applied} of "
              f"{len(later)} (target 0)")
        fix = rollout(h, "v-fix\n", hf)
        results.append(fix)
        print(f"  fix {fix['sha'][:12]}: new rollout converged {fix['total']:.2f} s, "
              f"order violations {fix['violations']}")

        # 5. nats-server down mid-rollout.
        t0 = time.time()
        mid = h.commit(app("v-nats\n"), "nats restart")
        h.webhook(mid)
        wait_until(lambda: all(first(a, "revision.applied", mid) for a in canaries), 120,
                   "the canary wave Ready")
        assert h.nats_proc is not None
        _terminate([h.nats_proc])
        down = time.time()
        victim = next(a for a in h.agents if wave_of(h, a) == 3)
        wait_until(lambda: any(e["revision"] == mid and "unreachable" in e["message"]
                               for e in journal(victim, "revision.held")), 60,
                   "a rest host holding the revision while NATS is down")
        (victim.root / REL).write_text("tampered\n")
        td = time.time()
        wait_until(lambda: victim.read(REL) not in (None, "tampered\n"), 30,
                   "drift reverted while NATS is down")
        revert = time.time() - td
        # Stay down a while (a fixed window on purpose: nothing may be admitted in it).
        time.sleep(max(0.0, args.down - (time.time() - down)))
        h.start_nats()
        up = time.time()
        while_down = sum(1 for a in h.agents
                         if (s := first(a, "revision.admitted", mid)) and down < s < up)
        h.wait_converged("v-nats\n", timeout=600, rel=REL, since=t0)
        wait_until(lambda: len(spans(h, mid)) == h.n, 60, "journals")
        viol = order_violations(h, mid, hf)
        print(f"nats-server down {up - down:.1f} s mid-rollout: admissions while down "
              f"{while_down} (target 0); drift reverted while down in {revert:.2f} s "
              f"(poll-timed); rollout completed, order violations {viol} (target 0)")
        rest_max = max(r["rest_overlap"] for r in results)
        mid_rest = max_overlap([s for i, s in spans(h, mid).items()
                                if wave_label(i, h.n) == 3])
        rest_max = max(rest_max, mid_rest)
        print(f"maxParallel: rest wave at most {rest_max} hosts between admission and Ready "
              f"at once over {len(results) + 1} rollouts (limit {slots}; target <= limit)")
    print(f"files kept in {base}" if args.keep else "")


if __name__ == "__main__":
    main()
