"""YAML bytes → plain Python values, keeping the node tree for line numbers.

Role: the only module of setpoint that touches PyYAML. :mod:`setpoint.render.loader`
calls :func:`compose_documents` to get each document's node tree (libyaml's C
composer), :func:`build` to turn a tree into dicts/lists/scalars in one walk,
and :func:`locate` to find the line of a field when validation fails.

Why our own walk instead of ``yaml.safe_load``: PyYAML silently keeps the last
of two duplicate keys and expands aliases without bound ("billion laughs").
:func:`build` refuses both, bounds nesting depth, and costs the same as the
stock constructor (one visit per node). Line numbers are not recorded during
the walk: errors are rare, so :func:`locate` finds them afterwards in the
nodes, which keeps the common path free of per-node bookkeeping.

Only the C loader is used: the pure-Python one is 5-8x slower on a large
stack, so falling back to it silently would turn a fast agent into a slow one.

Example::

    for root in compose_documents(data):
        value = build(root, max_nodes=100_000, max_depth=64)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from setpoint.model.errors import SetpointError

_P = "tag:yaml.org,2002:"
STR_TAG = _P + "str"
NULL_TAG = _P + "null"
MAP_TAG = _P + "map"
SEQ_TAG = _P + "seq"
MERGE_TAG = _P + "merge"

# The scalar types YAML's safe schema knows; anything else (custom ``!tags``,
# ``!!python/...``, ``!!set``) is refused rather than guessed.
_SCALAR_TAGS = ("null", "bool", "int", "float", "binary", "timestamp")
_SC = SafeConstructor()
_SCALARS: dict[str, Callable[[SafeConstructor, ScalarNode], Any]] = {
    _P + name: SafeConstructor.yaml_constructors[_P + name] for name in _SCALAR_TAGS
}
# A plain ``=`` resolves to YAML 1.1's "value" tag, which the safe loader cannot
# construct; read it as the string it looks like.
_SCALARS[_P + "value"] = SafeConstructor.construct_scalar


class NodeError(Exception):
    """A problem in one document at a 1-based ``line`` (turned into a ManifestError)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def require_libyaml() -> None:
    """Refuse to run without libyaml: never fall back to the slow pure-Python parser."""
    if not getattr(yaml, "__with_libyaml__", False) or not hasattr(yaml, "CSafeLoader"):
        raise SetpointError(
            "PyYAML was installed without libyaml (yaml.__with_libyaml__ is false); "
            "setpoint needs its C loader to parse manifests at a usable speed (the "
            "pure-Python one is about 7x slower). Install a PyYAML built with libyaml: "
            "the manylinux wheels are; to build from source, install libyaml-dev first"
        )


def short_tag(tag: str) -> str:
    """``tag:yaml.org,2002:int`` -> ``!!int``, as it is written in YAML."""
    return "!!" + tag[len(_P) :] if tag.startswith(_P) else tag


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def is_empty(node: Node) -> bool:
    """An empty document (``---`` with nothing after it, or a lone ``null``)."""
    return node.__class__ is ScalarNode and node.tag == NULL_TAG


# Plain scalar text -> tag. Manifests repeat the same plain words (``File``,
# ``true``, ``root``...) and the stock resolver runs regexes in Python for
# each; a bounded memo makes that one dict lookup.
_PLAIN_TAGS: dict[str, str] = {}
_PLAIN_TAGS_MAX = 8192


class _Loader(yaml.CSafeLoader):
    """The C loader with a faster implicit-tag resolver giving the stock results.

    The C composer calls ``resolve`` once per node. The safe schema has no
    path resolvers, so quoted scalars are always strings and collections
    always map/seq; only plain scalars need the regexes.
    """

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            # Resolvers are indexed by first character (digits, signs, y/n/t/f/o for
            # booleans, ~ ...): any other first character cannot give a non-string.
            if not implicit[0] or (value and value[0] not in self.yaml_implicit_resolvers):
                return STR_TAG
            tag = _PLAIN_TAGS.get(value)
            if tag is None:
                tag = str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]
                if len(_PLAIN_TAGS) < _PLAIN_TAGS_MAX:
                    _PLAIN_TAGS[value] = tag
            return tag
        if kind is MappingNode:
            return MAP_TAG
        return SEQ_TAG


def compose_documents(data: bytes) -> Iterator[Node]:
    """Yield the root node of every document in ``data`` (UTF-8 bytes).

    Raises :class:`NodeError` for a syntax error; documents before it have
    already been yielded, the rest of the stream cannot be read past it.
    """
    loader = _Loader(data)
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                node = loader.get_node()
            except yaml.MarkedYAMLError as exc:
                raise _syntax_error(exc) from None
            except ReaderError as exc:
                line = data.count(b"\n", 0, max(0, int(exc.position))) + 1
                raise NodeError(line, f"YAML cannot contain this character: {exc.reason}") from None
            except yaml.YAMLError as exc:
                raise NodeError(1, f"YAML error: {exc}") from None
            if node is not None:
                yield node
    finally:
        loader.dispose()


def _syntax_error(exc: yaml.MarkedYAMLError) -> NodeError:
    mark = exc.problem_mark or exc.context_mark
    line = int(mark.line) + 1 if mark is not None else 1
    message = f"YAML syntax error: {exc.problem or 'malformed document'}"
    if exc.context:
        where = exc.context_mark
        if where is not None and where.line + 1 != line:
            message += f" ({exc.context} at line {where.line + 1})"
        else:
            message += f" ({exc.context})"
    return NodeError(line, message)


