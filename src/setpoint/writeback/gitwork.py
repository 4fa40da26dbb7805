"""A throw-away clone to commit in, and the bounded push loop that lands the commit.

Role: every write command clones the repository (a URL or a local path) into a
temporary directory, edits files there, commits and optionally pushes. When the
push is rejected because the branch moved (another pipeline landed first), the
loop fetches the new tip, re-applies the *edit* (not the old commit) on it and
tries again, up to ``MAX_TRIES`` times with jittered back-off, so two pipelines
bumping different services both land. The edit function decides what a moved
branch means (a conflict is its error to raise). Git runs with argument lists,
never a shell; identities and signing come from git's own configuration.

Used by :mod:`setpoint.writeback.transaction`.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from setpoint.model.errors import SetpointError, SourceError
from setpoint.source.auth import SourceAuth, git_environment, helper_options

MAX_TRIES = 10
AUTHOR_RE = re.compile(r"^\s*([^<>]+?)\s*<([^<>\s]+)>\s*$")


class GitError(SetpointError):
    """A git command failed; the message carries git's own words."""


@dataclass(frozen=True)
class Author:
    name: str
    email: str

    @classmethod
    def parse(cls, text: str) -> Author:
        m = AUTHOR_RE.match(text)
        if m is None:
            raise GitError(f"--author {text!r}: give it as 'Name <email>'")
        return cls(m.group(1), m.group(2))

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_EDITOR": "true"})
    return env


class WorkRepo:
    """A clone of one branch in a temporary directory (removed by :meth:`close`).

    ``auth`` (a source's ssh key and known_hosts, or https credential files) is
    used for every contact with the remote, as the agent uses it: the ssh command
    in the environment, https credentials through a helper in the 0700 temporary
    directory; nothing secret on a command line or in the clone's config.
    """

    def __init__(self, url: str, branch: str | None, auth: SourceAuth | None = None) -> None:
        self.url = url
        self._tmp = tempfile.mkdtemp(prefix="setpoint-wb-")
        self.dir = Path(self._tmp) / "repo"
        self._extra_env = git_environment(auth)
        try:
            self._opts = helper_options(auth, url, Path(self._tmp) / "auth")
        except SourceError as exc:
            self.close()
            raise GitError(str(exc)) from None
        args = ["clone", "--quiet", "--no-tags", "--single-branch"]
        if branch:
            args += ["--branch", branch]
        try:
            self.git(*args, "--", url, str(self.dir), cwd=Path(self._tmp))
        except GitError as exc:
            self.close()
            raise GitError(
                f"cannot clone {url}{f' (branch {branch})' if branch else ''}: {exc}"
            ) from None
        self.branch = branch or self.git("symbolic-ref", "--short", "HEAD").strip()

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> WorkRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def env(self) -> dict[str, str]:
        return {**_env(), **self._extra_env}

    def git(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            ["git", *self._opts, *args],
            cwd=cwd or self.dir,
            env=env or self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            words = (proc.stderr or proc.stdout).strip().splitlines()
            raise GitError(
                "; ".join(w for w in words if w.strip())[:800] or f"git {args[0]} failed"
            )
        return proc.stdout

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def identity(self, author: Author | None) -> dict[str, str]:
        """Environment naming author and committer: --author, else git's user.name/email."""
        env = self.env()
        if author is not None:
            env.update({"GIT_AUTHOR_NAME": author.name, "GIT_AUTHOR_EMAIL": author.email})
        name = self._config("user.name")
        email = self._config("user.email")
        if author is None and not (name and email):
            raise GitError(
                "no commit author: give --author 'Name <email>' or set git config "
                "user.name and user.email"
            )
        if not (name and email):
            assert author is not None
            env.update({"GIT_COMMITTER_NAME": author.name, "GIT_COMMITTER_EMAIL": author.email})
        return env

    def _config(self, key: str) -> str:
        try:
            return self.git("config", "--get", key).strip()
        except GitError:
            return ""

    def commit(self, files: list[str], message: str, author: Author | None, sign: bool) -> str:
        """Commit ``files`` (relative paths) with ``message``; return the new commit's SHA."""
        env = self.identity(author)
        self.git("add", "--", *files)
        args = ["commit", "--quiet", "--no-verify", "-F", "-"]
        if sign:
            args.append("-S")
        proc = subprocess.run(
            ["git", *self._opts, *args],
            cwd=self.dir,
            env=env,
            input=message,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            what = "sign and commit" if sign else "commit"
            raise GitError(f"cannot {what}: {(proc.stderr or proc.stdout).strip()[:800]}")
        return self.head()

    def push(self) -> bool:
        """Push HEAD to the branch; False when rejected because the branch moved."""
        proc = subprocess.run(
            ["git", *self._opts, "push", "--porcelain", "origin", f"HEAD:refs/heads/{self.branch}"],
            cwd=self.dir,
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            return True
        out = proc.stdout + proc.stderr
        rejected = any(
            line.startswith("!") and ("non-fast-forward" in line or "fetch first" in line)
            for line in proc.stdout.splitlines()
        ) or ("[rejected]" in out and ("non-fast-forward" in out or "fetch first" in out))
        # Another push may hold the ref's lock at this very moment: also a "moved" case.
        racing = "cannot lock ref" in out or "failed to update ref" in out
        if rejected or racing:
            return False
        raise GitError(f"cannot push to {self.url} ({self.branch}): {out.strip()[:800]}")

    def refresh(self) -> str:
        """Reset the work tree to the branch's current tip on the remote; return its SHA."""
        self.git("fetch", "--quiet", "--no-tags", "origin", f"refs/heads/{self.branch}")
        self.git("reset", "--quiet", "--hard", "FETCH_HEAD")
        return self.head()


def backoff(attempt: int) -> None:
    """Sleep before retry ``attempt`` (1-based): jittered, growing, under a second each."""
    time.sleep(random.uniform(0.02, 0.1) * min(2**attempt, 8))
