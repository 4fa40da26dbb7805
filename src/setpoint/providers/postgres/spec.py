"""Spec models of the PostgreSQL kinds (PostgresRole, PostgresDatabase, PostgresSchema,
PostgresGrant, PostgresDefaultPrivileges, PostgresExtension) and of the connection.

Validated by :mod:`setpoint.render`; used by :mod:`setpoint.providers.postgres.provider`.
Names are PostgreSQL identifiers (any text PostgreSQL accepts, quoted when statements are
built); ``spec.name`` defaults to the resource's ``metadata.name``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from setpoint.model.fields import STRICT, ResourceId

MAX_IDENT = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names silently


def check_ident(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string (a PostgreSQL name)")
    if "\0" in value:
        raise ValueError("a PostgreSQL name cannot contain a NUL byte")
    if len(value.encode("utf-8")) > MAX_IDENT:
        raise ValueError(
            f"{value!r} is longer than {MAX_IDENT} bytes: PostgreSQL would truncate it"
        )
    return value


Ident = Annotated[str, BeforeValidator(check_ident)]

# Privileges each object type accepts, in PostgreSQL's documentation order. ``ALL`` in a
# manifest expands to the set of the object type (see privileges.py for MAINTAIN, 17+).
PRIVILEGES: dict[str, tuple[str, ...]] = {
    "database": ("CREATE", "TEMPORARY", "CONNECT"),
    "schema": ("USAGE", "CREATE"),
    "tables in schema": (
        "SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER",
    ),
    "sequences in schema": ("USAGE", "SELECT", "UPDATE"),
    "functions in schema": ("EXECUTE",),
}
OBJTYPE_CHARS = {"tables": "r", "sequences": "S", "functions": "f"}  # pg_default_acl's
OBJECT_TYPES = {"tables": "tables in schema", "sequences": "sequences in schema",
                "functions": "functions in schema"}


class Connection(BaseModel):
    """Where to connect. Unset fields fall back to the stack's ``postgres.connection``, then
    to the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE, PGSSLMODE, ...).
    ``host`` may be a Unix socket directory; ``passwordFile`` names a file on the host
    holding the password (never the password itself)."""

    model_config = STRICT
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    database: Ident | None = None
    user: Ident | None = None
    passwordFile: str | None = None
    sslmode: Literal[
        "disable", "allow", "prefer", "require", "verify-ca", "verify-full"
    ] | None = None


class PostgresSettings(BaseModel):
    """A stack's ``postgres:`` settings (local config or Fleet entry)."""

    model_config = STRICT
    connection: Connection = Field(default_factory=Connection)


class PasswordFrom(BaseModel):
    """A password from a SOPS secret (``secret``: a ``secretFiles`` name of the overlay,
    ``key``: a dotted path in it) or from a file on the host (``file``)."""

    model_config = STRICT
    secret: str | None = None
    key: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> PasswordFrom:
        if self.file is not None:
            if self.secret is not None or self.key is not None:
                raise ValueError("passwordFrom takes either {secret, key} or {file}, not both")
            if not self.file.startswith("/"):
                raise ValueError(f"passwordFrom.file {self.file!r} must be an absolute path")
        elif self.secret is None or self.key is None:
            raise ValueError(
                "passwordFrom needs {secret: NAME, key: PATH} (a secretFiles entry of the "
                "overlay) or {file: /absolute/path}"
            )
        return self


class _Common(BaseModel):
    # ``schema`` is spelled ``schema_`` in Python (BaseModel.schema exists): dumps (journal,
    # JSON outputs) use the manifest's spelling.
    model_config = ConfigDict(**STRICT, serialize_by_alias=True)
    name: Ident | None = None
    connection: Connection | None = None
    dependsOn: list[ResourceId] = Field(default_factory=list)


class RoleSpec(_Common):
    login: bool = False
    superuser: bool = False
    createdb: bool = False
    createrole: bool = False
    replication: bool = False
    bypassrls: bool = False
    connectionLimit: int = Field(default=-1, ge=-1)
    validUntil: str | None = None  # a timestamp ("2030-01-01", "2030-01-01T00:00:00Z") or infinity
    inRoles: list[Ident] = Field(default_factory=list)
    passwordFrom: PasswordFrom | None = None

    @field_validator("validUntil")
    @classmethod
    def _timestamp(cls, value: str | None) -> str | None:
        if value is not None:
            from setpoint.providers.postgres.values import parse_valid_until

            parse_valid_until(value)
        return value

    def secret_ref(self) -> tuple[str, str] | None:
        """(secret name, key) whose value the renderer puts in ``Resource.blob``."""
        p = self.passwordFrom
        if p is None or p.secret is None or p.key is None:
            return None
        return p.secret, p.key


class DatabaseSpec(_Common):
    owner: Ident | None = None
    # Create-only: a difference on an existing database is an error, never a replace.
    encoding: str | None = None
    lcCollate: str | None = None
    lcCtype: str | None = None
    template: Ident | None = None
    connectionLimit: int = Field(default=-1, ge=-1)


class SchemaSpec(_Common):
    database: Ident
    owner: Ident | None = None


Privileges = list[str] | Literal["ALL"]


def _check_privileges(value: Privileges, allowed: tuple[str, ...], where: str) -> Privileges:
    if value == "ALL":
        return value
    bad = [p for p in value if p.upper() not in (*allowed, "TEMP", "MAINTAIN")]
    if bad:
        raise ValueError(
            f"{', '.join(bad)}: not a privilege of {where} (one of {', '.join(allowed)}, or ALL)"
        )
    if not value:
        raise ValueError("privileges is empty: list at least one, or ALL")
    return value


class GrantSpec(_Common):
    database: Ident
    role: Ident  # a role name, or PUBLIC
    on: Literal[
        "database", "schema", "tables in schema", "sequences in schema", "functions in schema"
    ]
    schema_: Ident | None = Field(default=None, alias="schema")
    privileges: Privileges
    withGrantOption: bool = False

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads an unquoted ``on:`` key as the boolean true: take it back.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = dict(data)
            data["on"] = data.pop(True)
        return data

    @model_validator(mode="after")
    def _check(self) -> GrantSpec:
        if self.on == "database" and self.schema_ is not None:
            raise ValueError("schema is not used with on: database; remove it")
        if self.on != "database" and self.schema_ is None:
            raise ValueError(f"on: {self.on} needs schema: NAME")
        _check_privileges(self.privileges, PRIVILEGES[self.on], self.on)
        return self


class DefaultPrivilegesSpec(_Common):
    database: Ident
    role: Ident  # who receives the privileges (or PUBLIC)
    forRole: Ident  # whose future objects
    schema_: Ident | None = Field(default=None, alias="schema")  # None: every schema
    objectType: Literal["tables", "sequences", "functions"]
    privileges: Privileges
    withGrantOption: bool = False

    @model_validator(mode="after")
    def _check(self) -> DefaultPrivilegesSpec:
        _check_privileges(self.privileges, PRIVILEGES[OBJECT_TYPES[self.objectType]],
                          self.objectType)
        return self


class ExtensionSpec(_Common):
    database: Ident
    schema_: Ident | None = Field(default=None, alias="schema")
    version: str | None = None
