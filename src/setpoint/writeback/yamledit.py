"""Edit one value of a YAML file in place, leaving every other byte as it was.

Role: the write commands (``set``, ``promote``, ``update-versions``) change a
scalar in a manifest or an overlay patch, or add a missing key. The file is
parsed with ruamel.yaml's round-trip composer, which keeps each node's exact
extent and quoting style; the edit is then a splice of the text between the
node's marks. (A full round-trip dump is not used because it may re-indent
sequences, re-wrap long lines or re-space flow collections: a reviewer must see
one changed line, not a reformatted file.) Every edit is checked by parsing the
result again: the target holds the new value and nothing else differs.

The new value keeps the style of the scalar it replaces (plain, 'single',
"double", | literal, > folded). When writing it plain would change its type
(``1.10`` is a float, ``true`` a boolean, where the old value was a string) it
is written double-quoted, so ``version: 1.10`` never becomes the number 1.1.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from setpoint.model.errors import SetpointError

STR_TAG = "tag:yaml.org,2002:str"
Path = tuple[str | int, ...]


class EditError(SetpointError):
    """A value could not be edited; the message names the file, line and field."""


def split_field(field: str) -> Path:
    """``spec.command.0`` or ``spec.command[0]`` → ``("spec", "command", 0)``."""
    parts: list[str | int] = []
    for piece in re.sub(r"\[(\d+)\]", r".\1", field).split("."):
        if not piece:
            raise EditError(f"field {field!r}: give a dotted path such as spec.version")
        parts.append(int(piece) if piece.isdigit() else piece)
    return tuple(parts)


def dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


def compose(text: str, file: str) -> list[Node]:
    """Every document of ``text`` as round-trip nodes (with marks and styles)."""
    try:
        return [n for n in YAML().compose_all(text) if n is not None]
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise EditError(f"{file}{line}: not valid YAML: {exc}") from exc


def load_all(text: str) -> list[Any]:
    """Plain Python values of every document (for comparing before and after an edit)."""
    return [d for d in YAML(typ="safe", pure=True).load_all(text) if d is not None]


def child(node: Node, key: str | int) -> Node | None:
    """The value node under ``key`` (a mapping key or a sequence index), or None."""
    if isinstance(node, MappingNode) and isinstance(key, str):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == key:
                return v  # type: ignore[no-any-return]
    if isinstance(node, SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]  # type: ignore[no-any-return]
    return None


def lookup(node: Node, path: Path) -> tuple[Node | None, int]:
    """The node at ``path`` and how many parts were found (== len(path) when it exists)."""
    found = 0
    for part in path:
        nxt = child(node, part)
        if nxt is None:
            return None, found
        node, found = nxt, found + 1
    return node, found


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


# --- writing a scalar --------------------------------------------------------------------


def _plain_tag(value: str) -> str | None:
    """The tag ``value`` resolves to when written plain as a mapping value; None if it can't be."""
    if not value or "\n" in value or value != value.strip():
        return None
    try:
        docs = list(YAML().compose_all(f"k: {value}\n"))
    except YAMLError:
        return None
    if len(docs) != 1 or not isinstance(docs[0], MappingNode) or len(docs[0].value) != 1:
        return None
    node = docs[0].value[0][1]
    if not isinstance(node, ScalarNode) or node.style is not None or node.value != value:
        return None
    return str(node.tag)


