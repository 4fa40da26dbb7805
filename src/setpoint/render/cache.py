"""A small LRU of rendered stacks, keyed by (revision SHA, stack path, host).

Role: the engine calls :meth:`RenderCache.get_or_render` once per stack per
pass. A revision is immutable, so its rendered stack for one host never
changes: caching it turns a no-op pass into stat-and-compare work (the
design's measured 1.5-2x the file-system floor) instead of re-parsing every
manifest and re-rendering every template. The host part of the key is its
labels and the fingerprint of its secret keys (:attr:`Host.cache_key`): other
labels or other keys render again. Failures are cached too, so a broken
revision is not re-parsed every interval; the same errors are raised again
each time.

A cache belongs to one registry and one :class:`~setpoint.render.loader.Limits`
(neither is part of the key). It is safe to share between threads; two threads
missing on the same key may both load it, which is harmless.
"""

from __future__ import annotations

import posixpath
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from setpoint.model.errors import ManifestErrors
from setpoint.model.resource import Resource
from setpoint.providers.base import Registry
from setpoint.render.loader import DEFAULT_LIMITS, Limits
from setpoint.render.pipeline import NO_HOST, Host, Rendered, render_stack

_Result = Rendered | ManifestErrors


class RenderCache:
    """Caches :func:`render_stack` results by ``(revision, subdir, host)``; keeps the last ``size``.

    Example::

        cache = RenderCache()
        rendered = cache.get_or_render(revision.sha, revision.tree, stack.path, registry, host)
    """

    def __init__(self, size: int = 8, *, limits: Limits = DEFAULT_LIMITS) -> None:
        if size < 1:
            raise ValueError("RenderCache size must be at least 1")
        self.size = size
        self.limits = limits
        self._entries: OrderedDict[tuple[Any, ...], _Result] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_render(
        self, revision: str, tree: Path, subdir: str, registry: Registry, host: Host = NO_HOST
    ) -> Rendered:
        """The stack rendered for ``host``; re-raises cached ManifestErrors."""
        key = (revision, posixpath.normpath(subdir or "."), host.cache_key)
        with self._lock:
            result = self._entries.get(key)
            if result is not None:
                self._entries.move_to_end(key)
        if result is None:
            try:
                result = render_stack(tree, subdir, registry, limits=self.limits, host=host)
            except ManifestErrors as exc:
                result = exc
            with self._lock:
                self._entries[key] = result
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        if isinstance(result, ManifestErrors):
            # A fresh exception each time: re-raising one instance would chain tracebacks.
            raise ManifestErrors(result.errors)
        return result

    def get_or_load(
        self, revision: str, tree: Path, subdir: str, registry: Registry, host: Host = NO_HOST
    ) -> list[Resource]:
        """The stack's resources (a new list each call); re-raises cached ManifestErrors."""
        return list(self.get_or_render(revision, tree, subdir, registry, host).resources)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
