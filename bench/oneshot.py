"""Benchmark: one whole `setpoint` process against the stdlib floor (issue: a one-shot run).

Hosts run `setpoint apply` / `setpoint plan` from timers and CI, so the cost of one
whole process counts, not only the agent's in-memory pass. For N files of ~500 B in
50 directories, declared in a real Git repository in a temp dir (target root and
state dir are temp dirs too), this runs, each as a fresh process started with this
venv's interpreter (``python -m setpoint``, no shim), medians over --repeat runs:

  no-op ``setpoint apply`` and ``setpoint plan`` (N = 5,000 and 50,000), against the
    floor's *check*: plain Python that lstats each directory, then opens, fstats,
    reads and SHA-256s each file and compares it with the expected digest;
  first apply on an empty root with a fresh state dir (N = 5,000), against the floor's
    fsynced *apply*: mkdir the directories, then per file a temp file in the same
    directory, fchmod, fsync, rename over the target, and one fsync per directory;
  ``setpoint --help`` and ``setpoint status`` start time (target <= 80 ms), beside
    ``python -c pass`` (the interpreter alone);
  the max RSS of a no-op apply at N = 5,000 (target <= 50 MB; GNU ``time``).

A no-op run is answered by the settled record (engine/settled.py) that the warm-up
applies leave; the engine's own no-op pass is measured too, with the record dropped
before each run (no target: for comparison).

Children run with compiled bytecode, as an installed package does (this script drops
PYTHONDONTWRITEBYTECODE for them; the warm-up runs write it).

Floor and setpoint runs alternate, so the shared machine's noise hits both alike.
Each first apply (floor or setpoint) starts on a settled disk: the previous run's
tree is deleted, then ``sync`` waits for that deletion's writeback and discards, which
the next run would otherwise pay for (whichever of the two it is).

Usage: .venv/bin/python bench/oneshot.py [--n 5000,50000] [--repeat 7] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PY = sys.executable
DIRS = 50
# As installed: bytecode compiled once and reused (an editable checkout under
# PYTHONDONTWRITEBYTECODE would compile every module in every run).
GIT_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@invalid"}
TIME = "/usr/bin/time"  # GNU time: the child's own max RSS (os.wait4 counts the fork's too)

# The floor's check: what any agent must do at least to know N files are as declared.
FLOOR_CHECK = r"""
import hashlib, os, sys
root = sys.argv[1]
with open(sys.argv[2]) as fh:
    rows = [line.rstrip("\n").split("\t") for line in fh]
dirs = sorted({os.path.dirname(p) for p, _ in rows})
for d in dirs:
    os.lstat(root + d)
bad = 0
for p, digest in rows:
    fd = os.open(root + p, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        data = os.read(fd, st.st_size + 1)
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != digest:
        bad += 1
sys.exit(1 if bad else 0)
"""

# The floor's apply: the same durable write setpoint promises, nothing else.
FLOOR_APPLY = r"""
import json, os, sys
root = sys.argv[1]
with open(sys.argv[2]) as fh:
    files = json.load(fh)
dirs = sorted({os.path.dirname(p) for p, _ in files})
for d in dirs:
    os.makedirs(root + d, exist_ok=True)
for p, content in files:
    d, name = os.path.split(root + p)
    tmp = os.path.join(d, "." + name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content.encode())
        os.fchmod(fd, 0o644)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, root + p)
for d in dirs + [os.path.dirname(dirs[0])]:
    fd = os.open(root + d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
"""


def make_repo(work: Path, n: int) -> tuple[Path, Path, Path]:
    """The Git repo (one manifest per directory) and the floor's inputs: digests, contents."""
    rnd = random.Random(42)
    repo = work / "repo"
    (repo / "m").mkdir(parents=True)
    files: list[tuple[str, str]] = []
    for d in range(DIRS):
        docs = [f"apiVersion: setpoint/v1\nkind: Directory\nmetadata: {{name: d{d}}}\n"
                f"spec: {{path: /data/d{d}}}\n"]
        for i in range(d, n, DIRS):
            body = "".join(rnd.choice("abcdefghij klmnop\n") for _ in range(490)) + "\n"
            path = f"/data/d{d}/f{i}.txt"
            files.append((path, body))
            docs.append(f"apiVersion: setpoint/v1\nkind: File\nmetadata: {{name: f{i}}}\n"
                        f"spec:\n  path: {path}\n  mode: \"0644\"\n  content: "
                        + json.dumps(body) + "\n")
        (repo / "m" / f"d{d}.yaml").write_text("---\n".join(docs))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=GIT_ENV)
    digests = work / "expected.tsv"
    digests.write_text("".join(f"{p}\t{hashlib.sha256(c.encode()).hexdigest()}\n"
                               for p, c in files))
    contents = work / "contents.json"
    contents.write_text(json.dumps(files))
    return repo, digests, contents


