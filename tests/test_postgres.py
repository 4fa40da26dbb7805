"""PostgreSQL end to end: the real ``setpoint`` command against a real server.

The server is started by the test set-up (tests/pg_support.py: initdb into a temp dir,
run as an unprivileged user, 127.0.0.1 + a socket dir). Each test declares a stack with
``postgres.connection`` (the socket dir) in a config file and drives ``plan``/``apply``;
the hand of an operator (ALTER ROLE, REVOKE, DROP SCHEMA ...) is plain SQL as superuser.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import GitRepo
from helpers import cli, docs, manifest
from pg_support import PgServer, free_port, pg, pg_server  # noqa: F401 (fixtures)
from setpoint.providers.postgres.values import password_matches

PASSWORD = "app-pw-Never-In-Clear-7731"


def role(name: str, **spec: Any) -> str:
    return manifest("PostgresRole", name, **spec)


def shop(pw_file: Path, *, extra: tuple[str, ...] = (), schema_labels: dict[str, str] | None
         = None, with_schema: bool = True) -> str:
    """A complete stack: roles, a database, a schema, grants, default privileges, an
    extension."""
    parts = [
        role("owner"),
        role("readers"),
        role("app", login=True, connectionLimit=10, inRoles=["readers"],
             passwordFrom={"file": str(pw_file)}),
        manifest("PostgresDatabase", "shop", owner="owner"),
        manifest("PostgresGrant", "readers-connect", database="shop", role="readers",
                 on="database", privileges=["CONNECT"]),
    ]
    if with_schema:
        parts += [
            manifest("PostgresSchema", "sales", labels=schema_labels, database="shop",
                     owner="owner"),
            manifest("PostgresGrant", "readers-usage", database="shop", role="readers",
                     on="schema", schema="sales", privileges=["USAGE"]),
            manifest("PostgresGrant", "readers-tables", database="shop", role="readers",
                     on="tables in schema", schema="sales", privileges=["SELECT"]),
            manifest("PostgresGrant", "app-tables", database="shop", role="app",
                     on="tables in schema", schema="sales", privileges="ALL"),
            manifest("PostgresGrant", "app-sequences", database="shop", role="app",
                     on="sequences in schema", schema="sales", privileges=["USAGE", "SELECT"]),
            manifest("PostgresGrant", "app-functions", database="shop", role="app",
                     on="functions in schema", schema="sales", privileges="ALL"),
            manifest("PostgresDefaultPrivileges", "readers-future", database="shop",
                     role="readers", forRole="owner", schema="sales", objectType="tables",
                     privileges=["SELECT"]),
            manifest("PostgresExtension", "citext", database="shop", schema="sales"),
        ]
    return docs(*parts, *extra)


class Stack:
    """A Git repository, a config file naming the server, and the CLI around them."""

    def __init__(self, repo: GitRepo, tmp: Path, server: PgServer, **stack: Any) -> None:
        self.repo = repo
        self.tmp = tmp
        self.state = tmp / "state"
        self.pw_file = tmp / "app.pw"
        self.pw_file.write_text(PASSWORD + "\n")
        self.pw_file.chmod(0o600)
        self.config = tmp / "config.yaml"
        (tmp / "root").mkdir(exist_ok=True)
        conn = {"host": server.socket_dir, "port": server.port, "user": server.user,
                "database": "postgres"}
        self.config.write_text(yaml.safe_dump({
            "root": str(tmp / "root"),
            "state": str(self.state),
            "listen": "127.0.0.1:0",
            "sources": [{"name": "repo", "url": repo.url, "interval": 0.2}],
            "stacks": [{"name": "db", "source": "repo", "path": "m",
                        "postgres": {"connection": conn}, **stack}],
        }))
        self.outputs: list[str] = []

    def commit(self, text: str) -> None:
        self.repo.commit({"m/pg.yaml": text})

    def run(self, *args: str | Path, check: int | None = None) -> subprocess.CompletedProcess[str]:
        proc = cli(*args, "--config", self.config, check=check)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def plan(self, check: int | None = 0) -> str:
        return self.run("plan", check=check).stdout

    def apply(self, check: int | None = 0) -> str:
        return self.run("apply", check=check).stdout

    def journal(self) -> list[dict[str, Any]]:
        out = cli("history", "--state", self.state, "--json", "--limit", "1000", check=0)
        self.outputs.append(out.stdout)
        return list(json.loads(out.stdout))


@pytest.fixture
def stack(git_repo: GitRepo, tmp_path: Path, pg: PgServer) -> Stack:  # noqa: F811
    return Stack(git_repo, tmp_path, pg)


def privileges(pg: PgServer, role_name: str, table: str) -> set[str]:  # noqa: F811
    rows = pg.sql(
        "SELECT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid = %s::regclass AND a.grantee = %s::regrole",
        table, role_name, db="shop")
    return {r[0] for r in rows}


def test_create_then_plan_is_empty_twenty_times(stack: Stack, pg: PgServer) -> None:  # noqa: F811
    stack.commit(shop(stack.pw_file))
    out = stack.plan(check=2)
    assert "+ create PostgresRole/readers" in out and "PostgresRole/app: waiting for" in out
    stack.apply()
    # The owner creates objects after setpoint made the schema: the next pass grants them.
    pg.sql("SET ROLE owner; CREATE TABLE sales.orders (id serial PRIMARY KEY, "
           "note sales.citext); CREATE FUNCTION sales.total(a int) RETURNS int "
           "LANGUAGE sql AS 'SELECT a'", db="shop")
    stack.apply()
    for _ in range(20):
        stack.plan(check=0)

    ((login, limit, stored),) = pg.sql(
        "SELECT rolcanlogin, rolconnlimit, rolpassword FROM pg_authid WHERE rolname = 'app'")
    assert login and limit == 10 and stored.startswith("SCRAM-SHA-256$")
    assert password_matches(PASSWORD, stored, "app")
    assert pg.sql("SELECT pg_has_role('app', 'readers', 'MEMBER')") == [(True,)]
    assert privileges(pg, "readers", "sales.orders") == {"SELECT"}
    assert privileges(pg, "app", "sales.orders") == {
        "SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}
    assert pg.sql("SELECT has_sequence_privilege('app', 'sales.orders_id_seq', 'USAGE')",
                  db="shop") == [(True,)]
    assert pg.sql("SELECT has_function_privilege('app', 'sales.total(int)', 'EXECUTE')",
                  db="shop") == [(True,)]
    assert pg.sql("SELECT extnamespace::regnamespace::text FROM pg_extension "
                  "WHERE extname = 'citext'", db="shop") == [("sales",)]


def test_each_drift_is_found_reverted_and_journaled(stack: Stack, pg: PgServer) -> None:  # noqa: F811
    stack.commit(shop(stack.pw_file))
    stack.apply()
    pg.sql("SET ROLE owner; CREATE TABLE sales.orders (id int)", db="shop")
    stack.apply()
    # An operator's hand: a role altered (flags, limit, password), a membership removed,
    # a grant revoked, one added, one given to a role setpoint does not manage.
    pg.sql("ALTER ROLE app CREATEDB CONNECTION LIMIT 3 PASSWORD 'changed-by-hand'")
    pg.sql("REVOKE readers FROM app")
    pg.sql("CREATE ROLE stranger")
    pg.sql("REVOKE SELECT ON sales.orders FROM readers; "
           "GRANT INSERT ON sales.orders TO readers; "
           "GRANT SELECT, UPDATE ON sales.orders TO stranger", db="shop")
    out = stack.plan(check=2)
    assert "createdb: false → true" not in out and "createdb: true → false" in out
    stack.apply()
    stack.plan(check=0)
    assert privileges(pg, "readers", "sales.orders") == {"SELECT"}
    assert privileges(pg, "stranger", "sales.orders") == set()
    ((createdb, limit, stored),) = pg.sql(
        "SELECT rolcreatedb, rolconnlimit, rolpassword FROM pg_authid WHERE rolname = 'app'")
    assert not createdb and limit == 10 and password_matches(PASSWORD, stored, "app")
    assert pg.sql("SELECT pg_has_role('app', 'readers', 'MEMBER')") == [(True,)]
    journal = stack.journal()
    drift = {e["resource"]: e for e in journal if e["event"] == "drift"}
    reverts = {e["resource"] for e in journal if e["event"] == "revert"}
    assert {"PostgresRole/app", "PostgresGrant/readers-tables"} <= set(drift) <= reverts
    fields = {f["field"]: (f["old"], f["new"])
              for f in drift["PostgresRole/app"]["detail"]["fields"]}
    assert fields["createdb"] == ("true", "false")
    assert fields["connectionLimit"] == ("3", "10")
    assert fields["inRoles"] == (None, "readers")
    assert fields["password"] == ("(another password)", "(passwordFrom)")
    grant = {f["field"]: (f["old"], f["new"])
             for f in drift["PostgresGrant/readers-tables"]["detail"]["fields"]}
    assert grant["sales.orders: privileges of readers"] == ("INSERT", "SELECT")
    # Privileges granted outside setpoint on an object whose grants it manages: revoked
    # by the scope's first grant (app-tables), and journaled with who held what.
    swept = {f["field"]: f["old"] for f in drift["PostgresGrant/app-tables"]["detail"]["fields"]}
    assert swept["sales.orders: privileges of stranger"] == "SELECT, UPDATE"

    # A schema dropped by hand comes back, with its grants and extension.
    pg.sql("DROP SCHEMA sales CASCADE", db="shop")
    out = stack.plan(check=2)
    assert "+ create PostgresSchema/sales" in out
    stack.apply()
    stack.plan(check=0)
    assert pg.sql("SELECT has_schema_privilege('readers', 'sales', 'USAGE')",
                  db="shop") == [(True,)]
    messages = [e["message"] for e in stack.journal() if e["event"] == "drift"]
    assert any("PostgresSchema" not in m and "schema/sales" in m and "deleted" in m
               for m in messages)


def test_drift_report_mode_reports_and_leaves_the_server(
    git_repo: GitRepo, tmp_path: Path, pg: PgServer  # noqa: F811
) -> None:
    stack = Stack(git_repo, tmp_path, pg, drift="report")
    stack.commit(shop(stack.pw_file, with_schema=False))
    stack.apply()
    pg.sql("ALTER ROLE app CREATEROLE")
    pg.sql("REVOKE CONNECT ON DATABASE shop FROM readers")
    acl = "SELECT datacl::text FROM pg_database WHERE datname = 'shop'"
    (before,) = pg.sql(acl)
    stack.apply(check=None)
    stack.apply(check=None)  # still drifted: reported once, not on every pass
    assert pg.sql("SELECT rolcreaterole FROM pg_roles WHERE rolname = 'app'") == [(True,)]
    assert pg.sql(acl) == [before] and "readers=" not in before[0]
    journal = stack.journal()
    drift = [e["resource"] for e in journal if e["event"] == "drift"]
    assert sorted(drift) == ["PostgresGrant/readers-connect", "PostgresRole/app"]
    assert not [e for e in journal if e["event"] == "revert"]
    out = stack.plan(check=2)
    assert "createrole: true → false" in out
    assert "database shop: privileges of readers: (none) → CONNECT" in out


def test_prune_drops_what_left_git_and_refuses_data_without_force(
    stack: Stack, pg: PgServer  # noqa: F811
) -> None:
    empty = manifest("PostgresSchema", "scratch", database="shop")
    stack.commit(shop(stack.pw_file, extra=(empty,)))
    stack.apply()
    pg.sql("SET ROLE owner; CREATE TABLE sales.orders (id int); "
           "INSERT INTO sales.orders VALUES (1)", db="shop")
    stack.apply()
    # Everything in schema sales, and the empty schema, leave Git.
    stack.commit(shop(stack.pw_file, with_schema=False))
    out = stack.apply(check=1)
    assert pg.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'scratch'",
                  db="shop") == [(0,)]
    assert pg.sql("SELECT count(*) FROM sales.orders", db="shop") == [(1,)]  # kept
    assert privileges(pg, "app", "sales.orders") == set()  # its grants were revoked
    assert "schema sales of database shop holds 1 table: not dropped" in out
    status = cli("status", "--state", stack.state, check=None).stdout
    assert "setpoint/prune: force" in status
    # With the force label (applied once), the schema goes with its table.
    stack.commit(shop(stack.pw_file, schema_labels={"setpoint/prune": "force"}))
    stack.apply()
    stack.commit(shop(stack.pw_file, with_schema=False))
    stack.apply()
    assert pg.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'sales'",
                  db="shop") == [(0,)]
    # A database holding tables is refused too; roles go after the database they own.
    pg.sql("SET ROLE owner; CREATE TABLE public.keep (id int)", db="shop")
    stack.commit(role("unrelated"))
    out = stack.apply(check=1)
    assert "database shop holds 1 table: not dropped" in out
    assert pg.sql("SELECT count(*) FROM pg_database WHERE datname = 'shop'") == [(1,)]
    pg.sql("DROP TABLE public.keep", db="shop")
    stack.apply()
    assert pg.sql("SELECT count(*) FROM pg_database WHERE datname = 'shop'") == [(0,)]
    assert {r[0] for r in pg.sql("SELECT rolname FROM pg_roles WHERE oid >= 16384")} == {
        "unrelated"}


def test_prune_leaves_what_the_stack_did_not_create(stack: Stack, pg: PgServer) -> None:  # noqa: F811
    pg.sql("CREATE ROLE bystander")
    stack.commit(role("mine"))
    stack.apply()
    stack.commit(role("other"))
    stack.apply()
    names = {r[0] for r in pg.sql("SELECT rolname FROM pg_roles WHERE oid >= 16384")}
    assert names == {"bystander", "other"}


def test_a_down_server_is_transient_and_the_rest_of_the_stack_reconciles(
    stack: Stack, tmp_path: Path
) -> None:
    dead = {"host": "127.0.0.1", "port": free_port()}  # nothing listens there
    stack.commit(docs(
        role("reachable"),
        role("elsewhere", connection=dead),
        manifest("File", "motd", path="/motd", content="hello\n"),
    ))
    out = stack.apply(check=1)
    assert (tmp_path / "root/motd").read_text() == "hello\n"
    assert "+ create PostgresRole/reachable" in out
    assert "retrying with back-off" in out
    failures = [e for e in stack.journal() if e["event"] == "failure"]
    assert [e["resource"] for e in failures] == ["PostgresRole/elsewhere"]
    assert "cannot connect to PostgreSQL at 127.0.0.1" in failures[0]["message"]
