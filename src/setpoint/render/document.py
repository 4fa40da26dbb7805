"""Repository documents that are not resources (Fleet, Overlay): one YAML document → a model.

Such documents carry ``apiVersion`` and ``kind`` with their fields at the top level
(as ``kustomization.yaml`` does). Callers: :mod:`setpoint.render.fleet`. Every error
is a :class:`~setpoint.model.errors.ManifestError` at ``file:line``, all of them at once,
with the same bounds (size, nodes, depth) as manifests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from setpoint.model.errors import ManifestError, ManifestErrors
from setpoint.render.files import ReadError, read_confined
from setpoint.render.loader import Limits
from setpoint.render.validate import API_VERSION
from setpoint.render.yamlnodes import NodeError, build, compose_documents, line_of, locate

M = TypeVar("M", bound=BaseModel)


Lines = Callable[[Sequence[str | int]], int]
"""The line of a field, e.g. ``at(["stacks", 2])`` (the document's line if absent)."""


def load_document(
    tree: Path, path: str, kind: str, model: type[M], limits: Limits
) -> tuple[M, Lines]:
    """Read ``path`` (relative to ``tree``) as one ``kind`` document validated by ``model``.

    ``model`` holds the fields besides ``apiVersion`` and ``kind``. Returns the model
    and a function giving the line of any of its fields. Raises ManifestErrors naming
    ``path`` and the line of each problem.
    """

    def fail(line: int, message: str) -> ManifestErrors:
        return ManifestErrors([ManifestError(path, line, f"{kind}: {message}")])

    tree_real = str(tree.resolve())
    try:
        full = os.path.join(tree_real, path)
        _, data = read_confined(tree_real, full, limits.max_manifest_bytes, f"{kind} file")
    except ReadError as exc:
        raise fail(1, str(exc)) from None
    try:
        roots = list(compose_documents(data))
        if len(roots) != 1:
            raise fail(1, f"the file must hold exactly one YAML document (found {len(roots)})")
        root = roots[0]
        value = build(root, max_nodes=limits.max_nodes, max_depth=limits.max_depth)
    except NodeError as exc:
        raise fail(exc.line, str(exc)) from None
    top = line_of(root)
    if not isinstance(value, dict):
        raise fail(top, "the document must be a mapping")
    body: dict[Any, Any] = dict(value)
    errors: list[ManifestError] = []
    api, got = body.pop("apiVersion", None), body.pop("kind", None)
    if api != API_VERSION:
        line = locate(root, ["apiVersion"], top)[0]
        errors.append(ManifestError(path, line, f"{kind}: apiVersion must be {API_VERSION}"))
    if got != kind:
        line = locate(root, ["kind"], top)[0]
        errors.append(ManifestError(path, line, f"kind must be {kind} (got {got!r})"))
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        for item in exc.errors(include_url=False, include_context=False, include_input=False):
            loc = [p for p in item["loc"] if isinstance(p, str | int)]
            line, found = locate(root, loc, top)
            field = ".".join(str(p) for p in loc) or "(top level)"
            msg = str(item["msg"]).removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                msg = "unknown field"
            elif item["type"] == "missing" and found < len(loc):
                msg = "is required"
            errors.append(ManifestError(path, line, f"{kind}: {field}: {msg}"))
        raise ManifestErrors(errors) from None
    if errors:
        raise ManifestErrors(errors)
    return parsed, lambda at: locate(root, at, top)[0]
