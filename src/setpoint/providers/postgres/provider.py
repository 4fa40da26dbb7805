"""The PostgreSQL provider: roles, databases, schemas, grants, default privileges and
extensions of a server, reconciled like files.

Registered by :mod:`setpoint.providers.registry` (see :func:`register`); called by the
engine through the contract of :mod:`setpoint.providers.base`. Reads are served from the
catalog snapshots of :mod:`.catalog` (one query per kind per pass), plans and statements
come from :mod:`.planner` (pure), and each resource's statements run in one transaction
(CREATE DATABASE excepted: PostgreSQL refuses it inside one). Claims are provider-chosen
keys, ``postgres://HOST:PORT/role/NAME``, ``.../database/DB/schema/NAME``, ...: deeper
objects have longer keys, so a deepest-first prune drops grants before schemas before
databases before roles.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, unquote

from pydantic import BaseModel

from setpoint.model.errors import ProviderError
from setpoint.model.plan import Change
from setpoint.model.resource import Resource, dump_spec
from setpoint.providers.base import Observed, PassInfo, ProviderContext
from setpoint.providers.postgres.catalog import PUBLIC, Catalog, GrantView, Privs
from setpoint.providers.postgres.conn import Connections, Server, error_text
from setpoint.providers.postgres.spec import (
    OBJECT_TYPES,
    OBJTYPE_CHARS,
    PRIVILEGES,
    Connection,
    DatabaseSpec,
    DefaultPrivilegesSpec,
    ExtensionSpec,
    GrantSpec,
    PostgresSettings,
    RoleSpec,
    SchemaSpec,
)
from setpoint.providers.postgres.values import password_matches, scram_verifier

if TYPE_CHECKING:  # psycopg (and planner, which composes with it) load on first use
    from setpoint.providers.postgres import planner
    from setpoint.providers.postgres.planner import Planned

SPECS: dict[str, type[BaseModel]] = {
    "PostgresRole": RoleSpec,
    "PostgresDatabase": DatabaseSpec,
    "PostgresSchema": SchemaSpec,
    "PostgresGrant": GrantSpec,
    "PostgresDefaultPrivileges": DefaultPrivilegesSpec,
    "PostgresExtension": ExtensionSpec,
}
FORCE_LABEL = "setpoint/prune"


_PLAIN = re.compile(r"[A-Za-z0-9_.-]+")


def _q(value: str) -> str:
    """A name in a claim key: percent-quoted when it holds anything but [A-Za-z0-9_.-]."""
    return value if _PLAIN.fullmatch(value) else quote(value, safe="")


class PostgresProvider:
    """One provider per engine: connections and snapshots shared by every stack."""

    kinds: ClassVar[tuple[str, ...]] = tuple(SPECS)

    def __init__(self, ctx: ProviderContext | None = None) -> None:
        self.ctx = ctx if ctx is not None else ProviderContext()
        self.conns = Connections()
        self.catalog = Catalog(self.conns)
        # Resource id -> snapshots to drop at its next read (it was applied since).
        self._dirty: dict[str, tuple[Server, str, str]] = {}
        self._desired: Mapping[str, Resource] = {}
        self._sweepers: dict[str, frozenset[str]] | None = None
        self._claimed: AbstractSet[str] = frozenset()
        self._claimed_index: dict[str, frozenset[str]] | None = None
        self._versions: dict[Server, int] = {}
        self._ext_index: tuple[dict[str, str], dict[str, list[str]]] | None = None
        # id(spec) -> (spec, stack, name, server, claim key); the spec is kept, so its id
        # cannot be reused while the entry lives. Emptied at each pass (settings may change).
        self._ident: dict[int, tuple[BaseModel, str, str, Server, str]] = {}
        # Password checks cost a PBKDF2 each: remembered by (verifier, keyed hash of the
        # password), with a key that lives only in this process.
        self._memo_key = secrets.token_bytes(32)
        self._verified: dict[tuple[str, bytes], bool] = {}

    # -- identity ---------------------------------------------------------------------------

    def server(self, r: Resource) -> Server:
        return self._identity(r)[0]

    def _identity(self, r: Resource) -> tuple[Server, str]:
        """(server, claim key) of ``r``, computed once per pass per declaration."""
        hit = self._ident.get(id(r.spec))
        if hit is not None and hit[0] is r.spec and hit[1] == r.stack and hit[2] == r.name:
            return hit[3], hit[4]
        server = self._server(r)
        key = self._key_of(r.kind, server.key, r.spec, self.name(r))
        self._ident[id(r.spec)] = (r.spec, r.stack, r.name, server, key)
        return server, key

    def _server(self, r: Resource) -> Server:
        stack = self.ctx.settings(r.stack, "postgres") if r.stack else None
        if stack is not None and not isinstance(stack, PostgresSettings):
            stack = PostgresSettings.model_validate(stack.model_dump())
        spec_conn: Connection | None = getattr(r.spec, "connection", None)
        return Server.merge(spec_conn, stack.connection if stack is not None else None)

    @staticmethod
    def name(r: Resource) -> str:
        return getattr(r.spec, "name", None) or r.name

    def _key(self, r: Resource) -> str:
        return self._identity(r)[1]

    @staticmethod
    def _key_of(kind: str, srv: str, spec: Any, name: str) -> str:
        if kind == "PostgresRole":
            return f"{srv}/role/{_q(name)}"
        if kind == "PostgresDatabase":
            return f"{srv}/database/{_q(name)}"
        db = f"{srv}/database/{_q(spec.database)}"
        if kind == "PostgresSchema":
            return f"{db}/schema/{_q(name)}"
        if kind == "PostgresExtension":
            return f"{db}/extension/{_q(name)}"
        if kind == "PostgresGrant":
            on = spec.on.split()[0]
            return f"{db}/grant/{on}/{_q(spec.schema_ or '-')}/{_q(_role(spec.role))}"
        return (  # PostgresDefaultPrivileges
            f"{db}/default-privileges/{_q(spec.forRole)}/{_q(spec.schema_ or '*')}/"
            f"{spec.objectType}/{_q(_role(spec.role))}"
        )

    def claims(self, resource: Resource) -> tuple[str, ...]:
        key = self._key(resource)
        spec: Any = resource.spec
        if resource.kind == "PostgresExtension" and spec.schema_ is not None:
            # An extension creates functions, types and tables in its schema: the grants on
            # that schema's objects wait for it (see implicit_dependencies).
            db = f"{self.server(resource).key}/database/{_q(spec.database)}"
            return (key, f"{db}/schema/{_q(spec.schema_)}/extension/{_q(self.name(resource))}")
        return (key,)

    def implicit_dependencies(self, resource: Resource, by_path: dict[str, str]) -> Iterable[str]:
        """Role before what it owns or is granted, database before its objects, schema
        before its grants, default privileges and extensions (when the stack declares them)."""
        srv = self.server(resource).key
        spec: Any = resource.spec
        keys: list[str] = []

        def role(name: str | None) -> None:
            if name is not None and _role(name) != PUBLIC:
                keys.append(f"{srv}/role/{_q(name)}")

        kind = resource.kind
        if kind == "PostgresRole":
            for g in spec.inRoles:
                role(g)
        elif kind == "PostgresDatabase":
            role(spec.owner)
        else:
            db = f"{srv}/database/{_q(spec.database)}"
            keys.append(db)
            schema = getattr(spec, "schema_", None)
            if schema is not None and kind != "PostgresSchema":
                keys.append(f"{db}/schema/{_q(schema)}")
            if kind == "PostgresSchema":
                role(spec.owner)
            elif kind == "PostgresGrant":
                role(spec.role)
                if spec.on.endswith(" in schema"):
                    prefix = f"{db}/schema/{_q(spec.schema_)}/extension/"
                    keys.extend(self._extensions(by_path).get(prefix, ()))
            elif kind == "PostgresDefaultPrivileges":
                role(spec.role)
                role(spec.forRole)
        return [by_path[k] for k in keys if k in by_path and by_path[k] != resource.id]

    def _extensions(self, by_path: dict[str, str]) -> dict[str, list[str]]:
        """The extension claims of ``by_path`` by schema prefix (indexed once per dict)."""
        cached = self._ext_index
        if cached is None or cached[0] is not by_path:
            index: dict[str, list[str]] = {}
            for key in by_path:
                head, sep, _name = key.rpartition("/extension/")
                if sep and "/schema/" in head:
                    index.setdefault(head + sep, []).append(key)
            cached = self._ext_index = (by_path, index)
        return cached[1]

    # -- pass hooks -------------------------------------------------------------------------

    def begin_pass(self, info: PassInfo) -> None:
        """A pass starts: the catalog is read afresh (once per kind).

        After a wait (``resumed``) too: other stacks' passes may have changed the server.
        """
        self.catalog.reset()
        self.conns.forget_failures()
        self._dirty.clear()
        self._claimed = info.claimed
        self._claimed_index = None
        if not info.resumed:
            self._ident.clear()

    def end_pass(self) -> None:
        """Nothing to flush: each apply committed its own transaction."""

    def set_desired(self, resources: Mapping[str, Resource]) -> None:
        if resources is not self._desired:
            self._desired = resources
            self._sweepers = None

    def _sweep_except(self, r: Resource) -> frozenset[str] | None:
        """For the first grant (by id) of each scope: the roles whose grants on the scope
        setpoint manages (this stack's declarations, and every stack's claims: two stacks
        granting on one schema never revoke each other's grants)."""
        sweep = self._sweep_roles(r)
        if sweep is None:
            return None
        return sweep | self._claimed_roles().get(self._scope(r), frozenset())

    def _claimed_roles(self) -> dict[str, frozenset[str]]:
        """Grant claims of the pass (``PassInfo.claimed``) as scope -> roles, once a pass."""
        if self._claimed_index is None:
            index: dict[str, set[str]] = {}
            for key in self._claimed:
                if key.startswith("postgres://") and "/grant/" in key:
                    scope, _, role = key.rpartition("/")
                    index.setdefault(scope + "/", set()).add(unquote(role))
            self._claimed_index = {k: frozenset(v) for k, v in index.items()}
        return self._claimed_index

    def _sweep_roles(self, r: Resource) -> frozenset[str] | None:
        if self._sweepers is None:
            scopes: dict[str, list[Resource]] = {}
            for other in self._desired.values():
                if other.kind == "PostgresGrant":
                    scopes.setdefault(self._scope(other), []).append(other)
            self._sweepers = {}
            for grants in scopes.values():
                grants.sort(key=lambda g: g.id)
                roles = frozenset(_role(g.spec.role) for g in grants)  # type: ignore[attr-defined]
                self._sweepers[grants[0].id] = roles
        if r.id not in self._sweepers and r.id not in self._desired:
            # Not bound to a stack (a direct call): it sweeps alone, for its own scope.
            return frozenset({_role(r.spec.role)})  # type: ignore[attr-defined]
        return self._sweepers.get(r.id)

    def _scope(self, r: Resource) -> str:
        """A grant's claim key without its role: the objects it is about."""
        return self._key(r).rpartition("/")[0] + "/"

    # -- read -------------------------------------------------------------------------------

    def _full(self, server: Server, on: str) -> tuple[str, ...]:
        base = PRIVILEGES[on]
        if on == "tables in schema":
            version = self._versions.get(server)
            if version is None:
                version = self._versions[server] = self.conns.get(
                    server, None).info.server_version
            if version >= 170000:
                return (*base, "MAINTAIN")
        return base

    def _bind(self, r: Resource) -> None:
        """Waits on the server (a slow connect) are reported for ``r`` and yield the gate."""
        rid = r.id
        self.conns.waiting = lambda what, timeout: self.ctx.waiting(rid, what, timeout)

    def read(self, resource: Resource) -> Observed[Any] | None:
        self._bind(resource)
        stale = self._dirty.pop(resource.id, None)
        if stale is not None:
            self.catalog.invalidate(*stale)
        data = self._observe(resource)
        return None if data is None else Observed(resource.id, data)

    def _observe(self, r: Resource) -> Any:
        server, name, kind, spec = self.server(r), self.name(r), r.kind, r.spec
        cat = self.catalog
        if kind == "PostgresRole":
            roles = cat.roles(server)
            with_password = isinstance(spec, RoleSpec) and spec.passwordFrom is not None
            if with_password and not roles.authid:
                # Refused before creating too: a password set once could never be checked.
                raise ProviderError(
                    f"{r.id}: comparing passwordFrom with the stored verifier needs to "
                    f"read pg_authid, which only a superuser may: connect as a superuser "
                    "(postgres.connection.user) or remove passwordFrom",
                    transient=False,
                )
            role_row = roles.rows.get(name)
            if role_row is None:
                return None
            ok = None
            if with_password:
                ok = self._verify(self._password(r), role_row.password, name)
            return (role_row, ok)
        if kind == "PostgresDatabase":
            return cat.databases(server).rows.get(name)
        db = spec.database  # type: ignore[attr-defined]
        exists = cat.exists(server, db)
        if kind == "PostgresSchema":
            return cat.schemas(server, db).get(name) if exists else None
        if kind == "PostgresExtension":
            return cat.extensions(server, db).extensions.get(name) if exists else None
        if isinstance(spec, GrantSpec):
            return self._grant_view(r, server, spec, exists)
        assert isinstance(spec, DefaultPrivilegesSpec)
        full = self._full(server, OBJECT_TYPES[spec.objectType])
        if not exists:
            return (frozenset(), full)
        objtype = OBJTYPE_CHARS[spec.objectType]
        rows = cat.defaults(server, db).defaults
        row: dict[str, Privs] | None = rows.get((spec.forRole, spec.schema_ or "", objtype))
        if row is None and spec.schema_ is None:
            # No pg_default_acl row: the built-in defaults (owner all, PUBLIC EXECUTE).
            row = {spec.forRole: frozenset((p, False) for p in full)}
            if spec.objectType == "functions":
                row[PUBLIC] = frozenset({("EXECUTE", False)})
        have: Privs = (row or {}).get(_role(spec.role), frozenset())
        return (have, full)

    def _grant_view(self, r: Resource, server: Server, spec: GrantSpec, exists: bool) -> GrantView:
        full = self._full(server, spec.on)
        sweep = self._sweep_except(r)
        if not exists:
            return GrantView(None, full, sweep)
        if spec.on == "database":
            obj = self.catalog.databases(server).acls.get(spec.database)
            return GrantView({spec.database: obj} if obj else None, full, sweep)
        objects = self.catalog.acls(server, spec.database)
        if spec.schema_ not in objects.schemas:
            return GrantView(None, full, sweep)
        if spec.on == "schema":
            return GrantView(objects.acls.get(("schema", spec.schema_), {}), full, sweep)
        return GrantView(objects.acls.get((spec.on, spec.schema_), {}), full, sweep)

    def _password(self, r: Resource) -> str:
        spec = r.spec
        assert isinstance(spec, RoleSpec) and spec.passwordFrom is not None
        src = spec.passwordFrom
        if src.file is not None:
            try:
                with open(src.file, encoding="utf-8") as f:
                    return f.read().rstrip("\r\n")
            except OSError as exc:
                raise ProviderError(
                    f"{r.id}: cannot read passwordFrom.file {src.file}: {exc.strerror}",
                    transient=True,
                ) from None
        if r.blob is None:
            raise ProviderError(
                f"{r.id}: passwordFrom.secret {src.secret} was not resolved when the stack "
                "was rendered (no secretFiles entry of that name in its overlays?)",
                transient=False,
            )
        return r.blob.decode("utf-8")

    def _verify(self, password: str, stored: str | None, role: str) -> bool:
        if stored is None:
            return False
        key = (stored, hmac.new(self._memo_key, password.encode(), hashlib.sha256).digest())
        hit = self._verified.get(key)
        if hit is None:
            if len(self._verified) > 10000:
                self._verified.clear()
            hit = self._verified[key] = password_matches(password, stored, role)
        return hit

    # -- plan / apply -----------------------------------------------------------------------

    def _planned(self, r: Resource, observed: Observed[Any] | None) -> Planned:
        from setpoint.providers.postgres import planner  # psycopg.sql, on first use

        data = observed.data if observed is not None else None
        spec, name = r.spec, self.name(r)
        if isinstance(spec, RoleSpec):
            row, ok = data if data is not None else (None, None)
            return planner.plan_role(spec, name, row, ok)
        if isinstance(spec, DatabaseSpec):
            return planner.plan_database(spec, name, data, r.id)
        if isinstance(spec, SchemaSpec):
            return planner.plan_schema(spec, name, data)
        if isinstance(spec, ExtensionSpec):
            return planner.plan_extension(spec, name, data)
        if isinstance(spec, GrantSpec):
            if data is None:
                data = GrantView(None, PRIVILEGES[spec.on])
            return planner.plan_grant(_public(spec), spec.database, data)
        assert isinstance(spec, DefaultPrivilegesSpec)
        have, full = data if data is not None else (frozenset(), ())
        return planner.plan_default_privileges(_public(spec), have, full)

    def plan(self, resource: Resource, observed: Observed[Any] | None) -> Change:
        p = self._planned(resource, observed)
        return Change(resource.id, p.action, self._key(resource), tuple(p.fields),
                      reason=p.reason)

    def apply(self, resource: Resource, change: Change) -> None:
        if change.is_noop:
            return
        p = self._planned(resource, self.read(resource))
        server = self.server(resource)
        dbname = getattr(resource.spec, "database", None)
        steps = list(p.steps)
        if p.set_password:
            from psycopg import sql

            verifier = scram_verifier(self._password(resource))
            steps.append(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(self.name(resource)), sql.Literal(verifier)))
        self._run(server, dbname, steps, p.in_transaction, resource.id)
        snapshot = self._snapshot_of(resource, server)
        if resource.kind in ("PostgresDatabase", "PostgresSchema", "PostgresExtension"):
            # Structure the next resources of the pass look up (does the database, the
            # schema exist? which objects did the extension create?): re-read at once.
            # Other applies change only their own rows, re-read when read again.
            self.catalog.invalidate(*snapshot)
            if resource.kind == "PostgresExtension":
                self.catalog.invalidate(server, snapshot[1], "acls")
        else:
            self._dirty[resource.id] = snapshot

    def _snapshot_of(self, r: Resource, server: Server) -> tuple[Server, str, str]:
        spec: Any = r.spec
        if r.kind == "PostgresRole":
            return (server, "", "roles")
        if r.kind == "PostgresDatabase" or (r.kind == "PostgresGrant" and spec.on == "database"):
            return (server, "", "databases")
        kind = {"PostgresDefaultPrivileges": "defaults",
                "PostgresExtension": "extensions"}.get(r.kind, "acls")
        return (server, spec.database, kind)

    def _run(self, server: Server, dbname: str | None, steps: list[planner.Stmt],
             in_transaction: bool, what: str) -> None:
        import psycopg

        conn = self.conns.get(server, dbname)
        try:
            if in_transaction:
                with conn.transaction():
                    for stmt in steps:
                        self.conns.queries += 1
                        conn.execute(stmt)
            else:
                for stmt in steps:
                    self.conns.queries += 1
                    conn.execute(stmt)
        except psycopg.Error as exc:
            # The server's message, never the statement (it may hold a password verifier).
            raise ProviderError(
                f"{what}: {server.where(dbname)}: {error_text(exc)}",
                transient=isinstance(exc, psycopg.OperationalError),
            ) from None

    # -- records and prune -----------------------------------------------------------------

    def effective_digest(self, resource: Resource) -> str:
        """The declaration's digest, plus the ``setpoint/prune: force`` label.

        Labels are not part of a declaration's digest, but prune reads ``force`` from
        the record: adding the label must re-record the resource (a new declaration,
        not drift), or a prune would still refuse what the operator allowed.
        """
        if resource.labels.get(FORCE_LABEL) == "force":
            return hashlib.sha256(f"{resource.digest}\0prune=force".encode()).hexdigest()
        return resource.digest

    def record(self, resource: Resource) -> dict[str, Any]:
        """What prune needs once the declaration is gone (never a password)."""
        return {
            "kind": resource.kind,
            "connection": self.server(resource).record(),
            "name": self.name(resource),
            "spec": dump_spec(resource.spec),
            "force": resource.labels.get(FORCE_LABEL) == "force",
        }

    def delete(self, kind: str, record: dict[str, Any]) -> str:
        if "name" not in record:
            raise ProviderError(
                f"no record of how to reach {record.get('path', 'this object')} (an inventory "
                "written before records existed): drop it by hand if it should go",
                transient=False,
            )
        return self.delete_record(kind, record)

    def delete_record(self, kind: str, rec: dict[str, Any]) -> str:
        # No resource to report a wait for (the declaration is gone): connect in place.
        self.conns.waiting = lambda _what, _timeout: nullcontext()
        from setpoint.providers.postgres.prune import delete_object

        return delete_object(self, kind, rec)

    def close(self) -> None:
        self.conns.close_all()


def _role(name: str) -> str:
    return PUBLIC if name.upper() == PUBLIC else name


def _public(spec: Any) -> Any:
    """The spec with ``role: public`` spelled as PostgreSQL lists it (``PUBLIC``)."""
    if spec.role != PUBLIC and spec.role.upper() == PUBLIC:
        return spec.model_copy(update={"role": PUBLIC})
    return spec
