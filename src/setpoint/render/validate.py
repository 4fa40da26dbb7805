"""One manifest document → a validated declaration, or operator-facing errors.

Role: checks the Kubernetes-shaped envelope (``apiVersion``, ``kind``,
``metadata``, ``spec``), validates ``spec`` with the kind's pydantic model
from the :class:`~setpoint.providers.base.Registry`, and turns every pydantic
error into a :class:`~setpoint.model.errors.ManifestError` at the line of the
offending key. Called only by :mod:`setpoint.render.loader`, once per document.

Messages name the resource and the field, e.g.
``File/motd: spec.mode: mode must be a quoted octal string such as "0644" ...``.
A missing field is reported at the line of the key of its enclosing mapping
(``spec:`` for a missing ``spec.path``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from yaml.nodes import Node

from setpoint.model.errors import ManifestError
from setpoint.model.resource import NAME_RE, Location
from setpoint.providers.base import Registry
from setpoint.render.yamlnodes import child, line_of, locate

API_VERSION = "setpoint/v1"
TOP_KEYS = ("apiVersion", "kind", "metadata", "spec")
_TOP_SET = frozenset(TOP_KEYS)
META_KEYS = ("name", "labels")
# Kinds whose ``spec.source`` names a file in the repository, read into ``Resource.blob``.
SOURCE_KINDS = frozenset({"File"})
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")
_At = Callable[..., int]  # path elements -> line of that key
_Err = Callable[[int, str], None]  # (line, message) -> record an error


@dataclass(frozen=True)
class Declared:
    """A document that passed validation; its blob is resolved later by the loader."""

    kind: str
    name: str
    spec: BaseModel
    location: Location
    labels: Mapping[str, str]
    source: str | None
    doc: int  # index of the document in its file, to find field lines again on errors

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass
class Outcome:
    """What one document gave: a declaration, or errors (and, if readable, its id)."""

    declared: Declared | None
    resource_id: str | None
    errors: list[ManifestError]


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "a number", float: "a number", bytes: "binary data"}
    return names.get(type(value), f"a {type(value).__name__}")


def _suggest(word: object, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _clean(msg: str) -> str:
    for prefix in _PYDANTIC_PREFIXES:
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def _dotted(prefix: str, parts: Iterable[str | int]) -> str:
    out = prefix
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validate_document(root: Node, value: Any, file: str, doc: int, registry: Registry) -> Outcome:
    """Check document number ``doc`` of ``file``: its envelope and spec, every error found."""
    doc_line = line_of(root)
    if not isinstance(value, dict):
        bad = ManifestError(
            file,
            doc_line,
            "a manifest document must be a mapping with apiVersion, kind, metadata and spec "
            f"(got {_type_name(value)})",
        )
        return Outcome(None, None, [bad])

    def at(*path: str | int) -> int:
        return locate(root, path, doc_line)[0]

    errors: list[ManifestError] = []
    kind = value.get("kind")
    meta = value.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    label = kind if isinstance(kind, str) and kind else "document"
    rid = f"{kind}/{name}" if isinstance(kind, str) and isinstance(name, str) else None
    if rid is not None:
        label = rid

    def err(line: int, message: str) -> None:
        errors.append(ManifestError(file, line, f"{label}: {message}"))

    if value.keys() != _TOP_SET:  # the common case (exactly the four keys) skips this
        if not any(key in value for key in TOP_KEYS):
            # Not a manifest at all (some other tool's YAML): one error, not five.
            found = ", ".join(repr(k) for k in list(value)[:5])
            err(
                doc_line,
                "not a setpoint manifest: a document needs apiVersion, kind, metadata and spec "
                f"(found {found or 'an empty mapping'})",
            )
            return Outcome(None, None, errors)
        _check_keys(value, doc_line, at, err)

    api = value.get("apiVersion", API_VERSION)
    if api != API_VERSION:
        err(at("apiVersion"), f"apiVersion must be {API_VERSION} (got {api!r})")

    model: type[BaseModel] | None = None
    if "kind" in value:
        if not isinstance(kind, str):
            err(at("kind"), f"kind must be a string such as File (got {_type_name(kind)})")
        else:
            model = registry.spec_model(kind)
            if model is None:
                known = ", ".join(registry.kinds) or "none registered"
                err(
                    at("kind"),
                    f"unknown kind {kind!r} (known kinds: {known}){_suggest(kind, registry.kinds)}",
                )

    labels = _check_metadata(value, meta, name, at, err)

    spec: BaseModel | None = None
    if model is not None and "spec" in value:
        spec = _check_spec(root, value["spec"], model, at, err)

    if errors or spec is None or not isinstance(kind, str) or not isinstance(name, str):
        return Outcome(None, rid, errors)
    source = getattr(spec, "source", None) if kind in SOURCE_KINDS else None
    if not isinstance(source, str):
        source = None
    declared = Declared(
        kind=kind,
        name=name,
        spec=spec,
        location=Location(file, doc_line),
        labels=labels,
        source=source,
        doc=doc,
    )
    return Outcome(declared, rid, errors)


def _check_keys(value: dict[Any, Any], doc_line: int, at: _At, err: _Err) -> None:
    for key in value:
        if key not in TOP_KEYS:
            allowed = ", ".join(TOP_KEYS)
            hint = _suggest(key, TOP_KEYS)
            err(at(str(key)), f"unknown top-level key {key!r} (allowed: {allowed}){hint}")
    missing = [key for key in TOP_KEYS if key not in value]
    if missing:
        err(doc_line, f"missing {', '.join(missing)}")


def _check_metadata(
    value: dict[Any, Any], meta: Any, name: Any, at: _At, err: _Err
) -> dict[str, str]:
    labels: dict[str, str] = {}
    if "metadata" not in value:
        return labels
    if not isinstance(meta, dict):
        err(at("metadata"), f"metadata must be a mapping with a name (got {_type_name(meta)})")
        return labels
    for key in meta:
        if key not in META_KEYS:
            err(
                at("metadata", str(key)),
                f"unknown metadata key {key!r} (allowed: {', '.join(META_KEYS)})"
                f"{_suggest(key, META_KEYS)}",
            )
    if "name" not in meta:
        err(at("metadata"), "metadata.name is required")
    elif not isinstance(name, str):
        err(at("metadata", "name"), f"metadata.name must be a string (got {_type_name(name)})")
    elif not NAME_RE.match(name):
        err(
            at("metadata", "name"),
            f"metadata.name {name!r} is not a valid name: use lowercase letters, digits, '.', "
            "'_' and '-', starting and ending with a letter or digit, at most 253 characters",
        )
    raw = meta.get("labels")
    if raw is None:
        return labels
    if not isinstance(raw, dict):
        err(at("metadata", "labels"), f"metadata.labels must be a mapping (got {_type_name(raw)})")
        return labels
    for key, val in raw.items():
        if not isinstance(key, str) or not key:
            err(at("metadata", "labels", str(key)), f"label key {key!r} must be a non-empty string")
        elif not isinstance(val, str):
            err(
                at("metadata", "labels", key),
                f"label {key!r} must have a string value (got {_type_name(val)}; quote it)",
            )
        else:
            labels[key] = val
    return labels


def _check_spec(
    root: Node, raw: Any, model: type[BaseModel], at: _At, err: _Err
) -> BaseModel | None:
    if not isinstance(raw, dict):
        err(at("spec"), f"spec must be a mapping (got {_type_name(raw)})")
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        spec_line = at("spec")
        spec_node = child(root, "spec")
        fields = sorted(f.alias or name for name, f in model.model_fields.items())
        for item in exc.errors(include_url=False, include_context=False, include_input=False):
            loc = tuple(p for p in item["loc"] if isinstance(p, str | int))
            line, found = (
                locate(spec_node, loc, spec_line) if spec_node is not None else (spec_line, 0)
            )
            kind = item["type"]
            if kind == "invalid_key":  # a non-string key such as ``1:`` or ``true:``
                kind = "extra_forbidden"
            shown = loc[:found]
            if kind == "missing" and found < len(loc):
                shown = loc[: found + 1]
            field = _dotted("spec", shown)
            if kind == "extra_forbidden" and shown and isinstance(shown[-1], int):
                field = _dotted("spec", shown[:-1]) + f".{shown[-1]}"  # a key, not an index
            if kind == "missing":
                message = "is required"
            elif kind == "extra_forbidden":
                bad = loc[-1] if loc else "?"
                choices = fields if len(loc) == 1 else ()
                message = "unknown field" + (
                    f" (known fields: {', '.join(choices)}){_suggest(bad, choices)}"
                    if choices
                    else ""
                )
            else:
                message = _clean(str(item["msg"]))
            err(line, f"{field}: {message}")
        return None
