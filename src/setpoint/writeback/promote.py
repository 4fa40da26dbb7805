"""``setpoint promote --from envs/staging --to envs/prod``: move Release versions forward.

Role: copies each Release's ``spec.version``, ``spec.url`` and ``spec.sha256`` (the
effective values, overlays applied) from one stack path to another, as one commit
whose message lists every change; nothing else moves. Where the value lands:

- a field declared inside the ``--to`` directory (its own manifest, or a patch of
  its own overlay) is edited in place;
- otherwise (the value comes from a base other environments include) the ``--to``
  overlay gets a merge patch for it: added to its existing patch for that
  resource, or as a new ``patches`` entry. A shared base is never edited.

Called by :mod:`setpoint.cli_writeback`; committed by
:func:`setpoint.writeback.transaction.land` (re-run from scratch on a moved branch:
promotion copies what ``--from`` holds at that time).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from setpoint.writeback.stack import Stack, StackError, assemble
from setpoint.writeback.transaction import Change, edit_field, show
from setpoint.writeback.yamledit import Path as FieldPath
from setpoint.writeback.yamledit import append_patch, compose, dotted, get_in, line_of, lookup

FIELDS: tuple[FieldPath, ...] = (("spec", "version"), ("spec", "url"), ("spec", "sha256"))


def _owned(file: str, to_dir: str) -> bool:
    """Whether ``file`` belongs to the ``--to`` environment alone (lies in its directory)."""
    return to_dir == "." or file.startswith(to_dir.rstrip("/") + "/")


@dataclass
class Promotion:
    """The edit of ``promote``: for the chosen Releases, make ``--to`` match ``--from``."""

    source: str
    dest: str
    only: Sequence[str] = ()
    skipped: tuple[str, ...] = ()

    def __call__(self, tree: Path) -> list[Change]:
        src = assemble(tree, self.source)
        wanted = self._wanted(src, assemble(tree, self.dest))
        changes: list[Change] = []
        for rid, values in wanted:
            changes.extend(self._promote(tree, rid, values))
        return changes

    def _wanted(self, src: Stack, dst: Stack) -> list[tuple[str, dict[FieldPath, str]]]:
        dst_ids = {d.id for d in dst.docs}
        ids = list(self.only) or sorted(d.id for d in src.docs if d.kind == "Release")
        out = []
        skipped = []
        for rid in ids:
            if not rid.startswith("Release/"):
                raise StackError(f"{rid}: promote moves Release versions; name Release/NAME")
            doc = src.find(rid)
            if rid not in dst_ids:
                if self.only:
                    raise StackError(f"{rid} is not declared in --to {self.dest!r}")
                skipped.append(rid)
                continue
            eff, now = doc.effective(), dst.find(rid).effective()
            values = {
                p: show(get_in(eff, p))
                for p in FIELDS
                if get_in(eff, p) is not None and show(get_in(eff, p)) != show(get_in(now, p))
            }
            if values:
                out.append((rid, values))
        self.skipped = tuple(skipped)
        return out

    def _promote(self, tree: Path, rid: str, values: dict[FieldPath, str]) -> list[Change]:
        changes: list[Change] = []
        patch_fields: dict[FieldPath, tuple[str, Any]] = {}
        for path, value in values.items():
            doc = assemble(tree, self.dest).find(rid)  # lines move after each edit
            old = get_in(doc.effective(), path)
            patch = doc.declaration(path)
            if patch is not None and patch.by_name and _owned(patch.overlay, self.dest):
                where = ("patches", patch.index, "patch", *path)
                _, line = edit_field(tree, patch.overlay, 0, where, value, string=True)
                changes.append(Change(rid, dotted(path), old, value, patch.overlay, line))
            elif patch is None and _owned(doc.file, self.dest):
                _, line = edit_field(tree, doc.file, doc.index, path, value, string=True)
                changes.append(Change(rid, dotted(path), old, value, doc.file, line))
            else:
                patch_fields[path] = (value, old)
        if patch_fields:
            changes.extend(self._patch(tree, rid, patch_fields))
        return changes

    def _patch(
        self, tree: Path, rid: str, fields: dict[FieldPath, tuple[str, Any]]
    ) -> list[Change]:
        stack = assemble(tree, self.dest)
        overlay = stack.overlay()
        doc = stack.find(rid)
        if overlay is None:
            raise StackError(
                f"{rid}: its {', '.join(dotted(p) for p in fields)} come from outside "
                f"{self.dest!r}, which is not an overlay; make {self.dest} an overlay "
                f"(setpoint.yaml) so it can patch them without editing a shared base"
            )
        own = [
            p for p in overlay.patches if p.by_name and p.kind == doc.kind and p.name == doc.name
        ]
        file = overlay.file
        if own:
            out = []
            for path, (value, old) in fields.items():
                where = ("patches", own[-1].index, "patch", *path)
                _, line = edit_field(tree, file, 0, where, value, string=True)
                out.append(Change(rid, dotted(path), old, value, file, line))
            return out
        nested: dict[str, Any] = {}
        for path, (value, _old) in fields.items():
            node = nested
            for part in path[:-1]:
                node = node.setdefault(str(part), {})
            node[str(path[-1])] = value
        full = tree / file
        new_text = append_patch(full.read_text(encoding="utf-8"), file, doc.kind, doc.name, nested)
        full.write_text(new_text, encoding="utf-8")
        top = compose(new_text, file)[0]
        index = len(overlay.patches)
        out = []
        for path, (value, old) in fields.items():
            leaf, _ = lookup(top, ("patches", index, "patch", *path))
            line = line_of(leaf) if leaf is not None else 1
            out.append(Change(rid, dotted(path), old, value, file, line))
        return out


def subject(source: str, dest: str, changes: list[Change]) -> str:
    ids = sorted({c.rid.partition("/")[2] for c in changes})
    text = f"promote {posixpath.normpath(source)} -> {posixpath.normpath(dest)}: {', '.join(ids)}"
    return text if len(text) <= 72 else text[:69] + "..."