def _double(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar with the same value.
    return json.dumps(value, ensure_ascii=False)


def _single(value: str) -> str:
    if "\n" in value or any(ord(c) < 0x20 for c in value):
        return _double(value)
    return "'" + value.replace("'", "''") + "'"


def scalar_text(value: str, old: ScalarNode | None, *, string: bool = False) -> str:
    """How to write ``value`` where ``old`` was (None: a new key), keeping type and style.

    A string stays a string; a number or boolean stays plain when ``value`` has
    that type too, and is written quoted otherwise (validation then says whether
    the kind accepts it). A new key is written plain unless that would make a
    float of it (or, with ``string``, anything but a string).
    """
    style = old.style if old is not None else None
    if style == "'":
        return _single(value)
    if style == '"':
        return _double(value)
    plain = _plain_tag(value)
    if old is None:
        ok = plain == STR_TAG if string else plain not in (None, "tag:yaml.org,2002:float")
        return value if ok else _double(value)
    want = STR_TAG if style in ("|", ">") else str(old.tag)
    return value if plain == want else _double(value)


def _block_text(value: str, old: ScalarNode, old_text: str) -> str | None:
    """``value`` as a | or > block in the place of ``old_text``; None to fall back to quotes."""
    header, _, body = old_text.partition("\n")
    if re.search(r"\d", header) or not value or "\t" in value:
        return None  # explicit indentation indicators are rare: not worth guessing
    indent = next((len(ln) - len(ln.lstrip(" ")) for ln in body.split("\n") if ln.strip()), 0)
    if indent == 0:
        return None
    trailing = body[len(body.rstrip("\n")) :]  # the line breaks the old block ended with
    content = value.rstrip("\n")
    ends = len(value) - len(content)
    chomp = "-" if ends == 0 else "" if ends == 1 else None
    if chomp is None or any(line != line.rstrip() for line in content.split("\n")):
        return None
    comment = header[header.find("#") :] if "#" in header else ""
    head = (old.style or "|") + chomp + (" " + comment if comment else "")
    if old.style == ">":
        return None if "\n" in content else head + "\n" + " " * indent + content + trailing
    lines = "\n".join((" " * indent + ln) if ln else "" for ln in content.split("\n"))
    return head + "\n" + lines + (trailing or "\n")


@dataclass(frozen=True)
class Edit:
    """One change to one file's text: replace ``[start, end)`` with ``text``."""

    start: int
    end: int
    text: str


def replace_scalar(text: str, node: ScalarNode, value: str) -> Edit:
    old_text = text[node.start_mark.index : node.end_mark.index]
    new: str | None = None
    if node.style in ("|", ">"):
        new = _block_text(value, node, old_text)
    if new is None:
        new = scalar_text(value, node if node.style not in ("|", ">") else None)
        if node.style in ("|", ">"):
            new = _double(value) + old_text[len(old_text.rstrip("\n")) :]
    return Edit(node.start_mark.index, node.end_mark.index, new)


def _line_start_after(text: str, index: int) -> int:
    """The start of the line after the one holding ``index`` (or len(text))."""
    if index > 0 and text[index - 1] == "\n":
        return index
    nl = text.find("\n", index)
    return len(text) if nl < 0 else nl + 1


def insert_path(
    text: str, mapping: MappingNode, path: Path, value: str, file: str, *, string: bool = False
) -> Edit:
    """Add ``path`` (keys below ``mapping``, the last one set to ``value``) to a block mapping."""
    if mapping.flow_style or not mapping.value:
        raise EditError(
            f"{file}:{line_of(mapping)}: cannot add {dotted(path)} to a flow-style or empty "
            "mapping without reformatting it; add the field by hand once"
        )
    if any(isinstance(p, int) for p in path):
        raise EditError(
            f"{file}:{line_of(mapping)}: {dotted(path)} names a list item that is missing"
        )
    first_key = mapping.value[0][0]
    col = int(first_key.start_mark.column)
    step = 2
    lines = []
    for depth, part in enumerate(path[:-1]):
        lines.append(" " * (col + depth * step) + f"{part}:")
    depth = len(path) - 1
    lines.append(
        " " * (col + depth * step) + f"{path[-1]}: {scalar_text(value, None, string=string)}"
    )
    last_value = mapping.value[-1][1]
    at = _line_start_after(text, int(last_value.end_mark.index))
    block = "\n".join(lines) + "\n"
    if at == len(text) and text and not text.endswith("\n"):
        block = "\n" + block
    return Edit(at, at, block)


def apply_edits(text: str, edits: Sequence[Edit]) -> str:
    out = text
    for e in sorted(edits, key=lambda e: e.start, reverse=True):
        out = out[: e.start] + e.text + out[e.end :]
    return out


def set_in(value: Any, path: Path, new: Any) -> Any:
    """A copy of the plain value ``value`` with ``path`` set to ``new`` (missing keys created)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, list) and isinstance(head, int):
        out_list = list(value)
        out_list[head] = set_in(out_list[head], rest, new)
        return out_list
    out = dict(value) if isinstance(value, dict) else {}
    out[head] = set_in(out.get(head), rest, new)
    return out


def get_in(value: Any, path: Path) -> Any:
    """The plain value at ``path``, or None when any part is missing."""
    for part in path:
        if isinstance(value, dict) and isinstance(part, str):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            return None
    return value


def dump_value(value: Any) -> str:
    """A short one-line rendering of a plain value for messages."""
    if isinstance(value, str):
        return value
    buf = io.StringIO()
    y = YAML(typ="safe", pure=True)
    y.default_flow_style = True
    y.dump(value, buf)
    return buf.getvalue().strip().removesuffix("...").strip()


def _mapping_lines(tree: dict[str, Any], indent: int) -> list[str]:
    lines = []
    for key, value in tree.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            lines.extend(_mapping_lines(value, indent + 2))
        else:
            lines.append(" " * indent + f"{key}: {scalar_text(str(value), None, string=True)}")
    return lines


def append_patch(text: str, file: str, kind: str, name: str, patch: dict[str, Any]) -> str:
    """Add ``{target: {kind, name}, patch: ...}`` to the ``patches`` of an Overlay file.

    The entry goes after the last existing one (same indentation), or into a new
    ``patches:`` key at the end of the document; leaf values are written as strings.
    """
    nodes = compose(text, file)
    if len(nodes) != 1 or not isinstance(nodes[0], MappingNode) or nodes[0].flow_style:
        raise EditError(f"{file}: an overlay file holds one block-style Overlay document")
    top = nodes[0]
    seq = child(top, "patches")
    target = f"target: {{kind: {kind}, name: {name}}}"
    if isinstance(seq, SequenceNode) and seq.value and not seq.flow_style:
        first = seq.value[0]
        dash = text.rfind("-", 0, first.start_mark.index)
        col = dash - (text.rfind("\n", 0, dash) + 1)
        at = _line_start_after(text, int(seq.value[-1].end_mark.index))
        prefix = ""
    elif seq is None or (isinstance(seq, SequenceNode) and not seq.value):
        col = int(top.value[0][0].start_mark.column) + 2
        if seq is None:
            at = _line_start_after(text, int(top.value[-1][1].end_mark.index))
            prefix = " " * (col - 2) + "patches:\n"
        else:  # "patches: []": the empty flow list becomes a block list
            end = int(seq.end_mark.index)
            text = text[: seq.start_mark.index].rstrip(" ") + text[end:]
            at = _line_start_after(text, int(seq.start_mark.index) - 1)
            prefix = ""
    else:
        raise EditError(
            f"{file}:{line_of(seq)}: patches is not a block list; add the patch by hand once"
        )
    lines = [" " * col + "- " + target, " " * (col + 2) + "patch:"]
    lines += _mapping_lines(patch, col + 4)
    block = prefix + "\n".join(lines) + "\n"
    if at == len(text) and text and not text.endswith("\n"):
        block = "\n" + block
    new_text = text[:at] + block + text[at:]
    before, after = load_all(text), load_all(new_text)
    entry = {"target": {"kind": kind, "name": name}, "patch": patch}
    expected = dict(before[0])
    expected["patches"] = [*(before[0].get("patches") or []), entry]
    if after != [expected]:
        raise EditError(f"{file}: adding a patch for {kind}/{name} would change more than that")
    return new_text
