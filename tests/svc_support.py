"""Support for the Release and Service tests: a tiny HTTP server shipped as a release archive,
free loopback ports, a long-lived in-process controller, and clean-up of every process the
tests made the agent start (pid *and* start time checked before signalling)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import signal
import socket
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from conftest import GitRepo
from helpers import manifest
from setpoint.config import AgentConfig
from setpoint.engine.controller import Controller
from setpoint.engine.outcome import PassResult
from setpoint.model import Resource
from setpoint.providers.services.common import RECORD, read_json, start_time
from setpoint.providers.services.service import ServiceProvider

# The service under test. It reads its port from $PORT, its version from version.txt in
# its working directory (the release), and a config file named by $CONFIG at start.
# GET / → "version=<v> config=<c> release=<$SETPOINT_RELEASE>"; GET /health → 200, or
# 503 when the release holds a file "broken"; GET /hups → SIGHUPs received.
SERVER = r"""
import os, signal, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
hups = 0
def on_hup(*_):
    global hups
    hups += 1
    print("got SIGHUP", flush=True)
def on_term(*_):
    print("stopping on SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGHUP, on_hup)
signal.signal(signal.SIGTERM, on_term)
version = open("version.txt").read().strip()
config = open(os.environ["CONFIG"]).read().strip() if os.environ.get("CONFIG") else ""
broken = os.path.exists("broken")
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path == "/health":
            code, body = (503, "broken") if broken else (200, "ok")
        elif self.path == "/hups":
            code, body = 200, str(hups)
        else:
            rel = os.environ.get("SETPOINT_RELEASE", "")
            code, body = 200, f"version={version} config={config} release={rel} pid={os.getpid()}"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
print(f"serving {version} on {os.environ['PORT']}", flush=True)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tar_gz(files: dict[str, bytes | str], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(raw))
        for info in extra or []:
            tf.addfile(info)
    return buf.getvalue()


def zip_bytes(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def app_archive(version: str, broken: bool = False) -> bytes:
    files: dict[str, bytes | str] = {"server.py": SERVER, "version.txt": version + "\n"}
    if broken:
        files["broken"] = "yes\n"
    return tar_gz(files)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str] | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        resp = conn.getresponse()
        out = resp.status, resp.read().decode()
        conn.close()
        return out
    except OSError:
        return None


def body(port: int, path: str = "/") -> str:
    got = get(port, path)
    return got[1] if got and got[0] == 200 else ""


def release_doc(name: str, version: str, data: bytes, path: str, **kw: Any) -> str:
    return manifest("Release", name, version=version, url=f"file://{path}", sha256=sha(data), **kw)


def service_doc(name: str, port: int, release: str | None = "Release/app", **kw: Any) -> str:
    spec: dict[str, Any] = {
        "command": [sys.executable, "server.py"],
        "env": {"PORT": str(port)},
        "readiness": {
            "http": {"url": f"http://127.0.0.1:{port}/health"},
            "periodSeconds": 0.05,
            "timeoutSeconds": 1,
            "failureThreshold": 1,
        },
        "readyTimeout": 15,
        "stop": {"graceSeconds": 5},
        "backoff": {"initialSeconds": 0.1, "maxSeconds": 1},
    }
    if release:
        spec["release"] = release
    spec.update(kw)
    return manifest("Service", name, **spec)


def config(repo: GitRepo, root: Path, state: Path) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "root": str(root),
            "state": str(state),
            "sources": [{"name": "repo", "url": repo.url, "ref": "main"}],
            "stacks": [{"name": "web", "source": "repo", "path": "m"}],
        }
    )


class Env:
    """One controller kept alive across passes (its supervisors live in it)."""

    def __init__(self, repo: GitRepo, root: Path, state: Path) -> None:
        self.repo, self.root, self.state = repo, root, state
        self.ctl = Controller(config(repo, root, state))

    @property
    def services(self) -> ServiceProvider:
        p = self.ctl.reconciler.providers["Service"]
        assert isinstance(p, ServiceProvider)
        return p

    def commit(self, files: dict[str, str | bytes], message: str = "change") -> str:
        return self.repo.commit(files, message)

    def ship(self, version: str, broken: bool = False) -> tuple[str, bytes]:
        """Put the app archive for ``version`` under the root at /dist; return (path, bytes)."""
        data = app_archive(version, broken)
        path = f"/dist/app-{version}.tar.gz"
        host = self.root / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data)
        return path, data

    def sync(self, only: set[str] | None = None) -> PassResult:
        self.ctl.fetch("repo")
        return self.ctl.reconcile("web", only=only)

    def resource(self, rid: str) -> Resource:
        desired = self.ctl.reconciler.enforced("web")
        for r in desired.ordered.order if desired else ():
            if r.id == rid:
                return r
        raise KeyError(rid)

    def record(self, name: str) -> dict[str, Any]:
        return read_json(self.state / "services" / name / RECORD) or {}

    def pid(self, name: str) -> int | None:
        rec = self.record(name)
        return rec.get("pid")

    def close(self) -> None:
        svc = self.services
        for name in list(svc._sups):
            svc.delete("Service", {"name": name})
        self.ctl.close()
        kill_recorded(self.state)


def kill_recorded(state: Path) -> None:
    """SIGKILL every recorded service process that is still the one recorded."""
    for rec_path in (state / "services").glob(f"*/{RECORD}"):
        rec = read_json(rec_path) or {}
        pid, started = rec.get("pid"), rec.get("started")
        if pid and started and start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
