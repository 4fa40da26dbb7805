"""The render pipeline: a revision's tree + a host → that host's validated resources.

Role: the one entry point of rendering. The engine calls it through
:class:`~setpoint.render.cache.RenderCache` (``get_or_render``, once per
revision, stack path and host), the CLI's ``validate``/``render`` directly.
Stages, each a module of :mod:`setpoint.render`, each pure given (tree, host
labels, keys):

1. assemble (:mod:`~setpoint.render.overlay`): the stack path's overlay, if it
   holds a ``setpoint.yaml``, picks the manifest files (and the chain of
   overlays each came through); a plain directory gives every manifest below it;
2. decrypt (:mod:`~setpoint.render.decrypt`): each included overlay's
   ``secretFiles``, in memory, with the host's :class:`Keys`;
3. patch (:mod:`~setpoint.render.patch`): each raw document gets its chain's
   patches and labels, innermost overlay first;
4. validate (:mod:`~setpoint.render.loader`): envelope and spec, file:line;
5. template (:mod:`~setpoint.render.template`): a File's ``template`` /
   ``templateSource`` becomes its bytes, with the chain's vars, the host's
   labels and the chain's secrets; a File whose template reads ``secrets``
   becomes ``sensitive``;
6. stack checks (duplicates, path claims, dependsOn, a patch that matched nothing).

Templates render File contents, not manifests, so they run after validation.
Every problem of every stage is collected; any problem refuses the stack whole.
Each resource keeps its provenance (:class:`Origin`).

Example::

    rendered = render_stack(tree, "envs/prod", registry, host=Host({"role": "web"}))
    for r in rendered.resources: print(r.id, rendered.origins[r.id].patches)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel
from yaml.nodes import Node, ScalarNode

from setpoint.model.errors import ManifestError, ManifestErrors
from setpoint.model.resource import Location, Resource
from setpoint.providers.base import Registry
from setpoint.render.decrypt import Keys, decrypt_overlay
from setpoint.render.files import (
    ReadError,
    read_confined,
    read_regular,
    relative,
    walk_manifests,
)
from setpoint.render.loader import (
    DEFAULT_LIMITS,
    Entry,
    Limits,
    blob_of,
    load_manifests,
    stack_checks,
    start_dir,
)
from setpoint.render.overlay import (
    Assembly,
    Chain,
    Overlay,
    assemble,
    is_overlay_dir,
    merge_values,
    referenced_files,
)
from setpoint.render.patch import PatchRule, merge_patch, with_labels
from setpoint.render.template import SECRETS, TemplateFailure, Templates
from setpoint.render.yamlnodes import (
    NodeError,
    build,
    child,
    compose_documents,
    is_empty,
    line_of,
    require_libyaml,
)


@dataclass(frozen=True)
class Host:
    """What rendering needs of the host: its labels (facts included) and its secret keys."""

    labels: Mapping[str, str] = field(default_factory=dict)
    keys: Keys | None = None

    @property
    def cache_key(self) -> tuple[tuple[tuple[str, str], ...], str]:
        """Part of the render cache key: (labels, key fingerprint)."""
        return tuple(sorted(self.labels.items())), self.keys.fingerprint if self.keys else ""


NO_HOST = Host()


@dataclass(frozen=True)
class Origin:
    """Where a rendered resource came from (for ``render``, errors and explanations)."""

    location: Location
    overlays: tuple[str, ...] = ()  # overlay files, innermost first
    patches: tuple[str, ...] = ()  # ``file:line`` of each patch applied, in order
    template: str | None = None  # ``file:line`` of the template
    from_secrets: bool = False  # its content derives from secrets (it is sensitive)


@dataclass(frozen=True)
class Rendered:
    """A stack rendered for one host."""

    resources: tuple[Resource, ...]
    origins: Mapping[str, Origin]  # by resource id
    inputs: frozenset[str]  # repository paths read (relative): what the result depends on
    # An overlay of the stack decrypted secretFiles: its result may hold values derived
    # from secrets, so it is never written to disk (the engine's render cache skips it).
    secrets: bool = False


def load_stack(
    tree: Path,
    subdir: str,
    registry: Registry,
    *,
    limits: Limits = DEFAULT_LIMITS,
    host: Host = NO_HOST,
) -> list[Resource]:
    """The resources of :func:`render_stack`, sorted by location; raises ManifestErrors."""
    return list(render_stack(tree, subdir, registry, limits=limits, host=host).resources)


def render_stack(
    tree: Path,
    subdir: str,
    registry: Registry,
    *,
    limits: Limits = DEFAULT_LIMITS,
    host: Host = NO_HOST,
) -> Rendered:
    """Render ``tree/subdir`` for ``host``; raise ManifestErrors holding every problem.

    ``subdir`` is relative to ``tree`` ("." allowed). A missing ``tree`` raises
    SourceError (transient: the checkout is gone).
    """
    require_libyaml()
    tree_real = os.path.realpath(tree)
    start = start_dir(tree_real, subdir)
    labels = dict(sorted(host.labels.items()))
    if is_overlay_dir(start):
        asm = assemble(tree_real, start, labels, limits.max_manifest_bytes)
    else:
        asm = _plain(tree_real, start)
    run = _Run(tree_real, registry, limits, labels, asm)
    run.decrypt(host.keys)
    loaded = load_manifests(
        tree_real, asm.files, registry, limits, edit=run.edit, not_manifests=run.not_manifests
    )
    run.errors.extend(loaded.errors)
    run.inputs.update(loaded.files)
    pairs = [pair for e in loaded.entries if (pair := run.resource(e, loaded.failed_ids))]
    pairs.sort(key=lambda pair: pair[0].location)
    run.errors.extend(run.unused_patches())
    run.errors.extend(stack_checks(pairs, loaded.failed_ids))
    if run.errors:
        raise ManifestErrors(run.errors)
    return Rendered(
        tuple(r for r, _ in pairs),
        {r.id: run.origins[id(e)] for r, e in pairs},
        frozenset(run.inputs),
        secrets=any(ov.secret_files for ov in run.overlays),
    )


def _plain(tree_real: str, start: str) -> Assembly:
    """A directory without an overlay: every manifest below it, no chain."""
    problems: list[tuple[str, str]] = []
    out = Assembly(files=[(p, ()) for p in walk_manifests(tree_real, start, problems)])
    out.errors = [ManifestError(where, 1, reason) for where, reason in problems]
    out.inputs.add(relative(tree_real, start))
    return out


class _Run:
    """One render's state shared by its stages (errors, provenance, per-chain values)."""

    def __init__(
        self,
        tree_real: str,
        registry: Registry,
        limits: Limits,
        labels: dict[str, str],
        asm: Assembly,
    ) -> None:
        self.tree_real = tree_real
        self.limits = limits
        self.labels = labels
        self.overlays = [ov for ov, _chain in asm.overlays]
        self.errors: list[ManifestError] = list(asm.errors)
        self.inputs: set[str] = set(asm.inputs)
        self.origins: dict[int, Origin] = {}
        self.not_manifests: set[str] = set()
        self._own_vars: dict[int, dict[str, Any]] = {}
        self._own_secrets: dict[int, dict[str, Any]] = {}
        self._chain_values: dict[tuple[int, ...], tuple[dict[str, Any], dict[str, Any]]] = {}
        self._matched: dict[int, int] = {id(p): 0 for ov in self.overlays for p in ov.patches}
        self._blobs: dict[str, bytes] = {}
        self._texts: dict[str, str | ManifestError] = {}
        self.templates = Templates(limits.max_source_bytes)
        for ov in self.overlays:
            for real, _what, _line in referenced_files(tree_real, ov):
                self.not_manifests.add(real)
            self._own_vars[id(ov)] = self._read_vars(ov)

    # -- decrypt ------------------------------------------------------------------------

    def decrypt(self, keys: Keys | None) -> None:
        for ov in self.overlays:
            if ov.secret_files:
                values, errors = decrypt_overlay(
                    self.tree_real, ov, keys, self.limits.max_source_bytes, self.inputs
                )
                self._own_secrets[id(ov)] = values
                self.errors.extend(errors)

    # -- vars -----------------------------------------------------------------------------

    def _read_vars(self, ov: Overlay) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for path, line in ov.var_files:
            full = os.path.join(self.tree_real, ov.dir, path)
            try:
                real, data = read_confined(
                    self.tree_real, full, self.limits.max_manifest_bytes, f"varFiles {path!r}"
                )
            except ReadError as exc:
                self.errors.append(ManifestError(ov.file, line, f"varFiles: {exc.message}"))
                continue
            rel = relative(self.tree_real, real)
            self.inputs.add(rel)
            loaded = self._yaml_mapping(rel, data)
            if loaded is not None:
                values = merge_values(values, loaded)
        return merge_values(values, ov.vars)

    def _yaml_mapping(self, rel: str, data: bytes) -> dict[str, Any] | None:
        try:
            roots: list[Node] = [r for r in compose_documents(data) if not is_empty(r)]
            if len(roots) > 1:
                raise NodeError(line_of(roots[1]), "a vars file holds one YAML document")
            value = (
                build(roots[0], max_nodes=self.limits.max_nodes, max_depth=self.limits.max_depth)
                if roots
                else {}
            )
        except NodeError as exc:
            self.errors.append(ManifestError(rel, exc.line, exc.message))
            return None
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            self.errors.append(
                ManifestError(rel, 1, "a vars file must be a mapping with string keys")
            )
            return None
        return value

    def _values(self, chain: Chain) -> tuple[dict[str, Any], dict[str, Any]]:
        """The chain's (vars, secrets): an outer overlay's values override an inner one's."""
        key = tuple(id(ov) for ov in chain)
        hit = self._chain_values.get(key)
        if hit is None:
            vars_: dict[str, Any] = {}
            secrets: dict[str, Any] = {}
            for ov in chain:
                vars_ = merge_values(vars_, self._own_vars.get(id(ov), {}))
                secrets.update(self._own_secrets.get(id(ov), {}))
            hit = self._chain_values[key] = (vars_, secrets)
        return hit

    # -- patch ----------------------------------------------------------------------------

    def edit(self, doc: dict[Any, Any], chain: Chain) -> tuple[dict[Any, Any], tuple[str, ...]]:
        """Apply the chain's patches, then its labels, one overlay at a time, innermost first."""
        applied: list[str] = []
        for ov in chain:
            for rule in ov.patches:
                if rule.matches(doc):
                    doc = merge_patch(doc, rule.patch)
                    self._matched[id(rule)] += 1
                    applied.append(rule.where)
            if ov.labels:
                doc = with_labels(doc, ov.labels)
        return doc, tuple(applied)

    def unused_patches(self) -> list[ManifestError]:
        out = []
        for ov in self.overlays:
            for rule in ov.patches:
                if self._matched[id(rule)] == 0:
                    out.append(_unused(rule))
        return out

    # -- template and resource --------------------------------------------------------------

    def resource(self, e: Entry, failed_ids: set[str]) -> tuple[Resource, Entry] | None:
        d = e.declared
        spec: BaseModel = d.spec
        template_at: str | None = None
        secret = False
        blob: bytes | None
        try:
            if _templated(spec):
                blob, secret, template_at = self._template(e)
                if secret:
                    spec = spec.model_copy(update={"sensitive": True})
            else:
                blob = blob_of(e, self._blobs, self.limits)
                if e.source_real is not None:
                    self.inputs.add(relative(self.tree_real, e.source_real))
                if (
                    _consumes_secret(type(spec))  # first: the Protocol's isinstance is slow
                    and isinstance(spec, SecretConsumer)
                    and (ref := spec.secret_ref()) is not None
                ):
                    blob = self._secret(e, *ref)
        except ReadError as exc:
            field_ = "templateSource" if _templated(spec) else "source"
            msg = f"{d.id}: spec.{field_}: {exc.message}"
            self.errors.append(ManifestError(d.location.file, e.line("spec", field_), msg))
            failed_ids.add(d.id)
            return None
        except ManifestError as exc:
            self.errors.append(exc)
            failed_ids.add(d.id)
            return None
        digest = Resource.compute_digest(d.kind, spec, blob)
        res = Resource(d.kind, d.name, spec, d.location, d.labels, blob, digest)
        overlays = tuple(ov.file for ov in e.chain)
        self.origins[id(e)] = Origin(d.location, overlays, e.patched, template_at, secret)
        return res, e

    def _secret(self, e: Entry, name: str, key: str) -> bytes:
        """A secret value a spec refers to (``passwordFrom: {secret, key}``), as the blob.

        ``key`` is a dotted path in the decrypted document. Errors name the overlay's
        secrets and the path, never a value.
        """
        d = e.declared
        value: Any = self._values(e.chain)[1]
        where = ManifestError(d.location.file, e.line("spec", "passwordFrom"), "")
        if name not in value:
            raise ManifestError(
                where.file, where.line,
                f"{d.id}: spec.passwordFrom: no secret {name!r} in the secretFiles of the "
                "overlays that include this manifest",
            )
        value = value[name]
        for part in key.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise ManifestError(
                    where.file, where.line,
                    f"{d.id}: spec.passwordFrom: secret {name!r} has no key {key!r}",
                )
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ManifestError(
                where.file, where.line,
                f"{d.id}: spec.passwordFrom: {name}.{key} is not a string",
            )
        return str(value).encode("utf-8")

    def _template(self, e: Entry) -> tuple[bytes, bool, str]:
        """Render a File's template: (bytes, reads secrets, ``file:line`` of the template)."""
        d = e.declared
        vars_, secrets = self._values(e.chain)
        context = {"vars": vars_, "labels": self.labels, SECRETS: secrets}
        if e.template_real is not None:
            rel = relative(self.tree_real, e.template_real)
            self.inputs.add(rel)
            text = self._template_text(e.template_real, rel, d.id)
            origin = f"{rel}:1"
        else:
            text = str(getattr(d.spec, "template", ""))
            origin = f"{d.location} (inline)"
        try:
            out = self.templates.render(text, context)
        except TemplateFailure as exc:
            # Where the template starts is looked up only now: it costs a re-parse.
            file, first, key_line = (
                (rel, 1, 1) if e.template_real is not None else _inline_origin(e, text)
            )
            line = first + exc.line - 1 if exc.line else key_line
            raise ManifestError(file, line, f"{d.id}: {exc.message}") from None
        return out.data, out.reads_secrets, origin

    def _template_text(self, real: str, rel: str, rid: str) -> str:
        hit = self._texts.get(real)
        if hit is None:
            what = f"templateSource {rel!r}"
            data = read_regular(real, self.limits.max_source_bytes, what)
            try:
                hit = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                hit = ManifestError(rel, line, "template is not valid UTF-8; save it as UTF-8")
            self._texts[real] = hit
        if isinstance(hit, ManifestError):
            raise ManifestError(hit.file, hit.line, f"{rid}: {hit.message}")
        return hit


