"""The agent loop as a real process: polling, resync, retry with back-off, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import TMP_RE, cli, docs, manifest, start_agent, wait_for


def write_config(path: Path, repo: GitRepo, root: Path, state: Path, *, interval: float = 0.3,
                 resync: float = 0.5, retry_base: float = 0.2) -> Path:
    path.write_text(json.dumps({
        "root": str(root), "state": str(state), "listen": "127.0.0.1:0",
        "retry": {"base": retry_base, "max": 1},
        "sources": [{"name": "infra", "url": repo.url, "ref": "main", "interval": interval}],
        "stacks": [{"name": "web", "source": "infra", "path": "m", "resync": resync}],
    }))
    return path


@pytest.fixture
def agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> subprocess.Popen[bytes]:
        proc = start_agent("--config", config, log=tmp_path / f"agent{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def test_agent_applies_new_commits_and_reverts_drift(git_repo, root, state_dir, tmp_path, agent):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v1\n")})
    proc = agent(write_config(tmp_path / "c.json", git_repo, root, state_dir))
    motd = root / "etc/motd"
    wait_for(lambda: read(motd) == "v1\n", what="first revision applied")
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v2\n")})
    wait_for(lambda: read(motd) == "v2\n", what="new commit applied by polling")
    # Saved the way editors do (write aside, rename over), so the drift seen is whole:
    # an in-place write could be caught half-way by a watch-driven agent.
    (root / "etc/motd.new").write_text("edited by hand\n")
    os.replace(root / "etc/motd.new", motd)
    wait_for(lambda: read(motd) == "v2\n", what="drift reverted")
    hist = json.loads(cli("history", "--state", state_dir, "--json", check=0).stdout)
    drift = [e for e in hist if e["event"] == "drift"]
    assert drift and "-edited by hand" in drift[-1]["detail"]["diff"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_agent_retries_a_failed_pass_with_backoff(git_repo, root, state_dir, tmp_path, agent):
    (root / "srv").write_text("a file where a directory must go")
    git_repo.commit({"m/a.yaml": manifest("File", "app", path="/srv/app.conf", content="x\n")})
    # No resync and no new commit within the test: only the retry can repair it.
    proc = agent(write_config(tmp_path / "c.json", git_repo, root, state_dir, resync=3600))

    def status() -> dict:  # type: ignore[type-arg]
        out = cli("status", "--state", state_dir, "--json")
        stacks = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []
        return stacks[0] if stacks else {}

    st = wait_for(lambda: status().get("failures", 0) >= 2 and status(), what="failed passes")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ApplyFailed" and "/srv" in ready["message"]
    (root / "srv").unlink()
    wait_for(lambda: read(root / "srv/app.conf") == "x\n", what="retry converges")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


def test_a_restarted_agent_carries_on(git_repo, root, state_dir, tmp_path, agent):
    git_repo.commit({"m/a.yaml": docs(manifest("File", "a", path="/a", content="a"),
                                      manifest("File", "b", path="/b", content="b"))})
    cfg = write_config(tmp_path / "c.json", git_repo, root, state_dir)
    proc = agent(cfg)
    wait_for(lambda: read(root / "b") == "b", what="first apply")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    git_repo.commit({"m/a.yaml": manifest("File", "a", path="/a", content="a")})
    proc = agent(cfg)
    wait_for(lambda: not (root / "b").exists(), what="prune after restart (inventory kept)")
    assert read(root / "a") == "a"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_crash_in_the_middle_of_a_large_apply_converges_without_partial_files(
    git_repo, root, state_dir, tmp_path, agent
):
    n = 400
    big = {i: (f"file {i} " * 4000) for i in range(n)}  # ~28 KB each
    git_repo.commit({
        "m/a.yaml": docs(*(manifest("File", f"f{i}", path=f"/data/f{i}.txt",
                                    source=f"files/f{i}.txt") for i in range(n))),
        **{f"m/files/f{i}.txt": big[i] for i in range(n)},
    })
    cfg = write_config(tmp_path / "c.json", git_repo, root, state_dir, resync=3600)
    proc = agent(cfg)
    # Kill as soon as the apply is under way: some files written, not all.
    wait_for(lambda: (root / "data").is_dir() and 0 < len(list((root / "data").iterdir())) < n,
             interval=0.001, what="apply under way")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sorted((root / "data").glob("f*.txt"))
    assert len(written) < n, "the kill came too late to test a crash mid-apply"
    for p in written:  # never half a file: each one present is complete
        i = int(p.stem[1:])
        assert p.read_text() == big[i]
    proc = agent(cfg)
    wait_for(lambda: len(list((root / "data").glob("f*.txt"))) == n, what="convergence")
    wait_for(lambda: all(read(root / f"data/f{i}.txt") == big[i] for i in range(n)),
             what="all content right")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    leftovers = [p.name for p in (root / "data").iterdir() if TMP_RE.search(p.name)]
    assert leftovers == []
