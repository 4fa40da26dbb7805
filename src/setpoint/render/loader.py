"""The "validate" stage: manifest files → validated declarations, every error at file:line.

Role: :func:`load_manifests` parses the manifest files the assemble stage picked
(or a plain directory walk), lets the pipeline edit each raw document (overlay
patches and labels), validates it, and resolves the repository files it names.
Called by :mod:`setpoint.render.pipeline` (the engine and the CLI go through
:func:`setpoint.render.load_stack` / :func:`setpoint.render.render_stack`).

How files are read:

1. Every ``*.yaml`` / ``*.yml`` below a plain directory is found in sorted
   order (directories whose name starts with ``.``, such as ``.git`` and
   ``.github``, are skipped; symlinked directories are not followed) and
   parsed; each YAML document is one resource, empty documents are skipped.
   ``Location.line`` is the line of the document's first key (normally
   ``apiVersion:``).
2. Documents of kind ``Overlay`` or ``Fleet`` configure setpoint: they are never
   resources. An Overlay met here is still checked, and the files it names
   (``varFiles``, ``secretFiles``) are not manifests.
3. Every ``File`` ``source`` and ``templateSource`` is resolved relative to the
   directory of its manifest and must stay inside the tree (symlinks included).
4. Files that some ``File`` uses as its ``source`` or ``templateSource``, or an
   overlay names as vars or secrets, are *not* manifests, even when named
   ``*.yaml``: their resources and their errors are dropped. (Every reference
   counts, including one from a file that is itself dropped; a ``File`` whose
   source is its own manifest keeps that manifest.)
5. :func:`blob_of` reads sources (binary-safe, size-capped); inline ``content``
   becomes ``content.encode()``. Templates are the template stage's.
6. :func:`stack_checks`: duplicate ids, two resources claiming one
   ``spec.path``, and ``dependsOn`` naming an id the stack does not declare.
   (Dependency cycles are the engine's to find.)

Errors about a whole file (unreadable, too big, not UTF-8) are reported at
line 1 (the offending line when known); a bad stack path at line 0 (file =
the path). A missing ``tree`` raises :class:`~setpoint.model.errors.SourceError`
(the checkout is gone; nothing is wrong with the manifests). Only the C YAML
loader is used: without libyaml a plain :class:`SetpointError` is raised.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from yaml.nodes import Node, ScalarNode

from setpoint.model.errors import ManifestError, ManifestErrors, SourceError
from setpoint.model.resource import Resource
from setpoint.providers.base import Registry
from setpoint.render.files import (
    ReadError,
    confine,
    read_regular,
    read_walked,
    relative,
)
from setpoint.render.overlay import (
    NOT_RESOURCE_KINDS,
    OVERLAY_KIND,
    Chain,
    parse_overlay,
    referenced_files,
)
from setpoint.render.validate import SOURCE_KINDS, Declared, validate_document
from setpoint.render.yamlnodes import (
    NodeError,
    build,
    child,
    compose_documents,
    is_empty,
    line_of,
    locate,
    require_libyaml,
)


@dataclass(frozen=True)
class Limits:
    """Bounds on untrusted input; the defaults suit real stacks with a wide margin."""

    max_manifest_bytes: int = 1 << 20  # per manifest file
    max_source_bytes: int = 64 << 20  # per File ``source``
    max_nodes: int = 100_000  # YAML nodes visited per document, aliases counted each use
    max_depth: int = 64  # nesting depth of mappings/lists in a document


DEFAULT_LIMITS = Limits()


@dataclass
class Parsed:
    """Phase-1 result for one manifest file."""

    rel: str
    real: str
    data: bytes = b""
    entries: list[Entry] = field(default_factory=list)
    failed_ids: set[str] = field(default_factory=set)  # ids of documents that did not validate
    errors: list[ManifestError] = field(default_factory=list)
    chain: Chain = ()  # the overlays this file was included through, innermost first
    refs: list[str] = field(default_factory=list)  # real paths an Overlay document here names
    _roots: list[Node] | None = None

    def line(self, doc: int, path: tuple[str | int, ...], default: int) -> int:
        """The line of ``path`` in document ``doc``, found by parsing the file again.

        Only errors need field lines, and they are rare: re-parsing one file
        then is cheaper than looking up lines for every resource up front, or
        keeping every node tree (far more memory than the stack's bytes).
        """
        root = self.root(doc)
        return default if root is None else locate(root, path, default)[0]

    def root(self, doc: int) -> Node | None:
        """The node tree of document ``doc`` (parsed again on first use)."""
        if self._roots is None:
            self._roots = []
            # A syntax error was reported already; the documents before it are kept.
            with suppress(NodeError):
                for root in compose_documents(self.data):
                    self._roots.append(root)
        return self._roots[doc] if doc < len(self._roots) else None


@dataclass
class Entry:
    """A validated document plus its resolved source (real path), before blobs are read."""

    declared: Declared
    file: Parsed
    source_real: str | None = None
    template_real: str | None = None  # a File's templateSource
    patched: tuple[str, ...] = ()  # ``file:line`` of each overlay patch applied

    @property
    def chain(self) -> Chain:
        return self.file.chain

    def line(self, *path: str | int) -> int:
        return self.file.line(self.declared.doc, path, self.declared.location.line)


Edit = Callable[[dict[Any, Any], Chain], tuple[dict[Any, Any], tuple[str, ...]]]
"""(raw document, its overlay chain) -> (edited document, ``file:line`` of each patch applied)."""


@dataclass
class Loaded:
    """What :func:`load_manifests` found: declarations kept, and every error."""

    entries: list[Entry]
    errors: list[ManifestError]
    failed_ids: set[str]  # ids of documents that did not validate
    files: list[str]  # repository paths of the manifests read


def load_manifests(
    tree_real: str,
    files: Iterable[tuple[str, Chain]],
    registry: Registry,
    limits: Limits,
    *,
    edit: Edit | None = None,
    not_manifests: Iterable[str] = (),
) -> Loaded:
    """Parse and validate ``files`` (walked paths below ``tree_real``, each with its chain).

    ``not_manifests`` are real paths that are never manifests (files the
    assembled overlays name). Every error is collected, none raised.
    """
    require_libyaml()
    with _gc_paused():
        parsed = [
            _parse_file(tree_real, path, chain, registry, limits, edit) for path, chain in files
        ]

    # A manifest that is some File's source is content, not a manifest. A File whose
    # source is its own manifest does not count: dropping it would silently lose it.
    referenced = set(not_manifests)
    for p in parsed:
        referenced.update(p.refs)
        for e in p.entries:
            for real in (e.source_real, e.template_real):
                if real is not None and real != p.real:
                    referenced.add(real)
    kept = [p for p in parsed if p.real not in referenced]
    errors = [e for p in kept for e in p.errors]
    failed_ids = {rid for p in kept for rid in p.failed_ids}
    entries = [e for p in kept for e in p.entries]
    return Loaded(entries, errors, failed_ids, [p.rel for p in kept])


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while parsing (re-entrant and thread-safe).

    Parsing allocates hundreds of thousands of short-lived nodes while the
    kept results grow; each allocation burst triggers collections that rescan
    the growing heap (measured: 15-20% of a 10,000-resource load). Parsing
    creates no garbage cycles worth collecting early, so collection simply
    waits until the last concurrent load finishes.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def start_dir(tree_real: str, subdir: str) -> str:
    """The real directory of the stack path ``subdir``; ManifestErrors/SourceError if unusable."""
    def fail(message: str) -> ManifestErrors:
        return ManifestErrors([ManifestError(subdir or ".", 0, message)])

    if not os.path.isdir(tree_real):
        # The checkout is missing, not the manifests broken: transient, retried.
        raise SourceError(f"the revision tree {tree_real} is not a directory")
    if os.path.isabs(subdir) or "\0" in subdir:
        raise fail(f"stack path {subdir!r} must be relative to the repository root")
    try:
        real = confine(tree_real, os.path.join(tree_real, subdir), f"stack path {subdir!r}")
    except ReadError as exc:
        raise fail(exc.message) from None
    if not os.path.isdir(real):
        raise fail(f"stack path {subdir!r} is not a directory in this revision")
    return real


def _parse_file(
    tree_real: str, path: str, chain: Chain, registry: Registry, limits: Limits, edit: Edit | None
) -> Parsed:
    rel = relative(tree_real, path)
    try:
        real, data = read_walked(tree_real, path, limits.max_manifest_bytes, "manifest")
    except ReadError as exc:
        # Keep the real path: a too-big or odd file that is some File's source is
        # dropped with its error like any other source (step 3).
        return Parsed(rel, os.path.realpath(path), errors=[ManifestError(rel, 1, exc.message)])
    out = Parsed(rel, real, data, chain=chain)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start : exc.start + 1].hex()
        msg = f"manifest is not valid UTF-8 (byte 0x{byte} at line {line}); save it as UTF-8"
        out.errors.append(ManifestError(rel, line, msg))
        return out
    manifest_dir = os.path.dirname(path)
    try:
        for doc, root in enumerate(compose_documents(data)):
            if not is_empty(root):
                _parse_document(out, doc, root, tree_real, manifest_dir, registry, limits, edit)
    except NodeError as exc:
        out.errors.append(ManifestError(rel, exc.line, exc.message))
    except Exception as exc:  # the parser must never take the agent down
        out.errors.append(ManifestError(rel, 1, f"cannot parse manifest: {_describe(exc)}"))
    return out


def _parse_document(
    out: Parsed,
    doc: int,
    root: Node,
    tree_real: str,
    manifest_dir: str,
    registry: Registry,
    limits: Limits,
    edit: Edit | None,
) -> None:
    line = line_of(root)
    patched: tuple[str, ...] = ()
    try:
        value = build(root, max_nodes=limits.max_nodes, max_depth=limits.max_depth)
        kind = value.get("kind") if isinstance(value, dict) else None
        if kind in NOT_RESOURCE_KINDS:
            _not_a_resource(out, root, value, tree_real)
            return
        if edit is not None and out.chain and isinstance(value, dict):
            value, patched = edit(value, out.chain)
        outcome = validate_document(root, value, out.rel, doc, registry)
    except NodeError as exc:
        out.errors.append(ManifestError(out.rel, exc.line, f"{_label(root)}: {exc.message}"))
        return
    except Exception as exc:  # e.g. RecursionError in a validator
        msg = f"{_label(root)}: cannot load document: {_describe(exc)}"
        out.errors.append(ManifestError(out.rel, line, msg))
        return
    if patched:
        # Lines are the manifest's; the value checked is the patched one.
        note = f" (after patches at {', '.join(patched)})"
        outcome.errors = [ManifestError(e.file, e.line, e.message + note) for e in outcome.errors]
    out.errors.extend(outcome.errors)
    d = outcome.declared
    if d is None:
        if outcome.resource_id is not None:
            out.failed_ids.add(outcome.resource_id)
        return
    entry = Entry(d, out, patched=patched)
    template_source = getattr(d.spec, "templateSource", None) if d.kind in SOURCE_KINDS else None
    if isinstance(template_source, str):
        what = f"templateSource {template_source!r}"
        try:
            path = os.path.join(manifest_dir, template_source)
            entry.template_real = confine(tree_real, path, what)
        except ReadError as exc:
            src_line = locate(root, ("spec", "templateSource"), line)[0]
            msg = f"{d.id}: spec.templateSource: {exc.message}"
            out.errors.append(ManifestError(out.rel, src_line, msg))
            out.failed_ids.add(d.id)
            return
    if d.source is not None:
        what = f"source {d.source!r}"
        try:
            entry.source_real = confine(tree_real, os.path.join(manifest_dir, d.source), what)
        except ReadError as exc:
            src_line = locate(root, ("spec", "source"), line)[0]
            out.errors.append(
                ManifestError(out.rel, src_line, f"{d.id}: spec.source: {exc.message}")
            )
            out.failed_ids.add(d.id)
            return
    out.entries.append(entry)


def _not_a_resource(out: Parsed, root: Node, value: dict[Any, Any], tree_real: str) -> None:
    """An Overlay or Fleet document: not a resource. An Overlay is checked for its references."""
    if value.get("kind") != OVERLAY_KIND:
        return  # a Fleet is read by the select stage, from its own path
    overlay, errors = parse_overlay(root, value, out.rel)
    out.errors.extend(errors)
    if overlay is not None:
        out.refs.extend(real for real, _what, _line in referenced_files(tree_real, overlay))


def blob_of(entry: Entry, cache: dict[str, bytes], limits: Limits) -> bytes | None:
    """A File's bytes from its ``source`` or inline ``content`` (None for templates)."""
    d = entry.declared
    if entry.source_real is not None:
        blob = cache.get(entry.source_real)
        if blob is None:
            blob = read_regular(entry.source_real, limits.max_source_bytes, f"source {d.source!r}")
            cache[entry.source_real] = blob
        return blob
    if d.kind not in SOURCE_KINDS:
        return None
    content = getattr(d.spec, "content", None)
    return content.encode() if isinstance(content, str) else None


def stack_checks(
    pairs: list[tuple[Resource, Entry]], failed_ids: set[str]
) -> list[ManifestError]:
    """Duplicate ids, one ``spec.path`` claimed twice, ``dependsOn`` naming no declared id."""
    errors: list[ManifestError] = []
    by_id: dict[str, Resource] = {}
    by_path: dict[str, Resource] = {}
    for res, entry in pairs:
        first = by_id.get(res.id)
        if first is not None:
            msg = f"{res.id}: declared twice (also at {first.location})"
            errors.append(ManifestError(res.location.file, res.location.line, msg))
            continue
        by_id[res.id] = res
        path = getattr(res.spec, "path", None)
        if isinstance(path, str):
            other = by_path.get(path)
            if other is not None:
                line = entry.line("spec", "path")
                msg = f"{res.id}: spec.path {path} conflicts with {other.id} at {other.location}"
                errors.append(ManifestError(res.location.file, line, msg))
            else:
                by_path[path] = res
    known = by_id.keys() | failed_ids
    for res, entry in pairs:
        for i, dep in enumerate(res.depends_on):
            if dep not in known:
                line = entry.line("spec", "dependsOn", i)
                msg = f"{res.id}: spec.dependsOn[{i}]: {dep} is not declared in this stack"
                errors.append(ManifestError(res.location.file, line, msg))
    return errors


def _label(root: Node) -> str:
    """Best-effort ``Kind/name`` of a document that could not be built, for messages."""
    kind = child(root, "kind")
    meta = child(root, "metadata")
    name = child(meta, "name") if meta is not None else None
    k = kind.value if isinstance(kind, ScalarNode) else "document"
    if isinstance(name, ScalarNode):
        return f"{k}/{name.value}"
    return str(k)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it is nested too deeply to process"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