@runtime_checkable
class SecretConsumer(Protocol):
    """A spec that takes one secret value (``PostgresRole.passwordFrom``): the renderer puts
    it in ``Resource.blob`` (in memory, like a File's content), so providers never see the
    overlays' secrets and a changed secret is a new declaration (the digest covers it)."""

    def secret_ref(self) -> tuple[str, str] | None: ...


@functools.cache
def _consumes_secret(cls: type) -> bool:
    """``isinstance(spec, SecretConsumer)``, once per spec class: a Protocol's isinstance
    costs 25 us, once per resource of every render."""
    return issubclass(cls, SecretConsumer)


def _templated(spec: BaseModel) -> bool:
    return (
        getattr(spec, "template", None) is not None
        or getattr(spec, "templateSource", None) is not None
    )


def _inline_origin(e: Entry, text: str) -> tuple[str, int, int]:
    """(file, line of the template's first line, line of ``template:``) of an inline template.

    A block scalar (``template: |``) starts on the line after its key; a plain or
    quoted one on the key's line. A template a patch put in is reported at the patch.
    """
    d = e.declared
    root = e.file.root(d.doc)
    spec = child(root, "spec") if root is not None else None
    node = child(spec, "template") if spec is not None else None
    if isinstance(node, ScalarNode) and node.value == text:
        key_line = e.line("spec", "template")
        first = line_of(node) + 1 if node.style in ("|", ">") else line_of(node)
        return d.location.file, first, key_line
    if e.patched:
        file, _, line = e.patched[-1].rpartition(":")
        return file, int(line), int(line)
    return d.location.file, d.location.line, d.location.line


def _unused(rule: PatchRule) -> ManifestError:
    return ManifestError(
        rule.file,
        rule.line,
        f"patches: the patch for {rule.describe_target()} matches no resource this overlay "
        "includes (on a host with these labels); fix its target or remove it",
    )
