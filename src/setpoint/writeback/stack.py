"""Where a stack's resources and fields are declared: manifests, overlays and their patches.

Role: the write commands need to know *which file* to change, which render
does not tell (it produces resources, not edit locations). This module reads a
checked-out tree the way the render stage assembles it (``setpoint.yaml``
Overlays: ``resources`` followed into files, directories and other overlays;
``patches`` applied innermost overlay first, as RFC 7386 merge patches; overlay
``labels`` added after each overlay's patches) and answers: which documents
make up the stack, what is a resource's effective value, and who declares one
of its fields (the manifest, or the last patch that sets it). Host selectors on
``resources`` entries are ignored: a write-back serves every host.

Used by :mod:`setpoint.writeback.setfield`, ``promote``, ``update_versions`` and
``explain``. Read-only; parsing uses PyYAML's C loader (fast on big stacks);
the one file being edited is parsed again by :mod:`setpoint.writeback.yamledit`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from setpoint.model.errors import SetpointError
from setpoint.render.patch import is_target, merge_patch, with_labels
from setpoint.render.selector import Selector
from setpoint.writeback.yamledit import Path as FieldPath
from setpoint.writeback.yamledit import dotted, get_in

OVERLAY_FILE = "setpoint.yaml"
NOT_RESOURCES = frozenset({"Overlay", "Fleet"})
SUFFIXES = (".yaml", ".yml")


class StackError(SetpointError):
    """The stack could not be read for editing; the message says where and why."""


@dataclass(frozen=True, eq=False)
class Patch:
    """One ``patches`` entry of an overlay."""

    overlay: str  # the overlay file, relative to the repository
    index: int  # its position in ``patches``
    kind: str | None
    name: str | None
    selector: Selector | None
    patch: Mapping[str, Any]

    def targets(self, doc: Mapping[str, Any]) -> bool:
        return is_target(doc, self.kind, self.name, self.selector)

    @property
    def by_name(self) -> bool:
        return self.selector is None

    def sets(self, path: FieldPath) -> bool:
        """Whether this patch gives ``path`` a value (not a deletion, not a parent)."""
        value: Any = self.patch
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
        return value is not None


@dataclass(frozen=True, eq=False)
class Overlay:
    file: str
    dir: str
    patches: tuple[Patch, ...]
    labels: Mapping[str, str]
    has_patches_key: bool


@dataclass(frozen=True, eq=False)
class Doc:
    """One resource document: where it is, its raw value and the overlays it came through."""

    file: str
    index: int  # among the non-empty documents of the file
    raw: Mapping[str, Any]
    chain: tuple[Overlay, ...]  # innermost first; empty for a plain directory

    @property
    def kind(self) -> str:
        return str(self.raw.get("kind"))

    @property
    def name(self) -> str:
        meta = self.raw.get("metadata")
        return str(meta.get("name")) if isinstance(meta, dict) else ""

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"

    def applied(self) -> Iterator[tuple[Patch, dict[str, Any]]]:
        """Each patch that applies to this document, in order, with the document before it."""
        doc: dict[str, Any] = dict(self.raw)
        for ov in self.chain:
            for p in ov.patches:
                if p.targets(doc):
                    yield p, doc
                    doc = merge_patch(doc, p.patch)
            if ov.labels:
                doc = with_labels(doc, ov.labels)

    def effective(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.raw)
        for ov in self.chain:
            for p in ov.patches:
                if p.targets(doc):
                    doc = merge_patch(doc, p.patch)
            if ov.labels:
                doc = with_labels(doc, ov.labels)
        return doc

    def declaration(self, path: FieldPath) -> Patch | None:
        """The patch whose value of ``path`` wins (the last one setting it); None: the manifest."""
        winner = None
        for p, _before in self.applied():
            if p.sets(path):
                winner = p
            elif _clears(p.patch, path):
                winner = None  # a later patch deleted or replaced it: back to no patch value
        return winner


def _clears(patch: Mapping[str, Any], path: FieldPath) -> bool:
    value: Any = patch
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
        if not isinstance(value, dict):
            return True  # null deletes it; a scalar replaces the whole parent
    return False


@dataclass
class Stack:
    """The documents of one stack path of a checked-out tree."""

    tree: Path
    path: str
    docs: list[Doc] = field(default_factory=list)
    overlays: list[Overlay] = field(default_factory=list)
    files: set[str] = field(default_factory=set)  # every repository file read
    # Directories read whole (the stack path, directory entries of ``resources``): they
    # also hold the files manifests name (``source``, templates), which render reads.
    dirs: set[str] = field(default_factory=set)

    def find(self, rid: str) -> Doc:
        found = [d for d in self.docs if d.id == rid]
        if not found:
            known = ", ".join(sorted({d.id for d in self.docs})[:12]) or "none"
            raise StackError(
                f"{rid} is not declared in stack path {self.path!r} (declared: {known})"
            )
        if len(found) > 1:
            where = ", ".join(f"{d.file}" for d in found)
            raise StackError(f"{rid} is declared more than once in {self.path!r} ({where})")
        return found[0]

    def overlay(self) -> Overlay | None:
        """The stack path's own overlay (its ``setpoint.yaml``), if it is one."""
        own = posixpath.normpath(posixpath.join(self.path, OVERLAY_FILE))
        return next((ov for ov in self.overlays if ov.file == own), None)


