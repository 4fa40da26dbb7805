"""Pure data types shared by every layer: ids, resources, plans, conditions, errors.

Nothing in this package does I/O; every other package imports from here.
:mod:`.resource` (pydantic) loads on first use of its names, so that the light
modules (``model.errors``, ``model.plan``) keep the CLI's start-up fast.
"""

from typing import TYPE_CHECKING, Any

from setpoint.model.errors import (
    ConfinementError,
    ManifestError,
    ManifestErrors,
    ProviderError,
    SetpointError,
    SourceError,
)
from setpoint.model.plan import Action, Change, FieldChange

if TYPE_CHECKING:
    from setpoint.model.resource import Location, Resource, parse_resource_id

_LAZY = {"Location", "Resource", "parse_resource_id"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from setpoint.model import resource

        return getattr(resource, name)
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
