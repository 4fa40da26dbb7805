"""A real nats-server (Debian's package, 2.9) on 127.0.0.1 with JetStream in a temp dir.

``scripts/setup.sh dev`` installs it where missing. The ``nats_server`` fixture starts
one on a free port and stops it at teardown; :meth:`NatsServer.restart` stops and starts
it again on the same port and store (the "server restarted mid-test" case), and
:meth:`NatsServer.stop` leaves it down (the "unreachable" case).

Example::

    from nats_support import nats_server  # noqa: F401  (the fixture)

    def test_x(nats_server):
        cfg = {"nats": {"url": nats_server.url}}
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import stop_process

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    """True once the server speaks: NATS sends INFO first thing on a new connection."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


class NatsServer:
    """One nats-server process; ``url`` stays the same across :meth:`restart`."""

    def __init__(self, store: Path, port: int | None = None, log: Path | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.store = store
        self.port = port or free_port()
        self.log = log or store.with_suffix(".log")
        self.tls = tls  # (certificate, key): clients must speak TLS
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        if not Path(NATS_SERVER).exists():
            raise RuntimeError(
                f"{NATS_SERVER} is missing: run scripts/setup.sh dev (apt-get install nats-server)"
            )
        self.store.mkdir(parents=True, exist_ok=True)
        cmd = [NATS_SERVER, "-js", "-sd", str(self.store), "-a", "127.0.0.1",
               "-p", str(self.port)]
        if self.tls is not None:
            cmd += ["--tls", "--tlscert", str(self.tls[0]), "--tlskey", str(self.tls[1])]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _accepts(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}; see {self.log}:\n"
                    + self.log.read_text()[-2000:]
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not accept connections within {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout=10)

    def restart(self) -> None:
        """Stop, then start on the same port and store (JetStream data survive)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    try:
        yield server
    finally:
        server.stop()
