"""Benchmark: what durable, checked exports of a revision cost (issue 15).

Makes a repository of N files (default 2,000 of 4 KiB in N/100 directories) and a
mirror, then measures, RUNS times each (median):

- baseline: ``git archive`` + extract + make read-only, no fsync, no check (what an
  export cost before it was made durable);
- a durable export by ``GitSource.tree`` (listing, extract, blob-id check, fsync of
  every file and directory, 16 at a time, manifest);
- the first use of an existing export in a new process (manifest + every blob hashed);
- a later use in the same process (stat of the manifest only).

Usage: .venv/bin/python bench/export_cost.py [--files 2000] [--size 4096] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from setpoint.source import GitSource, export

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@setpoint.invalid",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@setpoint.invalid",
}  # fmt: skip


def make_repo(base: Path, n: int, size: int) -> Path:
    work = base / "repo"
    for i in range(n):
        p = work / f"d{i // 100:03d}" / f"f{i:05d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes((f"{i:08d}" * (size // 8 + 1)).encode()[:size])
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=work, env=ENV, check=True)
    return work


def timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="setpoint-bench-") as tmp:
        base = Path(tmp)
        work = make_repo(base, args.files, args.size)
        cache = base / "cache"
        src = GitSource("bench", str(work), "main", cache)
        sha = src.fetch()
        trees = cache / "trees"

        def baseline(i: int) -> None:
            out = base / f"plain-{i}"
            archive = base / f"plain-{i}.tar"
            subprocess.run(
                ["git", f"--git-dir={cache / 'repo.git'}", "archive", "--format=tar",
                 f"--output={archive}", sha], check=True, env=ENV,
            )  # fmt: skip
            with tarfile.open(archive) as tar:
                tar.extractall(out, filter="tar")
            export.make_read_only(out)

        def durable() -> None:
            export.remove_tree(trees / sha)
            export.manifest_path(trees / sha).unlink(missing_ok=True)
            GitSource("bench", str(work), "main", cache).tree(sha)

        plain = statistics.median(timed(lambda i=i: baseline(i)) for i in range(args.runs))
        full = statistics.median(timed(durable) for _ in range(args.runs))
        first = statistics.median(
            timed(lambda: GitSource("bench", str(work), "main", cache).tree(sha))
            for _ in range(args.runs)
        )
        same = GitSource("bench", str(work), "main", cache)
        same.tree(sha)
        later = statistics.median(timed(lambda: same.tree(sha)) for _ in range(args.runs))
    mib = args.files * args.size / 2**20
    print(f"N={args.files} files, {mib:.1f} MiB, median of {args.runs}")
    print(f"baseline (archive + extract, no fsync, no check): {plain * 1000:.0f} ms")
    print(f"durable export (check + fsync + manifest): {full * 1000:.0f} ms "
          f"= {full / plain:.2f}x baseline")
    print(f"first use in a new process (every blob hashed): {first * 1000:.0f} ms "
          f"= {first / plain:.2f}x baseline")
    print(f"later use in the same process: {later * 1000:.1f} ms")


if __name__ == "__main__":
    main()
