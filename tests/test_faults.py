"""Faults survived: unreachable remote, wrong credentials, deleted ref, corrupt git cache,
disk full and read-only target. The last good revision stays enforced, status says why,
and everything recovers by itself once the cause is gone."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import GitRepo
from helpers import TMP_RE, manifest, one_pass, one_stack, start_agent, stop_process, wait_for
from setpoint.config import AgentConfig
from setpoint.state import StateDB


def config(url: str, root: Path, state: Path, ref: str = "main") -> AgentConfig:
    return one_stack(url, root, state, ref=ref)


def run(cfg: AgentConfig) -> tuple[Any, Any, list[Any]]:
    return one_pass(cfg)[:3]


def commit(repo: GitRepo, content: str, **files: str) -> str:
    extra = {f"m/{k}.yaml": v for k, v in files.items()}
    return repo.commit({"m/a.yaml": manifest("File", "f", path="/etc/f", content=content), **extra})


def assert_source_failed(status: Any, *needles: str) -> None:
    ready = status.condition("Ready")
    assert ready.status is False and ready.reason == "SourceFailed", ready
    assert "stays in force" in ready.message
    for n in needles:
        assert n in ready.message, ready.message


# -- remote unreachable, ref deleted -----------------------------------------------------


def test_unreachable_remote_keeps_last_good_and_recovers(git_repo, root, state_dir, tmp_path):
    good = commit(git_repo, "v1\n")
    cfg = config(git_repo.url, root, state_dir)
    assert run(cfg)[0].converged
    away = tmp_path / "away"
    git_repo.path.rename(away)
    (root / "etc/f").write_text("drift\n")
    result, status, journal = run(cfg)
    assert result.revision == good and result.fetch_error
    assert_source_failed(status, "repo")
    assert (root / "etc/f").read_text() == "v1\n"  # still enforced
    assert any(e.event == "source.failed" for e in journal)
    away.rename(git_repo.path)
    new = commit(git_repo, "v2\n")
    result, status, _ = run(cfg)
    assert result.converged and result.revision == new
    assert status.condition("Ready").status is True


def test_deleted_ref_keeps_last_good_and_recovers(git_repo, root, state_dir):
    commit(git_repo, "v1\n")
    git_repo.git("branch", "release")
    cfg = config(git_repo.url, root, state_dir, ref="release")
    good = run(cfg)[0].revision
    git_repo.git("branch", "-D", "release")
    result, status, _ = run(cfg)
    assert result.revision == good
    assert_source_failed(status, "ref 'release' not found")
    new = commit(git_repo, "v2\n")
    git_repo.git("branch", "release", new)
    result, *_ = run(cfg)
    assert result.converged and result.revision == new


def _agent_status(state: Path) -> Any:
    if not (state / "setpoint.db").exists():
        return None
    db = StateDB(state)
    try:
        return db.load_status("web")
    finally:
        db.close()


def test_agent_retries_an_unreachable_remote_and_recovers_by_itself(
    git_repo, root, state_dir, tmp_path
):
    commit(git_repo, "v1\n")
    conf = tmp_path / "agent.yaml"
    conf.write_text(
        f"root: {root}\nstate: {state_dir}\nretry: {{base: 0.2, max: 1}}\n"
        f"sources: [{{name: repo, url: {git_repo.url}, interval: 0.3}}]\n"
        "stacks: [{name: web, source: repo, path: m, resync: 0.5}]\n"
    )
    proc = start_agent("--config", conf, log=tmp_path / "agent.log")
    try:

        def ready() -> bool:
            st = _agent_status(state_dir)
            c = st.condition("Ready") if st else None
            return bool(c and c.status)

        wait_for(ready, what="first apply")
        away = tmp_path / "away"
        git_repo.path.rename(away)

        def failing() -> bool:
            st = _agent_status(state_dir)
            c = st.condition("Ready") if st else None
            return bool(c and c.reason == "SourceFailed")

        wait_for(failing, what="the fault to show in status")
        (root / "etc/f").write_text("drift\n")
        wait_for(lambda: (root / "etc/f").read_text() == "v1\n", what="drift reverted meanwhile")
        away.rename(git_repo.path)
        new = commit(git_repo, "v2\n")

        def recovered() -> bool:
            st = _agent_status(state_dir)
            return bool(st and ready() and st.last_good_revision == new)

        wait_for(recovered, what="recovery after the remote came back")
        assert (root / "etc/f").read_text() == "v2\n"
        db = StateDB(state_dir)
        try:
            events = [e.event for e in db.history(limit=1000)]
        finally:
            db.close()
        # Repeated identical failures are journaled once, not on every retry.
        assert events.count("source.failed") == 1, events
    finally:
        stop_process(proc, timeout=20)


# -- wrong credentials (a real smart-HTTP server with basic auth) ------------------------


class _GitHTTP(BaseHTTPRequestHandler):
    project_root = ""
    password = "secret"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        want = base64.b64encode(f"ops:{self.password}".encode()).decode()
        if self.headers.get("Authorization") != f"Basic {want}":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": self.project_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "ops",
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        for h in ("Content-Encoding", "Git-Protocol"):
            if self.headers.get(h):
                env["HTTP_" + h.upper().replace("-", "_")] = self.headers[h]
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _handle
    do_POST = _handle


@pytest.fixture
def http_git(git_repo: GitRepo) -> Iterator[tuple[str, type[_GitHTTP]]]:
    handler = type("Handler", (_GitHTTP,), {"project_root": str(git_repo.path.parent)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://ops:secret@127.0.0.1:{server.server_port}/repo/.git", handler
    finally:
        server.shutdown()
        server.server_close()


def test_wrong_credentials_are_reported_masked_and_recovered(git_repo, root, state_dir, http_git):
    url, handler = http_git
    good = commit(git_repo, "v1\n")
    cfg = config(url, root, state_dir)
    result, *_ = run(cfg)
    assert result.converged, result
    handler.password = "rotated"
    commit(git_repo, "v2\n")
    result, status, journal = run(cfg)
    assert result.revision == good
    assert_source_failed(status)
    msg = status.condition("Ready").message
    assert "ops:***@127.0.0.1" in msg and "secret" not in msg
    assert all("secret" not in e.message for e in journal)
    assert (root / "etc/f").read_text() == "v1\n"
    handler.password = "secret"
    result, *_ = run(cfg)
    assert result.converged and (root / "etc/f").read_text() == "v2\n"


# -- corrupt git cache --------------------------------------------------------------------


def _delete_objects(state: Path) -> int:
    """Delete the mirror's blobs and trees, keep its commits: git then believes it has
    what the refs point to, so a fetch sends only new objects and fails its connectivity
    check, and an export fails outright."""
    git_dir = state / "sources/repo/repo.git"
    listing = subprocess.run(
        ["git", f"--git-dir={git_dir}", "cat-file", "--batch-all-objects", "--batch-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    gone = 0
    for line in listing:
        sha, _, rest = line.partition(" ")
        loose = git_dir / "objects" / sha[:2] / sha[2:]
        if rest.startswith(("blob", "tree")) and loose.exists():
            loose.unlink()
            gone += 1
    for pack in (git_dir / "objects/pack").glob("*"):
        pack.unlink()
        gone += 1
    return gone


def test_corrupt_cache_is_recloned_on_the_next_fetch(git_repo, root, state_dir):
    commit(git_repo, "v1\n")
    cfg = config(git_repo.url, root, state_dir)
    assert run(cfg)[0].converged
    assert _delete_objects(state_dir) > 0
    new = commit(git_repo, "v2\n")
    result, _status, journal = run(cfg)
    assert result.converged and result.revision == new, result
    assert any(e.event == "source.repaired" for e in journal)
    assert (root / "etc/f").read_text() == "v2\n"


def test_corrupt_cache_and_lost_trees_are_rebuilt_on_restart(git_repo, root, state_dir):
    good = commit(git_repo, "v1\n")
    cfg = config(git_repo.url, root, state_dir)
    assert run(cfg)[0].converged
    _delete_objects(state_dir)
    shutil.rmtree(state_dir / "sources/repo/trees")
    (root / "etc/f").write_text("drift\n")
    result, _status, journal = run(cfg)  # same revision: only the export needs the objects
    assert result.converged and result.revision == good, result
    assert (root / "etc/f").read_text() == "v1\n"
    assert any(e.event == "source.repaired" for e in journal)


def test_corrupt_cache_while_remote_is_gone_keeps_enforcing(git_repo, root, state_dir, tmp_path):
    good = commit(git_repo, "v1\n")
    cfg = config(git_repo.url, root, state_dir)
    assert run(cfg)[0].converged
    _delete_objects(state_dir)
    git_repo.path.rename(tmp_path / "away")
    (root / "etc/f").write_text("drift\n")
    result, status, _ = run(cfg)  # exported tree still there: enforcement goes on
    assert result.revision == good
    assert_source_failed(status)
    assert (root / "etc/f").read_text() == "v1\n"
    (tmp_path / "away").rename(git_repo.path)
    new = commit(git_repo, "v2\n")
    result, *_ = run(cfg)
    assert result.converged and result.revision == new


# -- disk full and read-only target (a real size-limited tmpfs) ----------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a size-limited tmpfs (run as root, as CI does)")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"mount is not permitted here (container without CAP_SYS_ADMIN?): {res.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True)


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if TMP_RE.search(p.name)]


def test_disk_full_leaves_no_partial_file_and_recovers(git_repo, small_fs, state_dir):
    root = small_fs
    commit(git_repo, "v1\n", big=manifest("File", "big", path="/etc/big", content="old\n"))
    cfg = config(git_repo.url, root, state_dir)
    assert run(cfg)[0].converged
    big = b"x" * (2 << 20)  # 2 MiB into a 1 MiB file system
    git_repo.write("m/big.bin", big)
    new = commit(git_repo, "v2\n", big=manifest("File", "big", path="/etc/big", source="big.bin"))
    result, status, journal = run(cfg)
    states = {o.resource: o.state for o in result.outcomes}
    assert states == {"File/f": "changed", "File/big": "failed"}
    assert (root / "etc/big").read_text() == "old\n"  # old version intact, not half of the new
    assert _leftovers(root) == []
    ready = status.condition("Ready")
    assert ready.reason == "ApplyFailed" and "No space left on device" in ready.message
    assert "File/big" in ready.message
    assert any(e.event == "failure" and e.resource == "File/big" for e in journal)

    _remount(root, "size=8m")  # space returns
    result, status, _ = run(cfg)
    assert result.converged and result.revision == new
    assert (root / "etc/big").stat().st_size == len(big)


def test_read_only_target_leaves_no_partial_file_and_recovers(git_repo, small_fs, state_dir):
    root = small_fs
    commit(git_repo, "v1\n")
    cfg = config(git_repo.url, root, state_dir)
    assert run(cfg)[0].converged
    _remount(root, "ro")
    try:
        new = commit(git_repo, "v2\n")
        result, status, _ = run(cfg)
        assert [o.state for o in result.outcomes] == ["failed"]
        ready = status.condition("Ready")
        assert ready.reason == "ApplyFailed" and "Read-only file system" in ready.message
        assert (root / "etc/f").read_text() == "v1\n"
    finally:
        _remount(root, "rw")
    assert _leftovers(root) == []
    result, *_ = run(cfg)
    assert result.converged and result.revision == new
    assert (root / "etc/f").read_text() == "v2\n"