class _Builder:
    """One document's walk: counts every node visited (aliases expand) and the depth."""

    __slots__ = ("budget", "max_depth", "max_nodes")

    def __init__(self, max_nodes: int, max_depth: int) -> None:
        self.budget = max_nodes
        self.max_nodes = max_nodes
        self.max_depth = max_depth

    def value(self, node: Node, depth: int) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise NodeError(
                line_of(node),
                f"document expands to more than {self.max_nodes} YAML nodes (aliases "
                "counted each time they are used); refusing it, it looks like an alias bomb",
            )
        cls = node.__class__
        if cls is ScalarNode:
            tag = node.tag
            if tag == STR_TAG:
                return node.value
            return _scalar(cast(ScalarNode, node))
        if depth >= self.max_depth:
            raise NodeError(line_of(node), f"nesting is deeper than {self.max_depth} levels")
        if cls is MappingNode:
            if node.tag != MAP_TAG:
                raise NodeError(
                    line_of(node), f"unsupported tag {short_tag(node.tag)} on a mapping"
                )
            return self.mapping(cast(MappingNode, node), depth + 1)
        if cls is SequenceNode:
            if node.tag != SEQ_TAG:
                raise NodeError(line_of(node), f"unsupported tag {short_tag(node.tag)} on a list")
            return [self.value(item, depth + 1) for item in node.value]
        raise NodeError(line_of(node), f"unexpected YAML node {cls.__name__}")

    def mapping(self, node: MappingNode, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merges: list[Node] = []
        for knode, vnode in node.value:
            if knode.__class__ is not ScalarNode:
                raise NodeError(
                    line_of(knode), "a mapping key must be a plain value, not a list or map"
                )
            tag = knode.tag
            if tag == MERGE_TAG:
                merges.append(vnode)
                continue
            self.budget -= 1
            key = knode.value if tag == STR_TAG else _scalar(knode)
            if key in out:
                raise _duplicate(node, knode, key)
            out[key] = self.value(vnode, depth)
        # ``<<: *defaults`` merges: explicit keys win, then earlier merge sources win.
        for merge in merges:
            sources = merge.value if merge.__class__ is SequenceNode else [merge]
            for source in sources:
                if source.__class__ is not MappingNode:
                    raise NodeError(line_of(source), "a << merge needs a mapping or a list of them")
                for key, val in self.value(source, depth).items():
                    if key not in out:
                        out[key] = val
        return out


def _scalar(node: ScalarNode) -> Any:
    make = _SCALARS.get(node.tag)
    if make is None:
        raise NodeError(line_of(node), f"unsupported YAML tag {short_tag(node.tag)}")
    try:
        return make(_SC, node)
    except Exception as exc:  # a bad explicit tag such as ``!!int abc``
        raise NodeError(
            line_of(node), f"cannot read {node.value!r} as {short_tag(node.tag)}: {exc}"
        ) from None


def _duplicate(mapping: MappingNode, dup: ScalarNode, key: Any) -> NodeError:
    """The error for a repeated key (error path only, so it may construct keys again)."""
    line = line_of(dup)
    keys = (k for k, _ in mapping.value if k.__class__ is ScalarNode and k.tag != MERGE_TAG)
    first = next((k for k in keys if _same_key(k, key)), dup)
    where = "twice on this line" if line_of(first) == line else f"first at line {line_of(first)}"
    if first.value != dup.value:
        # 1 and true, or 0x10 and 16: different text, one value once read.
        return NodeError(
            line,
            f"keys {first.value!r} and {dup.value!r} mean the same key ({key!r}) in one "
            f"mapping ({where}); YAML would silently keep only the last one",
        )
    return NodeError(
        line,
        f"duplicate key {key!r} in one mapping ({where}); "
        "YAML would silently keep only the last one",
    )


def _same_key(knode: ScalarNode, key: Any) -> bool:
    try:
        return bool(_scalar(knode) == key) if knode.tag != STR_TAG else knode.value == key
    except NodeError:
        return False


def build(root: Node, *, max_nodes: int, max_depth: int) -> Any:
    """Construct the plain value of one document (dicts, lists, str, int, ...).

    Raises :class:`NodeError` on duplicate keys, more than ``max_nodes`` nodes
    visited, nesting deeper than ``max_depth``, or unsupported tags.
    """
    return _Builder(max_nodes, max_depth).value(root, 0)


def locate(node: Node, path: Sequence[str | int], line: int) -> tuple[int, int]:
    """Follow ``path`` (mapping keys / list indices) from ``node``.

    Returns ``(line, found)``: the line of the deepest element found (a key's
    line for a mapping entry, the item's line for a list item; ``line`` if
    none) and how many elements of ``path`` were found.
    """
    found = 0
    for elem in path:
        child = _child(node, elem, set())
        if child is None:
            break
        line, node = child
        found += 1
    return line, found


def child(node: Node, key: str) -> Node | None:
    """The value node under ``key`` in a mapping node (merges included), or None."""
    hit = _child(node, key, set())
    return hit[1] if hit is not None else None


def _child(node: Node, elem: str | int, seen: set[int]) -> tuple[int, Node] | None:
    if id(node) in seen:  # a merge that refers back to itself
        return None
    seen.add(id(node))
    if isinstance(node, MappingNode):
        want = str(elem)
        for knode, vnode in node.value:
            if isinstance(knode, ScalarNode) and knode.tag != MERGE_TAG and knode.value == want:
                return line_of(knode), vnode
        for knode, vnode in node.value:
            if isinstance(knode, ScalarNode) and knode.tag == MERGE_TAG:
                sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
                for source in sources:
                    hit = _child(source, elem, seen)
                    if hit is not None:
                        return hit
    elif isinstance(node, SequenceNode) and isinstance(elem, int) and 0 <= elem < len(node.value):
        item = node.value[elem]
        return line_of(item), item
    return None
