"""Overlays: the "assemble" stage (which manifest files a host gets, through which overlays).

Role: a directory holding a ``setpoint.yaml`` of kind ``Overlay`` is an overlay
(the kustomization.yaml shape: ``apiVersion``, ``kind``, optional ``metadata``,
fields at the top level). :func:`assemble` follows its ``resources`` (manifest
files, plain directories, other overlays such as a shared base), keeping for
each manifest file the chain of overlays it came through, innermost first; the
pipeline then applies that chain's patches and labels to each document and
gives its templates the chain's vars and secrets. Called by
:mod:`setpoint.render.pipeline`; the loader calls :func:`parse_overlay` for an
Overlay document met in a plain directory walk (it is not a resource, but the
files it names are not manifests either).

Rules (each violation is a :class:`ManifestError` at the overlay file's line):
a path must stay inside the repository; overlays must not form a cycle; a
manifest file is included once; a ``resources`` entry with a ``selector`` is
followed only on hosts whose labels match; an entry naming the overlay's own
directory (``.``) walks that directory as a plain one (the overlay file itself
and the files it names are skipped). Unknown fields are errors.

Precedence of values for templates: within one overlay the ``varFiles`` in
order, then the inline ``vars``; an outer overlay's values override an inner
one's (mappings merge key by key, anything else is replaced).
"""

from __future__ import annotations

import difflib
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from yaml.nodes import Node

from setpoint.model.errors import ManifestError, ManifestErrors
from setpoint.render.files import ReadError, confine, read_confined, relative, walk_manifests
from setpoint.render.patch import PatchRule
from setpoint.render.selector import Selector
from setpoint.render.yamlnodes import NodeError, build, compose_documents, is_empty, line_of, locate

OVERLAY_FILE = "setpoint.yaml"
OVERLAY_KIND = "Overlay"
# Documents that configure setpoint rather than declare a resource; never resources.
NOT_RESOURCE_KINDS = frozenset({"Overlay", "Fleet"})
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Meta(_Strict):
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class _Target(_Strict):
    kind: str | None = None
    name: str | None = None
    labelSelector: Selector | None = None

    @model_validator(mode="after")
    def _one_form(self) -> _Target:
        by_name = self.kind is not None or self.name is not None
        if self.labelSelector is not None and by_name:
            raise ValueError("give either kind and name, or labelSelector, not both")
        if self.labelSelector is None and (self.kind is None or self.name is None):
            raise ValueError("a target needs kind and name, or labelSelector")
        return self


class _Patch(_Strict):
    target: _Target
    patch: dict[str, Any]


class _Entry(_Strict):
    path: str
    selector: Selector | None = None


class _OverlayDoc(_Strict):
    apiVersion: str
    kind: str
    metadata: _Meta | None = None
    resources: list[str | _Entry] = Field(default_factory=list)
    patches: list[_Patch] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    varFiles: list[str] = Field(default_factory=list)
    secretFiles: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _envelope(self) -> _OverlayDoc:
        if self.apiVersion != "setpoint/v1":
            raise ValueError(f"apiVersion must be setpoint/v1 (got {self.apiVersion!r})")
        if self.kind != OVERLAY_KIND:
            raise ValueError(f"kind must be Overlay (got {self.kind!r})")
        for name in self.secretFiles:
            if not SECRET_NAME.match(name):
                raise ValueError(
                    f"secretFiles name {name!r} must be a letter or _ then letters, digits or _ "
                    "(templates reach it as secrets.NAME)"
                )
        return self


@dataclass(frozen=True)
class Resources:
    """One ``resources`` entry."""

    path: str
    selector: Selector | None
    line: int


