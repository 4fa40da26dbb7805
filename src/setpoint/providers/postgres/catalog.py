"""Catalog snapshots: ONE query per kind per pass, each resource served from it.

Called by :mod:`setpoint.providers.postgres.provider`. Cluster-wide snapshots (roles,
databases with their grants) are read on the server's maintenance connection; the
others (schemas, object grants, default privileges, extensions) once per database.
A snapshot lives until the next pass starts (:meth:`Catalog.reset`) or until a resource
it describes was applied (:meth:`Catalog.invalidate`): objects other resources read are
not changed by that apply, so they keep being served from it.

Privileges are read with ``aclexplode(coalesce(acl, acldefault(type, owner)))``: a NULL
ACL means the type's defaults (the owner holds everything, PUBLIC what the type gives
it), so a fresh object and one whose ACL was spelled out compare the same.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from setpoint.model.errors import ProviderError
from setpoint.providers.postgres.conn import Connections, Server

# (privilege, grantable) held by one grantee on one object.
Privs = AbstractSet[tuple[str, bool]]  # read-only once a snapshot is loaded
PUBLIC = "PUBLIC"
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


@dataclass(frozen=True)
class RoleRow:
    name: str
    superuser: bool
    createdb: bool
    createrole: bool
    login: bool
    replication: bool
    bypassrls: bool
    connection_limit: int
    valid_until: float | None  # epoch seconds, inf for infinity
    password: str | None  # the stored verifier (never plaintext); None without pg_authid
    in_roles: frozenset[str]


@dataclass(frozen=True)
class DatabaseRow:
    name: str
    owner: str
    encoding: str
    collate: str
    ctype: str
    connection_limit: int


@dataclass
class AclObject:
    """One object's owner and its grants by grantee (``PUBLIC`` for grantee 0)."""

    owner: str
    grants: dict[str, Privs] = field(default_factory=dict)
    system: set[str] = field(default_factory=set)  # predefined grantees (pg_*), never swept
    signature: str = ""  # a function's identity arguments, as the server prints them


@dataclass
class Roles:
    rows: dict[str, RoleRow]
    authid: bool  # read from pg_authid (superuser): passwords can be compared


@dataclass
class Databases:
    rows: dict[str, DatabaseRow]
    acls: dict[str, AclObject]


@dataclass
class Objects:
    """A database's schemas, object grants, default privileges and extensions."""

    schemas: dict[str, str] = field(default_factory=dict)  # name -> owner
    # (on, schema) -> object name -> AclObject; on "schema": the schema itself (name "")
    acls: dict[tuple[str, str], dict[str, AclObject]] = field(default_factory=dict)
    # (forRole, schema or "", objtype r/S/f) -> grantee -> privs; a row's whole ACL
    defaults: dict[tuple[str, str, str], dict[str, Privs]] = field(default_factory=dict)
    extensions: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (ver, schema)


@dataclass(frozen=True)
class GrantView:
    """What a PostgresGrant sees: its scope's objects (None: the scope does not exist),
    the privilege set of the object type, and — for the one grant per scope that sweeps
    (the first by id) — the roles whose grants on the scope the stack declares."""

    objects: dict[str, AclObject] | None
    full: tuple[str, ...]
    sweep_except: frozenset[str] | None = None  # None: this grant does not sweep


_ROLES_AUTHID = """
SELECT r.rolname, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolcanlogin,
       r.rolreplication, r.rolbypassrls, r.rolconnlimit,
       extract(epoch FROM r.rolvaliduntil)::float8, r.rolpassword,
       ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_authid g ON g.oid = m.roleid
             WHERE m.member = r.oid)
FROM pg_authid r
"""
_ROLES_PUBLIC = _ROLES_AUTHID.replace("pg_authid", "pg_roles").replace(
    "r.rolpassword", "NULL::text"
)

_DATABASES = """
SELECT d.datname, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),
       d.datcollate, d.datctype, d.datconnlimit,
       COALESCE(g.rolname, CASE WHEN a.grantee = 0 THEN 'PUBLIC' END), a.grantee < 16384,
       a.privilege_type, a.is_grantable
FROM pg_database d
LEFT JOIN LATERAL aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a ON true
LEFT JOIN pg_roles g ON g.oid = a.grantee
"""

# One query for every grant of a database: the schemas themselves, tables (and views,
# matviews, foreign and partitioned tables), sequences and functions, each object listed
# even when its ACL is empty (so "no privileges" is seen, not "no object").
_OBJECT_ACLS = """
WITH objs AS (
  SELECT 'schema' AS kind, n.nspname AS schema, '' AS name, n.nspowner AS owner,
         COALESCE(n.nspacl, acldefault('n', n.nspowner)) AS acl, '' AS sig
  FROM pg_namespace n
  UNION ALL
  SELECT CASE WHEN c.relkind = 'S' THEN 'sequences in schema' ELSE 'tables in schema' END,
         n.nspname, c.relname, c.relowner,
         COALESCE(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char",
                                       c.relowner)), ''
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  UNION ALL
  SELECT 'functions in schema', n.nspname, p.proname, p.proowner,
         COALESCE(p.proacl, acldefault('f', p.proowner)),
         pg_get_function_identity_arguments(p.oid)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE p.prokind IN ('f', 'a', 'w')
)
SELECT o.kind, o.schema, o.name, o.sig, pg_get_userbyid(o.owner),
       COALESCE(g.rolname, CASE WHEN a.grantee = 0 THEN 'PUBLIC' END), a.grantee < 16384,
       a.privilege_type, a.is_grantable
FROM objs o
LEFT JOIN LATERAL aclexplode(o.acl) a ON true
LEFT JOIN pg_roles g ON g.oid = a.grantee
WHERE o.schema NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND o.schema NOT LIKE 'pg_temp_%' AND o.schema NOT LIKE 'pg_toast_temp_%'
"""

