"""The PostgreSQL kind family: PostgresRole, PostgresDatabase, PostgresSchema,
PostgresGrant, PostgresDefaultPrivileges and PostgresExtension.

:func:`register` adds them to a registry (called by :mod:`setpoint.providers.registry`).
psycopg is imported only when a provider is made, so hosts without PostgreSQL resources
never pay for it. Modules: ``spec`` (manifest models), ``conn`` (connections), ``catalog``
(one query per kind per pass), ``planner`` (pure plans and statements), ``values``
(privileges, timestamps, SCRAM), ``provider`` (the contract), ``prune``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from setpoint.providers.postgres.spec import (
    DatabaseSpec,
    DefaultPrivilegesSpec,
    ExtensionSpec,
    GrantSpec,
    PostgresSettings,
    RoleSpec,
    SchemaSpec,
)

if TYPE_CHECKING:
    from setpoint.providers.base import ProviderContext, Registry
    from setpoint.providers.postgres.provider import PostgresProvider

KINDS: dict[str, type[BaseModel]] = {
    "PostgresRole": RoleSpec,
    "PostgresDatabase": DatabaseSpec,
    "PostgresSchema": SchemaSpec,
    "PostgresGrant": GrantSpec,
    "PostgresDefaultPrivileges": DefaultPrivilegesSpec,
    "PostgresExtension": ExtensionSpec,
}


def postgres_provider(ctx: ProviderContext) -> PostgresProvider:
    """The factory: one provider (connections, snapshots) for every PostgreSQL kind."""
    from setpoint.providers.postgres.provider import PostgresProvider

    return PostgresProvider(ctx)


def register(reg: Registry) -> None:
    """The kinds, and the stack settings section ``postgres: {connection: {...}}``."""
    for kind, spec in KINDS.items():
        reg.register(kind, spec, postgres_provider)
    reg.register_settings("postgres", PostgresSettings)
