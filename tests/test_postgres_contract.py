"""The provider contract for the PostgreSQL kinds, against a real server, in process.

From several starting states (absent, drifted by hand), ``apply(plan(read()))``
converges: the next ``plan(read())`` is a NOOP and a second apply changes nothing.
Also: a pass reads the catalog once per kind (not once per resource), create-only
database properties are a clear error, and a password is compared, never read back.
``POSTGRES_SPECS`` is counted by tests/test_provider_contract.py (every kind has cases).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pg_support import PgServer, pg, pg_server  # noqa: F401 (fixtures)
from setpoint.model import Location, Resource
from setpoint.model.errors import ProviderError
from setpoint.model.plan import Action
from setpoint.providers.base import PassInfo, ProviderContext, StallError
from setpoint.providers.postgres.provider import PostgresProvider
from setpoint.providers.registry import default_registry

LOC = Location("t.yaml", 1)


def res(kind: str, rname: str, labels: dict[str, str] | None = None, **spec: Any) -> Resource:
    model = default_registry().spec_model(kind)
    assert model is not None
    return Resource(kind, rname, model.model_validate(spec), LOC, labels or {}, digest="x")


POSTGRES_SPECS: dict[str, dict[str, Callable[[], Resource]]] = {
    "PostgresRole": {
        "full": lambda: res("PostgresRole", "r1", login=True, createdb=True,
                            connectionLimit=5, validUntil="2030-01-01T00:00:00Z",
                            inRoles=["grp"]),
        "named": lambda: res("PostgresRole", "r-x", name="Mixed Case Role", login=False,
                             validUntil="infinity"),
    },
    "PostgresDatabase": {
        "owned": lambda: res("PostgresDatabase", "db2", owner="o", connectionLimit=5),
        "encoding": lambda: res("PostgresDatabase", "db3", encoding="UTF8",
                                lcCollate="C", lcCtype="C"),
    },
    "PostgresSchema": {
        "owned": lambda: res("PostgresSchema", "x", database="d", owner="o"),
    },
    "PostgresGrant": {
        "database": lambda: res("PostgresGrant", "g1", database="d", role="r", on="database",
                                privileges=["CONNECT", "TEMP"]),
        "schema": lambda: res("PostgresGrant", "g2", database="d", role="r", on="schema",
                              schema="s", privileges="ALL", withGrantOption=True),
        "tables": lambda: res("PostgresGrant", "g3", database="d", role="r",
                              on="tables in schema", schema="s", privileges=["SELECT"]),
        "sequences": lambda: res("PostgresGrant", "g4", database="d", role="r",
                                 on="sequences in schema", schema="s", privileges="ALL"),
        "functions": lambda: res("PostgresGrant", "g5", database="d", role="r",
                                 on="functions in schema", schema="s", privileges="ALL"),
        "public": lambda: res("PostgresGrant", "g6", database="d", role="public",
                              on="schema", schema="s", privileges=["USAGE"]),
    },
    "PostgresDefaultPrivileges": {
        "schema": lambda: res("PostgresDefaultPrivileges", "dp1", database="d", role="r",
                              forRole="o", schema="s", objectType="tables",
                              privileges=["SELECT", "INSERT"]),
        "global": lambda: res("PostgresDefaultPrivileges", "dp2", database="d", role="r",
                              forRole="o", objectType="functions", privileges="ALL"),
    },
    "PostgresExtension": {
        "schema": lambda: res("PostgresExtension", "citext", database="d", schema="s"),
    },
}


def _base(pg: PgServer) -> None:  # noqa: F811
    pg.sql("CREATE ROLE o; CREATE ROLE r; CREATE ROLE grp; CREATE ROLE other; "
           "CREATE ROLE stranger")
    pg.sql("CREATE DATABASE d OWNER o")
    pg.sql("SET ROLE o; CREATE SCHEMA s; CREATE TABLE s.t (id serial); CREATE VIEW s.v AS "
           "SELECT 1 AS one; CREATE FUNCTION s.f(a int, b text) RETURNS int LANGUAGE sql "
           "AS 'SELECT a'", db="d")


def _drift(pg: PgServer, kind: str) -> None:  # noqa: F811
    """The object exists, changed by hand (every attribute the kind manages)."""
    if kind == "PostgresRole":
        pg.sql("CREATE ROLE r1 NOLOGIN CONNECTION LIMIT 1 VALID UNTIL '2001-01-01' IN ROLE other")
        pg.sql('CREATE ROLE "Mixed Case Role" LOGIN CREATEROLE')
    elif kind == "PostgresDatabase":
        pg.sql("CREATE DATABASE db2 OWNER other")
        pg.sql("CREATE DATABASE db3 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
               "TEMPLATE template0 CONNECTION LIMIT 3")
    elif kind == "PostgresSchema":
        pg.sql("CREATE SCHEMA x AUTHORIZATION other", db="d")
    elif kind == "PostgresGrant":
        pg.sql("GRANT CREATE ON DATABASE d TO r WITH GRANT OPTION")
        pg.sql("REVOKE USAGE ON SCHEMA s FROM PUBLIC; GRANT USAGE ON SCHEMA s TO stranger; "
               "GRANT USAGE ON SCHEMA s TO r; "
               "GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA s TO r WITH GRANT OPTION; "
               "GRANT UPDATE ON ALL SEQUENCES IN SCHEMA s TO r; "
               "GRANT SELECT ON s.t TO stranger; "
               "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA s FROM PUBLIC", db="d")
    elif kind == "PostgresDefaultPrivileges":
        pg.sql("ALTER DEFAULT PRIVILEGES FOR ROLE o IN SCHEMA s GRANT UPDATE ON TABLES TO r; "
               "ALTER DEFAULT PRIVILEGES FOR ROLE o REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC",
               db="d")
    elif kind == "PostgresExtension":
        pg.sql("CREATE EXTENSION citext SCHEMA public", db="d")


CASES = [(kind, case, state) for kind, cases in POSTGRES_SPECS.items() for case in cases
         for state in ("absent", "drifted")]


def provider() -> PostgresProvider:
    p = default_registry().providers(ProviderContext(root=Path("/")))["PostgresRole"]
    assert isinstance(p, PostgresProvider)
    return p


@pytest.mark.parametrize(("kind", "case", "state"), CASES)
def test_converges_and_is_idempotent(kind: str, case: str, state: str,
                                     pg: PgServer) -> None:  # noqa: F811
    _base(pg)
    if state == "drifted":
        _drift(pg, kind)
    p = provider()
    r = POSTGRES_SPECS[kind][case]()
    first = p.plan(r, p.read(r))
    assert not first.is_noop, f"{state}: nothing to do?"
    p.apply(r, first)
    second = p.plan(r, p.read(r))
    assert second.is_noop, f"not idempotent after {first.summary()}: {second.summary()}"
    p.apply(r, second)
    p.begin_pass(PassInfo("t", True, 60.0))  # a fresh catalog: the server agrees
    again = p.plan(r, p.read(r))
    assert again.is_noop, again.summary()
    p.close()


def test_drift_of_a_role_lists_each_attribute(pg: PgServer) -> None:  # noqa: F811
    _base(pg)
    _drift(pg, "PostgresRole")
    p = provider()
    r = POSTGRES_SPECS["PostgresRole"]["full"]()
    change = p.plan(r, p.read(r))
    fields = {f.field: (f.old, f.new) for f in change.fields}
    assert fields == {
        "login": ("false", "true"),
        "createdb": ("false", "true"),
        "connectionLimit": ("1", "5"),
        "validUntil": ("2001-01-01T00:00:00Z", "2030-01-01T00:00:00Z"),
        "inRoles": ("other", "grp"),
    }
    p.close()


def test_a_pass_reads_the_catalog_once_per_kind(pg: PgServer) -> None:  # noqa: F811
    _base(pg)
    p = provider()
    grants = [res("PostgresGrant", f"g{i}", database="d", role="r", on="tables in schema",
                  schema="s", privileges=["SELECT"]) for i in range(30)]
    roles = [res("PostgresRole", f"role{i}") for i in range(30)]
    p.begin_pass(PassInfo("t", True, 60.0))
    p.read(grants[0])  # connections opened and the server version read once
    before = p.conns.queries
    p.begin_pass(PassInfo("t", True, 60.0))
    for r in grants + roles:
        p.plan(r, p.read(r))
    # roles, databases (does d exist?), the object ACLs of d: three queries for 60 reads.
    assert p.conns.queries - before == 3
    p.close()


def test_create_only_database_properties_are_an_error_never_a_replace(
    pg: PgServer,  # noqa: F811
) -> None:
    pg.sql("CREATE DATABASE latin TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' "
           "LC_CTYPE 'C'")
    p = provider()
    r = res("PostgresDatabase", "latin", encoding="UTF8")
    with pytest.raises(StallError) as err:
        p.plan(r, p.read(r))
    assert "encoding is 'SQL_ASCII' on the server, the manifest says 'UTF8'" in str(err.value)
    assert "never replaces a database" in str(err.value)
    p.close()


def test_prune_of_a_grant_revokes_only_what_it_declared(pg: PgServer) -> None:  # noqa: F811
    _base(pg)
    pg.sql("GRANT INSERT ON s.t TO r", db="d")
    p = provider()
    r = POSTGRES_SPECS["PostgresGrant"]["tables"]()
    p.apply(r, p.plan(r, p.read(r)))  # SELECT granted, the INSERT given by hand revoked
    pg.sql("GRANT UPDATE ON s.t TO r", db="d")
    done = p.delete("PostgresGrant", p.record(r))
    assert "revoked SELECT" in done
    rows = pg.sql("SELECT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
                  "WHERE c.oid = 's.t'::regclass AND a.grantee = 'r'::regrole", db="d")
    assert rows == [("UPDATE",)]
    assert Action.DELETE  # (the engine journals the delete; see test_postgres.py)
    p.close()


def test_without_superuser_passwords_are_refused_with_the_reason(
    pg: PgServer, tmp_path: Path  # noqa: F811
) -> None:
    pg.sql("CREATE ROLE admin LOGIN CREATEROLE")
    pw = tmp_path / "pw"
    pw.write_text("secret-1\n")
    p = provider()
    as_admin = {"user": "admin"}
    plain = res("PostgresRole", "plain", login=True, connection=as_admin)
    p.apply(plain, p.plan(plain, p.read(plain)))
    assert p.plan(plain, p.read(plain)).is_noop  # roles are still managed
    with_pw = res("PostgresRole", "withpw", connection=as_admin,
                  passwordFrom={"file": str(pw)})
    with pytest.raises(ProviderError) as err:
        p.read(with_pw)
    assert "needs to read pg_authid, which only a superuser may" in str(err.value)
    assert not err.value.transient
    p.close()


def test_password_from_a_file_is_compared_with_the_stored_verifier(
    pg: PgServer, tmp_path: Path  # noqa: F811
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("first-password\n")
    p = provider()
    r = res("PostgresRole", "withpw", login=True, passwordFrom={"file": str(pw)})
    p.apply(r, p.plan(r, p.read(r)))
    ((stored,),) = pg.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'withpw'")
    assert stored.startswith("SCRAM-SHA-256$4096:")
    assert p.plan(r, p.read(r)).is_noop
    pw.write_text("second-password\n")  # the file changed: a new password to set
    change = p.plan(r, p.read(r))
    assert [(f.field, f.old, f.new) for f in change.fields] == [
        ("password", "(another password)", "(passwordFrom)")]
    assert "second-password" not in change.summary()
    p.apply(r, change)
    p.begin_pass(PassInfo("t", True, 60.0))
    assert p.plan(r, p.read(r)).is_noop
    pg.sql("ALTER ROLE withpw PASSWORD 'second-password'")  # the server's own verifier
    p.begin_pass(PassInfo("t", True, 60.0))
    assert p.plan(r, p.read(r)).is_noop
    p.close()


POSTGRES_DELETE_CASES: dict[str, Callable[[Path], Resource]] = {
    "PostgresRole": lambda tmp: res("PostgresRole", "gone", login=True,
                                    passwordFrom={"file": str(tmp / "pw")}),
    "PostgresDatabase": lambda tmp: POSTGRES_SPECS["PostgresDatabase"]["owned"](),
    "PostgresSchema": lambda tmp: POSTGRES_SPECS["PostgresSchema"]["owned"](),
    "PostgresGrant": lambda tmp: POSTGRES_SPECS["PostgresGrant"]["tables"](),
    "PostgresDefaultPrivileges": lambda tmp: POSTGRES_SPECS["PostgresDefaultPrivileges"][
        "schema"](),
    "PostgresExtension": lambda tmp: POSTGRES_SPECS["PostgresExtension"]["schema"](),
}


@pytest.mark.parametrize("kind", POSTGRES_DELETE_CASES)
def test_record_then_delete_removes_it(kind: str, pg: PgServer, tmp_path: Path) -> None:  # noqa: F811
    _base(pg)
    (tmp_path / "pw").write_text("s3cret-pw\n")
    p = provider()
    r = POSTGRES_DELETE_CASES[kind](tmp_path)
    p.apply(r, p.plan(r, p.read(r)))
    record = p.record(r)
    text = json.dumps(record)  # what the inventory stores
    assert json.loads(text) == record and "s3cret" not in text
    said = p.delete(kind, json.loads(text))
    assert isinstance(said, str) and said
    p.begin_pass(PassInfo("t", True, 60.0))
    after = p.plan(r, p.read(r))
    assert not after.is_noop, f"{said}: still there"
    p.close()


def test_grants_another_stack_claims_are_not_swept(pg: PgServer) -> None:  # noqa: F811
    _base(pg)
    pg.sql("GRANT SELECT ON s.t TO other; GRANT SELECT ON s.t TO stranger", db="d")
    p = provider()
    mine = POSTGRES_SPECS["PostgresGrant"]["tables"]()
    theirs = res("PostgresGrant", "theirs", database="d", role="other", on="tables in schema",
                 schema="s", privileges=["SELECT"])
    p.begin_pass(PassInfo("a", True, 60.0, frozenset(p.claims(theirs))))
    change = p.plan(mine, p.read(mine))
    swept = {f.field for f in change.fields if "privileges of r" not in f.field}
    assert swept == {"s.t: privileges of stranger"}  # not other's: another stack owns it
    p.apply(mine, change)
    rows = pg.sql("SELECT a.grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a "
                  "WHERE c.oid = 's.t'::regclass AND a.grantee <> c.relowner", db="d")
    assert sorted(r[0] for r in rows) == ["other", "r"]
    p.close()
