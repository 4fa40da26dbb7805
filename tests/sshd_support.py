"""A real sshd serving bare Git repositories on a loopback port, for the ssh source tests.

Debian's openssh-server (``/usr/sbin/sshd``) runs in the foreground with its own
config, host key and pid file in a temporary directory, on 127.0.0.1 and a free
port. Logins are by public key only, for one unprivileged account (never root):
as root, the system user ``setpoint-git`` (created if missing); otherwise the
current user (an unprivileged sshd can only log its own user in). The deploy
key is authorized with ``restrict`` (no pty, no forwarding: git only).

Everything the account reads (authorized keys, the repositories) lives in a
world-traversable ``mkdtemp`` directory, since pytest's ``tmp_path`` is under a
0700 directory of root's that the account could not enter.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import stop_process, wait_for

SSHD = "/usr/sbin/sshd"
GIT_USER = "setpoint-git"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def _account() -> str:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(GIT_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", GIT_USER],
            check=True,
            capture_output=True,
        )
    # "*": no password, but not locked ("!"): sshd refuses every login to a locked account.
    subprocess.run(["usermod", "-p", "*", GIT_USER], check=True, capture_output=True)
    return GIT_USER


@dataclass
class Sshd:
    port: int
    user: str
    dir: Path  # world-traversable: repositories and authorized keys
    host_key_pub: str  # "ssh-ed25519 AAAA..." of the server
    deploy_key: Path  # the client's private key
    known_hosts: Path  # pins the server's host key
    log: Path

    @property
    def host(self) -> str:
        return f"[127.0.0.1]:{self.port}"

    def url(self, repo: str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{self.dir / repo}"

    def bare_repo(self, name: str, seed: Path) -> Path:
        """A bare clone of the work repository ``seed``, owned by the git account."""
        bare = self.dir / name
        subprocess.run(
            ["git", "clone", "-q", "--bare", str(seed), str(bare)], check=True, capture_output=True
        )
        if os.geteuid() == 0:
            shutil.chown(bare, self.user)
            for dirpath, dirnames, filenames in os.walk(bare):
                for n in dirnames + filenames:
                    shutil.chown(os.path.join(dirpath, n), self.user)
        return bare


def start_sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not os.access(SSHD, os.X_OK):
        pytest.skip(f"{SSHD} is missing: apt-get install openssh-server (scripts/setup.sh dev)")
    user = _account()
    top = Path(tempfile.mkdtemp(prefix="setpoint-sshd-"))
    top.chmod(0o755)
    conf_dir = tmp_path / "sshd"
    conf_dir.mkdir()
    host_pub = _keygen(conf_dir / "host_key", "host")
    deploy = tmp_path / "deploy_key"
    deploy_pub = _keygen(deploy, "deploy")
    keys = top / "authorized_keys"
    keys.mkdir()
    (keys / user).write_text(f"restrict {deploy_pub}\n")
    (keys / user).chmod(0o644)
    port = _free_port()
    config = conf_dir / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {conf_dir / 'host_key'}\n"
        f"PidFile {conf_dir / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {keys}/%u\n"
        # The key files are in temp dirs, not a home directory sshd would check.
        "StrictModes no\n"
        "PermitRootLogin no\n"
        f"AllowUsers {user}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "LogLevel VERBOSE\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    log = tmp_path / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=out)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"sshd exited {proc.returncode}: {log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    return s.recv(4).startswith(b"SSH-")
            except OSError:
                return False

        wait_for(ready, timeout=20, interval=0.05, what="sshd to listen")
        yield Sshd(port, user, top, host_pub, deploy, known, log)
    finally:
        stop_process(proc, timeout=10)
        shutil.rmtree(top, ignore_errors=True)


def other_host_key(tmp_path: Path) -> str:
    """A host key no server here uses (for a known_hosts line that does not match)."""
    name = tmp_path / f"other_{time.monotonic_ns()}"
    return _keygen(name, "other")
