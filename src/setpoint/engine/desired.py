"""Desired state: a stack rendered, ordered and checked against other stacks' claims.

Used by the reconciler once per pass. Rendering 10,000 resources costs a second
or more, so results are cached by (commit, stack path), and also by the Git tree
id of the stack's path, so a commit that only touches other parts of a monorepo
costs no re-render. Pure apart from reading the exported tree.

The checks that need more than the manifests run here too: each provider's
(:class:`~setpoint.providers.base.StackChecker`, e.g. a purging directory that holds
the agent's state dir), and a key claimed by another stack is refused. Every
resource carries its stack's name (``Resource.stack``) from here on.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from setpoint.config import StackConfig
from setpoint.engine.graph import Ordered, order_resources
from setpoint.engine.inventory import InventoryView
from setpoint.engine.render_store import IdsFor, Layout, RenderStore
from setpoint.model.errors import ManifestError, ManifestErrors, SetpointError
from setpoint.model.resource import Resource
from setpoint.providers.base import Provider, Registry, StackChecker
from setpoint.render import Host, RenderCache, Rendered

Peers = Callable[[StackConfig, str], dict[str, set[str]]]
"""(stack, commit) -> {other stack of the same source: the paths it declares at that commit}."""

TreeIdFor = Callable[[str, str], str | None]
"""(commit sha, stack path) -> the Git tree id of that path at that commit, or None."""

_KEEP = 16  # rendered stacks kept (a few revisions of a few stacks)


@dataclass(frozen=True)
class Desired:
    """A stack's validated desired state at one revision, in dependency order."""

    revision: str
    ordered: Ordered
    paths: dict[str, str] = field(default_factory=dict)  # declared path -> resource id
    index: dict[str, int] = field(default_factory=dict)  # resource id -> position in order
    # Rendered with decrypted secrets: nothing derived from it may be written to disk.
    secrets: bool = False


