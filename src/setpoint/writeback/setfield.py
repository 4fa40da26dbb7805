"""``setpoint set Kind/name FIELD=VALUE...``: change fields of one resource in Git.

Role: finds who declares each field (the resource's manifest, or the overlay
patch whose value wins, see :mod:`setpoint.writeback.stack`), edits it there
(:func:`setpoint.writeback.transaction.edit_field`), and lets
:func:`setpoint.writeback.transaction.land` validate, commit and push. On a
moved branch the same :class:`FieldSetter` runs again on the new tip: a field
whose value changed meanwhile to something other than the one being set is a
:class:`~setpoint.writeback.transaction.Conflict`; one already holding the new
value is left alone. Called by :mod:`setpoint.cli_writeback`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from setpoint.model.resource import parse_resource_id
from setpoint.writeback.stack import StackError, assemble, describe
from setpoint.writeback.transaction import Change, Conflict, edit_field, show
from setpoint.writeback.yamledit import Path as FieldPath
from setpoint.writeback.yamledit import dotted, get_in, split_field


def parse_assignments(items: Sequence[str]) -> list[tuple[FieldPath, str]]:
    """``["spec.version=1.4.3", ...]`` → ``[(("spec", "version"), "1.4.3"), ...]``."""
    out: list[tuple[FieldPath, str]] = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise StackError(f"{item!r}: give FIELD=VALUE, e.g. spec.version=1.4.3")
        path = split_field(name)
        if path[0] in ("kind", "apiVersion") or path[:2] == ("metadata", "name"):
            raise StackError(f"{name}: a resource's kind and name are its identity; not settable")
        out.append((path, value))
    return out


def same(current: Any, value: str) -> bool:
    """Whether the declared value ``current`` already is ``value`` (as written on the CLI)."""
    if current is None or isinstance(current, dict | list):
        return False
    return show(current) == value


@dataclass
class FieldSetter:
    """The edit of ``set``; remembers the values it started from to spot conflicts."""

    stack_path: str
    rid: str
    assignments: list[tuple[FieldPath, str]]
    base: dict[FieldPath, Any] | None = field(default=None)
    # Write an added field as a string even if it reads as a number (capture's "0600").
    strings: bool = False

    def __post_init__(self) -> None:
        try:
            parse_resource_id(self.rid)
        except ValueError as exc:
            raise StackError(str(exc)) from None

    def __call__(self, tree: Path) -> list[Change]:
        stack = assemble(tree, self.stack_path)
        doc = stack.find(self.rid)
        effective = doc.effective()
        current = {path: get_in(effective, path) for path, _ in self.assignments}
        if self.base is None:
            self.base = current
        else:
            for path, value in self.assignments:
                was, now = self.base[path], current[path]
                if now != was and not same(now, value):
                    raise Conflict(
                        f"{self.rid} {dotted(path)} changed on the branch meanwhile, from "
                        f"{show(was)} to {show(now)}; not overwriting it with {value} "
                        "(check which value is right, then run the command again)"
                    )
        changes = []
        for path, value in self.assignments:
            if same(current[path], value):
                continue
            doc = assemble(tree, self.stack_path).find(self.rid)  # lines move after each edit
            patch = doc.declaration(path)
            if patch is None:
                old, line = edit_field(tree, doc.file, doc.index, path, value, string=self.strings)
                changes.append(Change(self.rid, dotted(path), old, value, doc.file, line))
                continue
            if not patch.by_name:
                raise StackError(
                    f"{describe(patch, path)} for {self.rid}; editing it would change every "
                    f"resource it selects. Give {self.rid} a patch of its own (target kind and "
                    "name) or edit the overlay by hand"
                )
            where = ("patches", patch.index, "patch", *path)
            old, line = edit_field(tree, patch.overlay, 0, where, value, string=self.strings)
            changes.append(Change(self.rid, dotted(path), old, value, patch.overlay, line))
        return changes


def subject(rid: str, assignments: list[tuple[FieldPath, str]]) -> str:
    text = f"set {rid} " + " ".join(f"{dotted(p)}={v}" for p, v in assignments)
    return text if len(text) <= 72 else text[:69] + "..."