_DEFAULT_ACLS = """
SELECT pg_get_userbyid(d.defaclrole), COALESCE(n.nspname, ''), d.defaclobjtype,
       COALESCE(g.rolname, CASE WHEN a.grantee = 0 THEN 'PUBLIC' END),
       a.privilege_type, a.is_grantable
FROM pg_default_acl d
LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
LEFT JOIN LATERAL aclexplode(d.defaclacl) a ON true
LEFT JOIN pg_roles g ON g.oid = a.grantee
"""

_EXTENSIONS = """
SELECT e.extname, e.extversion, n.nspname
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
"""


def _add(obj: AclObject, grantee: str | None, system: bool | None, priv: str | None,
         grantable: bool | None) -> None:
    if grantee is None or priv is None:
        return  # an object with an empty ACL, or a grantee dropped meanwhile
    privs = obj.grants.get(grantee)
    if privs is None:
        privs = obj.grants[grantee] = set()
    privs.add((priv, bool(grantable)))  # type: ignore[attr-defined]  # filled here only
    if system and grantee != PUBLIC:
        obj.system.add(grantee)


class Catalog:
    """The snapshots of one provider: ``(server, database, kind)`` -> snapshot."""

    def __init__(self, conns: Connections) -> None:
        self.conns = conns
        self._snap: dict[tuple[Server, str, str], Any] = {}

    def reset(self) -> None:
        self._snap.clear()

    def invalidate(self, server: Server, database: str, kind: str) -> None:
        self._snap.pop((server, database, kind), None)

    def _get(self, server: Server, database: str, kind: str, load: Callable[[], Any]) -> Any:
        key = (server, database, kind)
        if key not in self._snap:
            self._snap[key] = load()
        return self._snap[key]

    # -- cluster-wide -------------------------------------------------------------------

    def roles(self, server: Server) -> Roles:
        return self._get(server, "", "roles", lambda: self._load_roles(server))  # type: ignore[no-any-return]

    def _load_roles(self, server: Server) -> Roles:
        import psycopg

        try:
            rows = self.conns.fetch(server, None, _ROLES_AUTHID, denied_ok=True)
            authid = True
        except ProviderError:
            raise
        except psycopg.errors.InsufficientPrivilege:
            # Reading pg_authid (the stored password verifiers) needs a superuser: roles
            # are still compared, passwords are refused (see provider.read).
            rows = self.conns.fetch(server, None, _ROLES_PUBLIC)
            authid = False
        out = {}
        for r in rows:
            out[r[0]] = RoleRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                                frozenset(r[10] or ()))
        return Roles(out, authid)

    def databases(self, server: Server) -> Databases:
        return self._get(server, "", "databases", lambda: self._load_databases(server))  # type: ignore[no-any-return]

    def _load_databases(self, server: Server) -> Databases:
        rows: dict[str, DatabaseRow] = {}
        acls: dict[str, AclObject] = {}
        for r in self.conns.fetch(server, None, _DATABASES):
            name = r[0]
            if name not in rows:
                rows[name] = DatabaseRow(name, r[1], r[2], r[3], r[4], r[5])
                acls[name] = AclObject(r[1])
            _add(acls[name], r[6], r[7], r[8], r[9])
        return Databases(rows, acls)

    # -- per database ---------------------------------------------------------------------

    def exists(self, server: Server, database: str) -> bool:
        return database in self.databases(server).rows

    def schemas(self, server: Server, database: str) -> dict[str, str]:
        return self._objects(server, database, "acls").schemas

    def acls(self, server: Server, database: str) -> Objects:
        return self._objects(server, database, "acls")

    def defaults(self, server: Server, database: str) -> Objects:
        return self._objects(server, database, "defaults")

    def extensions(self, server: Server, database: str) -> Objects:
        return self._objects(server, database, "extensions")

    def _objects(self, server: Server, database: str, kind: str) -> Objects:
        loaders = {"acls": self._load_acls, "defaults": self._load_defaults,
                   "extensions": self._load_extensions}
        return self._get(  # type: ignore[no-any-return]
            server, database, kind, lambda: loaders[kind](server, database)
        )

    def _load_acls(self, server: Server, database: str) -> Objects:
        out = Objects()
        for kind, schema, name, sig, owner, grantee, system, priv, grantable in self.conns.fetch(
            server, database, _OBJECT_ACLS
        ):
            if kind == "schema":
                out.schemas[schema] = owner
            objects = out.acls.setdefault((kind, schema), {})
            key = f"{name}({sig})" if kind == "functions in schema" else name
            obj = objects.get(key)
            if obj is None:
                obj = objects[key] = AclObject(owner, signature=sig)
            _add(obj, grantee, system, priv, grantable)
        return out

    def _load_defaults(self, server: Server, database: str) -> Objects:
        out = Objects()
        for for_role, schema, objtype, grantee, priv, grantable in self.conns.fetch(
            server, database, _DEFAULT_ACLS
        ):
            row = out.defaults.setdefault((for_role, schema, objtype), {})
            if grantee is not None and priv is not None:
                row.setdefault(grantee, set()).add((priv, bool(grantable)))  # type: ignore[attr-defined]
        return out

    def _load_extensions(self, server: Server, database: str) -> Objects:
        out = Objects()
        for name, version, schema in self.conns.fetch(server, database, _EXTENSIONS):
            out.extensions[name] = (version, schema)
        return out
