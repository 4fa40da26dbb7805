"""Trust checks on fetched revisions: commit and tag signatures, and history rewrites.

Role: :class:`~setpoint.engine.controller.Controller` calls :func:`verify_revision`
once per newly fetched commit of a source whose config has ``verify:``, and
:func:`is_ancestor` before a stack moves from its last good revision to a new
one. A failure is a :class:`VerificationError` (or :class:`HistoryRewrittenError`):
the revision is refused as a whole and the last good revision stays in force.

What counts as trusted:

- SSH signatures are checked by git (``ssh-keygen -Y verify``) against the
  ``allowedSigners`` file only (git's ``gpg.ssh.allowedSignersFile`` format).
  A key that is not in the file is refused even if the signature is intact.
- OpenPGP signatures are checked by gpg against a throw-away ``GNUPGHOME``
  seeded from the configured keyring file (never the user's default keyring).
  Every key in that file is trusted (``trust-model always``): the file *is*
  the list of allowed signers.
- ``mode: head`` checks the commit, ``tag`` the annotated tag the source
  follows (its ``ref`` must be a tag), ``tag-and-head`` both.

Every git and gpg command runs from an argument list with a timeout, without
the user's git configuration (see :func:`setpoint.source.git.git_env`).

Example::

    policy = VerifyPolicy("head", allowed_signers=Path("/etc/setpoint/allowed_signers"))
    signer = verify_revision(Path(cache) / "repo.git", sha, policy, source="infra")
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from setpoint.model.errors import SourceError
from setpoint.source.git import git_env

MODES = ("head", "tag", "tag-and-head")
_TIMEOUT = 60.0


class VerificationError(SourceError):
    """A revision failed its signature check; ``reason`` is the status reason."""

    reason = "VerificationFailed"


class HistoryRewrittenError(SourceError):
    """The followed ref no longer descends from the revision in force."""

    reason = "HistoryRewritten"


@dataclass(frozen=True)
class VerifyPolicy:
    """What a source requires of a revision before it may be applied."""

    mode: str = "head"
    allowed_signers: Path | None = None  # ssh: allowed-signers file
    keyring: Path | None = None  # gpg: public keyring file (binary or armored)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"verify mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.allowed_signers is None and self.keyring is None:
            raise ValueError("verify needs ssh.allowedSigners or gpg.keyring (or both)")


def verify_revision(
    repo_dir: Path,
    sha: str,
    policy: VerifyPolicy,
    *,
    source: str,
    tag_ref: str | None = None,
) -> str:
    """Check ``sha`` (and the tag ``tag_ref`` for tag modes); return who signed.

    Raises :class:`VerificationError` naming the commit (or tag) and the signer
    found, if any, when a required signature is missing, bad or not allowed.
    """
    short = sha[:12]
    with _verifier_env(policy, source) as (opts, env):
        if _git(repo_dir, opts, env, ["cat-file", "-e", f"{sha}^{{commit}}"]).returncode != 0:
            # A damaged cache, not a verdict on the commit: the caller may retry.
            raise SourceError(f"source {source}: commit {short} cannot be read from the mirror")
        signers = []
        if policy.mode in ("tag", "tag-and-head"):
            if tag_ref is None or not tag_ref.startswith("refs/tags/"):
                raise VerificationError(
                    f"source {source}: verify mode {policy.mode!r} needs a tag as ref "
                    f"(commit {short} was not fetched through a tag)"
                )
            tag = tag_ref.removeprefix("refs/tags/")
            obj = _git(repo_dir, opts, env, ["rev-parse", "--verify", "--quiet", tag_ref])
            if obj.returncode != 0:
                raise VerificationError(f"source {source}: tag {tag} is not in the mirror")
            tag_sha = obj.stdout.strip()
            kind = _git(repo_dir, opts, env, ["cat-file", "-t", tag_sha]).stdout.strip()
            if kind != "tag":
                raise VerificationError(
                    f"source {source}: tag {tag} (commit {short}) is a lightweight tag: "
                    "it carries no signature; sign it (git tag -s) or use mode: head"
                )
            peeled = _git(repo_dir, opts, env, ["rev-parse", f"{tag_sha}^{{commit}}"])
            if peeled.stdout.strip() != sha:
                raise VerificationError(
                    f"source {source}: tag {tag} points to {peeled.stdout.strip()[:12]}, "
                    f"not to the fetched commit {short}"
                )
            res = _git(repo_dir, opts, env, ["verify-tag", "--raw", tag_sha])
            ok, who = _judge(res)
            if not ok:
                raise VerificationError(
                    f"source {source}: tag {tag} (commit {short}) {who}; "
                    "nothing from this revision is applied"
                )
            signers.append(f"tag {tag} signed by {who}")
        if policy.mode in ("head", "tag-and-head"):
            res = _git(repo_dir, opts, env, ["verify-commit", "--raw", sha])
            ok, who = _judge(res)
            if not ok:
                raise VerificationError(
                    f"source {source}: commit {short} {who}; nothing from this revision is applied"
                )
            signers.append(f"commit signed by {who}")
        return "; ".join(signers)


def is_ancestor(repo_dir: Path, old: str, new: str) -> bool:
    """Whether commit ``old`` is ``new`` or one of its ancestors (in the mirror).

    A commit missing from the mirror is not an ancestor: fetching ``new``
    brings every one of its ancestors.
    """
    if old == new:
        return True
    res = _git(repo_dir, (), git_env(), ["merge-base", "--is-ancestor", old, new])
    if res.returncode == 0:
        return True
    if res.returncode == 1 or "not a valid" in res.stderr.lower() or "bad object" in res.stderr:
        return False
    raise SourceError(f"cannot compare commits {old[:12]} and {new[:12]}: {_tail(res.stderr)}")


# -- internals -------------------------------------------------------------------


@contextmanager
def _verifier_env(
    policy: VerifyPolicy, source: str
) -> Iterator[tuple[tuple[str, ...], dict[str, str]]]:
    """git ``-c`` options and environment for verification; a temp GNUPGHOME for gpg."""
    env = git_env()
    opts: list[str] = []
    if policy.allowed_signers is not None:
        signers = _readable(policy.allowed_signers, "ssh.allowedSigners", source)
        opts += ["-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={signers}"]
        # No revocation list unless configured: an empty value would be an error.
    else:
        # No allowed signers: an SSH signature can never verify.
        opts += ["-c", f"gpg.ssh.allowedSignersFile={os.devnull}"]
    home: str | None = None
    try:
        home = tempfile.mkdtemp(prefix="setpoint-gpg-")
        os.chmod(home, 0o700)
        env["GNUPGHOME"] = home
        Path(home, "gpg.conf").write_text("trust-model always\nno-autostart\n")
        if policy.keyring is not None:
            keyring = _readable(policy.keyring, "gpg.keyring", source)
            res = _run(["gpg", "--batch", "--quiet", "--import", str(keyring)], env)
            if res.returncode != 0:
                raise VerificationError(
                    f"source {source}: cannot import gpg.keyring {keyring}: {_tail(res.stderr)}"
                )
        yield tuple(opts), env
    finally:
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


def _readable(path: Path, what: str, source: str) -> Path:
    if not path.is_file():
        raise VerificationError(
            f"source {source}: verify.{what} {path} is not a readable file; "
            "no revision can be verified"
        )
    return path.resolve()


_SSH_GOOD = re.compile(r'Good "git" signature for (\S+) with (\S+) key (\S+)')
_SSH_KEY = re.compile(r"with (\S+) key (SHA256:\S+)")
_GPG = re.compile(r"\[GNUPG:\] (GOODSIG|BADSIG|EXPSIG|EXPKEYSIG|REVKEYSIG|ERRSIG) (\S+) ?(.*)")


def _judge(res: subprocess.CompletedProcess[str]) -> tuple[bool, str]:
    """(verified, who signed / what is wrong) from ``git verify-* --raw``."""
    err = res.stderr
    good = _SSH_GOOD.search(err)
    if res.returncode == 0 and good:
        return True, f"{good.group(1)} ({good.group(2)} key {good.group(3)})"
    gpg = {m.group(1): (m.group(2), m.group(3).strip()) for m in _GPG.finditer(err)}
    if res.returncode == 0 and "GOODSIG" in gpg and "VALIDSIG" in err:
        key, name = gpg["GOODSIG"]
        return True, f"{name} (OpenPGP key {key})"
    if "no signature found" in err or (not err.strip() and res.returncode != 0):
        return False, "is not signed"
    key = _SSH_KEY.search(err)
    if key and "No principal matched" in err:
        return False, (
            f"is signed by {key.group(1)} key {key.group(2)}, which is not in the allowed signers"
        )
    if key:
        return False, f"has a bad SSH signature (key {key.group(2)})"
    if "ERRSIG" in gpg or "NO_PUBKEY" in err:
        keyid = gpg.get("ERRSIG", ("unknown", ""))[0]
        return False, f"is signed by OpenPGP key {keyid}, which is not in the keyring"
    for status in ("BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG"):
        if status in gpg:
            key_id, name = gpg[status]
            what = {"BADSIG": "a bad", "EXPSIG": "an expired", "EXPKEYSIG": "an expired-key"}
            return False, (
                f"has {what.get(status, 'a revoked-key')} OpenPGP signature "
                f"by {name or 'unknown'} (key {key_id})"
            )
    if "signature" in err.lower() and "ssh" in err.lower():
        return False, f"has an SSH signature that cannot be checked: {_tail(err)}"
    return False, f"has no valid signature ({_tail(err) or 'git verify failed'})"


def _git(
    repo_dir: Path, opts: Sequence[str], env: dict[str, str], args: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    cmd = ["git", "-c", "core.hooksPath=/dev/null", *opts, f"--git-dir={repo_dir}", *args]
    return _run(cmd, env)


def _run(cmd: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise VerificationError(f"{cmd[0]} is not installed: cannot verify signatures") from None
    except subprocess.TimeoutExpired:
        raise VerificationError(f"{cmd[0]} timed out after {_TIMEOUT:g}s") from None


def _tail(text: str, lines: int = 4) -> str:
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-600:]
