"""Providers: the code that owns a family of kinds on one kind of target.

:func:`default_registry` returns the registry of every built-in kind. The
engine only ever talks to providers through :class:`~setpoint.providers.base.Provider`.
The names below load on first use: a provider's quick checker (``files/quick.py``)
runs in a one-shot process that must not import pydantic (engine/settled.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from setpoint.providers.base import Observed, Provider, ProviderContext, Registry
    from setpoint.providers.registry import default_registry

__all__ = ["Observed", "Provider", "ProviderContext", "Registry", "default_registry"]


def __getattr__(name: str) -> Any:
    if name == "default_registry":
        return importlib.import_module("setpoint.providers.registry").default_registry
    if name in __all__:
        return getattr(importlib.import_module("setpoint.providers.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
