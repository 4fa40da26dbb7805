"""Providers: the code that owns a family of kinds on one kind of target.

:func:`default_registry` returns the registry of every built-in kind. The
engine only ever talks to providers through :class:`~setpoint.providers.base.Provider`.
"""

from setpoint.providers.base import Observed, Provider, ProviderContext, Registry
from setpoint.providers.registry import default_registry

__all__ = ["Observed", "Provider", "ProviderContext", "Registry", "default_registry"]
