"""How git authenticates to a source: an ssh deploy key, or https credentials from files.

Role: a source's ``auth`` (config: ``sshKeyFile`` + ``knownHostsFile``, or
``usernameFile`` + ``passwordFile`` / ``tokenFile``) becomes what git needs, with
no secret on any command line or in any config git writes:

- ssh: ``GIT_SSH_COMMAND`` naming the key and the known_hosts file (paths only,
  shell-quoted: git runs it through ``sh``), with host key checking strict, so an
  unknown or changed host key fails, and :func:`explain_ssh_failure` turns ssh's
  words into a message saying which host and which file;
- https: :func:`file_credentials` reads the files *at each call* (a rotated
  secret is used at the next fetch) into :class:`~setpoint.source.credentials.Credentials`,
  which :func:`~setpoint.source.credentials.install_helper` hands to git.

Used by :class:`setpoint.source.git.GitSource` (the agent's mirror) and
:class:`setpoint.writeback.gitwork.WorkRepo` (the write commands' clone).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from setpoint.model.errors import SourceError
from setpoint.source.credentials import Credentials, install_helper

# A secret file over this size is not a password: refuse rather than send it.
_MAX_SECRET = 64 * 1024


@dataclass(frozen=True)
class SourceAuth:
    """The files a source authenticates with (never their content)."""

    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    username_file: Path | None = None
    password_file: Path | None = None
    token_file: Path | None = None

    @property
    def is_ssh(self) -> bool:
        return self.known_hosts_file is not None

    @property
    def is_https(self) -> bool:
        return self.password_file is not None or self.token_file is not None

    @classmethod
    def from_config(cls, cfg: object | None) -> SourceAuth | None:
        """From a :class:`setpoint.config.SourceAuthConfig` (duck-typed: no config import)."""
        if cfg is None:
            return None
        return cls(
            *(
                getattr(cfg, k)
                for k in (
                    "ssh_key_file",
                    "known_hosts_file",
                    "username_file",
                    "password_file",
                    "token_file",
                )
            )
        )


def ssh_command(auth: SourceAuth) -> str:
    """The ``GIT_SSH_COMMAND`` for ``auth``: this key only, this known_hosts only, no prompt."""
    assert auth.known_hosts_file is not None
    parts = ["ssh"]
    if auth.ssh_key_file is not None:
        parts += ["-i", str(auth.ssh_key_file), "-o", "IdentitiesOnly=yes"]
    parts += [
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={auth.known_hosts_file}",
        # Only the file the source names pins the host: not the system-wide list.
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes",
    ]  # fmt: skip
    return " ".join(shlex.quote(p) for p in parts)


def git_environment(auth: SourceAuth | None) -> dict[str, str]:
    """Variables to add to git's environment for ``auth`` (ssh only; https uses a helper)."""
    if auth is None or not auth.is_ssh:
        return {}
    return {"GIT_SSH_COMMAND": ssh_command(auth)}


def helper_options(auth: SourceAuth | None, url: str, auth_dir: Path) -> tuple[str, ...]:
    """``-c credential.helper=...`` for https ``auth`` (files read now), else nothing."""
    if auth is None or not auth.is_https:
        return ()
    helper = install_helper(auth_dir, file_credentials(auth, url))
    return ("-c", f"credential.helper={helper}")


def _read_secret(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()[: _MAX_SECRET + 1]
    except OSError as exc:
        raise SourceError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if len(data) > _MAX_SECRET:
        raise SourceError(f"the {what} file {path} is larger than {_MAX_SECRET} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"the {what} file {path} is not UTF-8 text") from None
    # One trailing newline is how editors and `echo` end a file: not part of the secret.
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise SourceError(f"the {what} file {path} is empty")
    if any(c in text for c in "\n\r\0"):
        raise SourceError(
            f"the {what} file {path} holds more than one line (or a NUL byte); "
            "git can only pass one line"
        )
    return text


def file_credentials(auth: SourceAuth, url: str) -> Credentials:
    """The credentials in ``auth``'s files, for ``url``'s scheme and host only.

    ``tokenFile`` alone: the token is the user name with an empty password (as in
    ``https://TOKEN@host``); with ``usernameFile``, the token is the password.
    """
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = _read_secret(auth.username_file, "username") if auth.username_file else None
    if auth.token_file is not None:
        token = _read_secret(auth.token_file, "token")
        username, password = (user, token) if user is not None else (token, "")
    else:
        assert auth.password_file is not None and user is not None
        username, password = user, _read_secret(auth.password_file, "password")
    return Credentials(username, password, parts.scheme.lower(), host)


def ssh_host(url: str) -> str:
    """The host of an ssh URL as known_hosts names it (``host`` or ``[host]:port``)."""
    if "://" in url:
        parts = urlsplit(url)
        host = parts.hostname or ""
        return f"[{host}]:{parts.port}" if parts.port and parts.port != 22 else host
    m = re.match(r"^(?:[^@/]*@)?(\[[^\]]*\]|[^:/]*):", url)
    return m.group(1).strip("[]") if m else url


def explain_ssh_failure(stderr: str, url: str, auth: SourceAuth | None) -> str | None:
    """A clear message for a host-key failure in ssh's ``stderr``; None for anything else."""
    known = auth.known_hosts_file if auth is not None else None
    where = str(known) if known is not None else "the known_hosts file"
    host = ssh_host(url)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or (
        "Host key for" in stderr and ("has changed" in stderr)
    ):
        return (
            f"the host key of {host} has changed: it does not match the one in {where}; "
            "refused (the server was replaced or someone is in the middle). If the new key "
            f"is expected, check it with the server's owner and replace its line in {where}"
        )
    if "Host key verification failed" in stderr or re.search(
        r"No \S+ host key is known for", stderr
    ):
        return (
            f"the host key of {host} is not in {where}; refused (host keys are never accepted "
            f"on first use). Add it: ssh-keyscan the host, verify the fingerprint with its "
            f"owner, and append the line to {where}"
        )
    return None
