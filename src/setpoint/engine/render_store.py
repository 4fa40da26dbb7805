"""The rendered stacks on disk (``STATE/render-cache/``), so a one-shot run parses no YAML.

Role: :class:`~setpoint.engine.desired.DesiredCache` asks :meth:`RenderStore.load`
before rendering a stack and gives every successful render to
:meth:`RenderStore.save`. The in-memory caches serve a running agent; this one
serves ``setpoint apply``/``plan`` started by a timer or CI, where each process
would otherwise load and validate every manifest again (half of a no-op run).

Key and validity. One file per (stack path, host, limits): its name hashes them.
An entry holds the commit it was rendered at and the Git object id, at that
commit, of every repository path the render read (a walked directory's tree id
covers every file below it). It is used for commit ``sha`` when ``sha`` is that
commit, or when every one of those paths has the same id at ``sha`` (one
``git rev-parse``); the host's labels and its secret keys' fingerprint, the
render limits, the file format and a fingerprint of setpoint's own code (sizes
and mtimes of its modules: an upgrade renders afresh) must match too.

File: a magic line (format, SHA-256 of the rest), a key line (JSON: ident,
commit, ids; read first, so a stale entry costs one short read), the body (JSON:
inputs, resources, their order, non-trivial origins). Never trusted: the
checksum covers key line and body; a damaged, truncated, foreign or
older-format file is ignored (and replaced by the next save), and each spec is
validated again by its kind's model, as at render time. Never a secret: a stack
whose render decrypted ``secretFiles`` (:attr:`Rendered.secrets`) is not saved,
and its old entry is removed; stacks that read a path through a symlink are not
saved either (their ids would not cover what the link leads to). Writes are temp
file + rename without fsync: a torn file after a crash fails its checksum and is
rebuilt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from setpoint.engine.settled import code_fingerprint
from setpoint.model.resource import Location, Resource
from setpoint.providers.base import Registry
from setpoint.render import Host, Limits
from setpoint.render.pipeline import Origin, Rendered

log = logging.getLogger(__name__)

FORMAT = 1
MAGIC = b"setpoint-render-cache"
KEEP = 32  # entry files kept (stacks x hosts); the least recently written go first

IdsFor = Callable[[str, Sequence[str]], "dict[str, str] | None"]

Layout = tuple[list[int], dict[str, list[int]], dict[str, int]]
"""The stack's dependency order, by position in ``Rendered.resources``: (order, each
one's dependencies, declared path -> position). Saved with the render, so that a hit
costs no ordering either (the providers' implicit edges are part of the code
fingerprint)."""
"""(commit sha, repository paths) -> their Git object ids at that commit, or None."""

_CONTENT = 1  # a File's blob is its inline content, encoded: not stored twice


class RenderStore:
    """Rendered stacks in ``directory``, one JSON file each (see the module docstring).

    Example::

        store = RenderStore(state / "render-cache", registry, limits)
        rendered = store.load("hosts/web", host, sha, source.object_ids)
    """

    def __init__(self, directory: Path, registry: Registry, limits: Limits) -> None:
        self.directory = directory
        self.registry = registry
        self.limits = limits
        self._code: str | None = None
        self.hits = 0  # for tests and benchmarks
        self.saves = 0

    def _key(self, subdir: str, host: Host) -> tuple[str, dict[str, Any]]:
        if self._code is None:
            self._code = code_fingerprint()
        ident = {
            "format": FORMAT,
            "code": self._code,
            "stack": posixpath.normpath(subdir or "."),
            "host": hashlib.sha256(json.dumps(host.cache_key).encode()).hexdigest(),
            "limits": [
                self.limits.max_manifest_bytes,
                self.limits.max_source_bytes,
                self.limits.max_nodes,
                self.limits.max_depth,
            ],
        }
        name = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
        return name, ident

    # -- load -------------------------------------------------------------------------

    def load(
        self, subdir: str, host: Host, sha: str, ids_for: IdsFor | None
    ) -> tuple[Rendered, Layout | None] | None:
        """The stack as rendered for ``host`` at ``sha`` and its order, or None if not held.

        Without ``ids_for`` only an entry rendered at ``sha`` itself serves.
        """
        name, ident = self._key(subdir, host)
        path = self.directory / f"{name}.json"
        try:
            fh = open(path, "rb")  # noqa: SIM115 (closed below; read in two steps)
        except OSError:
            return None
        try:
            with fh:
                # The key line first: a stale entry costs one short read, not the body's.
                magic = fh.readline(200)
                key_line = fh.readline(1 << 24)
                key = json.loads(key_line)
                if key.get("ident") != ident:
                    return None
                if key["commit"] != sha:
                    ids: dict[str, str] = key["ids"]
                    now = ids_for(sha, sorted(ids)) if ids_for is not None else None
                    if now != ids:
                        return None
                body = fh.read()
            _check(magic, key_line + body)
            doc = json.loads(body)
            rendered = self._decode(doc)
            layout = _layout(doc.get("layout"), len(rendered.resources))
        except Exception as exc:  # damaged or foreign: never trusted, rebuilt by the next save
            log.info("render cache %s ignored: %s", path, exc)
            return None
        self.hits += 1
        return rendered, layout

    def _decode(self, doc: dict[str, Any]) -> Rendered:
        resources = []
        origins: dict[str, Origin] = {}
        extra = doc["origins"]
        models: dict[str, Any] = {}
        for kind, rname, spec_data, file, line, labels, blob, digest in doc["resources"]:
            model = models.get(kind)
            if model is None:
                model = models[kind] = self.registry.spec_model(kind)
                if model is None:
                    raise ValueError(f"unknown kind {kind!r}")
            spec = model.model_validate(spec_data)
            if blob == _CONTENT:
                data: bytes | None = str(getattr(spec, "content", "")).encode()
            elif blob is None:
                data = None
            else:
                data = base64.b64decode(blob, validate=True)
            loc = Location(file, line)
            resources.append(Resource(kind, rname, spec, loc, labels, data, digest))
        for r in resources:
            o = extra.get(r.id)
            if o:
                origins[r.id] = Origin(r.location, tuple(o[0]), tuple(o[1]), o[2], False)
        return Rendered(tuple(resources), _Origins(origins, resources), frozenset(doc["inputs"]))

    # -- save -------------------------------------------------------------------------

    def save(
        self,
        subdir: str,
        host: Host,
        sha: str,
        tree: Path,
        rendered: Rendered,
        ids_for: IdsFor | None,
        layout: Layout | None = None,
    ) -> None:
        """Keep ``rendered`` (rendered from ``tree`` at ``sha``) unless it may hold a secret.

        Never raises: a cache that cannot be written only costs the next run a render.
        """
        name, ident = self._key(subdir, host)
        path = self.directory / f"{name}.json"
        try:
            if rendered.secrets or any(o.from_secrets for o in rendered.origins.values()):
                path.unlink(missing_ok=True)
                return
            encoded = [_encode(r) for r in rendered.resources]
            for r, row in zip(rendered.resources, encoded, strict=True):
                model = self.registry.spec_model(r.kind)
                if model is None or model.model_validate(row[2]) != r.spec:
                    path.unlink(missing_ok=True)  # would not load back as rendered
                    return
            keys = _key_paths(tree, rendered.inputs)
            ids = ids_for(sha, keys) if ids_for is not None and keys is not None else None
            if ids is None:
                path.unlink(missing_ok=True)
                return
            key_line = json.dumps({"ident": ident, "commit": sha, "ids": ids}).encode() + b"\n"
            body = json.dumps(
                {
                    "inputs": sorted(rendered.inputs),
                    "resources": encoded,
                    "layout": list(layout) if layout is not None else None,
                    "origins": {
                        rid: [list(o.overlays), list(o.patches), o.template]
                        for rid, o in rendered.origins.items()
                        if o.overlays or o.patches or o.template
                    },
                },
                separators=(",", ":"),
            ).encode()
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(_magic(key_line + body) + key_line + body)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self.saves += 1
            self._trim()
        except Exception as exc:
            log.warning("cannot write the render cache %s: %s", path, exc)

    def _trim(self) -> None:
        files = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in files[:-KEEP]:
            old.unlink(missing_ok=True)


class _Origins(Mapping[str, Origin]):
    """Origins by resource id; the many plain ones (declared, no overlay) made on demand."""

    def __init__(self, extra: dict[str, Origin], resources: list[Resource]) -> None:
        self._extra = extra
        self._resources = resources
        self._by_id: dict[str, Resource] | None = None

    def __getitem__(self, rid: str) -> Origin:
        hit = self._extra.get(rid)
        if hit is not None:
            return hit
        if self._by_id is None:
            self._by_id = {r.id: r for r in self._resources}
        return Origin(self._by_id[rid].location)

    def __iter__(self) -> Iterator[str]:
        return (r.id for r in self._resources)

    def __len__(self) -> int:
        return len(self._resources)


def _encode(r: Resource) -> list[Any]:
    spec = r.spec.model_dump(mode="json", exclude_defaults=True)
    if r.blob is None:
        blob: Any = None
    elif isinstance(spec.get("content"), str) and r.blob == spec["content"].encode():
        blob = _CONTENT
    else:
        blob = base64.b64encode(r.blob).decode()
    return [r.kind, r.name, spec, r.location.file, r.location.line, dict(r.labels), blob, r.digest]


def _layout(raw: Any, n: int) -> Layout | None:
    """A stored order, checked to be a permutation of the ``n`` resources (else an error)."""
    if raw is None:
        return None
    order, deps, paths = raw
    if sorted(order) != list(range(n)):
        raise ValueError("the stored order is not one of the stack's resources")
    for ids in (*deps.values(), paths.values()):
        if any(not isinstance(i, int) or not 0 <= i < n for i in ids):
            raise ValueError("the stored order names no resource of the stack")
    return order, deps, paths


def _magic(rest: bytes) -> bytes:
    return MAGIC + b" %d " % FORMAT + hashlib.sha256(rest).hexdigest().encode() + b"\n"


def _check(magic: bytes, rest: bytes) -> None:
    """ValueError unless ``magic`` is this format's first line for ``rest`` (key line + body)."""
    if magic != _magic(rest):
        raise ValueError("bad header or checksum (damaged, truncated or another format)")


def _key_paths(tree: Path, inputs: frozenset[str]) -> list[str] | None:
    """The paths whose Git ids identify the render: the inputs not below an input directory.

    None when the render read anything through a symlink, or a walked directory holds
    one: a link's id says nothing of what it leads to.
    """
    real = os.path.realpath(tree)
    dirs = []
    for p in sorted(inputs):
        full = os.path.join(real, p)
        if os.path.realpath(full) != os.path.normpath(full):
            return None
        if os.path.isdir(full):
            dirs.append(p)
    for d in dirs:
        for dirpath, dirnames, filenames in os.walk(os.path.join(real, d)):
            for n in (*dirnames, *filenames):
                if os.path.islink(os.path.join(dirpath, n)):
                    return None
    tops = [d for d in dirs if not any(_below(d, o) for o in dirs if o != d)]
    return [p for p in sorted(inputs) if not any(_below(p, d) for d in tops if p != d)]


def _below(path: str, directory: str) -> bool:
    return directory == "." or path.startswith(directory.rstrip("/") + "/")
