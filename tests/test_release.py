"""The Release kind: verified download, immutable unpack, atomic ``current``, tamper restore."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import GitRepo
from helpers import cli, docs, manifest
from setpoint.model import Location, Resource
from setpoint.model.errors import ProviderError
from setpoint.providers.base import ProviderContext
from setpoint.providers.services.release import ReleaseProvider
from setpoint.providers.services.service_spec import ReleaseSpec
from svc_support import Env, release_doc, sha, tar_gz, zip_bytes


@pytest.fixture
def env(git_repo: GitRepo, root: Path, state_dir: Path) -> Iterator[Env]:
    e = Env(git_repo, root, state_dir)
    yield e
    e.close()


def store(env: Env, name: str = "app") -> Path:
    return env.state / "releases" / name


def test_release_is_unpacked_once_and_current_points_at_it(env: Env) -> None:
    path, data = env.ship("1.0")
    env.commit({"m/r.yaml": release_doc("app", "1.0", data, path)})
    result = env.sync()
    assert result.converged, result
    cur = store(env) / "current"
    assert os.readlink(cur) == f"versions/1.0-{sha(data)[:16]}"
    assert (cur / "version.txt").read_text() == "1.0\n"
    # The tree is reachable by a service's own user (the state dir traversable, not
    # listable); the downloads and manifests stay private (see SECURITY.md).
    assert oct(os.stat(env.state).st_mode & 0o777) == "0o711"
    assert oct(os.stat(store(env)).st_mode & 0o777) == "0o755"
    assert oct(os.stat(os.path.realpath(cur)).st_mode & 0o777) == "0o755"
    for private in ("archives", "manifests"):
        assert oct(os.stat(store(env) / private).st_mode & 0o777) == "0o700"
    assert oct(os.stat(env.state / "setpoint.db").st_mode & 0o777) == "0o600"
    inode = os.stat(cur / "server.py").st_ino
    again = env.sync()
    assert again.converged and not again.changes
    assert os.stat(cur / "server.py").st_ino == inode  # never re-unpacked


def test_tampered_release_is_restored_as_drift(env: Env) -> None:
    path, data = env.ship("1.0")
    env.commit({"m/r.yaml": release_doc("app", "1.0", data, path)})
    env.sync()
    cur = store(env) / "current"
    (cur / "version.txt").write_text("evil\n")
    (cur / "added.sh").write_text("rm -rf /\n")
    (env.root / "dist/app-1.0.tar.gz").unlink()  # restored from the store's own copy
    result = env.sync()
    assert [o.state for o in result.outcomes] == ["reverted"], result
    assert (cur / "version.txt").read_text() == "1.0\n"
    assert not (cur / "added.sh").exists()
    drift = [e for e in env.ctl.db.history(limit=100) if e.event == "drift"]
    assert drift and "version.txt" in drift[-1].message


def test_wrong_sha256_is_refused_and_nothing_changes(env: Env) -> None:
    path, data = env.ship("1.0")
    env.commit({"m/r.yaml": release_doc("app", "1.0", data, path)})
    env.sync()
    path2, _data2 = env.ship("2.0")
    bad = release_doc("app", "2.0", data, path2)  # declares 1.0's digest for 2.0's archive
    env.commit({"m/r.yaml": bad})
    result = env.sync()
    (outcome,) = result.outcomes
    assert outcome.state == "failed"
    assert "sha256" in (outcome.error or "") and "refused" in (outcome.error or "")
    assert os.readlink(store(env) / "current") == f"versions/1.0-{sha(data)[:16]}"
    assert sorted(os.listdir(store(env) / "versions")) == [f"1.0-{sha(data)[:16]}"]
    assert not [p for p in (store(env) / "archives").iterdir() if p.name.endswith(".part")]


def _provider(tmp: Path) -> tuple[ReleaseProvider, Path]:
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    return ReleaseProvider(ProviderContext(root, state_dir=tmp / "state")), root


def _res(url: str, data: bytes, version: str = "1.0", **kw: object) -> Resource:
    spec = ReleaseSpec(version=version, url=url, sha256=sha(data), **kw)
    return Resource("Release", "app", spec, Location("t.yaml", 1))


def _apply(p: ReleaseProvider, r: Resource) -> None:
    p.apply(r, p.plan(r, p.read(r)))
    assert p.plan(r, p.read(r)).is_noop


def _evil(kind: str) -> bytes:
    info = tarfile.TarInfo({"dotdot": "../escaped.txt", "abs": "/tmp/abs.txt"}.get(kind, "link"))
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc"
        return tar_gz({"ok.txt": "fine"}, extra=[info])
    return tar_gz({"ok.txt": "fine", info.name: "escaped"})


@pytest.mark.parametrize("kind", ["dotdot", "abs", "symlink"])
def test_archive_members_escaping_the_release_are_refused(tmp_path: Path, kind: str) -> None:
    p, root = _provider(tmp_path)
    data = _evil(kind)
    (root / "evil.tar.gz").write_bytes(data)
    r = _res("file:///evil.tar.gz", data)
    with pytest.raises(ProviderError, match="refused"):
        p.apply(r, p.plan(r, p.read(r)))
    assert not (tmp_path / "escaped.txt").exists()
    versions = tmp_path / "state/releases/app/versions"
    assert [d for d in versions.iterdir()] == []  # nothing unpacked, temp dir removed
    assert not (tmp_path / "state/releases/app/current").exists()


def test_zip_and_single_file_releases(tmp_path: Path) -> None:
    p, root = _provider(tmp_path)
    z = zip_bytes({"bin/run.sh": "#!/bin/sh\necho hi\n", "README": "x"})
    (root / "a.zip").write_bytes(z)
    _apply(p, _res("file:///a.zip", z))
    cur = tmp_path / "state/releases/app/current"
    assert (cur / "bin/run.sh").read_text().startswith("#!/bin/sh")
    single = b"#!/bin/sh\necho single\n"
    (root / "tool").write_bytes(single)
    _apply(p, _res("file:///tool", single, version="2.0"))
    assert (cur / "tool").read_bytes() == single
    assert os.access(cur / "tool", os.X_OK)


def test_old_versions_beyond_keep_are_collected(tmp_path: Path) -> None:
    p, root = _provider(tmp_path)
    names = []
    for v in ("1", "2", "3", "4"):
        data = tar_gz({"v.txt": v})
        (root / f"a-{v}.tar").write_bytes(data)
        _apply(p, _res(f"file:///a-{v}.tar", data, version=v, keep=2, format="tar.gz"))
        names.append(f"{v}-{sha(data)[:16]}")
    versions = tmp_path / "state/releases/app/versions"
    assert sorted(os.listdir(versions)) == names[-2:]
    archives = sorted(a.name.split(".")[0] for a in (versions.parent / "archives").iterdir())
    assert archives == names[-2:]


def test_http_url_is_downloaded_and_verified(tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    data = tar_gz({"v.txt": "http"})
    (served / "app.tar.gz").write_bytes(data)
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p, _ = _provider(tmp_path)
        _apply(p, _res(f"http://127.0.0.1:{server.server_port}/app.tar.gz", data))
        assert (tmp_path / "state/releases/app/current/v.txt").read_text() == "http"
    finally:
        server.shutdown()


def test_release_is_ordered_after_the_file_that_ships_it(env: Env) -> None:
    path, data = env.ship("1.0")
    shipped = (env.root / path.lstrip("/")).read_bytes()
    (env.root / path.lstrip("/")).unlink()
    env.commit(
        {
            "m/r.yaml": docs(
                release_doc("app", "1.0", data, path),
                manifest("File", "archive", path=path, source="app.tar.gz"),
            ),
            "m/app.tar.gz": shipped,
        }
    )
    result = env.sync()
    assert result.converged, result
    assert [o.resource for o in result.outcomes] == ["File/archive", "Release/app"]


def test_the_example_release_is_reproducible_and_declared_with_its_sha256(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    archive = repo / "examples/apps/hello/files/hello-1.0.tar.gz"
    declared = yaml.safe_load_all((repo / "examples/apps/hello/service.yaml").read_text())
    release = next(d for d in declared if d["kind"] == "Release")
    assert release["spec"]["sha256"] == sha(archive.read_bytes())
    copy = tmp_path / "examples"
    shutil.copytree(repo / "examples", copy)
    subprocess.run(
        [sys.executable, str(copy / "releases/build.py")], check=True, capture_output=True
    )
    assert (copy / "apps/hello/files/hello-1.0.tar.gz").read_bytes() == archive.read_bytes()
    cli("validate", repo / "examples/roles/worker", check=0)


def test_a_slow_drip_or_oversized_download_fails_within_its_bounds(tmp_path: Path) -> None:
    from http.server import BaseHTTPRequestHandler

    data = tar_gz({"v.txt": "slow"})
    stop = threading.Event()

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a byte every 50 ms: alive, never done in time
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for b in data:
                if stop.is_set():
                    return
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                stop.wait(0.05)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/app.tar.gz"
    try:
        p, _ = _provider(tmp_path)
        slow = _res(url, data, timeoutSeconds=0.5)
        t0 = time.monotonic()
        with pytest.raises(ProviderError, match=r"not done within timeoutSeconds \(0.5 s"):
            p.apply(slow, p.plan(slow, p.read(slow)))
        assert time.monotonic() - t0 < 5  # bounded by the deadline, not by the drip
        big = _res(url, data, maxBytes=10)
        with pytest.raises(ProviderError, match=r"larger than maxBytes \(10 bytes\)"):
            p.apply(big, p.plan(big, p.read(big)))
        assert not (tmp_path / "state/releases/app/current").exists()
    finally:
        stop.set()
        server.shutdown()
