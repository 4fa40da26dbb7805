"""Benchmark: what overlays and templates cost (issue 8).

One repository holds the same N files (default 10,000, in N/100 directories)
twice:

  plain/      today's plain stack: every File with inline content;
  envs/prod/  a two-level overlay (envs/prod builds on base) over the same
              files, 1 in 10 of them templated (N/10 templates), with vars in
              both overlays, labels, a kind/name patch and a labelSelector patch.
              The templates render to exactly the plain stack's bytes.

Each stack is applied once to its own root, then no-op passes (everything in
sync, render cache warm, as in a running agent) alternate between the two;
medians over --repeat passes and the ratio overlay/plain are printed. Also
printed, for information: one cold render of each (parse, patch, template,
validate; what a new revision costs once).

Usage: .venv/bin/python bench/overlay.py [--n 10000] [--repeat 9]
Target: the overlay no-op pass within 1.5x of the plain one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@invalid"}
HEADER = "# managed by setpoint"


def make_repo(repo: Path, n: int) -> None:
    rnd = random.Random(42)
    dirs = max(n // 100, 1)
    for sub in ("plain", "base/m", "envs/prod"):
        (repo / sub).mkdir(parents=True)
    for d in range(dirs):
        plain = [f"apiVersion: setpoint/v1\nkind: Directory\nmetadata: {{name: d{d}}}\n"
                 f"spec: {{path: /data/d{d}}}\n"]
        over = list(plain)
        for i in range(d * 100, min((d + 1) * 100, n)):
            body = "".join(rnd.choice("abcdefghij klmnop\n") for _ in range(300))
            head = (f"apiVersion: setpoint/v1\nkind: File\nmetadata: {{name: f{i}}}\n"
                    f"spec:\n  path: /data/d{d}/f{i}.txt\n  mode: \"0644\"\n")
            text = f"{HEADER} d{d}\n{body}"
            plain.append(head + "  content: " + json.dumps(text) + "\n")
            if i % 10 == 0:  # templated: vars from both overlays, the host's labels
                tpl = "{{ vars.header }} {{ vars.dir_prefix }}" + str(d) + "\n" + body
                over.append(head + "  template: " + json.dumps(tpl) + "\n")
            else:
                over.append(head + "  content: " + json.dumps(text) + "\n")
        (repo / "plain" / f"d{d}.yaml").write_text("---\n".join(plain))
        (repo / "base/m" / f"d{d}.yaml").write_text("---\n".join(over))
    (repo / "base/setpoint.yaml").write_text(
        "apiVersion: setpoint/v1\nkind: Overlay\nresources: [m]\n"
        "labels: {tier: base}\nvars: {header: 'overridden by prod', dir_prefix: d}\n"
    )
    (repo / "envs/prod/setpoint.yaml").write_text(
        "apiVersion: setpoint/v1\nkind: Overlay\nresources: [../../base]\n"
        f"labels: {{env: prod}}\nvars: {{header: {json.dumps(HEADER)}}}\n"
        "patches:\n"
        "  - {target: {kind: File, name: f1}, patch: {spec: {mode: '0644'}}}\n"
        "  - {target: {labelSelector: {matchLabels: {tier: base}}}, "
        "patch: {metadata: {labels: {patched: 'yes'}}}}\n"
    )
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "bench"], cwd=repo, check=True, env=GIT_ENV)


def main() -> None:
    from setpoint.config import AgentConfig
    from setpoint.engine.controller import Controller
    from setpoint.providers.registry import default_registry
    from setpoint.render import Host, render_stack

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sp-bench-overlay-") as tmp:
        work = Path(tmp)
        repo = work / "repo"
        make_repo(repo, args.n)

        def controller(name: str, path: str) -> Controller:
            root = work / f"root-{name}"
            root.mkdir()
            return Controller(AgentConfig.model_validate({
                "root": str(root), "state": str(work / f"state-{name}"),
                "labels": {"role": "web", "env": "prod"},
                "sources": [{"name": "s", "url": str(repo)}],
                "stacks": [{"name": name, "source": "s", "path": path}],
            }))

        ctls = {
            "plain": controller("plain", "plain"),
            "overlay": controller("overlay", "envs/prod"),
        }
        for name, ctl in ctls.items():
            (res,) = ctl.run_once()
            assert res.converged, res.errors
            ctl.reconcile(name)  # warm, as in a running agent
        a = sorted(p.relative_to(work / "root-plain") for p in (work / "root-plain").rglob("*"))
        b = sorted(p.relative_to(work / "root-overlay") for p in (work / "root-overlay").rglob("*"))
        assert a == b, "the two stacks must manage the same files"
        for i in range(0, args.n, 10):  # templated files render to the plain stack's bytes
            rel = f"data/d{i // 100}/f{i}.txt"
            want = (work / "root-plain" / rel).read_bytes()
            assert (work / "root-overlay" / rel).read_bytes() == want, rel

        times: dict[str, list[float]] = {"plain": [], "overlay": []}
        for _ in range(args.repeat):
            for name, ctl in ctls.items():
                t0 = time.perf_counter()
                res = ctl.reconcile(name)
                times[name].append(time.perf_counter() - t0)
                assert res.converged and not res.changes, (name, res.errors)
        renders = {name: ctl.reconciler.renders for name, ctl in ctls.items()}
        for ctl in ctls.values():
            ctl.close()

        registry = default_registry()
        tree = work / "cold"
        subprocess.run(["git", "clone", "-q", str(repo), str(tree)], check=True)
        cold = {}
        host = Host({"role": "web", "env": "prod"})
        for name, path in (("plain", "plain"), ("overlay", "envs/prod")):
            t0 = time.perf_counter()
            rendered = render_stack(tree, path, registry, host=host)
            cold[name] = time.perf_counter() - t0
            assert len(rendered.resources) == args.n + max(args.n // 100, 1)

    plain, overlay = statistics.median(times["plain"]), statistics.median(times["overlay"])
    print(f"N={args.n} files ({args.n // 10} templated in the overlay), "
          f"median of {args.repeat} no-op passes each, interleaved")
    print(f"{'':>22} {'no-op pass s':>13} {'cold render s':>14}")
    print(f"{'plain stack':>22} {plain:>13.3f} {cold['plain']:>14.3f}")
    print(f"{'two-level overlay':>22} {overlay:>13.3f} {cold['overlay']:>14.3f}")
    print(f"{'ratio overlay/plain':>22} {overlay / plain:>12.2f}x "
          f"{cold['overlay'] / cold['plain']:>13.2f}x")
    print(f"renders during the passes (cache misses): {renders}")
    print("target: overlay no-op pass within 1.5x of the plain one")


if __name__ == "__main__":
    main()
