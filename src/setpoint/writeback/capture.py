"""``setpoint capture``: write a drifted resource's live state back into its manifests.

Role: an emergency hand fix on a host becomes a reviewable change instead of being
reverted (lost) or silently kept. :func:`drifted` finds what to capture: the
resources the stack's status shows ``drifted`` (under ``drift: report``), read
live from the target root (:func:`read_live`); or, with ``--from-journal``,
the last reverted drift of each (:func:`from_journal`), whose content is rebuilt
by applying the journal's stored diff in reverse to the declared content (and
checked by diffing again). :class:`Capture` is the edit run by
:func:`setpoint.writeback.transaction.land` on a new branch: inline ``content``,
``mode``, ``owner``, ``group`` and a Symlink's ``target`` are set where they are
declared (manifest or overlay patch, through
:class:`~setpoint.writeback.setfield.FieldSetter`); content from a ``source``
file is written into that file.

Refused, each with its reason: sensitive, templated and binary files, kinds other
than File/Directory/Symlink, a resource that is gone or changed type, and a journal
diff that was truncated or never a line diff. Called by :mod:`setpoint.cli_writeback`.
"""

from __future__ import annotations

import grp
import os
import posixpath
import pwd
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from setpoint.model.errors import SetpointError
from setpoint.providers.files.plan import TRUNCATED, _diff
from setpoint.state import StateDB
from setpoint.writeback.setfield import FieldSetter
from setpoint.writeback.stack import Doc, assemble
from setpoint.writeback.transaction import Change
from setpoint.writeback.yamledit import Path as FieldPath

KINDS = ("File", "Directory", "Symlink")
DEFAULT_MODES = {"File": "0644", "Directory": "0755"}
JOURNAL_SCAN = 100_000


class Refused(SetpointError):
    """This resource's drift cannot be captured; the message says why."""


@dataclass
class Live:
    """What to write for one resource: field values (strings), and content bytes."""

    rid: str
    fields: dict[str, str] = field(default_factory=dict)  # mode, owner, group, target
    content: bytes | None = None


def _open_db(state: Path) -> StateDB:
    if not (state / "setpoint.db").exists():
        raise SetpointError(f"no setpoint state in {state} (give --state DIR, the agent's)")
    return StateDB(state)


def drifted(state: Path, stack: str) -> list[str]:
    """The resources ``stack``'s status shows drifted (found, not reverted: drift: report)."""
    db = _open_db(state)
    try:
        status = db.load_status(stack)
    finally:
        db.close()
    if status is None:
        raise SetpointError(f"no status for stack {stack!r} in {state}; has the agent run it?")
    return sorted(rid for rid, st in status.resources.items() if st == "drifted")


def _name(ident: int, declared: Any, lookup: Any) -> str:
    if isinstance(declared, int):
        return str(ident)
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)  # no name on this host: the number is what is there


def read_live(root: Path, doc: Doc) -> Live:
    """The live state of ``doc``'s resource under ``root``: what its spec declares."""
    spec = doc.effective().get("spec") or {}
    path = str(spec.get("path", ""))
    full = os.path.join(str(root), path.lstrip("/"))
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        raise Refused(f"{doc.id}: {path} is gone from the host; remove its declaration by hand "
                      "if that is what you want") from None  # fmt: skip
    want = {"File": stat.S_ISREG, "Directory": stat.S_ISDIR, "Symlink": stat.S_ISLNK}[doc.kind]
    if not want(st.st_mode):
        raise Refused(f"{doc.id}: {path} is no longer a {doc.kind.lower()} on the host")
    live = Live(doc.id)
    if doc.kind == "Symlink":
        target = os.readlink(full)
        r = str(root).rstrip("/")
        if r and target.startswith(r + "/"):
            target = target[len(r) :]  # as declared: absolute targets are placed under the root
        live.fields["target"] = target
        return live
    mode = f"{stat.S_IMODE(st.st_mode):04o}"
    if mode != str(spec.get("mode") or DEFAULT_MODES[doc.kind]):
        live.fields["mode"] = mode  # an unchanged default stays undeclared
    if spec.get("owner") is not None:
        live.fields["owner"] = _name(st.st_uid, spec["owner"], pwd.getpwuid)
    if spec.get("group") is not None:
        live.fields["group"] = _name(st.st_gid, spec["group"], grp.getgrgid)
    if doc.kind == "File":
        with open(full, "rb") as fh:
            live.content = fh.read()
        if b"\0" in live.content or not _is_utf8(live.content):
            raise Refused(f"{doc.id}: the live content is binary; not written into Git")
    return live


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def from_journal(state: Path, stack: str, rids: list[str]) -> dict[str, dict[str, Any]]:
    """The detail of the last ``revert`` of each of ``rids`` (default: the last one reverted)."""
    db = _open_db(state)
    try:
        entries = db.history(stack=stack, limit=JOURNAL_SCAN, events=("revert",))
    finally:
        db.close()
    last: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.resource:
            last[e.resource] = e.detail
    if not rids:
        if not entries or not entries[-1].resource:
            raise SetpointError(f"the journal in {state} has no reverted drift of stack {stack!r}")
        rids = [str(entries[-1].resource)]
    missing = [r for r in rids if r not in last]
    if missing:
        raise SetpointError(
            f"the journal in {state} has no reverted drift of {', '.join(missing)} "
            f"in stack {stack!r}"
        )
    return {r: last[r] for r in rids}


