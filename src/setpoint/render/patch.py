"""JSON merge patch (RFC 7386) and the overlay patches that use it.

Role: the "assemble" stage's edit of one resource document. An overlay's
``patches`` entry names its targets (``{kind, name}`` or ``{labelSelector}``)
and a ``patch``, a JSON merge patch applied to the raw document (before
validation, so a patch may set any field the kind allows). Called by
:mod:`setpoint.render.pipeline` once per document and overlay in its chain.
Pure: no I/O.

Example::

    merge_patch({"spec": {"mode": "0644", "owner": "root"}}, {"spec": {"owner": None}})
    # -> {"spec": {"mode": "0644"}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from setpoint.render.selector import Selector


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` merged in, as RFC 7386 section 2 defines it.

    A mapping patch merges key by key (``None`` deletes the key), recursively;
    anything else replaces the target whole. ``target`` is not modified.
    """
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def with_labels(doc: dict[Any, Any], labels: Mapping[str, str]) -> dict[Any, Any]:
    """``doc`` with an overlay's ``labels`` added to its metadata (theirs win); not modified."""
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return doc  # validation reports it
    own = meta.get("labels")
    if own is not None and not isinstance(own, dict):
        return doc
    return {**doc, "metadata": {**meta, "labels": {**(own or {}), **labels}}}


def is_target(
    doc: Mapping[str, Any], kind: str | None, name: str | None, selector: Selector | None
) -> bool:
    """Whether a patch aimed at ``{kind, name}`` or at ``selector`` applies to ``doc``."""
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    if selector is not None:
        labels = meta.get("labels")
        return selector.matches(labels if isinstance(labels, dict) else {})
    return doc.get("kind") == kind and meta.get("name") == name


@dataclass(frozen=True)
class PatchRule:
    """One ``patches`` entry of an overlay, with where it is written (for errors)."""

    file: str  # the overlay file, relative to the repository
    line: int  # the line of the entry
    patch: dict[str, Any]
    kind: str | None = None
    name: str | None = None
    selector: Selector | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def describe_target(self) -> str:
        if self.selector is not None:
            return f"labelSelector {self.selector}"
        return f"{self.kind}/{self.name}"

    def matches(self, doc: Mapping[str, Any]) -> bool:
        """Whether the raw document ``doc`` (a mapping) is a target of this patch."""
        return is_target(doc, self.kind, self.name, self.selector)
