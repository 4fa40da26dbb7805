"""Benchmark: the API under 200 dashboards while passes run (issue 10: pass latency < +20%).

A real agent over N managed files (default 1,000) whose stack resyncs every
RESYNC seconds (default 0.3: full passes back to back). Three phases of SECONDS
each, in one run: no clients (baseline), CLIENTS keep-alive clients each reading
``GET /api/v1/stacks`` once a second (at random phases), no clients again. Pass
durations come from the agent's own ``setpoint_pass_duration_seconds`` histogram
(sum and count before and after each phase: the mean pass of the phase); the
clients' answer times and errors are counted too. Prints the ratio of the loaded
mean to the mean of the two baselines.

Usage: .venv/bin/python bench/api_load.py [--files 1000] [--clients 200] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from drift_latency import Agent, make_repo, pct


def pass_totals(url: str) -> tuple[float, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
        text = r.read().decode()
    s = c = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name == "setpoint_pass_duration_seconds":
            for sample in fam.samples:
                if sample.name.endswith("_sum"):
                    s += sample.value
                elif sample.name.endswith("_count"):
                    c += sample.value
    return s, c


async def client(host: str, port: int, stop: asyncio.Event, lat: list[float],
                 errors: list[str]) -> None:  # fmt: skip
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        errors.append(str(exc))
        return
    await asyncio.sleep(random.random())
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            writer.write(b"GET /api/v1/stacks HTTP/1.1\r\nHost: bench\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
            if not head.startswith(b"HTTP/1.1 200") or m is None:
                errors.append(head[:40].decode(errors="replace"))
                return
            await reader.readexactly(int(m.group(1)))
            took = time.perf_counter() - t0
            lat.append(took * 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - took))
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(repr(exc))
    finally:
        writer.close()


async def phase(
    url: str, seconds: float, clients: int
) -> tuple[float, int, list[float], list[str]]:
    """Mean pass duration (s) and pass count over the phase; client latencies, errors."""
    u = urllib.parse.urlsplit(url)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    lat: list[float] = []
    errors: list[str] = []
    tasks = [asyncio.create_task(client(u.hostname or "", u.port or 0, stop, lat, errors))
             for _ in range(clients)]  # fmt: skip
    await asyncio.sleep(2.0 if clients else 0)  # everyone connected and in rhythm
    s0, c0 = await loop.run_in_executor(None, pass_totals, url)
    await asyncio.sleep(seconds)
    s1, c1 = await loop.run_in_executor(None, pass_totals, url)
    stop.set()
    await asyncio.gather(*tasks)
    n = int(c1 - c0)
    return ((s1 - s0) / n if n else float("nan")), n, lat, errors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--resync", type=float, default=0.3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _, url = make_repo(base, args.files)
        agent = Agent(base, url, resync=args.resync)
        try:
            agent.wait_watching()
            time.sleep(2)
            results = {}
            for name, n in (("baseline", 0), ("200 clients", args.clients), ("baseline again", 0)):
                results[name] = asyncio.run(phase(agent.url, args.seconds, n))
                mean, count, lat, errors = results[name]
                line = f"{name:15s}: {count} passes, mean pass {mean * 1000:.1f} ms"
                if n:
                    rate = len(lat) / args.seconds
                    line += (f"; {len(lat)} answers ({rate:.0f}/s), p50 {pct(lat, 50):.1f} ms, "
                             f"p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms, "
                             f"{len(errors)} errors")  # fmt: skip
                print(line, flush=True)
        finally:
            agent.stop()
    base_mean = (results["baseline"][0] + results["baseline again"][0]) / 2
    ratio = results["200 clients"][0] / base_mean
    print(f"files={args.files} clients={args.clients} seconds={args.seconds}")
    print(f"pass latency with clients / baseline: {ratio:.3f} "
          f"({(ratio - 1) * 100:+.1f}%; issue 10 wants < +20%)")  # fmt: skip


if __name__ == "__main__":
    main()
