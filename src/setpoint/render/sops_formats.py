"""SOPS file syntaxes: YAML, JSON and dotenv read and written as the sops tool does.

Role: bytes ↔ "branches" (a list of documents, each a dict) for
:mod:`setpoint.render.sops`. The MAC covers values as sops' Go parsers type
them, so reading must type them the same way:

- YAML is read with go-yaml v3's rules, not PyYAML's YAML 1.1 ones: only
  ``true``/``false`` (any case form) are booleans (``yes``/``on`` stay strings),
  ints may be ``0x``/``0o``/``0b``/``0777`` and carry ``_``, ``1:20`` is a
  string, timestamps stay strings, ``<<`` is an ordinary key. Writing quotes
  every string that go-yaml (or PyYAML) would read as something else.
  Comments are dropped (sops keeps them, but they are outside the MAC).
- JSON integers beyond 64 bits are floats, as in sops' decoder.
- dotenv is ``KEY=VALUE`` lines, ``#`` comments, ``\\n`` escapes; the metadata is
  flattened into ``sops_...`` keys (``__map_``/``__list_`` separators).

Errors are :class:`FormatError`; their messages give line and column, never a
snippet of the file (it may hold plaintext when encrypting).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
TIMESTAMP = "tag:yaml.org,2002:timestamp"
_PLAIN = "tag:setpoint.io,2024:go-plain"  # an untagged plain scalar, typed by go_resolve
MAX_NODES = 100_000  # alias bombs: the expanded tree may not exceed this
MAX_DEPTH = 64

SUFFIX_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".env": "dotenv"}


class FormatError(Exception):
    """The file cannot be read or written in its format; the message names no value."""


def detect_format(path: str) -> str:
    """``yaml``, ``json`` or ``dotenv`` from the file name, as sops does."""
    for suffix, fmt in SUFFIX_FORMATS.items():
        if path.endswith(suffix):
            return fmt
    raise FormatError(
        "unsupported file type: SOPS files must be named *.yaml, *.yml, *.json or *.env"
    )


# ---------------------------------------------------------------- YAML: go-yaml v3 resolution

_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_GO_INT = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_SPECIAL: dict[str, tuple[str, Any]] = {
    **{s: (BOOL, True) for s in ("true", "True", "TRUE")},
    **{s: (BOOL, False) for s in ("false", "False", "FALSE")},
    **{s: (NULL, None) for s in ("", "~", "null", "Null", "NULL")},
    **{s: (FLOAT, float("nan")) for s in (".nan", ".NaN", ".NAN")},
    **{s: (FLOAT, float("inf")) for s in (".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF")},
    **{s: (FLOAT, float("-inf")) for s in ("-.inf", "-.Inf", "-.INF")},
}


def _go_int(text: str) -> int | None:
    """``strconv.ParseInt(text, 0, 64)`` (then ParseUint) after go-yaml drops ``_``."""
    m = _GO_INT.fullmatch(text)
    if m is None:
        return None
    sign, digits = m.groups()
    low = digits.lower()
    if low.startswith(("0x", "0o", "0b")):
        value = int(digits[2:], {"x": 16, "o": 8, "b": 2}[low[1]])
    elif len(digits) > 1 and digits[0] == "0":
        value = int(digits[1:], 8)
    else:
        value = int(digits)
    value = -value if sign == "-" else value
    return value if -(1 << 63) <= value < (1 << 64) else None


def go_resolve(text: str) -> tuple[str, Any]:
    """The tag and value go-yaml v3 gives an untagged plain scalar (decoded into ``any``)."""
    if text in _SPECIAL:
        return _SPECIAL[text]
    first = text[:1]
    if first == ".":
        if _YAML_FLOAT.fullmatch(text):
            return FLOAT, float(text)
    elif (first.isdigit() and first.isascii()) or first in "+-":
        if re.match(r"[0-9]{4}-", text):
            # go-yaml types it a timestamp, and gives it back as the string it was.
            return TIMESTAMP, text
        plain = text.replace("_", "")
        number = _go_int(plain)
        if number is not None:
            return INT, number
        if _YAML_FLOAT.fullmatch(plain):
            return FLOAT, float(plain)
    return STR, text


class _GoLoader(yaml.SafeLoader):
    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        mapping = super().construct_mapping(node, deep=deep)
        if len(mapping) != len(node.value):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return mapping


def _construct_plain(loader: _GoLoader, node: Any) -> Any:
    return go_resolve(loader.construct_scalar(node))[1]


def _construct_typed(tag: str) -> Any:
    def construct(loader: _GoLoader, node: Any) -> Any:
        found, value = go_resolve(loader.construct_scalar(node))
        if found != tag:
            raise yaml.constructor.ConstructorError(
                None, None, f"the value is not a valid {tag.rsplit(':', 1)[1]}", node.start_mark
            )
        return value

    return construct


def _construct_as_str(loader: _GoLoader, node: Any) -> Any:
    return loader.construct_scalar(node)


_GoLoader.add_constructor(_PLAIN, _construct_plain)
for _tag in (INT, FLOAT, BOOL):
    _GoLoader.add_constructor(_tag, _construct_typed(_tag))
_GoLoader.add_constructor(TIMESTAMP, _construct_as_str)


def _check_size(node: Any) -> None:
    """Refuse alias bombs and deep nesting before anything is built."""
    sizes: dict[int, int] = {}

    def size(n: Any, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise FormatError(f"nested deeper than {MAX_DEPTH} levels")
        if id(n) in sizes:
            return sizes[id(n)]
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v, depth + 1) for v in n.value)
        else:
            total = 1
        sizes[id(n)] = total
        return total

    if size(node, 0) > MAX_NODES:
        raise FormatError(f"more than {MAX_NODES} YAML nodes once aliases are expanded")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "not valid YAML"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def load_yaml(data: bytes) -> list[dict[str, Any]]:
    """Every document of a YAML file as a branch (empty documents give empty branches)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("the file is not UTF-8 text") from None
    loader = _GoLoader(text)
    branches: list[dict[str, Any]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            _check_size(node)
            doc = loader.construct_document(node)
            if doc is None:
                doc = {}
            if not isinstance(doc, dict):
                raise FormatError("a YAML document must be a mapping (key: value) at the top")
            branches.append(doc)
    except yaml.YAMLError as exc:
        raise FormatError(_yaml_problem(exc)) from None
    except RecursionError:
        raise FormatError("nested too deeply") from None
    finally:
        loader.dispose()
    return branches


class _GoDumper(yaml.SafeDumper):
    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = go_resolve(value)[0]
            if tag != STR:
                return tag  # a string that go-yaml would type otherwise gets quoted
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # lists indented under their key, as sops writes

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: _GoDumper, value: str) -> Any:
    style = "|" if "\n" in value else None  # armored age keys and multi-line values
    return dumper.represent_scalar(STR, value, style=style)


