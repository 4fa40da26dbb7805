"""Benchmark: how fast a running agent undoes drift (issue: drift undone in milliseconds).

Sets up a Git repository declaring N managed files (default 1,000, in N/100
directories), starts a real ``setpoint agent`` on it (polling and resync at
300 s, so only the inotify watches can explain a quick restore), then makes
CHANGES changes one at a time (edit in place, delete, chmod, rename-over: a
fixed random mix, seed 7) and measures, with a tight loop on the file, the time
from the change to the restored state. Prints p50/p95/p99/max and, as baselines
measured in the same run, the time of one full pass (``POST /sync``) and of a
plain Python stat+read loop over the same N files.

Usage: .venv/bin/python bench/drift_latency.py [--files 1000] [--changes 200]
Shared helpers for bench/commit_latency.py and bench/idle_cost.py live here too.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@invalid",
}
PY = sys.executable


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


def content(i: int, version: int = 0) -> str:
    return f"file {i} version {version}\n" + "x" * 200 + "\n"


def write_manifests(work: Path, n: int, versions: dict[int, int] | None = None) -> None:
    """N Files in N/100 directories, 100 documents per manifest file."""
    versions = versions or {}
    per = 100
    for d in range(max(n // per, 1)):
        docs = []
        for i in range(d * per, min((d + 1) * per, n)):
            docs.append(
                yaml.safe_dump(
                    {
                        "apiVersion": "setpoint/v1",
                        "kind": "File",
                        "metadata": {"name": f"f{i}"},
                        "spec": {
                            "path": path_of(i),
                            "content": content(i, versions.get(i, 0)),
                            "mode": "0644",
                        },
                    },
                    sort_keys=False,
                )
            )
        out = work / "m" / f"d{d}.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("---\n".join(docs))


def path_of(i: int) -> str:
    return f"/srv/d{i // 100}/f{i}.conf"


def make_repo(base: Path, n: int, *, bare: bool = False) -> tuple[Path, str]:
    """A work tree with N managed files committed; with ``bare``, also a bare remote."""
    work = base / "work"
    work.mkdir(parents=True)
    git(work, "init", "-q", "-b", "main")
    write_manifests(work, n)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "init")
    if not bare:
        return work, str(work)
    remote = base / "remote.git"
    git(base, "init", "-q", "--bare", "-b", "main", str(remote))
    git(work, "remote", "add", "origin", str(remote))
    git(work, "push", "-q", "origin", "main")
    return work, str(remote)


class Agent:
    """A real ``setpoint agent`` process with its API on a free loopback port."""

    def __init__(
        self,
        base: Path,
        url: str,
        *,
        interval: float = 300,
        resync: float = 300,
        secret: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = base / "root"
        self.state = base / "state"
        self.root.mkdir(parents=True)
        cfg: dict[str, Any] = {
            "root": str(self.root),
            "state": str(self.state),
            "listen": "127.0.0.1:0",
            "sources": [{"name": "src", "url": url, "interval": interval}],
            "stacks": [{"name": "bench", "source": "src", "path": "m", "resync": resync}],
        }
        if secret:
            (base / "secret").write_bytes(secret)
            cfg["webhookSecretFile"] = str(base / "secret")
        (base / "agent.yaml").write_text(json.dumps(cfg))
        self.log = open(base / "agent.log", "wb")  # noqa: SIM115
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [PY, "-m", "setpoint", "agent", "--config", str(base / "agent.yaml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.url = ""
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"agent exited; see {base / 'agent.log'}")
            try:
                info = json.loads((self.state / "agent.json").read_text())
                if info["pid"] == self.proc.pid:
                    self.url = f"http://{info['listen']}"
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("agent did not start")
            time.sleep(0.01)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/status", timeout=60) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def wait_watching(self) -> dict[str, Any]:
        while True:
            w = self.status()["agent"]["watch"].get("bench")
            if w and w["resources"]:
                return dict(w)
            if self.proc.poll() is not None:
                raise SystemExit("agent exited")
            time.sleep(0.01)

    def sync(self) -> float:
        """One fetch + full pass through POST /sync; its wall time in seconds."""
        token = (self.state / "api-token").read_text().strip()
        req = urllib.request.Request(
            self.url + "/sync",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"Bearer {token}"},
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
        return time.perf_counter() - t0

    def hook(self, secret: bytes, body: bytes = b"{}") -> None:
        sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        req = urllib.request.Request(
            self.url + "/hooks/git",
            data=body,
            method="POST",
            headers={"X-Setpoint-Signature": sig},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def stat_loop(root: Path, n: int) -> float:
    """Baseline: lstat + read of the N managed files, in plain Python."""
    t0 = time.perf_counter()
    for i in range(n):
        p = str(root) + path_of(i)
        os.lstat(p)
        with open(p, "rb") as f:
            f.read()
    return time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def summary(name: str, values_ms: list[float]) -> str:
    return (
        f"{name}: n={len(values_ms)} p50={pct(values_ms, 50):.1f} ms "
        f"p95={pct(values_ms, 95):.1f} ms p99={pct(values_ms, 99):.1f} ms "
        f"max={max(values_ms):.1f} ms"
    )


def restored(p: str, want: bytes) -> bool:
    try:
        st = os.lstat(p)
        if st.st_mode & 0o7777 != 0o644:
            return False
        with open(p, "rb") as f:
            return f.read() == want
    except OSError:
        return False


def change(p: str, op: str) -> None:
    if op == "edit":
        with open(p, "r+b") as f:  # in place: same inode
            f.write(b"DRIFT")
    elif op == "delete":
        os.unlink(p)
    elif op == "chmod":
        os.chmod(p, 0o666)
    else:  # rename-over, as editors save
        tmp = p + ".swp"
        with open(tmp, "wb") as f:
            f.write(b"saved by an editor\n")
        os.rename(tmp, p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=10.0, help="per change")
    args = ap.parse_args()
    n = args.files
    with tempfile.TemporaryDirectory(prefix="setpoint-bench-") as tmp:
        base = Path(tmp)
        _work, url = make_repo(base, n)
        agent = Agent(base, url)
        try:
            w = agent.wait_watching()
            print(f"agent up and watching {w['resources']} files with {w['watches']} watches "
                  f"(set-up {w['setup_ms']:.0f} ms)")
            full = statistics.median(agent.sync() for _ in range(5))
            loop = statistics.median(stat_loop(agent.root, n) for _ in range(5))
            rng = random.Random(7)
            ops = ["edit", "delete", "chmod", "rename"]
            lat: dict[str, list[float]] = {op: [] for op in ops}
            missed = 0
            for _ in range(args.changes):
                i = rng.randrange(n)
                op = rng.choice(ops)
                p = str(agent.root) + path_of(i)
                want = content(i).encode()
                while not restored(p, want):  # the previous change's file may still be settling
                    time.sleep(0.001)
                change(p, op)
                t0 = time.perf_counter()
                deadline = t0 + args.timeout
                while not restored(p, want):
                    if time.perf_counter() > deadline:
                        missed += 1
                        break
                else:
                    lat[op].append((time.perf_counter() - t0) * 1000)
            every = [v for vs in lat.values() for v in vs]
            print(f"N={n} files, {args.changes} changes ({missed} not restored within "
                  f"{args.timeout:g}s)")
            print(summary("change -> restored, all", every))
            for op in ops:
                if lat[op]:
                    print("  " + summary(op, lat[op]))
            p50 = pct(every, 50) / 1000
            print(f"baseline: one full pass (POST /sync, fetch check + {n} files) median "
                  f"{full * 1000:.1f} ms; plain stat+read loop over {n} files median "
                  f"{loop * 1000:.1f} ms")
            print(f"ratios: p50 restore / full pass = {p50 / full:.3f}; "
                  f"p50 restore / stat loop = {p50 / loop:.2f}")
            print(f"target p99 < 50 ms: {'met' if pct(every, 99) < 50 else 'NOT met'}")
        finally:
            agent.stop()


if __name__ == "__main__":
    main()
