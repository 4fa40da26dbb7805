"""Check an edited tree as the agent would before committing it.

Role: a write command never commits a revision the agent would refuse. The
stack is rendered with :func:`setpoint.render.load_stack` and ordered with the
engine's :func:`~setpoint.engine.desired.order_stack` (duplicate ids, bad
fields, missing dependencies, cycles), exactly what ``setpoint validate`` runs.

Two bridges keep this branch useful before related work lands, and retire
themselves once it has:

- until the render stage follows overlays (it exports ``render_stack`` then),
  an overlay stack is checked document by document: each effective document
  (patches applied) is validated against its kind's spec model;
- until ``ReleaseSpec`` accepts ``versionPolicy`` (for ``update-versions``), the
  "unknown field" error about it is not counted.

Used by :mod:`setpoint.writeback.transaction`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

import setpoint.render as render
from setpoint.engine.desired import order_stack
from setpoint.model.errors import ManifestError, ManifestErrors, SetpointError
from setpoint.providers.base import Target
from setpoint.providers.registry import default_registry
from setpoint.providers.service_spec import ReleaseSpec
from setpoint.writeback.stack import assemble

VERSION_POLICY = "versionPolicy"


class InvalidStack(SetpointError):
    """The edit would give the agent a stack it refuses; every error at file:line."""

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"the edited stack does not validate, nothing was committed:\n{lines}")


def policy_supported() -> bool:
    """Whether the Release kind accepts ``versionPolicy`` (the merge adds it)."""
    fields = ReleaseSpec.model_fields
    return VERSION_POLICY in fields or any(f.alias == VERSION_POLICY for f in fields.values())


def _ignorable(e: ManifestError) -> bool:
    return (
        not policy_supported()
        and e.message.startswith("Release/")
        and f": spec.{VERSION_POLICY}: unknown field" in e.message
    )


def validate_tree(tree: Path, path: str) -> None:
    """Raise :class:`InvalidStack` when the stack at ``tree/path`` would be refused."""
    registry = default_registry()
    stack = assemble(tree, path)
    if stack.overlays and not hasattr(render, "render_stack"):
        errors = _check_effective(stack, registry)
        if errors:
            raise InvalidStack(errors)
        return
    try:
        resources = render.load_stack(tree, path, registry)
    except ManifestErrors as exc:
        errors = [e for e in exc.errors if not _ignorable(e)]
        if errors:
            raise InvalidStack(errors) from None
        return  # only the versionPolicy bridge: the stack renders once the merge lands
    try:
        order_stack("", resources, registry.providers(Target(Path("/"))))
    except ManifestErrors as exc:
        raise InvalidStack(list(exc.errors)) from None


def _check_effective(stack: Any, registry: Any) -> list[ManifestError]:
    errors: list[ManifestError] = []
    seen: dict[str, str] = {}
    for doc in stack.docs:
        eff = doc.effective()
        where = f"{doc.file} (document {doc.index + 1})"
        if doc.id in seen:
            errors.append(
                ManifestError(doc.file, 1, f"{doc.id}: declared twice (also in {seen[doc.id]})")
            )
            continue
        seen[doc.id] = where
        model = registry.spec_model(doc.kind)
        if model is None:
            errors.append(ManifestError(doc.file, 1, f"{doc.id}: unknown kind {doc.kind!r}"))
            continue
        spec = dict(eff.get("spec") or {})
        if doc.kind == "Release" and not policy_supported():
            spec.pop(VERSION_POLICY, None)
        try:
            model.model_validate(spec)
        except ValidationError as exc:
            for item in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in item["loc"])
                msg = str(item["msg"]).removeprefix("Value error, ")
                errors.append(ManifestError(doc.file, 1, f"{doc.id}: spec.{loc}: {msg}"))
    return errors
