"""Deciding what a File, Directory or Symlink needs: the pure half of the drift check.

Called by :meth:`setpoint.providers.files.provider.FilesystemProvider.plan` with the
:class:`~setpoint.providers.files.common.FsState` that :mod:`setpoint.providers.files.read`
built. No I/O here except the cached user-database lookups of
:class:`~setpoint.providers.files.common.IdCache`; the same inputs give the same Change.
Diffs and digests are computed only when content differs.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable
from dataclasses import replace

from setpoint.model.plan import Action, Change, FieldChange
from setpoint.model.resource import Resource
from setpoint.providers.files.common import (
    DIFF_INPUT_LIMIT,
    DIFF_OUTPUT_LIMIT,
    DIR,
    FILE,
    LINK,
    TYPE_WORDS,
    FsState,
    IdCache,
    desired_bytes,
)
from setpoint.providers.files.spec import DirectorySpec, FileSpec, SymlinkSpec

TRUNCATED = "… (diff truncated)\n"
NO_EOL = "\n\\ No newline at end of file\n"


def plan_file(resource: Resource, spec: FileSpec, obs: FsState | None, ids: IdCache) -> Change:
    change = _plan_file(resource, spec, obs, ids)
    if not spec.sensitive or change.is_noop:
        return change
    # A sensitive file's content never reaches a plan, the journal or a log: no diff,
    # no digest (a digest of a short secret can be brute-forced), only sizes.
    old_size = obs.size if obs is not None and obs.type == FILE else None
    fields = tuple(
        FieldChange(
            "content",
            None if old_size is None else f"(sensitive, {old_size} bytes)",
            f"(sensitive, {len(desired_bytes(resource, spec))} bytes)",
        )
        if f.field == "content"
        else f
        for f in change.fields
    )
    return replace(change, fields=fields, diff=None)


def _plan_file(resource: Resource, spec: FileSpec, obs: FsState | None, ids: IdCache) -> Change:
    rid, path = resource.id, spec.path
    want = desired_bytes(resource, spec)
    if obs is None:
        # Every file of a first apply comes here: the bytes are decoded once.
        text = _text(want)
        size = f"{'' if text is not None else 'binary, '}{len(want)} bytes"
        content = FieldChange("content", None, f"{size}, sha256 {_sha(want)[:12]}")
        fields = [content, FieldChange("mode", None, spec.mode)]
        fields += _owner_fields(spec, None, ids)
        # New text is shown as an all-added diff; new binary data needs no diff line.
        diff = None
        if text is not None:
            diff = _diff(b"", want, path, text) if len(want) <= DIFF_INPUT_LIMIT else None
        return Change(rid, Action.CREATE, path, tuple(fields), diff, "absent")
    if obs.type != FILE:
        return _replace(rid, path, obs, FILE, spec.force)
    fields = []
    diff = None
    # Size first: equal sizes mean the bytes were read and are compared here.
    if obs.size != len(want) or obs.content != want:
        old_sha = obs.sha256
        if obs.content is not None:
            diff = _diff(obs.content, want, path)
            old_sha = hashlib.sha256(obs.content).hexdigest()
        else:
            diff = (
                f"content differs (old sha256 {old_sha}, new sha256 "
                f"{hashlib.sha256(want).hexdigest()}); too large for a line diff\n"
            )
        fields.append(_content_field(obs.content, want, old_sha, obs.size))
    fields += _attr_fields(spec, obs, ids)
    return _update_or_noop(rid, path, fields, diff)


def plan_directory(
    resource: Resource, spec: DirectorySpec, obs: FsState | None, ids: IdCache
) -> Change:
    rid, path = resource.id, spec.path
    if obs is None:
        fields = [FieldChange("mode", None, spec.mode), *_owner_fields(spec, None, ids)]
        return Change(rid, Action.CREATE, path, tuple(fields), reason="absent")
    if obs.type != DIR:
        return _replace(rid, path, obs, DIR)
    fields = _attr_fields(spec, obs, ids)
    if obs.strays:
        n = len(obs.strays)
        purge = f"purge {n} undeclared entr{'y' if n == 1 else 'ies'}"
        return Change(rid, Action.UPDATE, path, tuple(fields), reason=purge, extra=obs.strays)
    return _update_or_noop(rid, path, fields, None)


def plan_symlink(resource: Resource, spec: SymlinkSpec, obs: FsState | None, root: str) -> Change:
    rid, path = resource.id, spec.path
    if obs is None:
        fields = (FieldChange("target", None, spec.target),)
        return Change(rid, Action.CREATE, path, fields, reason="absent")
    if obs.type != LINK:
        return _replace(rid, path, obs, LINK, spec.force)
    if obs.link == link_text(spec.target, root):
        return Change(rid, Action.NOOP, path, reason="in sync")
    old = obs.link or ""
    if root != "/" and old.startswith(root + "/"):
        old = old[len(root) :]  # show it as declared, not as placed under the root
    return Change(rid, Action.UPDATE, path, (FieldChange("target", old, spec.target),))


def link_text(target: str, root: str) -> str:
    """What readlink must return: an absolute target is placed under the root like paths."""
    if root != "/" and target.startswith("/"):
        return root + target
    return target


def _replace(rid: str, path: str, obs: FsState, want: str, force: bool = False) -> Change:
    old, new = TYPE_WORDS[obs.type], TYPE_WORDS[want]
    reason = f"a {old} is where a {new} is declared"
    n = obs.entries
    if obs.type == DIR and n:
        # Shown in the plan so that a dry run already says what apply will do.
        held = f"holding {n} entr{'y' if n == 1 else 'ies'}"
        if force:
            reason = f"a {old} {held} is where a {new} is declared; force: removes it"
        else:
            reason = (
                f"a {old} {held} is where a {new} is declared; apply will refuse "
                "(a non-empty directory is replaced only with force: true)"
            )
    return Change(rid, Action.REPLACE, path, (FieldChange("type", old, new),), reason=reason)


def _update_or_noop(rid: str, path: str, fields: list[FieldChange], diff: str | None) -> Change:
    if not fields:
        return Change(rid, Action.NOOP, path, reason="in sync")
    return Change(rid, Action.UPDATE, path, tuple(fields), diff=diff)


def _attr_fields(spec: FileSpec | DirectorySpec, obs: FsState, ids: IdCache) -> list[FieldChange]:
    fields = []
    if obs.mode != int(spec.mode, 8):
        fields.append(FieldChange("mode", f"{obs.mode:04o}", spec.mode))
    fields += _owner_fields(spec, obs, ids)
    return fields


def _owner_fields(
    spec: FileSpec | DirectorySpec, obs: FsState | None, ids: IdCache
) -> list[FieldChange]:
    """Owner/group changes, only for declared ones; compared as ids, shown as names."""
    if spec.owner is None and spec.group is None:
        return []  # the common case, on every no-op pass's hot path
    fields = []
    for name, want, to_id, to_name, noun in (
        ("owner", spec.owner, ids.uid, ids.user_name, "user"),
        ("group", spec.group, ids.gid, ids.group_name, "group"),
    ):
        if want is None:
            continue
        have = None if obs is None else (obs.uid if name == "owner" else obs.gid)
        num = to_id(want)
        if obs is None or num != have:
            old = None if have is None else to_name(have)
            if num is None:
                new = f"{want} (no such {noun})"
            else:
                new = to_name(num) if isinstance(want, int) else want
            fields.append(FieldChange(name, old, new))
    return fields


def _text(data: bytes) -> str | None:
    """``data`` decoded, if it is text (UTF-8 without NUL)."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_text(data: bytes) -> bool:
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _describe(data: bytes | None, sha: str | None, size: int) -> str:
    binary = "" if data is None or _is_text(data) else "binary, "
    return f"{binary}{size} bytes, sha256 {(sha or '')[:12]}"


