"""One write-back: edit → validate → commit → push, re-applied on a moved branch.

Role: the shared skeleton of ``set``, ``promote`` and ``update-versions``. The
command supplies an :class:`Edit` callable that changes files in a tree and says
what it changed (:class:`Change`); this module runs it in a fresh clone,
validates the stack as the agent would, commits with a message listing every
change, and pushes. On a rejected push (another pipeline landed first) it
fetches the new tip and calls the edit again there; the edit raises
:class:`Conflict` when the branch now holds a different value for a field it
changes. Without ``push`` nothing leaves the temporary clone: the commit is
shown, as a dry run.

Also: :func:`edit_field` (one field of one document of one file, spliced by
:mod:`setpoint.writeback.yamledit` and verified) and :func:`target_from`
(``--config FILE --stack S`` or ``--repo/--branch/--path`` → a :class:`Target`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml.nodes import MappingNode, ScalarNode

from setpoint.config import load_config
from setpoint.model.errors import SetpointError
from setpoint.source.auth import SourceAuth
from setpoint.writeback.gitwork import MAX_TRIES, Author, GitError, WorkRepo, backoff
from setpoint.writeback.validate import validate_tree
from setpoint.writeback.yamledit import (
    EditError,
    apply_edits,
    compose,
    dotted,
    get_in,
    insert_path,
    line_of,
    load_all,
    lookup,
    replace_scalar,
    set_in,
)
from setpoint.writeback.yamledit import Path as FieldPath


class Conflict(SetpointError):
    """The branch changed a field this command changes, to another value, meanwhile."""


@dataclass(frozen=True)
class Target:
    """Where a write-back lands: a repository, the branch, and the stack path in it."""

    url: str
    branch: str | None
    path: str
    auth: SourceAuth | None = None  # the source's, with --config


@dataclass(frozen=True)
class Change:
    """One field changed in one file."""

    rid: str
    field: str
    old: Any
    new: Any
    file: str
    line: int

    def __str__(self) -> str:
        old = "(unset)" if self.old is None else show(self.old)
        return f"{self.rid} {self.field}: {old} -> {show(self.new)} ({self.file}:{self.line})"


def show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


Edit = Callable[[Path], list[Change]]


@dataclass(frozen=True)
class Landed:
    """What a write-back did: the commit (None when nothing changed), and whether it is pushed."""

    commit: str | None
    changes: list[Change]
    pushed: bool
    tries: int
    shown: str = ""  # the commit as `git show --stat -p` prints it (dry run)


def target_from(
    config: Path | None,
    stack: str | None,
    repo: str | None,
    branch: str | None,
    path: str | None,
) -> Target:
    """``--config FILE [--stack S]`` or ``--repo URL|DIR``; --branch/--path override."""
    if config is not None and repo is not None:
        raise SetpointError("give either --config FILE or --repo URL|DIR, not both")
    if config is None:
        if repo is None:
            raise SetpointError("no repository: give --repo URL|DIR or --config FILE [--stack S]")
        local = Path(repo)
        url = str(local.resolve()) if "://" not in repo and local.exists() else repo
        return Target(url, branch, path or ".")
    cfg = load_config(config)
    if stack is None:
        if len(cfg.stacks) != 1:
            names = ", ".join(s.name for s in cfg.stacks) or "none (a fleet config)"
            raise SetpointError(f"{config}: choose the stack with --stack (stacks: {names})")
        st = cfg.stacks[0]
    else:
        st = cfg.stack(stack)
    src = cfg.source(st.source)
    # A source following {semver: RANGE} follows tags: commit to --branch, else the
    # remote's default branch (a release is then a tag on it).
    ref = src.ref if isinstance(src.ref, str) else None
    return Target(src.url, branch or ref, path or st.path, SourceAuth.from_config(src.auth))


def land(
    target: Target,
    edit: Edit,
    message: Callable[[list[Change]], str],
    *,
    author: Author | None,
    sign: bool,
    push: bool,
    on_clone: Callable[[WorkRepo], None] | None = None,
) -> Landed:
    """Run ``edit`` in a clone of ``target`` and commit (and push) what it changed.

    ``on_clone`` is given the clone first, for an edit that runs git in it.
    """
    with WorkRepo(target.url, target.branch, target.auth) as repo:
        if on_clone is not None:
            on_clone(repo)
        for attempt in range(1, MAX_TRIES + 1):
            changes = edit(repo.dir)
            if not changes:
                return Landed(None, [], False, attempt)
            validate_tree(repo.dir, target.path)
            files = sorted({c.file for c in changes})
            sha = repo.commit(files, message(changes), author, sign)
            if not push:
                shown = repo.git("show", "--stat", "--patch", "--format=fuller", "HEAD")
                return Landed(sha, changes, False, attempt, shown)
            if repo.push():
                return Landed(sha, changes, True, attempt)
            backoff(attempt)
            repo.refresh()
        raise GitError(
            f"{target.url} ({repo.branch}) kept moving: the commit was rejected {MAX_TRIES} "
            "times; run the command again"
        )


def commit_message(subject: str, changes: list[Change], path: str, custom: str | None) -> str:
    lines = [custom or subject, ""]
    lines += [f"- {c}" for c in changes]
    lines += ["", f"Stack path: {path}"]
    return "\n".join(lines) + "\n"


def edit_field(
    tree: Path, file: str, doc: int, path: FieldPath, value: str, *, string: bool = False
) -> tuple[Any, int]:
    """Set ``path`` in document ``doc`` of ``file`` to ``value``; return (old value, line).

    The file changes only between the marks of the scalar replaced (or where a
    missing key is added); the result is parsed again to prove it.
    """
    full = tree / file
    text = full.read_text(encoding="utf-8")
    nodes = compose(text, file)
    if doc >= len(nodes):
        raise EditError(f"{file}: document {doc + 1} is missing")
    node, found = lookup(nodes[doc], path)
    if node is not None and not isinstance(node, ScalarNode):
        what = "mapping" if isinstance(node, MappingNode) else "list"
        raise EditError(
            f"{file}:{line_of(node)}: {dotted(path)} is a {what}, not a single value; "
            "set one of its fields instead"
        )
    if node is not None:
        edits = [replace_scalar(text, node, value)]
    else:
        parent, _ = lookup(nodes[doc], path[:found])
        if not isinstance(parent, MappingNode):
            where = dotted(path[:found]) or "the document"
            raise EditError(f"{file}: cannot add {dotted(path)}: {where} is not a mapping")
        edits = [insert_path(text, parent, path[found:], value, file, string=string)]
    new_text = apply_edits(text, edits)
    before, after = load_all(text), load_all(new_text)
    written = get_in(after[doc], path) if doc < len(after) else None
    if written is None or show(written) != value:
        raise EditError(f"{file}: writing {dotted(path)}={value!r} did not give that value")
    expected = [set_in(d, path, written) if i == doc else d for i, d in enumerate(before)]
    if expected != after:
        raise EditError(f"{file}: editing {dotted(path)} would change more than that field")
    full.write_text(new_text, encoding="utf-8")
    line_node, _ = lookup(compose(new_text, file)[doc], path)
    return get_in(before[doc], path), line_of(line_node) if line_node is not None else 1
