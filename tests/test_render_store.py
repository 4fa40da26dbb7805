"""The rendered stacks on disk (engine/render_store.py): a one-shot run reads no YAML.

Real Git repositories, real Controllers (one per "process", as `setpoint apply` from a
timer would run), real SOPS keys for the secret case.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import cli, docs, manifest, one_stack
from setpoint.engine.controller import Controller
from setpoint.engine.render_store import FORMAT, MAGIC, RenderStore
from setpoint.providers.registry import default_registry
from setpoint.render import Host, Keys, Limits


def files(n: int, version: int = 0) -> str:
    return docs(
        manifest("Directory", "d", path="/srv/d"),
        *(manifest("File", f"f{i}", path=f"/srv/d/f{i}", content=f"{i} v{version}\n")
          for i in range(n)),
    )  # fmt: skip


def run(repo: GitRepo, root: Path, state: Path, **cfg: object) -> tuple[int, int, object]:
    """One pass in a fresh Controller: (stacks rendered, cache hits, result)."""
    ctl = Controller(one_stack(repo.url, root, state).model_copy(update=cfg))
    try:
        (result,) = ctl.run_once()
        store = ctl.reconciler.desired.store
        assert store is not None
        return ctl.reconciler.renders, store.hits, result
    finally:
        ctl.close()


def cache_files(state: Path) -> list[Path]:
    return sorted((state / "render-cache").glob("*.json"))


def test_a_no_op_run_reads_no_yaml(git_repo, root, state_dir):
    git_repo.commit({"m/a.yaml": files(20)})
    rendered, hits, res = run(git_repo, root, state_dir)
    assert (rendered, hits) == (1, 0) and res.converged
    assert len(cache_files(state_dir)) == 1
    rendered, hits, res = run(git_repo, root, state_dir)
    assert (rendered, hits) == (0, 1) and res.converged and not res.changes
    # A drifted file is still reverted from the cached render.
    (root / "srv/d/f3").write_text("changed\n")
    rendered, hits, res = run(git_repo, root, state_dir)
    assert (rendered, hits, res.count("reverted")) == (0, 1, 1)
    assert (root / "srv/d/f3").read_text() == "3 v0\n"


def test_a_commit_elsewhere_in_the_repository_still_hits(git_repo, root, state_dir):
    git_repo.commit({"m/a.yaml": files(3), "other/x.yaml": files(1)})
    run(git_repo, root, state_dir)
    git_repo.commit({"other/x.yaml": files(2), "README": "unrelated\n"})
    rendered, hits, res = run(git_repo, root, state_dir)
    assert (rendered, hits) == (0, 1) and res.converged


def test_a_changed_or_added_manifest_misses(git_repo, root, state_dir):
    git_repo.commit({"m/a.yaml": files(3)})
    run(git_repo, root, state_dir)
    git_repo.commit({"m/a.yaml": files(3, version=1)})
    rendered, hits, res = run(git_repo, root, state_dir)
    assert (rendered, hits) == (1, 0) and res.count("changed") == 3
    # A new file in the walked directory changes its tree id: a miss too.
    git_repo.commit({"m/b.yaml": manifest("File", "extra", path="/srv/extra", content="x\n")})
    rendered, hits, res = run(git_repo, root, state_dir)
    assert (rendered, hits) == (1, 0) and (root / "srv/extra").read_text() == "x\n"
    rendered, hits, _ = run(git_repo, root, state_dir)
    assert (rendered, hits) == (0, 1)


def test_other_labels_miss(git_repo, root, state_dir):
    git_repo.commit({"m/a.yaml": files(2)})
    run(git_repo, root, state_dir, labels={"role": "web"})
    assert run(git_repo, root, state_dir, labels={"role": "web"})[:2] == (0, 1)
    assert run(git_repo, root, state_dir, labels={"role": "db"})[:2] == (1, 0)


def test_other_key_fingerprints_or_limits_miss(git_repo, root, state_dir):
    git_repo.commit({"m/a.yaml": files(2)})
    run(git_repo, root, state_dir)
    ctl = Controller(one_stack(git_repo.url, root, state_dir))
    host = ctl.reconciler.desired.host  # this host's labels (facts included), no keys
    ctl.close()
    sha = git_repo.git("rev-parse", "HEAD")
    store = RenderStore(state_dir / "render-cache", default_registry(), Limits())
    assert store.load("m", host, sha, None) is not None
    # The same labels with secret keys (another fingerprint): not this entry.
    keys = Keys(lambda _path, _data: b"", "fingerprint-of-other-keys")
    assert store.load("m", Host(host.labels, keys), sha, None) is None
    other = RenderStore(state_dir / "render-cache", default_registry(), Limits(max_nodes=10))
    assert other.load("m", host, sha, None) is None
    assert store.load("m", host, "0" * 40, None) is None  # another commit, ids unknown


@pytest.mark.parametrize(
    "damage",
    ["flip", "truncate", "empty", "foreign-format", "valid-checksum-wrong-ident", "bad-spec"],
)
def test_a_damaged_or_foreign_cache_is_ignored_and_rebuilt(git_repo, root, state_dir, damage):
    git_repo.commit({"m/a.yaml": files(5)})
    run(git_repo, root, state_dir)
    (path,) = cache_files(state_dir)
    raw = path.read_bytes()
    _magic, key_line, body = raw.split(b"\n", 2)
    if damage == "flip":
        i = len(raw) // 2
        raw = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
    elif damage == "truncate":
        raw = raw[: len(raw) - 100]
    elif damage == "empty":
        raw = b""
    else:
        import hashlib

        key, doc = json.loads(key_line), json.loads(body)
        fmt = FORMAT
        if damage == "foreign-format":
            fmt = FORMAT + 1
        elif damage == "valid-checksum-wrong-ident":
            key["ident"]["format"] = FORMAT + 1
        else:  # a spec its kind's model refuses: never handed to a provider
            doc["resources"][1][2]["path"] = "relative/path"
        rest = json.dumps(key).encode() + b"\n" + json.dumps(doc).encode()
        raw = MAGIC + b" %d " % fmt + hashlib.sha256(rest).hexdigest().encode() + b"\n" + rest
    path.write_bytes(raw)
    rendered, hits, res = run(git_repo, root, state_dir)
    assert (rendered, hits) == (1, 0) and res.converged and not res.changes
    assert run(git_repo, root, state_dir)[:2] == (0, 1)  # rebuilt by that run


def test_a_stack_read_through_a_symlink_is_not_cached(git_repo, root, state_dir):
    # m/a.yaml links to a file outside the stack path: the ids of m say nothing of it.
    git_repo.write("real/a.yaml", files(2))
    (git_repo.path / "m").mkdir()
    os.symlink("../real/a.yaml", git_repo.path / "m" / "a.yaml")
    git_repo.commit()
    rendered, _hits, res = run(git_repo, root, state_dir)
    assert rendered == 1 and res.converged and (root / "srv/d/f1").exists()
    assert cache_files(state_dir) == []
    assert run(git_repo, root, state_dir)[:2] == (1, 0)


def test_secret_derived_content_is_never_written_to_the_cache(git_repo, tmp_path):
    from test_secrets_e2e import SECRET, setup

    config, root, state = setup(git_repo, tmp_path)
    cli("apply", "--config", config, check=0)
    cli("apply", "--config", config, check=0)
    assert SECRET in (root / "etc/app/db.conf").read_text()
    cache = state / "render-cache"
    leaked = [
        p for p in cache.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()
    ] if cache.exists() else []
    assert leaked == []
    assert not cache.exists() or not list(cache.glob("*.json"))  # the stack is not cached