class DesiredCache:
    def __init__(
        self,
        registry: Registry,
        providers: dict[str, Provider],
        cache: RenderCache,
    ) -> None:
        self.registry = registry
        self.providers = providers
        self.cache = cache
        unique = {id(p): p for p in providers.values()}.values()
        self._checkers = [p for p in unique if isinstance(p, StackChecker)]
        # Stacks the state DB knows but the config no longer names (set by the
        # controller): a conflict with one of them says how to hand it over.
        self.orphans: frozenset[str] = frozenset()
        self._by_commit: dict[tuple[str, str, str], Desired] = {}
        self._by_tree: dict[tuple[str, str, str], Desired] = {}
        self._tree_ids: dict[tuple[str, str], str | None] = {}
        self._conflicts_ok: tuple[Desired, int, str] | None = None
        self.renders = 0  # stacks actually rendered (for tests and benchmarks)
        self.host = Host()  # this host's labels and secret keys, given to every render
        # Set by the controller: for a stack at a commit, the paths each other stack of
        # the same source declares at that commit (a path moving between two stacks in
        # one commit is handed over, not refused as a conflict nor pruned).
        self.peers: Peers | None = None
        # Rendered stacks on disk (set by the controller): a new process renders only
        # what changed in Git since the last run (engine/render_store.py).
        self.store: RenderStore | None = None
        self._unsaved: list[tuple[str, Host, str, Path, Rendered, IdsFor | None, Desired]] = []

    def set_host(self, host: Host) -> None:
        """Render for ``host`` from now on (other labels or keys: nothing cached is reused)."""
        if host.cache_key != self.host.cache_key:
            self._by_commit.clear()
            self._by_tree.clear()
            self._conflicts_ok = None
        self.host = host

    def get(
        self,
        stack: StackConfig,
        tree: Path | Callable[[], Path],
        sha: str,
        view: InventoryView,
        tree_id_for: TreeIdFor | None = None,
        ids_for: IdsFor | None = None,
    ) -> Desired:
        """Render and order a stack at ``sha``; raise ManifestErrors if it must be refused.

        ``tree`` may be a callable giving it: then the tree is exported (or checked) only
        when a render needs it, not when a cache serves the stack.

        A stack rendered at another commit with the same tree id of its path is
        reused when it reads nothing outside that path (see :func:`_self_contained`).
        """
        key = (sha, stack.path, stack.name)
        hit = self._by_commit.get(key)
        if hit is None:  # on disk, rendered at this very commit: no git call, no render
            hit = self._stored(stack, sha, None)
        tree_id = self._tree_id(tree_id_for, sha, stack.path) if hit is None else None
        tkey = (tree_id, stack.path, stack.name) if tree_id else None
        if hit is None and tkey is not None and tkey in self._by_tree:
            hit = replace(self._by_tree[tkey], revision=sha)
        if hit is None and ids_for is not None:  # on disk, and nothing it read changed since
            hit = self._stored(stack, sha, ids_for)
        if hit is None:
            self.renders += 1
            tree = tree() if callable(tree) else tree
            rendered = self.cache.get_or_render(sha, tree, stack.path, self.registry, self.host)
            resources = [replace(r, stack=stack.name) for r in rendered.resources]
            errors = [e for c in self._checkers for e in c.check_declarations(resources)]
            if errors:
                raise ManifestErrors(errors)
            hit = order_stack(sha, resources, self.providers)
            if rendered.secrets:
                hit = replace(hit, secrets=True)
            if self.store is not None:  # written after the pass: not on the apply's path
                self._unsaved.append((stack.path, self.host, sha, tree, rendered, ids_for, hit))
            if tkey is not None and _self_contained(tree, stack.path, rendered.inputs):
                _put(self._by_tree, tkey, hit)
        _put(self._by_commit, key, hit)
        self._check_conflicts(stack, hit, view)
        return hit

    def save_rendered(self) -> None:
        """Write the stacks rendered since the last call to the disk cache (never raises)."""
        store, unsaved, self._unsaved = self.store, self._unsaved, []
        for path, host, sha, tree, rendered, ids_for, desired in unsaved:
            if store is not None:
                store.save(path, host, sha, tree, rendered, ids_for, _layout_of(desired, rendered))

    def _stored(self, stack: StackConfig, sha: str, ids_for: IdsFor | None) -> Desired | None:
        """The stack from the disk cache, ordered (by the order stored with it), or None."""
        found = self.store.load(stack.path, self.host, sha, ids_for) if self.store else None
        if found is None:
            return None
        rendered, layout = found
        resources = [replace(r, stack=stack.name) for r in rendered.resources]
        errors = [e for c in self._checkers for e in c.check_declarations(resources)]
        if errors:
            raise ManifestErrors(errors)
        if layout is None:
            return order_stack(sha, resources, self.providers)
        order, deps, paths = layout
        ordered = Ordered(
            tuple(resources[i] for i in order),
            {r.id: frozenset(resources[i].id for i in deps.get(str(k), ())) for k, r in
             enumerate(resources)},
        )  # fmt: skip
        index = {r.id: i for i, r in enumerate(ordered.order)}
        return Desired(sha, ordered, {p: resources[i].id for p, i in paths.items()}, index)

    def _tree_id(self, tree_id_for: TreeIdFor | None, sha: str, path: str) -> str | None:
        if tree_id_for is None:
            return None
        key = (sha, path)
        if key not in self._tree_ids:
            try:
                self._tree_ids[key] = tree_id_for(sha, path)
            except SetpointError:
                return None  # not cached: no reuse this time, asked again next time
            if len(self._tree_ids) > 4 * _KEEP:
                self._tree_ids.pop(next(iter(self._tree_ids)))
        return self._tree_ids[key]

    def render(self, stack: StackConfig, tree: Path, sha: str) -> Desired:
        """``stack`` rendered and ordered at ``sha`` (cached), without the conflict check."""
        key = (sha, stack.path, stack.name)
        hit = self._by_commit.get(key)
        if hit is None:
            self.renders += 1
            rendered = self.cache.get_or_render(sha, tree, stack.path, self.registry, self.host)
            resources = [replace(r, stack=stack.name) for r in rendered.resources]
            hit = order_stack(sha, resources, self.providers)
            if rendered.secrets:
                hit = replace(hit, secrets=True)
            _put(self._by_commit, key, hit)
        return hit

    def handed_over(self, stack: StackConfig, sha: str, path: str, owner: str) -> bool:
        """Whether ``owner`` gives ``path`` up at ``sha`` (same source, no longer declared)."""
        if self.peers is None:
            return False
        peers = self.peers(stack, sha)
        return owner in peers and path not in peers[owner]

    def _check_conflicts(self, stack: StackConfig, desired: Desired, view: InventoryView) -> None:
        """Refuse a path another stack already owns (the newcomer is the offender)."""
        owners = view.owners()
        checked = (desired, view.version, stack.name)
        ok = self._conflicts_ok
        if ok is not None and ok[0] is desired and ok[1:] == checked[1:]:
            return
        errors = []
        by_id = {r.id: r for r in desired.ordered.order}
        for path, rid in desired.paths.items():
            owner = owners.get(path)
            if (
                owner is not None
                and owner.stack != stack.name
                and not self.handed_over(stack, desired.revision, path, owner.stack)
            ):
                loc = by_id[rid].location
                fix = "remove one of the two declarations"
                if owner.stack in self.orphans:
                    fix = (
                        f"stack {owner.stack!r} is no longer in the config: run `setpoint "
                        f"forget {owner.stack} --to {stack.name}` to hand its resources to "
                        "this stack"
                    )
                errors.append(
                    ManifestError(
                        loc.file,
                        loc.line,
                        f"{rid}: path {path} is already managed by stack {owner.stack!r} "
                        f"({owner.resource} at {owner.location}); a path can belong to one "
                        f"resource only: {fix}",
                    )
                )
        if errors:
            raise ManifestErrors(errors)
        self._conflicts_ok = checked


