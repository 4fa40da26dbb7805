"""Pure data types shared by every layer: ids, resources, plans, conditions, errors.

Nothing in this package does I/O; every other package imports from here.
"""

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