_GoDumper.add_representer(str, _represent_str)


def emit_yaml(branches: list[dict[str, Any]]) -> bytes:
    text = yaml.dump_all(
        branches,
        Dumper=_GoDumper,
        indent=4,
        width=1 << 30,
        allow_unicode=True,
        sort_keys=False,
        default_flow_style=False,
    )
    return text.encode("utf-8")


# ---------------------------------------------------------------- JSON


def _json_int(text: str) -> int | float:
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 63) else float(text)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _json_constant(name: str) -> Any:
    raise FormatError(f"{name} is not valid JSON")


def load_json(data: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_json_pairs,
            parse_int=_json_int,
            parse_constant=_json_constant,
        )
    except UnicodeDecodeError:
        raise FormatError("the file is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise FormatError("nested too deeply") from None
    if not isinstance(doc, dict):
        raise FormatError("SOPS JSON files must hold an object ({...}) at the top")
    return [doc]


def emit_json(branches: list[dict[str, Any]]) -> bytes:
    if len(branches) != 1:
        raise FormatError("a JSON file holds exactly one document")
    return (json.dumps(branches[0], indent="\t", ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------- dotenv

DOTENV_PREFIX = "sops_"


def load_dotenv(data: bytes) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("the file is not UTF-8 text") from None
    branch: dict[str, Any] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise FormatError(f"line {number}: not a KEY=VALUE line")
        if key in branch:
            raise FormatError(f"line {number}: duplicate key {key!r}")
        branch[key] = value.replace("\\n", "\n")
    return [branch]


def emit_dotenv(branches: list[dict[str, Any]]) -> bytes:
    lines = []
    for key, value in branches[0].items():
        if isinstance(value, dict | list):
            raise FormatError(f"{key}: a dotenv file holds only flat KEY=VALUE pairs")
        text = value if isinstance(value, str) else json.dumps(value)
        lines.append(f"{key}={text.replace(chr(10), chr(92) + 'n')}\n")
    return "".join(lines).encode("utf-8")


def flatten(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
    """sops' ``flattenTreeBranch``: nested maps and lists → ``a__map_b__list_0`` keys."""
    out: dict[str, Any] = {}

    def descend(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                descend(v, f"{key}__map_{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                descend(v, f"{key}__list_{i}")
        else:
            out[key] = value

    for k, v in tree.items():
        descend(v, prefix + k)
    return out


_TOKEN = re.compile(r"__(map|list)_")


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten` (sops' ``unflattenTreeBranch``), for dotenv metadata."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        parts = _TOKEN.split(key)  # [first, kind, name, kind, name, ...]
        steps = [("map", parts[0])] + [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]
        node: Any = root
        for i, (kind, name) in enumerate(steps):
            slot: str | int
            if kind == "map" and isinstance(node, dict):
                slot = name
            elif kind == "list" and isinstance(node, list):
                slot = _index(name, key)
                node.extend([None] * (slot + 1 - len(node)))
            else:
                raise FormatError(f"metadata key {key!r} mixes maps and lists")
            if i + 1 == len(steps):
                node[slot] = value
                continue
            child = node[slot] if isinstance(node, list) else node.get(slot)  # type: ignore[index]
            if child is None:
                child = {} if steps[i + 1][0] == "map" else []
                node[slot] = child
            node = child
    return root


def _index(text: str, key: str) -> int:
    if not text.isdigit():
        raise FormatError(f"metadata key {key!r} has a bad list index")
    return int(text)
