"""Credentials of a Git URL, handed to git by a credential helper reading a 0600 file.

A URL such as ``https://bot:TOKEN@host/repo.git`` must never reach git's command
line (``/proc/PID/cmdline`` is readable by every local user), the environment of
a child, or the mirror's config. :func:`split_credentials` takes the user info
out of the URL; :class:`GitSource` gives git the bare URL and, for a URL that had
credentials, ``-c credential.helper=...`` naming a small shell script written by
:func:`install_helper` under the source's 0700 cache dir. The script answers
git's ``get`` requests from the 0600 file beside it, for the URL's own scheme
and host only (a redirect to another host gets nothing), and ignores ``store``
and ``erase``. Only paths appear on any command line.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from setpoint.atomic import write_atomic
from setpoint.model.errors import SourceError

# Schemes whose credentials git asks a credential helper for (through curl).
_HELPER_SCHEMES = frozenset({"http", "https", "ftp", "ftps"})
_USERINFO_RE = re.compile(r"^([a-z][a-z0-9+.-]*)://([^/@]*)@([^/?#]*)", re.IGNORECASE)


@dataclass(frozen=True)
class Credentials:
    """User and password of a URL (percent-decoded), for ``protocol`` and ``host`` only."""

    username: str
    password: str
    protocol: str  # as git names it in a credential request: "https"
    host: str  # "host" or "host:port", as git sends it

    def __repr__(self) -> str:  # never the secret, not even in a traceback
        return f"Credentials({self.protocol}://{self.host}, user=***)"


def split_credentials(url: str) -> tuple[str, Credentials | None]:
    """``url`` without its user info, and the credentials it carried (None if none).

    An http(s) URL with only a user part (``https://TOKEN@host``) is a token:
    it becomes the user name, with an empty password. Other schemes keep a
    bare user (``ssh://git@host``); a password there is refused, since ssh
    would get it on its command line and never use it.
    """
    match = _USERINFO_RE.match(url)
    if not match:
        return url, None
    scheme, userinfo, host = match.groups()
    scheme = scheme.lower()
    if scheme not in _HELPER_SCHEMES:
        if ":" in userinfo:
            raise SourceError(
                f"a password in a {scheme}:// Git URL cannot be used (it would show on the "
                "command line of ssh, which ignores it); authenticate with a key instead"
            )
        return url, None
    user, _, password = userinfo.partition(":")
    creds = Credentials(unquote(user), unquote(password), scheme, host)
    for value in (creds.username, creds.password):
        # git's credential protocol is line-based: such a value cannot be passed.
        if any(c in value for c in "\n\r\0"):
            raise SourceError(
                "the user or password in a Git URL holds a newline or NUL byte, which git "
                "cannot use; fix the URL in the config"
            )
    return f"{match.group(1)}://{host}{url[match.end():]}", creds


_HELPER = """\
#!/bin/sh
# Written by setpoint: answers git's credential requests for {origin} only,
# from the 0600 file beside this script (see setpoint/source/credentials.py).
[ "$1" = get ] || exit 0
protocol= host=
while IFS= read -r line; do
  case $line in
    protocol=*) protocol=${{line#protocol=}} ;;
    host=*) host=${{line#host=}} ;;
  esac
done
[ "$protocol" = {protocol} ] && [ "$host" = {host} ] || exit 0
exec cat -- {secret}
"""


def install_helper(auth_dir: Path, creds: Credentials) -> str:
    """Write (or refresh) the helper and its secret file; return the ``credential.helper`` value.

    ``auth_dir`` is made 0700 and the secret file 0600; both are rewritten
    atomically only when their content changed (a rotated password in the config).
    """
    auth_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(auth_dir, 0o700)  # whatever the umask or an older mode
    secret = auth_dir / "credentials"
    helper = auth_dir / "helper.sh"
    _write_private(secret, f"username={creds.username}\npassword={creds.password}\n")
    _write_private(
        helper,
        _HELPER.format(
            origin=f"{creds.protocol}://{creds.host}",
            protocol=shlex.quote(creds.protocol),
            host=shlex.quote(creds.host),
            secret=shlex.quote(str(secret)),
        ),
    )
    # Run through sh (a state dir on a noexec mount still works); "!" makes git
    # run it as a shell command, so a path with spaces stays one word.
    return "!/bin/sh " + shlex.quote(str(helper))


def remove_helper(auth_dir: Path) -> None:
    """Forget credentials once the URL no longer carries any."""
    if auth_dir.exists():
        shutil.rmtree(auth_dir)


def _write_private(path: Path, text: str) -> None:
    data = text.encode()
    try:
        if path.read_bytes() == data and (os.stat(path).st_mode & 0o077) == 0:
            return
    except FileNotFoundError:
        pass
    # Created 0600: the secret is never readable by others, not even briefly.
    write_atomic(path, data, mode=0o600, tmp_prefix=".tmp-", tmp_suffix="")