def _content_field(
    old: bytes | None, new: bytes, old_sha: str | None = None, old_size: int = 0
) -> FieldChange:
    new_desc = _describe(new, hashlib.sha256(new).hexdigest(), len(new))
    if old is None and old_sha is None:
        return FieldChange("content", None, new_desc)
    return FieldChange("content", _describe(old, old_sha, old_size), new_desc)


def _diff(old: bytes, new: bytes, path: str, new_text: str | None = None) -> str:
    """A unified diff for text, capped at DIFF_OUTPUT_LIMIT; a digest line for binary.

    ``new_text``: ``new`` already decoded (the caller found it text).
    """
    if len(old) > DIFF_INPUT_LIMIT or len(new) > DIFF_INPUT_LIMIT:
        return (
            f"content differs (old sha256 {hashlib.sha256(old).hexdigest()}, new sha256 "
            f"{hashlib.sha256(new).hexdigest()}); too large for a line diff\n"
        )
    if not (_is_text(old) and (new_text is not None or _is_text(new))):
        return (
            f"binary content differs (old sha256 {hashlib.sha256(old).hexdigest()}, "
            f"new sha256 {hashlib.sha256(new).hexdigest()})\n"
        )
    lines: Iterable[str]
    if old:
        lines = difflib.unified_diff(
            _lines(old.decode("utf-8")),
            _lines(new.decode("utf-8")),
            fromfile=f"{path} (current)",
            tofile=f"{path} (declared)",
        )
    else:
        lines = _all_added(_lines(new.decode("utf-8") if new_text is None else new_text), path)
    # Only a file's last line can lack its newline: marked as diff(1) does.
    out = [line if line.endswith("\n") else line + NO_EOL for line in lines]
    text = "".join(out)
    if len(text) * 4 <= DIFF_OUTPUT_LIMIT or len(text.encode("utf-8")) <= DIFF_OUTPUT_LIMIT:
        return text
    kept: list[str] = []
    size = 0
    for line in out:
        size += len(line.encode("utf-8"))
        if size > DIFF_OUTPUT_LIMIT:
            kept.append(TRUNCATED)
            break
        kept.append(line)
    return "".join(kept)


def _all_added(new: list[str], path: str) -> list[str]:
    """What ``difflib.unified_diff([], new, ...)`` yields, without its matcher: a create's
    diff (every line added) is most of a first apply's planning otherwise."""
    if not new:
        return []
    added = "+1" if len(new) == 1 else f"+1,{len(new)}"
    head = [f"--- {path} (current)\n", f"+++ {path} (declared)\n", f"@@ -0,0 {added} @@\n"]
    return head + ["+" + line for line in new]


def _lines(text: str) -> list[str]:
    """Lines split at LF only (str.splitlines would also split at CR, FF, ...)."""
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out
