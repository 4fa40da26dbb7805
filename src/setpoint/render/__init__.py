"""Rendering: a revision's tree + a host → validated resources, every error at ``file:line``.

The engine and the CLI use exactly this API:

- :func:`render_stack` runs the render pipeline (assemble overlays → decrypt →
  patch → validate → template → stack checks; see :mod:`setpoint.render.pipeline`)
  for one stack path and one :class:`Host` (labels, secret :class:`Keys`), and
  returns a :class:`Rendered` (resources, their :class:`Origin`, inputs read);
- :func:`load_stack` is the same, returning just the resources;
- :class:`Limits` bounds untrusted input (file sizes, YAML node count, depth);
- :class:`RenderCache` keeps the last few rendered stacks per
  ``(revision, path, host)``, so an unchanged revision is not rendered again.

Example::

    from setpoint.render import Host, RenderCache, load_stack
    resources = load_stack(tree, "envs/prod", registry, host=Host({"role": "web"}))

Modules: ``pipeline`` (orchestration), ``overlay`` (assemble), ``decrypt``,
``patch`` (RFC 7386 merge patch), ``loader`` (parse and validate; stack checks),
``validate`` (one document's envelope and spec), ``template`` (Jinja2 sandbox),
``selector`` (label selectors), ``yamlnodes`` (PyYAML, C loader only), ``files``
(confined, bounded reads), ``cache``.
"""

from setpoint.render.cache import RenderCache
from setpoint.render.decrypt import Keys
from setpoint.render.loader import Limits
from setpoint.render.pipeline import Host, Origin, Rendered, load_stack, render_stack

__all__ = [
    "Host",
    "Keys",
    "Limits",
    "Origin",
    "RenderCache",
    "Rendered",
    "load_stack",
    "render_stack",
]