def order_stack(sha: str, resources: list[Resource], providers: dict[str, Provider]) -> Desired:
    """Order a rendered stack (dependencies first); raise ManifestErrors naming a cycle."""
    by_path: dict[str, str] = {}
    for r in resources:
        for p in providers[r.kind].claims(r):
            by_path[p] = r.id
    try:
        ordered = order_resources(
            resources, lambda r: providers[r.kind].implicit_dependencies(r, by_path)
        )
    except ManifestError as exc:
        raise ManifestErrors([exc]) from exc
    index = {r.id: i for i, r in enumerate(ordered.order)}
    return Desired(sha, ordered, by_path, index)


def _layout_of(desired: Desired, rendered: Rendered) -> Layout:
    """``desired``'s order by position in ``rendered.resources`` (what the store keeps)."""
    pos = {r.id: i for i, r in enumerate(rendered.resources)}
    deps = {str(pos[rid]): sorted(pos[d] for d in ds) for rid, ds in desired.ordered.deps.items()
            if ds}  # fmt: skip
    return (
        [pos[r.id] for r in desired.ordered.order],
        deps,
        {p: pos[rid] for p, rid in desired.paths.items()},
    )


def _put(cache: dict[tuple[str, str, str], Desired], key: tuple[str, str, str], v: Desired) -> None:
    if len(cache) > _KEEP:
        cache.pop(next(iter(cache)))
    cache[key] = v


def _self_contained(tree: Path, path: str, inputs: Collection[str]) -> bool:
    """True when the rendered stack depends on nothing outside ``path`` of the tree.

    Then the tree id of ``path`` identifies the rendered stack exactly. Not so if
    the render read a file outside the path (a File's ``source``, an overlay's
    base, vars, secrets or templates), or a symlink inside the path (which may
    lead elsewhere in the repository).
    """
    base = posixpath.normpath(path or ".")
    if base == ".":
        return True
    prefix = base + "/"
    if any(p != base and not p.startswith(prefix) for p in inputs):
        return False
    for dirpath, dirnames, filenames in os.walk(tree / base):
        for name in (*dirnames, *filenames):
            if os.path.islink(os.path.join(dirpath, name)):
                return False
    return True


def refusal_reason(exc: ManifestErrors) -> str:
    """The condition reason for a refused revision."""
    text = " ".join(e.message for e in exc.errors)
    if "dependency cycle" in text:
        return "DependencyCycle"
    if "already managed by stack" in text:
        return "Conflict"
    return "ValidationFailed"