@dataclass(frozen=True, eq=False)
class Overlay:
    """A parsed overlay file; ``file`` and ``dir`` are relative to the repository."""

    file: str
    dir: str
    resources: tuple[Resources, ...] = ()
    patches: tuple[PatchRule, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    vars: Mapping[str, Any] = field(default_factory=dict)
    var_files: tuple[tuple[str, int], ...] = ()  # (path as written, line)
    secret_files: tuple[tuple[str, str, int], ...] = ()  # (NAME, path as written, line)

    def at(self, line: int) -> str:
        return f"{self.file}:{line}"


Chain = tuple[Overlay, ...]
"""The overlays a manifest file came through, innermost first (empty: no overlay)."""


def parse_overlay(root: Node, value: Any, rel: str) -> tuple[Overlay | None, list[ManifestError]]:
    """One Overlay document (``rel`` is its file) → an :class:`Overlay`, or its errors."""
    doc_line = line_of(root)
    if not isinstance(value, dict):
        return None, [ManifestError(rel, doc_line, "an Overlay document must be a mapping")]
    try:
        doc = _OverlayDoc.model_validate(value)
    except ValidationError as exc:
        return None, _errors(exc, root, rel, doc_line)

    def at(*path: str | int) -> int:
        return locate(root, path, doc_line)[0]

    entries = tuple(
        Resources(e, None, at("resources", i))
        if isinstance(e, str)
        else Resources(e.path, e.selector, at("resources", i))
        for i, e in enumerate(doc.resources)
    )
    patches = tuple(
        PatchRule(
            rel,
            at("patches", i),
            p.patch,
            p.target.kind,
            p.target.name,
            p.target.labelSelector,
        )
        for i, p in enumerate(doc.patches)
    )
    return Overlay(
        file=rel,
        dir=posixpath.dirname(rel) or ".",
        resources=entries,
        patches=patches,
        labels=doc.labels,
        vars=doc.vars,
        var_files=tuple((p, at("varFiles", i)) for i, p in enumerate(doc.varFiles)),
        secret_files=tuple((n, p, at("secretFiles", n)) for n, p in doc.secretFiles.items()),
    ), []


def _errors(exc: ValidationError, root: Node, rel: str, doc_line: int) -> list[ManifestError]:
    known = sorted(_OverlayDoc.model_fields)
    out = []
    for item in exc.errors(include_url=False, include_context=False, include_input=False):
        # Drop pydantic's union-branch names ("str", "_Entry") from the location.
        loc = tuple(p for p in item["loc"] if p not in ("str", "_Entry"))
        line = locate(root, loc, doc_line)[0]
        where = ".".join(str(p) for p in loc) or "Overlay"
        if item["type"] == "extra_forbidden":
            msg = f"{where}: unknown field"
            if len(loc) == 1:
                close = difflib.get_close_matches(str(loc[0]), known, n=1)
                msg += f" (known fields: {', '.join(known)})"
                msg += f"; did you mean {close[0]!r}?" if close else ""
        else:
            msg = f"{where}: {str(item['msg']).removeprefix('Value error, ')}"
        out.append(ManifestError(rel, line, f"Overlay: {msg}"))
    return out


def read_overlay(tree_real: str, dir_real: str, max_bytes: int) -> Overlay:
    """Read and parse ``dir_real/setpoint.yaml``; raise ManifestErrors on any problem."""
    path = os.path.join(dir_real, OVERLAY_FILE)
    rel = relative(tree_real, path)
    try:
        _real, data = read_confined(tree_real, path, max_bytes, "overlay file")
        roots = [r for r in compose_documents(data) if not is_empty(r)]
    except ReadError as exc:
        raise _one(rel, 1, exc.message) from None
    except NodeError as exc:
        raise _one(rel, exc.line, exc.message) from None
    if len(roots) != 1:
        found = len(roots)
        raise _one(rel, 1, f"an overlay file holds exactly one Overlay document (found {found})")
    try:
        value = build(roots[0], max_nodes=100_000, max_depth=64)
    except NodeError as exc:
        raise _one(rel, exc.line, exc.message) from None
    kind = value.get("kind") if isinstance(value, dict) else None
    if kind != OVERLAY_KIND:
        raise _one(
            rel,
            line_of(roots[0]),
            f"{OVERLAY_FILE} makes its directory an overlay: it must hold a document of kind "
            f"Overlay (found kind {kind!r}); rename the file if it declares resources",
        )
    overlay, errors = parse_overlay(roots[0], value, rel)
    if overlay is None:
        raise ManifestErrors(errors)
    return overlay


def _one(file: str, line: int, message: str) -> ManifestErrors:
    return ManifestErrors([ManifestError(file, line, message)])


def is_overlay_dir(dir_real: str) -> bool:
    return os.path.isfile(os.path.join(dir_real, OVERLAY_FILE))


@dataclass
class Assembly:
    """What :func:`assemble` found: manifest files with their chains, and what it read."""

    files: list[tuple[str, Chain]] = field(default_factory=list)  # (walked path, chain)
    overlays: list[tuple[Overlay, Chain]] = field(default_factory=list)  # each with its chain
    inputs: set[str] = field(default_factory=set)  # repository paths read (relative)
    errors: list[ManifestError] = field(default_factory=list)


def assemble(
    tree_real: str, start_real: str, labels: Mapping[str, str], max_bytes: int
) -> Assembly:
    """Follow the overlay at ``start_real`` (a real directory inside ``tree_real``)."""
    out = Assembly()
    included: dict[str, str] = {}  # walked path -> "overlay:line" that included it
    active: list[str] = []  # overlay dirs being assembled (for cycles)

    def visit(dir_real: str, outer: Chain) -> None:
        try:
            ov = read_overlay(tree_real, dir_real, max_bytes)
        except ManifestErrors as exc:
            out.errors.extend(exc.errors)
            return
        out.inputs.add(ov.file)
        chain = (ov, *outer)
        out.overlays.append((ov, chain))
        active.append(dir_real)
        for entry in ov.resources:
            if entry.selector is not None and not entry.selector.matches(labels):
                continue
            follow(ov, entry, dir_real, chain)
        active.pop()

    def follow(ov: Overlay, entry: Resources, dir_real: str, chain: Chain) -> None:
        def fail(message: str) -> None:
            out.errors.append(ManifestError(ov.file, entry.line, f"resources: {message}"))

        if not entry.path or os.path.isabs(entry.path) or "\0" in entry.path:
            fail(f"{entry.path!r} must be a path relative to the overlay's directory")
            return
        try:
            real = confine(tree_real, os.path.join(dir_real, entry.path), repr(entry.path))
        except ReadError as exc:
            fail(exc.message)
            return
        rel = relative(tree_real, real)
        if os.path.isdir(real):
            out.inputs.add(rel)
            if real != dir_real and is_overlay_dir(real):
                if real in active:
                    cycle = [relative(tree_real, d) for d in active[active.index(real) :]]
                    fail(f"overlay cycle: {' -> '.join([*cycle, rel])}")
                    return
                visit(real, chain)
                return
            problems: list[tuple[str, str]] = []
            for path in walk_manifests(tree_real, real, problems):
                add(path, ov, entry, chain)
            out.errors.extend(ManifestError(w, 1, m) for w, m in problems)
        elif os.path.isfile(real):
            if os.path.basename(real) == OVERLAY_FILE:
                fail(f"{rel} is an overlay file: list its directory instead")
                return
            out.inputs.add(rel)
            add(real, ov, entry, chain)
        else:
            fail(f"{entry.path!r} does not exist in this revision ({rel})")

    def add(path: str, ov: Overlay, entry: Resources, chain: Chain) -> None:
        first = included.get(path)
        if first is not None:
            rel = relative(tree_real, path)
            out.errors.append(
                ManifestError(
                    ov.file,
                    entry.line,
                    f"resources: {rel} is included twice (first by {first}); include it once",
                )
            )
            return
        included[path] = ov.at(entry.line)
        out.files.append((path, chain))

    visit(start_real, ())
    return out


def referenced_files(tree_real: str, ov: Overlay) -> list[tuple[str, str, int]]:
    """``(real path, what, line)`` of every file an overlay names as vars or secrets.

    Paths leading outside the repository are left out here (the stage that reads
    them reports it).
    """
    base = os.path.join(tree_real, ov.dir)
    out = []
    for path, line in ov.var_files:
        out.append((os.path.join(base, path), f"varFiles {path!r}", line))
    for name, path, line in ov.secret_files:
        out.append((os.path.join(base, path), f"secretFiles.{name} {path!r}", line))
    result = []
    for path, what, line in out:
        try:
            result.append((confine(tree_real, path, what), what, line))
        except ReadError:
            continue
    return result


def merge_values(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = merge_values(old, value)
        else:
            out[key] = value
    return out
