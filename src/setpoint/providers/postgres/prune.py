"""Prune of the PostgreSQL kinds: drop what a stack created, from its inventory record.

Called by :meth:`PostgresProvider.delete_record`. A database or schema that holds tables
is refused unless the resource carried the label ``setpoint/prune: force`` when it was
last applied (the record keeps it): the error says so, and the engine shows it in the
stack's status and keeps the record to try again. Objects already gone are a success.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import sql

from setpoint.model.errors import ProviderError
from setpoint.providers.postgres import planner
from setpoint.providers.postgres.conn import Server
from setpoint.providers.postgres.spec import (
    OBJECT_TYPES,
    DefaultPrivilegesSpec,
    GrantSpec,
)

if TYPE_CHECKING:
    from setpoint.providers.postgres.provider import PostgresProvider

_TABLES_IN_DB = sql.SQL(
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'm', 'f') "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
)
_TABLES_IN_SCHEMA = sql.SQL(
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'm', 'f') AND n.nspname = %s"
)


def _refuse(what: str, count: int) -> ProviderError:
    return ProviderError(
        f"{what} holds {count} table{'s' if count != 1 else ''}: not dropped. Move the data "
        "away, or label the resource setpoint/prune: force (and apply it once) to drop it "
        "with its tables",
        transient=False,
    )


def delete_object(p: PostgresProvider, kind: str, rec: dict[str, Any]) -> str:
    server = Server.from_record(rec.get("connection", {}))
    name: str = rec["name"]
    spec: dict[str, Any] = rec.get("spec", {})
    force = bool(rec.get("force"))
    cat = p.catalog
    cat.reset()  # prune acts on the server as it is now
    ident = sql.Identifier(name)
    if kind == "PostgresRole":
        if name not in cat.roles(server).rows:
            return f"role {name} was already gone"
        p._run(server, None, [sql.SQL("DROP ROLE {}").format(ident)], True, f"drop role {name}")
        return f"dropped role {name}"
    if kind == "PostgresDatabase":
        if not cat.exists(server, name):
            return f"database {name} was already gone"
        ((count,),) = p.conns.fetch(server, name, _TABLES_IN_DB)
        if count and not force:
            raise _refuse(f"database {name}", count)
        p.conns.close_database(name)  # DROP DATABASE refuses while we are connected
        p._run(server, None, [sql.SQL("DROP DATABASE {}").format(ident)], False,
               f"drop database {name}")
        return f"dropped database {name}" + (f" with its {count} tables" if count else "")
    database: str = spec["database"]
    if not cat.exists(server, database):
        return f"database {database} is gone, and {name} with it"
    if kind == "PostgresSchema":
        if name not in cat.schemas(server, database):
            return f"schema {name} was already gone"
        ((count,),) = p.conns.fetch(server, database, _TABLES_IN_SCHEMA, (name,))
        if count and not force:
            raise _refuse(f"schema {name} of database {database}", count)
        stmt = sql.SQL("DROP SCHEMA {} CASCADE" if force else "DROP SCHEMA {}").format(ident)
        p._run(server, database, [stmt], True, f"drop schema {name}")
        return f"dropped schema {name} of database {database}" + (
            f" with its {count} tables" if count else "")
    if kind == "PostgresExtension":
        if name not in cat.extensions(server, database).extensions:
            return f"extension {name} was already gone"
        p._run(server, database, [sql.SQL("DROP EXTENSION {}").format(ident)], True,
               f"drop extension {name}")
        return f"dropped extension {name} from database {database}"
    roles = cat.roles(server).rows
    if kind == "PostgresGrant":
        g = GrantSpec.model_validate(spec)
        if g.role.upper() != "PUBLIC" and g.role not in roles:
            return f"role {g.role} is gone, and its grant with it"
        if g.on != "database" and g.schema_ not in cat.schemas(server, database):
            return f"schema {g.schema_} is gone, and the grant with it"
        revoke = planner.revoke_grant(g, database, p._full(server, g.on))
        p._run(server, database, [revoke], True, f"revoke from {g.role}")
        where = "database" if g.on == "database" else f"{g.on} {g.schema_}"
        return f"revoked {g.privileges if g.privileges == 'ALL' else ', '.join(g.privileges)} " \
               f"on {where} from {g.role}"
    d = DefaultPrivilegesSpec.model_validate(spec)
    for role in (d.role, d.forRole):
        if role.upper() != "PUBLIC" and role not in roles:
            return f"role {role} is gone, and the default privileges with it"
    if d.schema_ is not None and d.schema_ not in cat.schemas(server, database):
        return f"schema {d.schema_} is gone, and the default privileges with it"
    privs = planner.expand_privileges(d.privileges, p._full(server, OBJECT_TYPES[d.objectType]))
    stmt = sql.SQL("{} REVOKE {} ON {} FROM {}").format(
        planner.default_acl_head(d), planner.privlist(privs),
        planner.DEFAULT_TYPES[d.objectType][1], planner.grantee(d.role))
    p._run(server, database, [stmt], True, f"revoke default privileges from {d.role}")
    return f"revoked default privileges on {d.objectType} from {d.role}"
