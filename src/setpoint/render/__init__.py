"""Rendering: a revision's tree → validated resources, every error at ``file:line``.

The engine and the CLI use exactly this API:

- :func:`load_stack` loads every manifest of one stack path (see
  :mod:`setpoint.render.loader` for the rules: which files, ``File`` sources,
  stack-level checks);
- :class:`Limits` bounds untrusted input (file sizes, YAML node count, depth);
- :class:`RenderCache` keeps the last few rendered stacks per
  ``(revision, path)``, so an unchanged revision is not parsed again.

Example::

    from setpoint.render import RenderCache, load_stack
    resources = load_stack(tree, "hosts/web", registry)   # raises ManifestErrors

Modules: ``loader`` (orchestration and stack checks), ``validate`` (one
document's envelope and spec), ``yamlnodes`` (PyYAML, C loader only),
``files`` (confined, bounded reads), ``cache``.
"""

from setpoint.render.cache import RenderCache
from setpoint.render.loader import Limits, load_stack

__all__ = ["Limits", "RenderCache", "load_stack"]
