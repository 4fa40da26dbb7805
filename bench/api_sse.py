"""Benchmark: how soon ``GET /events`` delivers a drift's events (issue 10: within 100 ms).

A real agent over N managed files (default 200); one SSE client on a real socket.
CHANGES times (default 200), one file is edited in place; the client reads the
stream until that file's ``revert`` event. Prints, p50/p99/max:

- revert → received: the revert's journal time (``ts``, written when the restored
  state was confirmed) to the client holding the event: the stream's own delay;
- edit → received: from our write to the event in hand (what a dashboard waits);
- edit → restored (restore_ms, the agent's own figure), the baseline of the same run.

Usage: .venv/bin/python bench/api_sse.py [--files 200] [--changes 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
import urllib.parse
from pathlib import Path

from drift_latency import Agent, make_repo, path_of, summary


class Stream:
    def __init__(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        self.conn.request("GET", "/events?types=drift,revert")
        self.resp = self.conn.getresponse()

    def next(self) -> tuple[str, dict]:
        kind, data = "", ""
        while True:
            line = self.resp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                return kind, json.loads(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--changes", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _, url = make_repo(base, args.files)
        agent = Agent(base, url)
        try:
            agent.wait_watching()
            stream = Stream(agent.url)
            time.sleep(0.5)  # the stream is subscribed before the first edit
            stream_ms, edit_ms, restore_ms = [], [], []
            for k in range(args.changes):
                i = (k * 37) % args.files
                p = str(agent.root) + path_of(i)
                rid = f"File/f{i}"
                t0 = time.time()
                with open(p, "r+") as f:  # in place: same inode
                    f.write("drift")
                while True:
                    kind, ev = stream.next()
                    if kind == "revert" and ev["resource"] == rid:
                        got = time.time()
                        break
                stream_ms.append((got - ev["ts"]) * 1000)
                edit_ms.append((got - t0) * 1000)
                restore_ms.append(float(ev["detail"].get("restore_ms", 0)))
                time.sleep(0.02)
        finally:
            agent.stop()
    print(f"files={args.files} changes={args.changes}")
    print(summary("revert -> event received (stream delay)", stream_ms))
    print(summary("edit -> revert event received", edit_ms))
    print(summary("edit -> restored (restore_ms, baseline)", restore_ms))
    p99 = sorted(stream_ms)[round(0.99 * (len(stream_ms) - 1))]
    print(f"within 100 ms of the revert at p99: {'yes' if p99 < 100 else 'NO'} ({p99:.1f} ms)")


if __name__ == "__main__":
    main()
