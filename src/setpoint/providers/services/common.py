"""Helpers both providers of the family share (Release and Service), so neither imports the other.

Used by :mod:`.release` and :mod:`.service`.
"""

from __future__ import annotations

from typing import Any


def record_name(record: dict[str, Any], prefix: str) -> str:
    """The name in a delete record: ``{"name": N}``, or an old row's ``{"path": prefix+N}``."""
    name = record.get("name")
    if isinstance(name, str):
        return name
    path = record.get("path")
    if isinstance(path, str) and path.startswith(prefix):
        return path[len(prefix) :]
    return ""
