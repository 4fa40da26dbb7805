"""``setpoint rollback``: commit the reverse of a stack's changes since an earlier revision.

Role: a rollback is a normal Git change (an author, a reason, reviewable), never a
host-side action: the agent then pulls it like any other commit. The edit
(:class:`Rollback`, run by :func:`setpoint.writeback.transaction.land`) restores,
at the branch's tip, every path the stack's render reads to its content at
``REVISION``, and removes what was added there since: the stack path, the
directories and files its overlays' ``resources`` reach (at the tip and at
``REVISION``, so a base dropped since comes back). Other paths of the repository
keep their newer content. On a moved branch (another push landed first) the
edit is re-applied on the new tip, unless the new commits changed the stack's
paths too: that is a :class:`~setpoint.writeback.transaction.Conflict`.

:func:`previous_revision` finds the default ``REVISION``: the revision applied to
the stack before the one in force, from the ``revision.applied`` entries of the
agent's journal. Called by :mod:`setpoint.cli_writeback`.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from setpoint.model.errors import SetpointError
from setpoint.state import StateDB
from setpoint.writeback.gitwork import GitError, WorkRepo
from setpoint.writeback.stack import StackError, assemble
from setpoint.writeback.transaction import Change, Conflict

APPLIED = "revision.applied"
JOURNAL_SCAN = 100_000


def previous_revision(state: Path, stack: str) -> tuple[str, str]:
    """(the revision in force, the one applied before it) for ``stack``, from the journal."""
    if not (state / "setpoint.db").exists():
        raise SetpointError(
            f"no setpoint state in {state}: give --state DIR (the agent's) or --to REVISION"
        )
    db = StateDB(state)
    try:
        applied = [
            e.revision
            for e in db.history(stack=stack, limit=JOURNAL_SCAN, events=(APPLIED,))
            if e.revision
        ]
    finally:
        db.close()
    if not applied:
        raise SetpointError(
            f"the journal in {state} has no revision applied to stack {stack!r}; "
            "check the stack name, or give --to REVISION"
        )
    current = applied[-1]
    earlier = [r for r in applied[:-1] if r != current]
    if not earlier:
        raise SetpointError(
            f"stack {stack!r} has had one revision only ({current[:12]}): nothing earlier "
            "to roll back to; give --to REVISION"
        )
    return current, earlier[-1]


@dataclass
class Rollback:
    """The edit: make the stack's paths at the tip what they were at ``to``."""

    stack_path: str
    to: str  # as given: a sha, a tag, any revision git resolves
    resolved: str = ""  # the commit ``to`` names
    tip: str = ""  # the branch tip rolled back (the first one seen)
    paths: list[str] = field(default_factory=list)
    repo: WorkRepo | None = None  # the transaction's clone (see ``land(on_clone=)``)

    def bind(self, repo: WorkRepo) -> None:
        self.repo = repo

    def __call__(self, tree: Path) -> list[Change]:
        repo = self.repo
        assert repo is not None and repo.dir == tree, "land(on_clone=rollback.bind)"
        head = repo.head()
        if not self.resolved:
            self.resolved = _resolve(repo, self.to)
            self.tip = head
        elif head != self.tip:
            moved = repo.git("diff", "--name-only", self.tip, head, "--", *self.paths).split()
            if moved:
                raise Conflict(
                    f"the branch moved while rolling back and the new commits change the "
                    f"stack's files ({', '.join(moved[:5])}); nothing was pushed: look at "
                    "them, then run rollback again"
                )
        try:
            now = _read_paths(tree, self.stack_path)
        except StackError:
            now = [self.stack_path]  # the tip's stack is broken (a reason to roll back)
        self.paths = sorted(set(now) | set(self._old_paths(repo)))
        # Going from the tip to ``to``: files it lacks are removed (from the work tree:
        # the transaction's ``git add`` stages that), the others taken from it.
        out = repo.git(
            "diff", "-z", "--name-status", "--no-renames", head, self.resolved, "--", *self.paths
        ).split("\0")
        changes = []
        for status, name in zip(out[0::2], out[1::2], strict=False):
            if not name:
                continue
            if status.startswith("D"):
                (tree / name).unlink()
            else:
                repo.git("checkout", self.resolved, "--", name)
            what = {"A": "restored", "D": "removed"}.get(status[:1], "reverted")
            changes.append(Change(name, what, head, self.resolved, name, 1))
        return changes

    def _old_paths(self, repo: WorkRepo) -> list[str]:
        """The paths the stack read at ``to`` (a base it used then may be gone now)."""
        tmp = Path(tempfile.mkdtemp(prefix="setpoint-rb-"))
        try:
            repo.git("worktree", "add", "--quiet", "--detach", str(tmp / "t"), self.resolved)
            try:
                return _read_paths(tmp / "t", self.stack_path)
            except StackError:
                return [self.stack_path]  # no longer readable as a stack: its path only
            finally:
                repo.git("worktree", "remove", "--force", str(tmp / "t"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _read_paths(tree: Path, stack_path: str) -> list[str]:
    st = assemble(tree, stack_path)
    paths = st.dirs | st.files | {ov.dir for ov in st.overlays}
    for doc in st.docs:  # files named by manifests, wherever they are
        spec = doc.raw.get("spec")
        for key in ("source", "templateSource"):
            value = spec.get(key) if isinstance(spec, dict) else None
            if isinstance(value, str) and value:
                named = posixpath.normpath(posixpath.join(posixpath.dirname(doc.file), value))
                if not named.startswith(("../", "/")) and named != "..":
                    paths.add(named)
    return sorted(paths)


def _resolve(repo: WorkRepo, rev: str) -> str:
    if rev.startswith("-"):
        raise SetpointError(f"--to {rev!r} is not a revision")
    for attempt in range(2):
        try:
            return repo.git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
        except GitError:
            if attempt:
                break
            try:  # not on the cloned branch: a tag, or a commit only the remote has
                repo.git("fetch", "--quiet", "origin", rev)
                return repo.git("rev-parse", "--verify", "FETCH_HEAD^{commit}").strip()
            except GitError:
                break
    raise SetpointError(f"--to {rev!r}: no such commit in {repo.url}")


def message(
    stack: str, path: str, rb: Rollback, changes: list[Change], reason: str, current: str | None
) -> str:
    """Subject naming both revisions; the reason; each path; the revision that was in force."""
    lines = [
        f"Roll back stack {stack} to {rb.resolved[:12]} (from {rb.tip[:12]})",
        "",
        f"Reason: {reason}",
        "",
        f"Reverts the changes since {rb.resolved} to the files stack {stack} reads:",
    ]
    lines += [f"- {c.file} ({c.field})" for c in changes]
    lines += ["", f"Rolled back from: {rb.tip}", f"Rolled back to:   {rb.resolved}"]
    if current:
        lines.append(f"In force on the host: {current}")
    lines.append(f"Stack path: {path}")
    return "\n".join(lines) + "\n"
