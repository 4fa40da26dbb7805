"""Connections of the PostgreSQL provider: settings resolution, a connection per
(server, database) kept across passes, query counting and error mapping.

Used by :mod:`setpoint.providers.postgres.catalog` (reads) and
:mod:`setpoint.providers.postgres.provider` (applies, prune). Where to connect is
``spec.connection`` over the stack's ``postgres.connection`` over the libpq environment:
unset fields are left out of the connection parameters so that libpq applies PGHOST,
PGPORT, PGUSER, PGDATABASE, PGSSLMODE, ... itself. A server that is down or refuses the
connection is a *transient* :class:`ProviderError` (back-off); the message names the
server, never a password.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from setpoint.model.errors import ProviderError
from setpoint.providers.postgres.spec import Connection

if TYPE_CHECKING:  # psycopg is imported when a connection is first needed
    import psycopg
    from psycopg import sql

    Query = sql.Composed | sql.SQL | str

CONNECT_TIMEOUT = "5"  # seconds, unless PGCONNECT_TIMEOUT says otherwise


@dataclass(frozen=True)
class Server:
    """One server as configured (merged settings; None = libpq's environment/default)."""

    host: str | None = None
    port: int | None = None
    database: str | None = None  # where cluster-wide catalogs (roles, databases) are read
    user: str | None = None
    password_file: str | None = None
    sslmode: str | None = None

    @staticmethod
    def merge(*layers: Connection | None) -> Server:
        """The first layer that sets a field wins (spec, then the stack's settings)."""
        values: dict[str, Any] = {}
        for layer in layers:
            if layer is None:
                continue
            for name, value in (
                ("host", layer.host), ("port", layer.port), ("database", layer.database),
                ("user", layer.user), ("password_file", layer.passwordFile),
                ("sslmode", layer.sslmode),
            ):
                if value is not None and name not in values:
                    values[name] = value
        return Server(**values)

    @property
    def key(self) -> str:
        """``postgres://HOST:PORT``: the claim prefix of the objects of this server.

        Resolved with the environment libpq would use, so that two spellings of one
        server (set in the spec, or through PGHOST) claim the same keys."""
        host = self.host or os.environ.get("PGHOST") or "localhost"
        port = self.port or os.environ.get("PGPORT") or 5432
        return f"postgres://{quote(host, safe='')}:{port}"

    def where(self, dbname: str | None = None) -> str:
        """How errors name the server: ``HOST:PORT database DB`` (never a password)."""
        host = self.host or os.environ.get("PGHOST") or "(libpq default host)"
        port = self.port or os.environ.get("PGPORT") or 5432
        db = dbname or self.database or os.environ.get("PGDATABASE")
        return f"PostgreSQL at {host}:{port}" + (f" (database {db})" if db else "")

    def params(self, dbname: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in (("host", self.host), ("port", self.port), ("user", self.user),
                            ("sslmode", self.sslmode)):
            if value is not None:
                out[name] = str(value) if name == "port" else value
        db = dbname or self.database
        if db is not None:
            out["dbname"] = db
        if self.password_file is not None:
            out["password"] = _read_password(self.password_file)
        if "PGCONNECT_TIMEOUT" not in os.environ:
            out["connect_timeout"] = CONNECT_TIMEOUT
        out["application_name"] = "setpoint"
        return out

    def record(self) -> dict[str, Any]:
        """The settings as JSON for the inventory record (a password file's path only)."""
        return {
            k: v for k, v in (
                ("host", self.host), ("port", self.port), ("database", self.database),
                ("user", self.user), ("passwordFile", self.password_file),
                ("sslmode", self.sslmode),
            ) if v is not None
        }

    @staticmethod
    def from_record(data: dict[str, Any]) -> Server:
        return Server.merge(Connection.model_validate(data))


def _read_password(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise ProviderError(
            f"cannot read the PostgreSQL passwordFile {path}: {exc.strerror}; create it "
            "(mode 0600) or fix postgres.connection.passwordFile",
            transient=True,
        ) from None


class Connections:
    """Open connections by (server, database), autocommit, reused across passes.

    ``queries`` counts every statement sent (the bench reports it per pass).
    """

    def __init__(self) -> None:
        self._open: dict[tuple[Server, str | None], psycopg.Connection[Any]] = {}
        # Servers that refused a connection in this pass: the other resources of the pass
        # fail at once with the same error instead of each waiting for a timeout.
        self._failed: dict[tuple[Server, str | None], ProviderError] = {}
        self.queries = 0
        # Set by the provider: wraps a wait on the server ((what, timeout) -> context).
        self.waiting: Callable[[str, float], AbstractContextManager[None]] = (
            lambda _what, _timeout: nullcontext()
        )

    def forget_failures(self) -> None:
        """A new pass: try the servers that failed in the last one again."""
        self._failed.clear()

    def get(self, server: Server, dbname: str | None) -> psycopg.Connection[Any]:
        key = (server, dbname)
        conn = self._open.get(key)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._open.pop(key, None)
        import psycopg

        failed = self._failed.get(key)
        if failed is not None:
            raise failed
        params = server.params(dbname)
        try:
            # A connect may wait (a host that drops packets: up to connect_timeout): other
            # stacks' passes run meanwhile (ProviderContext.waiting).
            with self.waiting(f"connecting to {server.where(dbname)}",
                              float(params.get("connect_timeout") or 30)):
                conn = psycopg.connect(**params, autocommit=True)
        except psycopg.OperationalError as exc:
            err = self._failed[key] = ProviderError(
                f"cannot connect to {server.where(dbname)}: {_first_line(exc)}; "
                "retrying with back-off",
                transient=True,
            )
            raise err from None
        self._open[key] = conn
        return conn

    def fetch(self, server: Server, dbname: str | None, query: Query,
              params: Sequence[Any] = (), *, denied_ok: bool = False
              ) -> list[tuple[Any, ...]]:
        """Run one read query; a connection lost since the last pass is re-opened once."""
        import psycopg

        for attempt in (0, 1):
            conn = self.get(server, dbname)
            try:
                self.queries += 1
                with conn.cursor() as cur:
                    cur.execute(query, params or None)
                    return cur.fetchall()
            except psycopg.OperationalError as exc:
                if attempt == 0 and (conn.closed or conn.broken):
                    self.close(server, dbname)
                    continue
                raise ProviderError(
                    f"{server.where(dbname)}: {_first_line(exc)}", transient=True
                ) from None
            except psycopg.Error as exc:
                if denied_ok and isinstance(exc, psycopg.errors.InsufficientPrivilege):
                    raise  # the caller falls back (pg_authid -> pg_roles)
                raise ProviderError(
                    f"cannot read the catalog of {server.where(dbname)}: {error_text(exc)}",
                    transient=False,
                ) from None
        raise AssertionError("unreachable")

    def close(self, server: Server, dbname: str | None) -> None:
        conn = self._open.pop((server, dbname), None)
        if conn is not None:
            conn.close()

    def close_database(self, dbname: str) -> None:
        """Close our connections to ``dbname`` (DROP DATABASE refuses while they exist)."""
        for key in [k for k in self._open if k[1] == dbname]:
            self._open.pop(key).close()

    def close_all(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def error_text(exc: psycopg.Error) -> str:
    """A PostgreSQL error for an operator: the server's message (and its hint)."""
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    hint = diag.message_hint if diag is not None else None
    text = primary or _first_line(exc)
    return f"{text} ({hint})" if hint else text
