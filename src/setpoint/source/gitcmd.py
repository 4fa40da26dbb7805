"""How git is run for sources: fixed options and environment, URL and ref checks.

Role: shared by :class:`setpoint.source.git.GitSource` (the mirror) and
:mod:`setpoint.source.verify` (signature checks): every git runs without the
user's or the system's configuration and without anything in the environment
that would point it at another repository, so the agent behaves the same
whoever runs it. Also the checks a source's URL and ref pass before any git runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from setpoint.model.errors import SourceError
from setpoint.model.redact import redact_url as redact

# Options for every git command. Hooks off (a mirror needs none); gc in the
# foreground so no detached git outlives our timeout; no credential helper but
# our own (credentials come from the URL through it, or from ssh keys).
_GIT_OPTS = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "gc.autoDetach=false",
    "-c", "maintenance.autoDetach=false",
    "-c", "credential.helper=",
    "-c", "init.defaultBranch=main",
)  # fmt: skip

# Variables that would make git use another repository, object store or config
# than the ones we name (e.g. when the agent is started from a git hook).
_FOREIGN_GIT_ENV = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_CEILING_DIRECTORIES",
        "GIT_DISCOVERY_ACROSS_FILESYSTEM",
        "GIT_GRAFT_FILE",
        "GIT_SHALLOW_FILE",
        "GIT_REPLACE_REF_BASE",
        "GIT_NO_REPLACE_OBJECTS",
        "GIT_PREFIX",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_EXEC_PATH",
        "GIT_TEMPLATE_DIR",
    }
)


def git_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment git runs in: ours, minus anything that redirects git, plus fixed settings."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if k not in _FOREIGN_GIT_ENV and not k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))
    }
    env.update(
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
        # No system or user config (git >= 2.32 honours the last two).
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_SYSTEM=os.devnull,
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    env.pop("LANGUAGE", None)
    if "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        # ssh asks for passwords and host-key confirmation on the tty, not
        # through git: BatchMode makes it fail instead of hanging until the timeout.
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


def normalize_url(url: str) -> str:
    """``url`` as git should get it: local paths made absolute, everything else unchanged.

    URLs (``scheme://``) and scp-like ``user@host:path`` (a colon before any
    slash, git's own rule) are remote; anything else is a local path.
    """
    if not url or url != url.strip() or any(ord(c) < 32 for c in url):
        raise SourceError(f"{url!r} is not a Git URL or path")
    if url.startswith("-"):
        # git would read it as an option (e.g. --upload-pack=...).
        raise SourceError(f"Git URL {url!r} must not start with '-'")
    if "://" in url or re.match(r"^[^/]*:", url):
        return url
    return os.path.abspath(os.path.expanduser(url))


# The other side of a fetch from a local path or file:// URL is a git we start ourselves:
# its pack costs a delta search and full compression that a copy on the same machine
# does not need (a first fetch of 3 MB of manifests: 0.33 s, 0.08 s without). Over
# ssh or http(s) the server packs as it is configured; this is never sent there.
_LOCAL_UPLOAD_PACK = "git -c pack.window=0 -c pack.compression=1 upload-pack"


def fetch_options(url: str) -> list[str]:
    """Extra ``git fetch`` options for ``url`` (a normalized URL): a cheap pack if local."""
    if url.startswith(("/", "file://")):
        return [f"--upload-pack={_LOCAL_UPLOAD_PACK}"]
    return []


def redact_url(url: str) -> str:
    """``url`` with a password (or, for http(s), the whole user part, often a token) masked."""
    return redact(url, query=False)


def check_ref(ref: str) -> None:
    """Refuse what cannot be a branch, tag, full ref or commit (git check-ref-format's rules)."""
    bad = (
        not ref
        or ref.startswith(("-", "/", "."))
        or ref.endswith(("/", ".", ".lock"))
        or any(s in ref for s in ("..", "//", "@{", "/."))
        or any(ord(c) <= 32 or ord(c) == 127 or c in "~^:?*[\\" for c in ref)
        or ref == "@"
    )
    if bad:
        raise SourceError(f"{ref!r} is not a valid branch, tag or commit name")


def run_git(
    cmd: Sequence[str], sub: str, *, env: Mapping[str, str], cwd: Path, timeout: float, what: str
) -> tuple[int, bytes, bytes]:
    """Run ``cmd`` (git, its options, subcommand ``sub``...); (exit status, stdout, stderr).

    For :meth:`setpoint.source.git.GitSource._run`. SourceError (prefixed ``what``) when
    git is missing, timed out (its whole process group is killed) or died of a signal.
    """
    try:
        # Own session: on timeout we kill git's whole group (ssh, remote helpers).
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        source = what.split(":", 1)[0]
        raise SourceError(f"{source}: git is not installed (no git on PATH)") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise SourceError(f"{what}: git {sub} timed out after {timeout:g}s") from None
    if proc.returncode < 0:
        raise SourceError(
            f"{what}: git {sub} was killed by signal {-proc.returncode}"
        )
    return proc.returncode, out, err

