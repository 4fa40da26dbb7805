"""The release store survives crashes and tampering: leftovers removed at the next pass (and
journaled), removals checked, unpacked trees durable before ``current`` switches, and a
cheap per-pass check (inode + ctime) backed by a full hash once per resync interval."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import manifest
from setpoint.providers.services.release import ReleaseProvider
from setpoint.state import JournalEntry
from svc_support import Env, release_doc, sha, tar_gz

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def env(git_repo: GitRepo, root: Path, state_dir: Path) -> Iterator[Env]:
    e = Env(git_repo, root, state_dir)
    yield e
    e.close()


def store(env: Env) -> Path:
    return env.state / "releases" / "app"


def install(env: Env) -> str:
    """Release/app 1.0 installed; its version dir name."""
    path, data = env.ship("1.0")
    env.commit({"m/r.yaml": release_doc("app", "1.0", data, path)})
    assert env.sync().converged
    return f"1.0-{sha(data)[:16]}"


def journal(env: Env) -> list[JournalEntry]:
    return [e for e in env.ctl.db.history(limit=200) if e.resource == "Release/app"]


def releases(env: Env) -> ReleaseProvider:
    p = env.ctl.reconciler.providers["Release"]
    assert isinstance(p, ReleaseProvider)
    return p


def plant(base: Path) -> list[str]:
    """What a crash mid-install, mid-restore and mid-download leaves behind."""
    (base / "versions/.tmp-x/bin").mkdir(parents=True)
    (base / "versions/.tmp-x/bin/run").write_text("half-unpacked")
    (base / "versions/.trash-y").mkdir()
    (base / "versions/.trash-y/old").write_text("old")
    (base / "archives/.z.part").write_bytes(b"half a download")
    return ["archives/.z.part", "versions/.tmp-x", "versions/.trash-y"]


# -- leftovers and checked removals ---------------------------------------------------------


def test_leftovers_of_a_crash_are_removed_at_the_next_pass_and_journaled(env: Env) -> None:
    install(env)
    planted = plant(store(env))
    result = env.sync()
    (outcome,) = result.outcomes
    assert outcome.state == "reverted", result
    for rel in planted:
        assert not os.path.lexists(store(env) / rel), rel
    (revert,) = [e for e in journal(env) if e.event == "revert"]
    for rel in planted:
        assert f"leftover: {rel} → (none)" in revert.message
    assert not [e for e in journal(env) if e.event == "failure"]
    again = env.sync()
    assert again.converged and not again.changes


@pytest.fixture
def unremovable(tmp_path: Path) -> Iterator[Path]:
    """A directory that rmtree cannot remove: a mount point (root) or read-only (non-root)."""
    d = tmp_path / "stuck"
    d.mkdir()
    if IS_ROOT:
        if shutil.which("mount") is None:
            pytest.skip("needs mount(8) to make a directory root cannot remove")
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            pytest.skip(f"mount is not permitted here (no CAP_SYS_ADMIN?): {res.stderr}")
        yield d
        subprocess.run(["umount", "-l", str(d)], check=False)
    else:
        (d / "f").write_text("x")
        os.chmod(d, 0o500)
        yield d
        os.chmod(d, 0o700)


def _stick(base: Path, unremovable: Path) -> Path:
    """A ``versions/.trash-stuck`` leftover that cannot be removed (a bind of ``unremovable``)."""
    stuck = base / "versions/.trash-stuck"
    if IS_ROOT:
        stuck.mkdir()
        subprocess.run(["mount", "--bind", str(unremovable), str(stuck)], check=True)
    else:
        shutil.copytree(unremovable, stuck)
        os.chmod(stuck, 0o500)
    return stuck


def _unstick(stuck: Path) -> None:
    if IS_ROOT:
        subprocess.run(["umount", "-l", str(stuck)], check=True)
    else:
        os.chmod(stuck, 0o700)


def test_a_leftover_that_cannot_be_removed_is_reported_and_kept(
    env: Env, unremovable: Path
) -> None:
    install(env)
    stuck = _stick(store(env), unremovable)
    try:
        env.sync()
        assert stuck.is_dir()  # kept, not claimed removed
        (failure,) = [e for e in journal(env) if e.event == "failure"]
        want = "busy" if IS_ROOT else "Permission denied"
        assert "could not remove versions/.trash-stuck" in failure.message
        assert want in failure.message and "tried again at the next pass" in failure.message
    finally:
        _unstick(stuck)
    assert env.sync().outcomes[0].state == "reverted"  # tried again, and now it goes
    assert not os.path.lexists(stuck)


def test_pruning_a_release_says_what_could_not_be_removed(env: Env, unremovable: Path) -> None:
    install(env)
    stuck = _stick(store(env), unremovable)
    try:
        env.commit({"m/r.yaml": manifest("File", "other", path="/other", content="x")})
        result = env.sync()
        assert "could not remove app/versions/.trash-stuck" in result.prune_failures["Release/app"]
        (failure,) = [e for e in journal(env) if e.event == "failure"]
        assert "kept, tried again" in failure.message
        assert not [e for e in journal(env) if e.event == "prune"]  # nothing claimed removed
    finally:
        _unstick(stuck)
    result = env.sync()
    assert not result.prune_failures
    assert [e.message for e in journal(env) if e.event == "prune"] == ["removed release app"]
    assert not store(env).exists()


# -- durable before the switch -------------------------------------------------------------


def test_unpacked_files_and_dirs_are_fsynced_before_current_switches(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        if str(dst).endswith("/current"):
            events.append("switch")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    data = tar_gz({"a/b/c.txt": "deep", "top.txt": "top", "version.txt": "1.0\n"})
    (env.root / "dist").mkdir()
    (env.root / "dist/tree.tar.gz").write_bytes(data)
    env.commit({"m/r.yaml": release_doc("app", "1.0", data, "/dist/tree.tar.gz")})
    assert env.sync().converged
    switch = events.index("switch")
    synced = {e[len("fsync ") :] for e in events[:switch] if e.startswith("fsync ")}
    tree = os.path.realpath(store(env) / "current")
    # The tree was fsynced under its temporary name, before the rename that published it.
    # (Only the release store's: the git cache stages its exports under .tmp- names too.)
    versions = os.path.dirname(tree) + "/"
    tmp_names = {
        p.rsplit("/.tmp-", 1)[1].split("/", 1)[0]
        for p in synced
        if p.startswith(versions) and "/.tmp-" in p
    }
    (tmp,) = tmp_names
    tmp_root = f"{os.path.dirname(tree)}/.tmp-{tmp}"
    for rel in ("a/b/c.txt", "top.txt", "version.txt", "a/b", "a", ""):
        assert os.path.join(tmp_root, rel).rstrip("/") in synced, rel
    assert os.path.dirname(tree) in synced  # the rename into versions/ itself


# -- cheap check, full hash at resync -------------------------------------------------------


def test_a_same_size_rewrite_with_mtime_reset_is_detected_and_restored(env: Env) -> None:
    install(env)
    f = store(env) / "current/version.txt"
    before = os.stat(f)
    f.write_text("6.6\n")  # same size
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))  # the attacker resets mtime
    assert os.stat(f).st_size == before.st_size and os.stat(f).st_mtime_ns == before.st_mtime_ns
    result = env.sync()
    assert [o.state for o in result.outcomes] == ["reverted"], result
    assert f.read_text() == "1.0\n"
    (drift,) = [e for e in journal(env) if e.event == "drift"]
    assert "changed version.txt" in drift.message


def test_only_the_full_hash_at_resync_sees_a_change_that_matches_the_record(env: Env) -> None:
    """ctime cannot be set back as non-root: simulate it by editing the stat record."""
    dirname = install(env)
    f = store(env) / "current/version.txt"
    f.write_text("6.6\n")
    record = store(env) / f"manifests/{dirname}.stat.json"
    stats = json.loads(record.read_text())
    st = os.stat(f)
    stats["version.txt"] = [st.st_ino, st.st_ctime_ns]
    record.write_text(json.dumps(stats))
    # Within the resync interval a pass runs the cheap check only: it cannot see this.
    assert env.sync().converged
    assert f.read_text() == "6.6\n"
    # A resync interval later (300 s by default) a full pass hashes, and restores.
    later = time.monotonic() + 300
    releases(env).clock = lambda: later
    partial = env.sync(only={"Release/app"})  # a partial pass (a watch event) never does
    assert [o.state for o in partial.outcomes] == ["in_sync"], partial
    result = env.sync()
    assert [o.state for o in result.outcomes] == ["reverted"], result
    assert f.read_text() == "1.0\n"
    (drift,) = [e for e in journal(env) if e.event == "drift"]
    assert "changed version.txt" in drift.message
    assert env.sync().converged  # and the restored tree has a fresh record


def test_a_tree_without_a_stat_record_is_hashed(env: Env) -> None:
    """A store written before stat records existed is checked by hashing, never trusted."""
    dirname = install(env)
    (store(env) / f"manifests/{dirname}.stat.json").unlink()
    (store(env) / "current/version.txt").write_text("6.6\n")
    result = env.sync()
    assert [o.state for o in result.outcomes] == ["reverted"], result
    assert (store(env) / "current/version.txt").read_text() == "1.0\n"
