"""Git sources: poll a remote ref, fetch it into a local mirror, export commit trees.

The engine's scheduler calls :meth:`GitSource.remote_revision` on each poll
(one ``git ls-remote``, no download) and :meth:`GitSource.fetch` when the ref
moved or on start-up; the renderer reads the files of a revision from
:meth:`GitSource.tree`; the journal records :meth:`GitSource.commit_info`.

Every git command runs from an argument list (never a shell), with a timeout,
``LC_ALL=C``, no terminal prompts and without the user's or the system's git
configuration, so the agent behaves the same whoever runs it. Failures become
:class:`~setpoint.model.errors.SourceError` with a message naming the source,
the URL (credentials masked), the ref and the tail of git's own error output.

On disk, under ``cache_dir``::

    lock                  flock(2)ed while the mirror or the trees are changed
    auth/                 0700: credential helper and 0600 secret of a URL with credentials
    repo.git/             bare mirror holding only the refs we fetched
    trees/<sha>/          read-only export of one commit's tree (exact committed bytes)
    trees/<sha>.manifest  git's listing of that tree, written last (see :mod:`.export`)
    trees/.tmp-*          an export or a removal in progress (or killed: cleaned next time)

A damaged mirror (``git fsck`` reports corruption) is deleted and cloned again;
a check that could not run (timeout, no git) keeps it. Exports are never
touched by that: each is checked against its manifest before use. The mirror's
on-disk upkeep (attributes file, stale lock files, fsck's verdict) is in
:mod:`.mirror`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tarfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from setpoint.model.errors import SourceError
from setpoint.model.semver import Range
from setpoint.source import export, mirror, tags
from setpoint.source.auth import SourceAuth, explain_ssh_failure, git_environment, helper_options
from setpoint.source.credentials import install_helper, remove_helper, split_credentials
from setpoint.source.gitcmd import (
    _GIT_OPTS,
    check_ref,
    fetch_options,
    git_env,
    normalize_url,
    redact_url,
    run_git,
)
from setpoint.source.trees import TMP_PREFIX as _TMP_PREFIX
from setpoint.source.trees import TreeStore

log = logging.getLogger("setpoint.source")

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_ABBREV_SHA_RE = re.compile(r"^[0-9a-f]{4,39}$")

__all__ = ["SHA_RE", "GitSource", "check_ref", "git_env", "normalize_url", "redact_url"]


class GitSource:
    """One Git remote + ref, with its local mirror and exported trees under ``cache_dir``.

    ``url`` may be a local path (made absolute), ``file://``, ``ssh://``,
    ``https://`` or scp-like ``user@host:path``. ``ref`` is a branch, a tag
    (lightweight or annotated), a full ref (``refs/heads/x``, ``refs/tags/x``),
    ``HEAD`` (the remote's default branch) or a full 40-hex commit sha. A
    short name that is both a branch and a tag is refused as ambiguous.

    Threads and processes: calls on one object are serialised by a lock, and
    changes to ``cache_dir`` by an ``flock`` on ``cache_dir/lock``, so two agents
    (or the agent and a CLI command) may share a cache dir. ``fetch`` holds them
    for the length of a network fetch (bounded by ``timeout``).

    Example::

        src = GitSource("main", "git@example.com:ops/hosts.git", "main", state / "sources/main")
        sha = src.fetch()
        files = src.tree(sha)  # Path to a read-only copy of the commit's files
    """

    def __init__(
        self,
        name: str,
        url: str,
        ref: str,
        cache_dir: Path,
        *,
        keep_trees: int = 3,
        timeout: float = 120.0,
        fsck_timeout: float | None = None,
        auth: SourceAuth | None = None,
        semver: Range | None = None,
        allow_tag_moves: bool = False,
    ) -> None:
        if keep_trees < 1:
            raise ValueError("keep_trees must be at least 1 (the tree just asked for)")
        self.name = name
        self.url = normalize_url(url)
        try:
            # git gets the URL without user info; the credentials go through a helper.
            self._git_url, self._credentials = split_credentials(self.url)
        except SourceError as exc:
            raise SourceError(f"source {name}: {exc}") from None
        if self._credentials is not None and auth is not None and auth.is_https:
            raise SourceError(f"source {name}: credentials in the URL and in auth: give one")
        # ref: {semver: RANGE} follows the highest matching tag (see .tags).
        self.semver = semver
        self.allow_tag_moves = allow_tag_moves
        if semver is None:
            check_ref(ref)
        self.ref = ref if semver is None else f"semver {semver.text}"
        self.auth = auth
        self.tag: str | None = None  # the tag the last fetch resolved (semver sources)
        self._tags: dict[str, str] = {}  # commit -> tag, for status and the journal
        self._moved: dict[str, str] = {}  # commit -> why it is refused (a moved tag)
        self.cache_dir = Path(cache_dir)
        self.repo_dir = self.cache_dir / "repo.git"
        self.trees_dir = self.cache_dir / "trees"
        self.auth_dir = self.cache_dir / "auth"
        self.keep_trees = keep_trees
        self.timeout = timeout
        # fsck reads every object: on a big mirror it may need longer than a fetch.
        self.fsck_timeout = timeout if fsck_timeout is None else fsck_timeout
        self._env = git_env()
        self._env.update(git_environment(auth))  # ssh: this key, this known_hosts
        self._credential_opts: tuple[str, ...] = ()
        # Two locks (each with its flock, for other processes): a fetch, which may wait
        # on a slow remote, never holds the one a pass needs to read a fetched tree.
        self._lock = threading.Lock()  # the mirror: fetch, clone, repair
        self._tree_lock = threading.Lock()  # the exported trees
        self._repo_ready = False
        self._trees = TreeStore(
            name, self.trees_dir, keep_trees, self._git, self._rev_parse, lambda: self._url
        )
        self.local_ref: str | None = None  # the mirror's ref for ``ref`` after a fetch
        # The full remote ref name last resolved by ls-remote: lets the fetch that
        # follows a poll skip a second round trip (webhook-to-converged latency).
        self._ref_name: str | None = None
        # What git said of a full sha (its tree, a path's object id, its commit's fields):
        # objects never change, so a commit's pass asks git once, not at every step (each
        # git costs a fork and exec, ~5 ms of CPU). Emptied at each fetch and repair (gc
        # and a re-clone are when objects may go).
        self._known: dict[str, str] = {}
        # sha -> (tree, parents, author, date, subject)
        self._commits: dict[str, tuple[str, ...]] = {}
        self._fetches = 0

    def __repr__(self) -> str:
        return f"GitSource({self.name!r}, {redact_url(self.url)!r}, {self.ref!r})"

    @property
    def is_commit(self) -> bool:
        """True when ``ref`` is a commit sha: nothing to poll, it never moves."""
        return bool(SHA_RE.match(self.ref))

    # -- public API ------------------------------------------------------------

    def remote_revision(self) -> str | None:
        """The commit the ref points to on the remote now, without downloading anything.

        For the scheduler's poll: compare with the last fetched sha and call
        :meth:`fetch` when it differs. ``None`` when the ref is a commit sha.
        """
        if self.is_commit:
            return None
        with self._lock, self._flocked():
            self._ensure_repo()
        # ls-remote reads nothing of the mirror: no need to hold the locks meanwhile.
        name, sha, peeled = self._ls_remote()
        self._ref_name = name
        return peeled or sha

    def fetch(self) -> str:
        """Bring the mirror up to date for the ref and return the commit sha it resolves to.

        Fetches only the one ref (force, so a rewritten branch is followed). A
        commit sha is fetched directly if the server allows it, else with all
        branches and tags; once fetched, it is never fetched again.
        """
        with self._lock, self._flocked():
            self._forget_known()
            self._ensure_repo()
            mirror.remove_stale_locks(self.repo_dir)
            if self.is_commit:
                return self._fetch_commit(self.ref)
            if self.semver is not None:
                return self._fetch_tag()
            name = self._fetch_named(self._ref_name)
            local = _local_ref(name)
            self.local_ref = local
            read = self._read_commit(f"{local}^{{commit}}")
            commit = read[0] if read is not None else None
            if commit is None:
                raise SourceError(
                    f"source {self.name}: {self.ref!r} in {self._url} does not point to a commit"
                )
            return commit

    def tree(self, sha: str) -> Path:
        """A read-only directory holding the files of commit ``sha`` exactly as committed.

        Exported on first use into ``trees/<sha>`` and reused afterwards, once it
        was checked (the first time in this process) against its manifest and
        the mirror's tree id; a damaged or unfinished export is exported again,
        replacing the old one only once the new one is complete. Symlinks stay
        symlinks (their targets are not checked: that is the renderer's
        confinement job). Only the ``keep_trees`` most recently used trees are
        kept; the one returned is never removed by this call, but a tree returned
        earlier may be, once ``keep_trees`` newer ones were asked for.
        """
        self._check_sha(sha)
        self._ready()
        # Reading objects while a fetch adds others is safe in git; only exports race.
        with self._tree_lock, self._flocked("trees.lock"):
            try:
                self._trees.clean()
            except OSError as exc:
                raise SourceError(
                    f"source {self.name}: cannot clean {self.trees_dir}: {exc}"
                ) from exc
            try:
                return self._trees.get(sha)
            except (OSError, tarfile.TarError, ValueError) as exc:
                raise SourceError(
                    f"source {self.name}: cannot export commit {sha} into {self.trees_dir}: {exc}"
                ) from exc

    def repair(self) -> bool:
        """Check the mirror (``git fsck``); if it is corrupt, delete it and return True.

        Called after a fetch or an export failed: a mirror with missing or corrupt
        objects makes every later fetch or export fail, so it is thrown away and
        the next :meth:`fetch` clones afresh. Exported trees are kept (each is
        checked against its manifest before use). False when fsck finds the mirror
        sound (the failure was elsewhere). Raises :class:`SourceError`, keeping the
        mirror, when the check itself could not be made (timeout, no git, killed):
        that says nothing about the mirror, and re-cloning a big one costs a lot.
        """
        with self._lock, self._flocked(), self._tree_lock, self._flocked("trees.lock"):
            self._forget_known()
            if not self.repo_dir.exists():
                return False
            args = ["fsck", "--connectivity-only", "--no-dangling", "--no-progress"]
            try:
                rc, out, err = self._run(args, what="check the mirror", timeout=self.fsck_timeout)
            except SourceError as exc:
                raise SourceError(f"{exc}; the mirror is kept, not re-cloned") from None
            if rc == 0:
                return False
            report = self._stderr_tail(out + b"\n" + err)
            if not mirror.is_corruption(rc, report):
                raise SourceError(
                    f"source {self.name}: git fsck exited with {rc} without reporting damage "
                    f"({report or 'no output'}); the mirror is kept, not re-cloned"
                )
            log.warning("source %s: the mirror is corrupt (%s); deleting it", self.name, report)
            doomed = self.cache_dir / f"{_TMP_PREFIX}corrupt-{os.getpid()}"
            export.remove_tree(doomed)
            self.repo_dir.rename(doomed)
            export.remove_tree(doomed)
            self._repo_ready = False
            return True

    def tree_id(self, sha: str, path: str = ".") -> str | None:
        """The Git object id of directory ``path`` at commit ``sha`` (None if it is absent).

        Two commits with the same id for a stack's path hold the same files there, so
        the engine reuses the rendered stack instead of parsing it again.
        """
        self._check_sha(sha)
        rel = os.path.normpath(path or ".")
        if rel.startswith(("/", "..")):
            raise SourceError(f"source {self.name}: {path!r} is not a path inside the repository")
        spec = f"{sha}^{{tree}}" if rel == "." else f"{sha}:{rel}"
        self._ready()
        return self._rev_parse(spec)

    def object_ids(self, sha: str, paths: Sequence[str]) -> dict[str, str] | None:
        """The Git object ids of ``paths`` (files or directories) at commit ``sha``, in one call.

        None when any of them is absent there or lies beyond a symlink (git does not
        follow those): the engine's on-disk render cache then renders afresh.
        """
        self._check_sha(sha)
        rels = [os.path.normpath(p or ".") for p in paths]
        if any(r.startswith(("/", "..")) for r in rels):
            return None
        specs = [f"{sha}^{{tree}}" if r == "." else f"{sha}:{r}" for r in rels]
        if all(spec in self._known for spec in specs):
            return {p: self._known[spec] for p, spec in zip(paths, specs, strict=True)}
        self._ready()
        rc, out, _err = self._run(["rev-parse", *specs], what="resolve paths")
        ids = out.decode().split()
        if rc != 0 or len(ids) != len(paths):
            return None
        self._known.update(zip(specs, ids, strict=True))
        return dict(zip(paths, ids, strict=True))

    def commit_info(self, sha: str) -> dict[str, str]:
        """``sha``, ``author`` ("Name <email>"), ``date`` (ISO 8601) and ``subject`` of a commit."""
        self._check_sha(sha)
        fields = self._commits.get(sha)
        if fields is None:
            self._ready()
            read = self._read_commit(sha, missing_ok=False)
            if read is None or read[0] != sha:
                raise SourceError(f"source {self.name}: git show gave no commit {sha}")
            fields = read[1]
        _tree, _parents, author, date, subject = fields
        info = {"sha": sha, "author": author, "date": date, "subject": subject}
        tag = self.tag_of(sha)
        if tag:
            info["tag"] = tag
        return info

    def parents(self, sha: str) -> list[str] | None:
        """The parents of commit ``sha`` when this process has read it already, else None."""
        known = self._commits.get(sha)
        return known[1].split() if known is not None else None

    def _read_commit(
        self, spec: str, missing_ok: bool = True
    ) -> tuple[str, tuple[str, ...]] | None:
        """The commit ``spec`` names and its fields, kept for :meth:`commit_info` (one git).

        None when there is no such commit (``missing_ok``; else SourceError).
        """
        args = ["show", "-s", "--format=%H%x00%T%x00%P%x00%an <%ae>%x00%aI%x00%s", spec]
        if missing_ok:
            rc, out, _err = self._run(args, what=f"read commit {spec}")
            if rc != 0:
                return None
        else:
            out = self._git(args, what=f"read commit {spec}")
        sha, *fields = out.decode("utf-8", "replace").rstrip("\n").split("\0", 5)
        if not SHA_RE.match(sha) or len(fields) != 5:
            return None
        if len(self._commits) > 64:
            self._commits.clear()  # a pass asks of a handful: a long-lived agent stays small
        self._commits[sha] = kept = tuple(fields)
        self._known[f"{sha}^{{commit}}"] = sha
        self._known[f"{sha}^{{tree}}"] = fields[0]
        return sha, kept

    def _forget_known(self) -> None:
        self._known.clear()
        self._commits.clear()

    def tag_of(self, sha: str | None) -> str | None:
        """The tag (a semver source's) that ``sha`` was fetched as; None for other sources."""
        if self.semver is None or sha is None:
            return None
        if sha not in self._tags:
            # Not fetched in this process: the tags the mirror holds at that commit.
            out = self._git(
                ["for-each-ref", f"--points-at={sha}", "--format=%(refname)", tags.TAGS],
                what="list tags",
            )
            names = [n[len(tags.TAGS) :] for n in out.decode().split()]
            found = [n for n in names if self.semver.matches(n)]
            self._tags[sha] = max(found, default="")  # "" = none: asked once
        return self._tags[sha] or None

    def moved_tag(self, sha: str) -> str | None:
        """Why ``sha`` must not be applied: its tag moved (None when it did not)."""
        return self._moved.get(sha)

    # -- refs and fetching -----------------------------------------------------

    @property
    def _url(self) -> str:
        return redact_url(self.url)

    def _candidates(self) -> list[str]:
        if self.ref == "HEAD" or self.ref.startswith("refs/"):
            return [self.ref]
        return [f"refs/heads/{self.ref}", f"refs/tags/{self.ref}"]

    def _ls_remote(self) -> tuple[str, str, str | None]:
        """(full ref name, the sha it points to, the peeled commit for annotated tags)."""
        if self.semver is not None:
            args = ["ls-remote", "--tags", self._git_url]
            out = self._git(args, what=f"cannot reach {self._url}", network=True)
            return tags.pick_tag(out.decode("utf-8", "replace"), self.semver, self.name, self._url)
        candidates = self._candidates()
        # Name the peeled entries explicitly: with patterns, git only lists what matches.
        patterns = candidates + [f"{c}^{{}}" for c in candidates if c != "HEAD"]
        out = self._git(
            ["ls-remote", self._git_url, *patterns],
            what=f"cannot reach {self._url}",
            network=True,
        )
        refs: dict[str, str] = {}
        for line in out.decode("utf-8", "replace").splitlines():
            sha, _, name = line.partition("\t")
            refs[name] = sha
        found = [c for c in candidates if c in refs]
        if not found:
            hint = ""
            if _ABBREV_SHA_RE.match(self.ref):
                hint = "; to follow a commit, give its full 40-character sha"
            raise SourceError(
                f"source {self.name}: ref {self.ref!r} not found in {self._url} "
                f"(looked for {', '.join(candidates)}){hint}"
            )
        if len(found) > 1:
            raise SourceError(
                f"source {self.name}: ref {self.ref!r} is ambiguous in {self._url}: both "
                f"{' and '.join(found)} exist; write the full ref name instead"
            )
        name = found[0]
        return name, refs[name], refs.get(f"{name}^{{}}")

    def _fetch_named(self, known: str | None) -> str:
        """Fetch the ref under the name ls-remote last gave, else resolve it now; the name."""
        if known is not None:
            try:
                self._fetch([f"+{known}:{_local_ref(known)}"])
                return known
            except SourceError:
                pass  # deleted, or no longer that kind of ref: resolve it afresh
        name, sha, _peeled = self._ls_remote()
        self._ref_name = name
        # The mirror holds it already (a one-shot run on a timer, the ref unchanged): a
        # fetch would only find that out again, at the cost of four processes.
        if self._rev_parse(_local_ref(name)) != sha:
            self._fetch([f"+{name}:{_local_ref(name)}"])
        return name

    def _fetch_tag(self) -> str:
        """Fetch the highest matching tag; a tag that moved is kept aside and refused.

        The tag is fetched under a scratch ref first: only when the mirror has no
        such tag yet, or had it at the same commit (or moves are allowed), does it
        become ``refs/tags/NAME``. Otherwise the mirror keeps the tag where it was
        (so the refusal holds across restarts) and the new commit is returned with
        :meth:`moved_tag` saying why it must not be applied.
        """
        name, _sha, _peeled = self._ls_remote()
        tag = name[len(tags.TAGS) :]
        incoming = "refs/setpoint/incoming-tag"
        self._fetch([f"+{name}:{incoming}"])
        obj = self._rev_parse(incoming)
        commit = self._rev_parse(f"{incoming}^{{commit}}")
        if obj is None or commit is None:
            raise SourceError(f"source {self.name}: tag {tag} in {self._url} is not a commit")
        old = self._rev_parse(f"{name}^{{commit}}")
        if old is not None and old != commit and not self.allow_tag_moves:
            self._moved[commit] = tags.moved_message(self.name, tag, old, commit)
            self.local_ref = incoming
        else:
            self._git(["update-ref", name, obj], what=f"record tag {tag}")
            self._moved.pop(commit, None)
            self.local_ref = name
        self.tag = tag
        self._tags[commit] = tag
        return commit

    def _fetch(self, refspecs: Sequence[str]) -> None:
        # Explicit refspecs fetch a named tag themselves, so tags are never
        # auto-followed: we store only what we asked for. git's own check whether the
        # mirror needs a gc (one more process) runs at the first fetch of this process and
        # every 16th after: a fetch adds a few objects, gc --auto waits for thousands.
        self._fetches += 1
        gc = "--auto-maintenance" if self._fetches % 16 == 1 else "--no-auto-maintenance"
        args = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules"]
        args += [*fetch_options(self._git_url), gc]
        self._git(
            [*args, self._git_url, *refspecs],
            what=f"cannot fetch {self.ref!r} from {self._url}",
            network=True,
        )

    def _fetch_commit(self, sha: str) -> str:
        # The pin ref is set only after a complete fetch, and keeps the commit
        # from being garbage-collected: a pinned commit needs no network at all.
        pin = f"refs/setpoint/commits/{sha}"
        if self._rev_parse(pin) == sha:
            return sha
        try:
            self._fetch([f"+{sha}:{pin}"])
        except SourceError:
            # Servers that refuse a sha in "want" (uploadpack.allowAnySHA1InWant
            # off, protocol v0): take every branch and tag and look for it there.
            self._fetch(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"])
            if self._rev_parse(f"{sha}^{{commit}}") != sha:
                raise SourceError(
                    f"source {self.name}: commit {sha} not found in {self._url}"
                ) from None
            self._git(["update-ref", pin, sha], what="pin the commit")
        if self._rev_parse(f"{sha}^{{commit}}") != sha:
            raise SourceError(f"source {self.name}: {sha} in {self._url} is not a commit")
        return sha

    def _rev_parse(self, spec: str) -> str | None:
        found = self._known.get(spec)
        if found is not None:
            return found
        try:
            out = self._git(["rev-parse", "--verify", "--quiet", spec], what="resolve")
        except SourceError:
            return None
        found = out.decode().strip() or None
        if found is not None and SHA_RE.match(spec[:40]) and spec[40:41] in ("^", ":"):
            if len(self._known) > 256:
                self._known.clear()
            self._known[spec] = found
        return found

    def _check_sha(self, sha: str) -> None:
        # Also keeps anything option-like out of git's argument list.
        if not SHA_RE.match(sha):
            raise SourceError(f"source {self.name}: {sha!r} is not a full 40-hex commit sha")

    # -- plumbing --------------------------------------------------------------

    def _ready(self) -> None:
        """The mirror exists (for a read): the mirror's lock only the first time."""
        if not self._repo_ready:
            with self._lock, self._flocked():
                self._ensure_repo()

    @contextmanager
    def _flocked(self, name: str = "lock") -> Iterator[None]:
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.cache_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _ensure_repo(self) -> None:
        """Create the bare mirror if needed (re-running ``git init`` also repairs a partial one)."""
        if self._repo_ready:
            return
        # 0700: the mirror and the trees hold whatever the repository holds.
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (self.repo_dir / "config").is_file() or not (self.repo_dir / "HEAD").is_file():
            self._git(
                ["init", "--bare", "--quiet", str(self.repo_dir)], what="create mirror", bare=False
            )
        mirror.write_attributes(self.repo_dir)
        if self._credentials is not None:
            helper = install_helper(self.auth_dir, self._credentials)
            self._credential_opts = ("-c", f"credential.helper={helper}")
        else:
            remove_helper(self.auth_dir)  # from a URL that had credentials before
        self._repo_ready = True

    def _git(
        self, args: Sequence[str], *, what: str, network: bool = False, bare: bool = True
    ) -> bytes:
        """Run git on the mirror; return stdout or raise SourceError naming ``what`` failed."""
        if network and self.auth is not None and self.auth.is_https:
            # Read the files at each contact: a rotated secret is used at once.
            try:
                self._credential_opts = helper_options(self.auth, self._git_url, self.auth_dir)
            except SourceError as exc:
                raise SourceError(f"source {self.name}: {exc}") from None
        rc, out, err = self._run(args, what=what, bare=bare)
        if rc != 0:
            tail = self._stderr_tail(err)
            host_key = explain_ssh_failure(tail, self._git_url, self.auth) if network else None
            if host_key is not None:
                raise SourceError(f"source {self.name}: {what}: {host_key}")
            prefix = f"source {self.name}: {what}"
            if not network:
                prefix += f" (git {args[0]} exited with {rc})"
            raise SourceError(f"{prefix}: {tail}" if tail else prefix)
        return out

    def _run(
        self, args: Sequence[str], *, what: str, bare: bool = True, timeout: float | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run git; (exit status, stdout, stderr). SourceError when it could not run to its end."""
        cmd = ["git", *_GIT_OPTS, *self._credential_opts]
        if bare:
            cmd.append(f"--git-dir={self.repo_dir}")
        cmd += args
        limit = self.timeout if timeout is None else timeout
        return run_git(cmd, args[0], env=self._env, cwd=self.cache_dir, timeout=limit,
                       what=f"source {self.name}: {what}")  # fmt: skip

    def _stderr_tail(self, err: bytes, lines: int = 8, chars: int = 2000) -> str:
        # git never gets the credentials now; masked anyway, should a URL hold them.
        text = err.decode("utf-8", "replace").replace(self.url, self._url)
        kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(kept)[-chars:]


def _local_ref(name: str) -> str:
    """Where the mirror keeps the remote ref ``name``."""
    return "refs/setpoint/HEAD" if name == "HEAD" else name
