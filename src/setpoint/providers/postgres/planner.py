"""Planning of the PostgreSQL kinds: (declaration, catalog view) -> fields + statements.

Pure (no I/O): used by :mod:`setpoint.providers.postgres.provider` for ``plan`` (the
fields, a readable diff for plans and the journal) and for ``apply`` (the statements,
recomputed from the same snapshot). Every statement is composed with ``psycopg.sql``:
names are :class:`~psycopg.sql.Identifier`, values :class:`~psycopg.sql.Literal`, and
keywords come from the fixed tables below, never from a manifest's text.

Privileges are normalised before comparing: ``ALL`` is the object type's set, an
object's owner is skipped (its privileges are implicit), and PUBLIC's and predefined
roles' (``pg_*``) entries are only touched when a grant declares them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from psycopg import sql

from setpoint.model.plan import Action, FieldChange
from setpoint.providers.base import StallError
from setpoint.providers.postgres.catalog import (
    PUBLIC,
    AclObject,
    DatabaseRow,
    GrantView,
    Privs,
    RoleRow,
)
from setpoint.providers.postgres.spec import (
    DatabaseSpec,
    DefaultPrivilegesSpec,
    ExtensionSpec,
    GrantSpec,
    RoleSpec,
    SchemaSpec,
)
from setpoint.providers.postgres.values import INFINITY, expand, parse_valid_until, show_time

expand_privileges = expand

Stmt = sql.Composed | sql.SQL  # what psycopg executes

MAX_FIELDS = 12  # objects listed one by one in a plan; the rest are counted

ROLE_FLAGS: tuple[tuple[str, str, str, str], ...] = (
    # (spec field, RoleRow field, keyword when true, keyword when false)
    ("login", "login", "LOGIN", "NOLOGIN"),
    ("superuser", "superuser", "SUPERUSER", "NOSUPERUSER"),
    ("createdb", "createdb", "CREATEDB", "NOCREATEDB"),
    ("createrole", "createrole", "CREATEROLE", "NOCREATEROLE"),
    ("replication", "replication", "REPLICATION", "NOREPLICATION"),
    ("bypassrls", "bypassrls", "BYPASSRLS", "NOBYPASSRLS"),
)
KEYWORDS = {
    p: sql.SQL(p)
    for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER",
              "MAINTAIN", "USAGE", "CREATE", "TEMPORARY", "CONNECT", "EXECUTE")
}
ALL_IN_SCHEMA = {
    "tables in schema": sql.SQL("ALL TABLES IN SCHEMA {}"),
    "sequences in schema": sql.SQL("ALL SEQUENCES IN SCHEMA {}"),
    "functions in schema": sql.SQL("ALL FUNCTIONS IN SCHEMA {}"),
}
ONE_OBJECT = {
    "tables in schema": sql.SQL("TABLE {}.{}"),
    "sequences in schema": sql.SQL("SEQUENCE {}.{}"),
}
DEFAULT_TYPES = {"tables": ("r", sql.SQL("TABLES")), "sequences": ("S", sql.SQL("SEQUENCES")),
                 "functions": ("f", sql.SQL("FUNCTIONS"))}


@dataclass
class Planned:
    """What one resource needs: shown as ``fields``, done by ``steps`` (in order)."""

    action: Action = Action.NOOP
    fields: list[FieldChange] = field(default_factory=list)
    steps: list[Stmt] = field(default_factory=list)
    in_transaction: bool = True  # CREATE DATABASE cannot run in one
    set_password: bool = False  # apply adds ALTER ROLE ... PASSWORD (a verifier)
    reason: str = ""

    def change(self, fc: FieldChange) -> None:
        self.fields.append(fc)
        if self.action is Action.NOOP:
            self.action = Action.UPDATE


def grantee(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name.upper() == PUBLIC else sql.Identifier(name)


def privlist(privs: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(KEYWORDS[p] for p in sorted(privs))


def show_privs(privs: Privs | frozenset[str] | None) -> str | None:
    if not privs:
        return None
    names = sorted(
        p if isinstance(p, str) else (p[0] + " (grantable)" if p[1] else p[0]) for p in privs
    )
    return ", ".join(names)


# -- roles ------------------------------------------------------------------------------


def plan_role(spec: RoleSpec, name: str, row: RoleRow | None,
              password_ok: bool | None) -> Planned:
    out = Planned()
    ident = sql.Identifier(name)
    opts: list[sql.Composable] = []
    if row is None:
        out.action = Action.CREATE
        for attr, _, yes, no in ROLE_FLAGS:
            opts.append(sql.SQL(yes if getattr(spec, attr) else no))
        opts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(spec.connectionLimit)))
        if spec.validUntil is not None:
            until = show_time(parse_valid_until(spec.validUntil))
            opts.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(until)))
        out.steps.append(sql.SQL("CREATE ROLE {} WITH {}").format(ident, sql.SQL(" ").join(opts)))
        for g in sorted(set(spec.inRoles)):
            out.steps.append(sql.SQL("GRANT {} TO {}").format(sql.Identifier(g), ident))
        out.set_password = spec.passwordFrom is not None
        return out
    for attr, col, yes, no in ROLE_FLAGS:
        want, have = getattr(spec, attr), getattr(row, col)
        if want != have:
            out.change(FieldChange(attr, str(have).lower(), str(want).lower()))
            opts.append(sql.SQL(yes if want else no))
    if spec.connectionLimit != row.connection_limit:
        out.change(FieldChange("connectionLimit", str(row.connection_limit),
                               str(spec.connectionLimit)))
        opts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(spec.connectionLimit)))
    if spec.validUntil is not None:
        want_t = parse_valid_until(spec.validUntil)
        have_t = _epoch(row.valid_until)
        if have_t is None or abs((want_t - have_t).total_seconds()) >= 1e-3:
            out.change(FieldChange("validUntil", show_time(have_t), show_time(want_t)))
            opts.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(show_time(want_t))))
    if opts:
        out.steps.append(sql.SQL("ALTER ROLE {} WITH {}").format(ident, sql.SQL(" ").join(opts)))
    want_in, have_in = frozenset(spec.inRoles), row.in_roles
    if want_in != have_in:
        out.change(FieldChange("inRoles", ", ".join(sorted(have_in)) or None,
                               ", ".join(sorted(want_in)) or None))
        for g in sorted(want_in - have_in):
            out.steps.append(sql.SQL("GRANT {} TO {}").format(sql.Identifier(g), ident))
        for g in sorted(have_in - want_in):
            out.steps.append(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(g), ident))
    if password_ok is False:
        # Never the value: only that the stored verifier does not match the declared one.
        out.change(FieldChange("password", "(another password)", "(passwordFrom)"))
        out.set_password = True
    return out


def _epoch(value: float | None) -> datetime | None:
    """``rolvaliduntil`` as read (epoch seconds, inf for infinity) as an aware datetime."""
    if value is None:
        return None
    if value == float("inf"):
        return INFINITY
    return datetime.fromtimestamp(value, UTC)


# -- databases, schemas, extensions -------------------------------------------------------


def _norm_encoding(value: str) -> str:
    return value.upper().replace("-", "").replace("_", "")


def plan_database(spec: DatabaseSpec, name: str, row: DatabaseRow | None, rid: str) -> Planned:
    out = Planned()
    ident = sql.Identifier(name)
    if row is None:
        out.action = Action.CREATE
        out.in_transaction = False
        opts: list[sql.Composable] = []
        if spec.owner is not None:
            opts.append(sql.SQL("OWNER {}").format(sql.Identifier(spec.owner)))
        template = spec.template
        if template is None and (spec.encoding or spec.lcCollate or spec.lcCtype):
            template = "template0"  # template1's locale would refuse another one
        if template is not None:
            opts.append(sql.SQL("TEMPLATE {}").format(sql.Identifier(template)))
        if spec.encoding is not None:
            opts.append(sql.SQL("ENCODING {}").format(sql.Literal(spec.encoding)))
        if spec.lcCollate is not None:
            opts.append(sql.SQL("LC_COLLATE {}").format(sql.Literal(spec.lcCollate)))
        if spec.lcCtype is not None:
            opts.append(sql.SQL("LC_CTYPE {}").format(sql.Literal(spec.lcCtype)))
        opts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(spec.connectionLimit)))
        out.steps.append(sql.SQL("CREATE DATABASE {} {}").format(ident, sql.SQL(" ").join(opts)))
        return out
    fixed = [
        ("encoding", spec.encoding, row.encoding,
         spec.encoding is not None
         and _norm_encoding(spec.encoding) != _norm_encoding(row.encoding)),
        ("lcCollate", spec.lcCollate, row.collate,
         spec.lcCollate is not None and spec.lcCollate != row.collate),
        ("lcCtype", spec.lcCtype, row.ctype,
         spec.lcCtype is not None and spec.lcCtype != row.ctype),
    ]
    wrong = [(f, want, have) for f, want, have, differs in fixed if differs]
    if wrong:
        what = "; ".join(f"{f} is {have!r} on the server, the manifest says {want!r}"
                         for f, want, have in wrong)
        raise StallError(
            f"{rid}: database {name}: {what}. These are fixed when a database is created "
            "and setpoint never replaces a database: change the manifest to the server's "
            "values, or dump, drop and re-create the database by hand",
            reason="CreateOnlyChanged",
        )
    if spec.owner is not None and spec.owner != row.owner:
        out.change(FieldChange("owner", row.owner, spec.owner))
        out.steps.append(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            ident, sql.Identifier(spec.owner)))
    if spec.connectionLimit != row.connection_limit:
        out.change(FieldChange("connectionLimit", str(row.connection_limit),
                               str(spec.connectionLimit)))
        out.steps.append(sql.SQL("ALTER DATABASE {} WITH CONNECTION LIMIT {}").format(
            ident, sql.Literal(spec.connectionLimit)))
    return out


def plan_schema(spec: SchemaSpec, name: str, owner: str | None) -> Planned:
    out = Planned()
    ident = sql.Identifier(name)
    if owner is None:
        out.action = Action.CREATE
        stmt = sql.SQL("CREATE SCHEMA {}").format(ident)
        if spec.owner is not None:
            stmt = sql.SQL("{} AUTHORIZATION {}").format(stmt, sql.Identifier(spec.owner))
        out.steps.append(stmt)
    elif spec.owner is not None and spec.owner != owner:
        out.change(FieldChange("owner", owner, spec.owner))
        out.steps.append(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(
            ident, sql.Identifier(spec.owner)))
    return out


def plan_extension(spec: ExtensionSpec, name: str, have: tuple[str, str] | None) -> Planned:
    out = Planned()
    ident = sql.Identifier(name)
    if have is None:
        out.action = Action.CREATE
        stmt = sql.SQL("CREATE EXTENSION {}").format(ident)
        if spec.schema_ is not None:
            stmt = sql.SQL("{} SCHEMA {}").format(stmt, sql.Identifier(spec.schema_))
        if spec.version is not None:
            stmt = sql.SQL("{} VERSION {}").format(stmt, sql.Literal(spec.version))
        out.steps.append(stmt)
        return out
    version, schema = have
    if spec.version is not None and spec.version != version:
        out.change(FieldChange("version", version, spec.version))
        out.steps.append(sql.SQL("ALTER EXTENSION {} UPDATE TO {}").format(
            ident, sql.Literal(spec.version)))
    if spec.schema_ is not None and spec.schema_ != schema:
        out.change(FieldChange("schema", schema, spec.schema_))
        out.steps.append(sql.SQL("ALTER EXTENSION {} SET SCHEMA {}").format(
            ident, sql.Identifier(spec.schema_)))
    return out


# -- grants -----------------------------------------------------------------------------


def _object_sql(spec: GrantSpec, database: str, name: str, obj: AclObject) -> sql.Composable:
    if spec.on == "database":
        return sql.SQL("DATABASE {}").format(sql.Identifier(database))
    schema = sql.Identifier(spec.schema_ or "")
    if spec.on == "schema":
        return sql.SQL("SCHEMA {}").format(schema)
    if spec.on == "functions in schema":
        # The argument list is the server's own text (pg_get_function_identity_arguments):
        # a function is named by its signature, and GRANT takes no OID.
        base = name[: len(name) - len(obj.signature) - 2]
        return sql.SQL("FUNCTION {}.{}({})").format(
            schema, sql.Identifier(base), sql.SQL(obj.signature)
        )
    return ONE_OBJECT[spec.on].format(schema, sql.Identifier(name))


def _label(spec: GrantSpec, database: str, name: str) -> str:
    if spec.on == "database":
        return f"database {database}"
    if spec.on == "schema":
        return f"schema {spec.schema_}"
    return f"{spec.schema_}.{name}"


def plan_grant(spec: GrantSpec, database: str, view: GrantView) -> Planned:
    out = Planned()
    role = spec.role
    want = expand(spec.privileges, view.full)
    want_set: Privs = frozenset((p, spec.withGrantOption) for p in want)
    to = grantee(role)
    if view.objects is None:
        out.action = Action.CREATE
        out.reason = f"{'database' if spec.on == 'database' else 'schema'} not there yet"
        out.steps.extend(_grant_all(spec, database, want, to))
        return out
    if not view.objects:
        out.reason = f"no {spec.on.split()[0]} in schema {spec.schema_} yet"
    shown = 0
    need_grant = False
    revokes: list[Stmt] = []
    for name in sorted(view.objects):
        obj = view.objects[name]
        if obj.owner == role:
            continue  # an owner's privileges are implicit
        have = obj.grants.get(role, frozenset())
        have_p = {p for p, _ in have}
        have_g = {p for p, g in have if g}
        missing = want - have_p
        if spec.withGrantOption:
            missing |= want - have_g
        extra = have_p - want
        extra_go = (have_g & want) if not spec.withGrantOption else set()
        if missing or extra or extra_go:
            need_grant = need_grant or bool(missing)
            target = _object_sql(spec, database, name, obj)
            if extra:
                revokes.append(sql.SQL("REVOKE {} ON {} FROM {}").format(
                    privlist(extra), target, to))
            if extra_go:
                revokes.append(sql.SQL("REVOKE GRANT OPTION FOR {} ON {} FROM {}").format(
                    privlist(extra_go), target, to))
            shown = _field(out, shown, f"{_label(spec, database, name)}: privileges of {role}",
                           show_privs(have), show_privs(want_set))
        if view.sweep_except is not None:
            for other in sorted(obj.grants):
                if other in view.sweep_except or other == obj.owner or other in obj.system:
                    continue
                if other == PUBLIC:
                    continue  # PUBLIC's defaults are not "granted outside setpoint"
                target = _object_sql(spec, database, name, obj)
                revokes.append(sql.SQL("REVOKE ALL ON {} FROM {}").format(
                    target, sql.Identifier(other)))
                shown = _field(out, shown,
                               f"{_label(spec, database, name)}: privileges of {other}",
                               show_privs(obj.grants[other]), None)
    if shown > MAX_FIELDS:
        out.fields.append(FieldChange(f"and {shown - MAX_FIELDS} more objects", "…", "…"))
    if need_grant:
        out.steps.extend(_grant_all(spec, database, want, to))
    out.steps.extend(revokes)
    return out


def _field(out: Planned, shown: int, name: str, old: str | None, new: str | None) -> int:
    if shown < MAX_FIELDS:
        out.change(FieldChange(name, old, new))
    elif out.action is Action.NOOP:
        out.action = Action.UPDATE
    return shown + 1


def _grant_all(spec: GrantSpec, database: str, want: frozenset[str],
               to: sql.Composable) -> list[Stmt]:
    if spec.on == "database":
        target: sql.Composable = sql.SQL("DATABASE {}").format(sql.Identifier(database))
    elif spec.on == "schema":
        target = sql.SQL("SCHEMA {}").format(sql.Identifier(spec.schema_ or ""))
    else:
        target = ALL_IN_SCHEMA[spec.on].format(sql.Identifier(spec.schema_ or ""))
    stmt = sql.SQL("GRANT {} ON {} TO {}").format(privlist(want), target, to)
    if spec.withGrantOption:
        stmt = sql.SQL("{} WITH GRANT OPTION").format(stmt)
    return [stmt]


def revoke_grant(spec: GrantSpec, database: str, full: tuple[str, ...]) -> Stmt:
    """Prune: revoke what the grant declared (schema-wide for ``... in schema``)."""
    want = expand(spec.privileges, full)
    if spec.on == "database":
        target: sql.Composable = sql.SQL("DATABASE {}").format(sql.Identifier(database))
    elif spec.on == "schema":
        target = sql.SQL("SCHEMA {}").format(sql.Identifier(spec.schema_ or ""))
    else:
        target = ALL_IN_SCHEMA[spec.on].format(sql.Identifier(spec.schema_ or ""))
    return sql.SQL("REVOKE {} ON {} FROM {}").format(privlist(want), target, grantee(spec.role))


# -- default privileges -------------------------------------------------------------------


def default_acl_head(spec: DefaultPrivilegesSpec) -> sql.Composed:
    head = sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}").format(sql.Identifier(spec.forRole))
    if spec.schema_ is not None:
        head = sql.SQL("{} IN SCHEMA {}").format(head, sql.Identifier(spec.schema_))
    return head


def plan_default_privileges(spec: DefaultPrivilegesSpec, have: Privs,
                            full: tuple[str, ...]) -> Planned:
    out = Planned()
    want = expand(spec.privileges, full)
    objtype = DEFAULT_TYPES[spec.objectType][1]
    head = default_acl_head(spec)
    to = grantee(spec.role)
    have_p = {p for p, _ in have}
    have_g = {p for p, g in have if g}
    missing = want - have_p
    if spec.withGrantOption:
        missing |= want - have_g
    extra = have_p - want
    extra_go = (have_g & want) if not spec.withGrantOption else set()
    if not (missing or extra or extra_go):
        return out
    out.change(FieldChange(f"default privileges of {spec.role} on {spec.objectType}",
                           show_privs(have),
                           show_privs(frozenset((p, spec.withGrantOption) for p in want))))
    if missing:
        stmt = sql.SQL("{} GRANT {} ON {} TO {}").format(head, privlist(want), objtype, to)
        if spec.withGrantOption:
            stmt = sql.SQL("{} WITH GRANT OPTION").format(stmt)
        out.steps.append(stmt)
    if extra:
        out.steps.append(sql.SQL("{} REVOKE {} ON {} FROM {}").format(
            head, privlist(extra), objtype, to))
    if extra_go:
        out.steps.append(sql.SQL("{} REVOKE GRANT OPTION FOR {} ON {} FROM {}").format(
            head, privlist(extra_go), objtype, to))
    return out
