"""A small LRU of rendered stacks, keyed by (revision SHA, stack path).

Role: the engine calls :meth:`RenderCache.get_or_load` once per stack per
pass. A revision is immutable, so its rendered stack never changes: caching it
turns a no-op pass into stat-and-compare work (the design's measured 1.5-2x
the file-system floor) instead of re-parsing every manifest. Failures are
cached too, so a broken revision is not re-parsed every interval; the same
errors are raised again each time.

A cache belongs to one registry and one :class:`~setpoint.render.loader.Limits`
(neither is part of the key). It is safe to share between threads; two threads
missing on the same key may both load it, which is harmless.
"""

from __future__ import annotations

import posixpath
import threading
from collections import OrderedDict
from pathlib import Path

from setpoint.model.errors import ManifestErrors
from setpoint.model.resource import Resource
from setpoint.providers.base import Registry
from setpoint.render.loader import DEFAULT_LIMITS, Limits, load_stack

_Result = tuple[Resource, ...] | ManifestErrors


class RenderCache:
    """Caches :func:`load_stack` results by ``(revision, subdir)``; keeps the last ``size``.

    Example::

        cache = RenderCache()
        resources = cache.get_or_load(revision.sha, revision.tree, stack.path, registry)
    """

    def __init__(self, size: int = 8, *, limits: Limits = DEFAULT_LIMITS) -> None:
        if size < 1:
            raise ValueError("RenderCache size must be at least 1")
        self.size = size
        self.limits = limits
        self._entries: OrderedDict[tuple[str, str], _Result] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(
        self, revision: str, tree: Path, subdir: str, registry: Registry
    ) -> list[Resource]:
        """The stack's resources (a new list each call); re-raises cached ManifestErrors."""
        key = (revision, posixpath.normpath(subdir or "."))
        with self._lock:
            result = self._entries.get(key)
            if result is not None:
                self._entries.move_to_end(key)
        if result is None:
            try:
                result = tuple(load_stack(tree, subdir, registry, limits=self.limits))
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
        return list(result)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
