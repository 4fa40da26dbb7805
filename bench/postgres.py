"""Benchmark: a no-op pass over 500 PostgreSQL roles and 2,000 grants (issue 11: < 1 s).

A real server (tests/pg_support.py: initdb into a temp dir, 127.0.0.1) holds a database
with SCHEMAS schemas of TABLES tables (each with a sequence) and a function. The stack
declares ROLES roles and 4 grants per role (CONNECT on the database, USAGE on a schema,
SELECT on its tables, USAGE on its sequences): 2,000 grants for 500 roles. The first
``apply`` (the real engine, ``Controller.run_once``) creates everything; then, with
everything in sync, it measures over --repeat runs (medians):

  (a) the engine's no-op pass (fetch check + cached render + read/plan of every resource),
  (b) the provider's share alone (begin_pass + read + plan of every resource),
  (c) the baseline: the bare catalog queries a pass needs, run with psycopg on one open
      connection (roles, databases with their ACLs, the database's object ACLs),

and prints the ratios to (c), and the number of queries a pass issues (counted by the
provider's connection wrapper: one catalog query per kind per pass, not per resource).

Usage: .venv/bin/python bench/postgres.py [--roles 500] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pg_support import start_server, stop_server
from setpoint.config import AgentConfig
from setpoint.engine.controller import Controller
from setpoint.providers.base import PassInfo
from setpoint.providers.postgres.catalog import (
    _DATABASES,
    _OBJECT_ACLS,
    _ROLES_AUTHID,
)
from setpoint.providers.postgres.provider import PostgresProvider

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@invalid"}
SCHEMAS, TABLES = 5, 10


def doc(kind: str, name: str, **spec: object) -> dict[str, object]:
    return {"apiVersion": "setpoint/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def make_repo(repo: Path, roles: int) -> int:
    docs: list[dict[str, object]] = [doc("PostgresDatabase", "bench", owner="owner"),
                                     doc("PostgresRole", "owner")]
    for s in range(SCHEMAS):
        docs.append(doc("PostgresSchema", f"s{s}", database="bench", owner="owner"))
    for i in range(roles):
        schema = f"s{i % SCHEMAS}"
        docs.append(doc("PostgresRole", f"r{i}", login=True, connectionLimit=5))
        docs.append(doc("PostgresGrant", f"r{i}-connect", database="bench", role=f"r{i}",
                        on="database", privileges=["CONNECT"]))
        docs.append(doc("PostgresGrant", f"r{i}-usage", database="bench", role=f"r{i}",
                        on="schema", schema=schema, privileges=["USAGE"]))
        docs.append(doc("PostgresGrant", f"r{i}-tables", database="bench", role=f"r{i}",
                        on="tables in schema", schema=schema, privileges=["SELECT"]))
        docs.append(doc("PostgresGrant", f"r{i}-sequences", database="bench", role=f"r{i}",
                        on="sequences in schema", schema=schema, privileges=["USAGE"]))
    (repo / "m").mkdir(parents=True)
    (repo / "m/pg.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=GIT_ENV)
    return len(docs)


def timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--roles", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    server = start_server()
    tmp = Path(tempfile.mkdtemp(prefix="setpoint-bench-pg."))
    try:
        n = make_repo(tmp / "repo", args.roles)
        conn = {"host": server.socket_dir, "port": server.port, "user": server.user,
                "database": "postgres"}
        cfg = AgentConfig.model_validate({
            "root": str(tmp / "root"), "state": str(tmp / "state"),
            "sources": [{"name": "repo", "url": str(tmp / "repo"), "ref": "main"}],
            "stacks": [{"name": "db", "source": "repo", "path": "m",
                        "postgres": {"connection": conn}}],
        })
        (tmp / "root").mkdir()
        ctl = Controller(cfg)
        try:
            t0 = time.perf_counter()
            (first,) = ctl.run_once()
            create = time.perf_counter() - t0
            bad = [o for o in first.outcomes if o.state == "failed"]
            assert not bad and not first.errors, (bad[:3], first.errors)
            # Objects the owner made after the grants: the next pass grants them (drift).
            for s in range(SCHEMAS):
                stmts = [f"CREATE TABLE s{s}.t{t} (id serial PRIMARY KEY)" for t in range(TABLES)]
                stmts.append(f"CREATE FUNCTION s{s}.f(a int) RETURNS int LANGUAGE sql "
                             "AS 'SELECT a'")
                server.sql("SET ROLE owner; " + "; ".join(stmts), db="bench")
            ctl.run_once()
            (check,) = ctl.run_once(dry_run=True)
            changed = [o for o in check.outcomes if o.state != "in_sync"]
            assert not changed, f"not converged: {changed[:3]}"

            provider = ctl.reconciler.providers["PostgresRole"]
            assert isinstance(provider, PostgresProvider)
            engine = timed(lambda: ctl.run_once(), args.repeat)
            resources = list(ctl.reconciler.enforced("db").ordered.order)  # type: ignore[union-attr]

            def provider_pass() -> None:
                provider.begin_pass(PassInfo("db", True, 300.0))
                for r in resources:
                    change = provider.plan(r, provider.read(r))
                    assert change.is_noop, change.summary()

            provider_pass()
            before = provider.conns.queries
            provider_pass()
            queries = provider.conns.queries - before
            alone = timed(provider_pass, args.repeat)
        finally:
            ctl.close()

        import psycopg

        with psycopg.connect(host=server.socket_dir, port=server.port, user=server.user,
                             dbname="postgres", autocommit=True) as c1, psycopg.connect(
                host=server.socket_dir, port=server.port, user=server.user, dbname="bench",
                autocommit=True) as c2:

            def baseline() -> None:
                c1.execute(_ROLES_AUTHID).fetchall()
                c1.execute(_DATABASES).fetchall()
                c2.execute(_OBJECT_ACLS).fetchall()

            base = timed(baseline, args.repeat)
            rows = len(c2.execute(_OBJECT_ACLS).fetchall())
    finally:
        stop_server(server)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    med = statistics.median
    roles = args.roles
    print(f"stack: {n} resources ({roles} roles, {4 * roles} grants, {SCHEMAS} schemas, "
          f"{SCHEMAS * TABLES} tables + sequences, object ACL rows: {rows})")
    print(f"first apply (create everything):       {create * 1000:9.1f} ms")
    print(f"baseline: bare catalog queries          {med(base) * 1000:9.1f} ms  (median of "
          f"{args.repeat})")
    print(f"provider no-op pass (read + plan)       {med(alone) * 1000:9.1f} ms  "
          f"x{med(alone) / med(base):.1f} baseline")
    print(f"engine no-op pass (Controller.run_once) {med(engine) * 1000:9.1f} ms  "
          f"x{med(engine) / med(base):.1f} baseline  (target < 1000 ms)")
    print(f"queries per pass: {queries} (for {n - 1 - SCHEMAS - 1} resources)")


if __name__ == "__main__":
    main()