def run(argv: list[str]) -> float:
    """Wall time (s) of one whole child process."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=GIT_ENV,
                          check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr.decode()}")
    return elapsed


def max_rss_mb(argv: list[str]) -> float:
    """Max RSS (MB) of one run of ``argv``, by GNU time when installed, else os.wait4.

    os.wait4 also counts the pages of this (forked) process before the exec: an upper bound.
    """
    if os.access(TIME, os.X_OK):
        with tempfile.NamedTemporaryFile("r") as out:
            subprocess.run([TIME, "-f", "%M", "-o", out.name, *argv], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=GIT_ENV, check=True)
            return int(out.read().split()[-1]) / 1024
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=GIT_ENV)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


def setpoint(*args: str) -> list[str]:
    return [PY, "-m", "setpoint", *args]


def stack_args(repo: Path, root: Path, state: Path) -> list[str]:
    return ["--repo", str(repo), "--path", "m", "--root", str(root), "--state", str(state)]


def alternate(repeat: int, floor: Callable[[int], float], ours: Callable[[int], float]
              ) -> tuple[float, float]:
    fl, sp = [], []
    for k in range(repeat):
        fl.append(floor(k))
        sp.append(ours(k))
    return statistics.median(fl), statistics.median(sp)


def bench_n(n: int, repeat: int, repeat_apply: int, first: bool) -> list[tuple[str, float, float]]:
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix=f"sp-oneshot-{n}-") as tmp:
        work = Path(tmp)
        repo, digests, contents = make_repo(work, n)
        if first:
            def floor_apply(k: int) -> float:
                root = work / f"floor{k}"
                root.mkdir()
                os.sync()  # settled: the last run's deletion is not this one's cost
                t = run([PY, "-c", FLOOR_APPLY, str(root), str(contents)])
                shutil.rmtree(root)
                return t

            def first_apply(k: int) -> float:
                root, state = work / f"root{k}", work / f"state{k}"
                root.mkdir()
                os.sync()
                t = run(setpoint("apply", *stack_args(repo, root, state)))
                shutil.rmtree(root)
                shutil.rmtree(state)
                return t

            fl, sp = alternate(repeat_apply, floor_apply, first_apply)
            rows.append((f"first apply, N={n:,} (floor: fsynced apply)", fl, sp))
        root, state = work / "root", work / "state"
        root.mkdir()
        run(setpoint("apply", *stack_args(repo, root, state)))
        run(setpoint("apply", *stack_args(repo, root, state)))  # caches warm, as on a timer

        def check(_k: int) -> float:
            return run([PY, "-c", FLOOR_CHECK, str(root), str(digests)])

        noop = setpoint("apply", *stack_args(repo, root, state))
        fl, sp = alternate(repeat, check, lambda _k: run(noop))
        rows.append((f"no-op apply, N={n:,} (floor: check)", fl, sp))
        fl, sp = alternate(repeat, check, lambda _k: run(
            setpoint("plan", *stack_args(repo, root, state))))
        rows.append((f"no-op plan, N={n:,} (floor: check)", fl, sp))

        def full_path(_k: int) -> float:
            (state / "settled").unlink()  # the engine's path (the run writes it again)
            return run(noop)

        fl, sp = alternate(max(1, repeat // 2), check, full_path)
        rows.append((f"no-op apply by the engine, N={n:,} (record dropped)", fl, sp))
        rows.append((f"max RSS MB, no-op apply, N={n:,} (floor: python -c pass)",
                     max_rss_mb([PY, "-c", "pass"]), max_rss_mb(noop)))
        if first:
            fl, sp = alternate(repeat, lambda _k: run([PY, "-c", "pass"]),
                               lambda _k: run(setpoint("--help")))
            rows.append(("start: setpoint --help (floor: python -c pass)", fl, sp))
            fl, sp = alternate(repeat, lambda _k: run([PY, "-c", "pass"]),
                               lambda _k: run(setpoint("status", "--state", str(state))))
            rows.append(("start: setpoint status (floor: python -c pass)", fl, sp))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="5000,50000",
                    help="comma-separated N; the first also runs the first apply and start times")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--repeat-apply", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="N=5,000 only, 3 runs each")
    args = ap.parse_args()
    sizes = [int(s) for s in args.n.split(",")]
    if args.quick:
        sizes, args.repeat, args.repeat_apply = sizes[:1], 3, 3
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; medians of {args.repeat} "
          f"runs ({args.repeat_apply} for first applies); whole processes")
    print(f"{'case':<58} {'floor':>9} {'setpoint':>9} {'ratio':>7}")
    for idx, n in enumerate(sizes):
        for name, fl, sp in bench_n(n, args.repeat, args.repeat_apply, first=idx == 0):
            unit = "" if name.startswith("max RSS") else " s"
            fmt = ".1f" if unit == "" else ".3f"
            print(f"{name:<58} {fl:>7{fmt}}{unit:2} {sp:>7{fmt}}{unit:2} {sp / fl:>6.1f}x",
                  flush=True)
    print("targets: no-op apply/plan <= 5x the check at 5,000, <= 3x at 50,000; first apply "
          "<= 1.3x the fsynced apply; --help and status <= 80 ms; RSS <= 50 MB")


if __name__ == "__main__":
    main()