def assemble(tree: Path, path: str) -> Stack:
    """Read the stack at ``tree/path`` (an overlay directory or a plain one)."""
    root = os.path.realpath(tree)
    stack = Stack(tree, posixpath.normpath(path))
    start = _inside(root, os.path.join(root, path), f"stack path {path!r}")
    if not os.path.isdir(start):
        raise StackError(f"stack path {path!r} is not a directory in the repository")
    seen: set[str] = set()
    stack.dirs.add(_rel(root, start))
    if os.path.isfile(os.path.join(start, OVERLAY_FILE)):
        _visit(root, start, (), stack, seen, [])
    else:
        for f in _walk(start):
            _add_file(root, f, (), stack, seen)
    return stack


def _inside(root: str, path: str, what: str) -> str:
    real = os.path.realpath(path)
    if real != root and not real.startswith(root + os.sep):
        raise StackError(f"{what} leads outside the repository")
    return real


def _rel(root: str, real: str) -> str:
    return os.path.relpath(real, root).replace(os.sep, "/")


def _walk(start: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(SUFFIXES):
                yield os.path.join(dirpath, name)


def _load(root: str, real: str) -> list[Any]:
    rel = _rel(root, real)
    try:
        with open(real, encoding="utf-8") as fh:
            return [d for d in yaml.load_all(fh, Loader=yaml.CSafeLoader) if d is not None]
    except (OSError, UnicodeDecodeError) as exc:
        raise StackError(f"{rel}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise StackError(f"{rel}{line}: not valid YAML: {exc}") from exc


def _add_file(
    root: str, real: str, chain: tuple[Overlay, ...], stack: Stack, seen: set[str]
) -> None:
    if real in seen:
        return
    seen.add(real)
    rel = _rel(root, real)
    stack.files.add(rel)
    for i, doc in enumerate(_load(root, real)):
        if isinstance(doc, dict) and doc.get("kind") not in NOT_RESOURCES:
            stack.docs.append(Doc(rel, i, doc, chain))


def _visit(
    root: str,
    dir_real: str,
    outer: tuple[Overlay, ...],
    stack: Stack,
    seen: set[str],
    active: list[str],
) -> None:
    ov_real = os.path.join(dir_real, OVERLAY_FILE)
    rel = _rel(root, ov_real)
    if dir_real in active:
        raise StackError(f"{rel}: overlay cycle through {_rel(root, dir_real)}")
    docs = _load(root, ov_real)
    stack.files.add(rel)
    raw = docs[0] if len(docs) == 1 and isinstance(docs[0], dict) else None
    if raw is None or raw.get("kind") != "Overlay":
        raise StackError(f"{rel}: an overlay file holds exactly one document of kind Overlay")
    ov = _overlay(rel, raw)
    stack.overlays.append(ov)
    chain = (ov, *outer)
    active.append(dir_real)
    for entry in raw.get("resources") or []:
        target = entry.get("path") if isinstance(entry, dict) else entry
        if not isinstance(target, str) or not target:
            raise StackError(f"{rel}: resources: {entry!r} is not a path")
        real = _inside(root, os.path.join(dir_real, target), f"{rel}: resources {target!r}")
        if os.path.isdir(real):
            stack.dirs.add(_rel(root, real))
            if real != dir_real and os.path.isfile(os.path.join(real, OVERLAY_FILE)):
                _visit(root, real, chain, stack, seen, active)
            else:
                for f in _walk(real):
                    if f != ov_real:
                        _add_file(root, f, chain, stack, seen)
        elif os.path.isfile(real):
            _add_file(root, real, chain, stack, seen)
        else:
            raise StackError(f"{rel}: resources: {target!r} does not exist")
    active.pop()


def _overlay(rel: str, raw: dict[str, Any]) -> Overlay:
    patches = []
    for i, entry in enumerate(raw.get("patches") or []):
        target = entry.get("target") if isinstance(entry, dict) else None
        patch = entry.get("patch") if isinstance(entry, dict) else None
        if not isinstance(target, dict) or not isinstance(patch, dict):
            raise StackError(f"{rel}: patches[{i}]: needs target and patch mappings")
        selector = None
        if target.get("labelSelector") is not None:
            try:
                selector = Selector.model_validate(target["labelSelector"])
            except ValidationError as exc:
                raise StackError(f"{rel}: patches[{i}].target.labelSelector: {exc}") from exc
        patches.append(Patch(rel, i, target.get("kind"), target.get("name"), selector, patch))
    labels = raw.get("labels") or {}
    return Overlay(
        rel, posixpath.dirname(rel) or ".", tuple(patches), dict(labels), "patches" in raw
    )


def describe(p: Patch, path: FieldPath) -> str:
    target = f"labelSelector {p.selector}" if p.selector is not None else f"{p.kind}/{p.name}"
    return f"the patch {p.overlay} patches[{p.index}] (target {target}) sets {dotted(path)}"


def value_at(doc: Mapping[str, Any], path: FieldPath) -> Any:
    return get_in(doc, path)
