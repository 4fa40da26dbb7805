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
    RoleSpec,
    SchemaSpec,
)

if TYPE_CHECKING:
    from setpoint.providers.base import Registry, Target
    from setpoint.providers.postgres.provider import PostgresProvider

KINDS: dict[str, type[BaseModel]] = {
    "PostgresRole": RoleSpec,
    "PostgresDatabase": DatabaseSpec,
    "PostgresSchema": SchemaSpec,
    "PostgresGrant": GrantSpec,
    "PostgresDefaultPrivileges": DefaultPrivilegesSpec,
    "PostgresExtension": ExtensionSpec,
}


def postgres_provider(target: Target) -> PostgresProvider:
    """The factory: one provider (connections, snapshots) for every PostgreSQL kind."""
    from setpoint.providers.postgres.provider import PostgresProvider

    return PostgresProvider(target.state_dir)


def register(reg: Registry) -> None:
    for kind, spec in KINDS.items():
        reg.register(kind, spec, postgres_provider)
