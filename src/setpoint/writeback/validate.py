"""Check an edited tree as the agent would before committing it.

Role: a write command never commits a revision the agent would refuse. The
stack is rendered with :func:`setpoint.render.load_stack` and ordered with the
engine's :func:`~setpoint.engine.desired.order_stack` (duplicate ids, bad
fields, missing dependencies, cycles), exactly what ``setpoint validate`` runs.

Used by :mod:`setpoint.writeback.transaction`.
"""

from __future__ import annotations

from pathlib import Path

import setpoint.render as render
from setpoint.engine.desired import order_stack
from setpoint.model.errors import ManifestError, ManifestErrors, SetpointError
from setpoint.providers.base import ProviderContext
from setpoint.providers.registry import default_registry


class InvalidStack(SetpointError):
    """The edit would give the agent a stack it refuses; every error at file:line."""

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"the edited stack does not validate, nothing was committed:\n{lines}")


def validate_tree(tree: Path, path: str) -> None:
    """Raise :class:`InvalidStack` when the stack at ``tree/path`` would be refused."""
    registry = default_registry()
    try:
        resources = render.load_stack(tree, path, registry)
        order_stack("", resources, registry.providers(ProviderContext()))
    except ManifestErrors as exc:
        raise InvalidStack(list(exc.errors)) from None