def live_from_journal(doc: Doc, detail: dict[str, Any], declared: bytes | None) -> Live:
    """The state a reverted drift had: the old side of each field; content from the diff."""
    if detail.get("action") != "update":
        raise Refused(
            f"{doc.id}: the journaled drift was a {detail.get('action')} (the path was gone or "
            "of another type), not a change of its fields; nothing to write back"
        )
    live = Live(doc.id)
    for f in detail.get("fields") or []:
        name, old = f.get("field"), f.get("old")
        if name in ("mode", "owner", "group", "target") and old is not None:
            live.fields[name] = str(old)
        elif name == "content":
            live.content = _rebuild(doc, str(detail.get("diff") or ""), declared)
    return live


def _rebuild(doc: Doc, diff: str, declared: bytes | None) -> bytes:
    """The drifted content: ``diff`` (drifted -> declared) applied in reverse to ``declared``."""
    if TRUNCATED in diff or "… [truncated:" in diff:
        raise Refused(f"{doc.id}: the journal's diff was truncated; the drifted content is lost")
    if not diff.startswith("--- ") or declared is None:
        raise Refused(
            f"{doc.id}: the journal holds no line diff of the content (binary, too large or "
            "sensitive); the drifted content cannot be rebuilt"
        )
    with tempfile.TemporaryDirectory(prefix="setpoint-capture-") as tmp:
        target = Path(tmp, "content")
        target.write_bytes(declared)
        # git's own patch applier, as patch(1): the stored headers name host paths.
        lines = diff.splitlines(keepends=True)
        body = "--- a/content\n+++ b/content\n" + "".join(lines[2:])
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env["GIT_CEILING_DIRECTORIES"] = str(Path(tmp).parent)  # no repository around it
        proc = subprocess.run(
            ["git", "apply", "-R", "-p1", "-"],
            input=body.encode(), cwd=tmp, env=env, capture_output=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise Refused(
                f"{doc.id}: the journal's diff does not apply to the declared content (was "
                f"it changed since?): {proc.stderr.decode(errors='replace').strip()[:300]}"
            )
        rebuilt = target.read_bytes()
    path = str((doc.effective().get("spec") or {}).get("path", ""))
    if _diff(rebuilt, declared, path) != diff:
        raise Refused(f"{doc.id}: the journal's diff does not rebuild the drifted content exactly")
    return rebuilt


def _source_file(doc: Doc, spec: dict[str, Any]) -> str:
    return posixpath.normpath(posixpath.join(posixpath.dirname(doc.file), str(spec["source"])))


def declared_content(tree: Path, doc: Doc) -> bytes | None:
    spec = doc.effective().get("spec") or {}
    if isinstance(spec.get("content"), str):
        return str(spec["content"]).encode()
    if isinstance(spec.get("source"), str):
        return (tree / _source_file(doc, spec)).read_bytes()
    return None


def check(doc: Doc) -> None:
    """Refuse what capture must not write back (before anything is read)."""
    if doc.kind not in KINDS:
        raise Refused(f"{doc.id}: capture writes back {', '.join(KINDS)} only, not {doc.kind}")
    spec = doc.effective().get("spec") or {}
    if spec.get("sensitive"):
        raise Refused(f"{doc.id}: sensitive; a secret is never written into Git by setpoint")
    if spec.get("template") is not None or spec.get("templateSource") is not None:
        raise Refused(
            f"{doc.id}: templated; its content is rendered per host, so the live file cannot "
            "be written back into the template: change the template by hand"
        )


@dataclass
class Capture:
    """The edit: write each :class:`Live` into the manifests (and source files) declaring it."""

    stack_path: str
    live: list[Live]
    setters: dict[str, FieldSetter] = field(default_factory=dict)

    def __call__(self, tree: Path) -> list[Change]:
        changes: list[Change] = []
        for lv in self.live:
            doc = assemble(tree, self.stack_path).find(lv.rid)
            spec = doc.effective().get("spec") or {}
            pairs: list[tuple[FieldPath, str]] = [(("spec", k), v) for k, v in lv.fields.items()]
            if lv.content is not None:
                text = lv.content.decode("utf-8")  # text: checked when it was read
                if isinstance(spec.get("source"), str):
                    rel = _source_file(doc, spec)
                    if (tree / rel).read_bytes() != lv.content:
                        (tree / rel).write_bytes(lv.content)
                        size = f"({len(lv.content)} bytes from the host)"
                        changes.append(Change(lv.rid, "content", None, size, rel, 1))
                else:
                    pairs.append((("spec", "content"), text))
            setter = self.setters.setdefault(
                lv.rid, FieldSetter(self.stack_path, lv.rid, pairs, strings=True)
            )
            for c in setter(tree):
                if c.field == "spec.content":
                    c = replace(c, old="(declared)", new=f"({len(lv.content or b'')} bytes from "
                                "the host)")  # fmt: skip
                changes.append(c)
        return changes


def subject(stack: str, live: list[Live]) -> str:
    text = f"capture drift of stack {stack}: " + ", ".join(lv.rid for lv in live)
    return text if len(text) <= 72 else text[:69] + "..."
