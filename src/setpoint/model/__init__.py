"""Pure data types shared by every layer: ids, resources, plans, conditions, errors.

Nothing in this package does I/O; every other package imports from here.
Its names load on first use (PEP 562), so that importing one light module
(``setpoint.model.status`` for ``setpoint status``, ``model.errors``) loads only
that module: :mod:`.resource` pulls pydantic, :mod:`.plan` and :mod:`.errors`
dataclasses, and the CLI's fast paths must start in <= 80 ms.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from setpoint.model.errors import (
        ConfinementError,
        ManifestError,
        ManifestErrors,
        ProviderError,
        SetpointError,
        SourceError,
    )
    from setpoint.model.plan import Action, Change, FieldChange
    from setpoint.model.resource import Location, Resource, parse_resource_id

_LAZY = {
    "ConfinementError": "errors",
    "ManifestError": "errors",
    "ManifestErrors": "errors",
    "ProviderError": "errors",
    "SetpointError": "errors",
    "SourceError": "errors",
    "Action": "plan",
    "Change": "plan",
    "FieldChange": "plan",
    "Location": "resource",
    "Resource": "resource",
    "parse_resource_id": "resource",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        return getattr(__import__(f"setpoint.model.{module}", fromlist=[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Action",
    "Change",
    "ConfinementError",
    "FieldChange",
    "Location",
    "ManifestError",
    "ManifestErrors",
    "ProviderError",
    "Resource",
    "SetpointError",
    "SourceError",
    "parse_resource_id",
]
