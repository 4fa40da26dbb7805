"""A real PostgreSQL server for the tests: initdb into a temp dir, started by the test set-up.

PostgreSQL refuses to run as root: as root, the cluster belongs to an unprivileged user
(the Debian package's ``postgres``, else ``setpoint-test``, else ``nobody``) and every
server command runs through ``runuser``. The server listens on 127.0.0.1 (a free port) and
on a socket in its temp dir; fsync is off (a test server). Binaries are found under
/usr/lib/postgresql/*/bin (Debian's layout; scripts/setup.sh dev installs the package).

Used by tests/test_postgres*.py (fixtures ``pg_server`` and ``pg``) and bench/postgres.py.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql


def pg_bin() -> Path | None:
    """The newest PostgreSQL's bin directory, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _server_user() -> str | None:
    """Who runs the server: None = this process (not root), else an unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "setpoint-test", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user to run PostgreSQL as (postgres, setpoint-test)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One test cluster. ``env`` holds the libpq variables that reach it as superuser."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root = root
        self.bindir = bindir
        self.data = root / "data"
        self.socket_dir = str(root)
        self.port = free_port()
        self.user = "postgres"
        self.run_as = _server_user()

    @property
    def env(self) -> dict[str, str]:
        return {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": self.user,
                "PGDATABASE": "postgres"}

    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return [*prefix, *args]

    def init(self) -> None:
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            self._cmd(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                      "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"),
            check=True, capture_output=True, cwd=self.root,
        )

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c password_encryption=scram-sha-256")
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w",
                      "-t", "60", "-l", str(self.root / "server.log"), "start"),
            check=True, capture_output=True, cwd=self.root,
        )

    def stop(self) -> None:
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                      "stop"),
            check=False, capture_output=True, cwd=self.root,
        )

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user,
                               dbname=dbname, autocommit=True)

    def sql(self, query: str | sql.Composable, *params: Any,
            db: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as superuser (the hand of an operator causing drift)."""
        with self.connect(db) as conn, conn.cursor() as cur:
            cur.execute(query, params or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def reset(self) -> None:
        """Drop every database and role the tests made (between tests)."""
        dbs = [r[0] for r in self.sql(
            "SELECT datname FROM pg_database WHERE datname NOT IN "
            "('postgres', 'template0', 'template1')")]
        for db in dbs:
            self.sql(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
        roles = [r[0] for r in self.sql(
            "SELECT rolname FROM pg_roles WHERE oid >= 16384 AND rolname <> %s", self.user)]
        for role in roles:
            self.sql(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        for role in roles:
            self.sql(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        self.sql("DROP SCHEMA IF EXISTS public CASCADE")
        self.sql("CREATE SCHEMA public AUTHORIZATION pg_database_owner")
        self.sql("GRANT USAGE ON SCHEMA public TO PUBLIC")


def start_server() -> PgServer:
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh dev installs Debian's "
                    "postgresql package)")
    root = Path(tempfile.mkdtemp(prefix="setpoint-pg."))
    os.chmod(root, 0o755)
    server = PgServer(root, bindir)
    try:
        server.init()
        server.start()
    except BaseException:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def stop_server(server: PgServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def pg(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[PgServer]:
    """The session's server, clean, with the libpq environment pointing at it."""
    for name, value in pg_server.env.items():
        monkeypatch.setenv(name, value)
    try:
        yield pg_server
    finally:
        pg_server.reset()
