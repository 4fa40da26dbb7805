"""Credentials in a source URL: handed to git by a credential helper reading a 0600 file,
never on a command line, in a child's environment, in the mirror's config, the journal or
status. Against a real smart-HTTP server (git http-backend) that checks Basic auth."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import GitRepo
from helpers import manifest, one_pass, one_stack
from setpoint.model.errors import SourceError
from setpoint.source import GitSource
from setpoint.source.credentials import install_helper, split_credentials

PASSWORD = "pw-Zq8Xv3"  # distinctive: found only where it really leaked
TOKEN = "tok-Lm4Rw9"
REAL_GIT = shutil.which("git") or "git"


class _Handler(BaseHTTPRequestHandler):
    project_root = ""
    userinfo = f"ops:{PASSWORD}"  # what the server accepts
    authenticated = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        want = base64.b64encode(self.userinfo.encode()).decode()
        if self.headers.get("Authorization") != f"Basic {want}":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        type(self).authenticated += 1
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": "/usr/bin:/bin",
            "GIT_PROJECT_ROOT": self.project_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "ops",
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        if self.headers.get("Git-Protocol"):
            env["HTTP_GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        # The real git, not the test's logging shim: the server's side is not under test.
        out = subprocess.run(
            [REAL_GIT, "http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _handle
    do_POST = _handle


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT
    handler: type[_Handler]

    def url(self, userinfo: str) -> str:
        return f"{self.base.replace('://', f'://{userinfo}@')}/repo/.git"


@pytest.fixture
def server(git_repo: GitRepo) -> Iterator[Server]:
    git_repo.commit({"m/a.yaml": manifest("File", "f", path="/etc/f", content="v1\n")})
    handler = type("H", (_Handler,), {"project_root": str(git_repo.path.parent)})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_port}", handler)
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass
class Spy:
    argv: Path  # the command line of every git the agent starts
    environ: Path  # its environment
    trace: Path  # GIT_TRACE: every child git starts in turn (remote-http, helpers...)

    def everything(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.argv, self.environ, self.trace))


@pytest.fixture
def spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Spy:
    """A ``git`` first on PATH that logs its argv and environment, then execs the real git."""
    bindir = tmp_path / "shim"
    bindir.mkdir()
    s = Spy(tmp_path / "argv.log", tmp_path / "environ.log", tmp_path / "trace.log")
    for p in (s.argv, s.environ, s.trace):
        p.write_text("")
    (bindir / "git").write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> '{s.argv}'\n"
        f"env >> '{s.environ}'\n"
        f"GIT_TRACE='{s.trace}'; export GIT_TRACE\n"
        f"exec '{REAL_GIT}' \"$@\"\n"
    )
    (bindir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return s


def files_holding(top: Path, secret: str) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink() and secret.encode() in p.read_bytes():
                found.append(str(p.relative_to(top)))
    return sorted(found)


def test_password_never_reaches_a_command_line_an_environment_or_the_mirror(
    tmp_path: Path, git_repo: GitRepo, server: Server, spy: Spy
) -> None:
    head = git_repo.git("rev-parse", "HEAD")
    src = GitSource("test", server.url(f"ops:{PASSWORD}"), "main", tmp_path / "cache")
    assert src.remote_revision() == head
    assert src.fetch() == head
    assert (src.tree(head) / "m/a.yaml").is_file()
    assert server.handler.authenticated > 0  # the password was sent, and was right

    argv = spy.argv.read_text()
    assert "ls-remote" in argv and "fetch" in argv  # the spy saw the calls...
    assert f"{server.base}/repo/.git" in argv  # ...with the URL stripped of user info
    assert "remote-http" in spy.trace.read_text()  # and git's own children
    assert PASSWORD not in spy.everything()
    assert "ops@" not in argv

    cache = tmp_path / "cache"
    assert PASSWORD not in (cache / "repo.git/config").read_text()
    # The one copy on disk: 0600, in a 0700 directory.
    assert files_holding(cache, PASSWORD) == ["auth/credentials"]
    assert stat.S_IMODE((cache / "auth").stat().st_mode) == 0o700
    assert stat.S_IMODE((cache / "auth/credentials").stat().st_mode) == 0o600


def test_token_as_user_name_works_and_stays_off_command_lines(
    tmp_path: Path, git_repo: GitRepo, server: Server, spy: Spy
) -> None:
    server.handler.userinfo = f"{TOKEN}:"  # GitHub-style: the token is the user, no password
    src = GitSource("test", server.url(TOKEN), "main", tmp_path / "cache")
    assert src.fetch() == git_repo.git("rev-parse", "HEAD")
    assert TOKEN not in spy.everything()
    assert TOKEN not in repr(src)


def test_wrong_password_fails_clearly_with_the_url_masked(
    tmp_path: Path, server: Server, spy: Spy
) -> None:
    server.handler.userinfo = "ops:rotated"
    src = GitSource("test", server.url(f"ops:{PASSWORD}"), "main", tmp_path / "cache")
    for call in (src.remote_revision, src.fetch):
        with pytest.raises(SourceError) as err:
            call()
        msg = str(err.value)
        assert f"cannot reach http://ops:***@{server.base[7:]}/repo/.git" in msg
        assert "Authentication failed" in msg  # git's own words
        assert PASSWORD not in msg
    assert PASSWORD not in spy.everything()


def test_rotated_password_is_used_and_removed_credentials_are_forgotten(
    tmp_path: Path, git_repo: GitRepo, server: Server
) -> None:
    head = git_repo.git("rev-parse", "HEAD")
    cache = tmp_path / "cache"
    assert GitSource("t", server.url(f"ops:{PASSWORD}"), "main", cache).fetch() == head
    server.handler.userinfo = "ops:new-pw"
    assert GitSource("t", server.url("ops:new-pw"), "main", cache).fetch() == head
    assert files_holding(cache, PASSWORD) == []
    # The URL no longer carries credentials: the file holding them goes too.
    with pytest.raises(SourceError, match="could not read Username"):
        GitSource("t", f"{server.base}/repo/.git", "main", cache).fetch()
    assert not (cache / "auth").exists()


def test_helper_answers_for_the_urls_own_host_only(tmp_path: Path) -> None:
    url, creds = split_credentials(f"https://bot:{PASSWORD}@git.example.com:8443/ops/x.git")
    assert url == "https://git.example.com:8443/ops/x.git"
    assert creds is not None
    helper = install_helper(tmp_path / "auth", creds)
    assert PASSWORD not in helper

    def ask(action: str, request: str) -> str:
        return subprocess.run(
            helper[1:] + f" {action}", shell=True, input=request, capture_output=True,
            text=True, check=True,
        ).stdout  # fmt: skip

    good = "protocol=https\nhost=git.example.com:8443\n\n"
    assert ask("get", good) == f"username=bot\npassword={PASSWORD}\n"
    # A redirect to another host, or plain http, or another port: nothing.
    for other in ("evil.example.com:8443", "git.example.com", "git.example.com:443"):
        assert ask("get", f"protocol=https\nhost={other}\n\n") == ""
    assert ask("get", "protocol=http\nhost=git.example.com:8443\n\n") == ""
    assert ask("store", good) == ""


def test_split_credentials_decodes_and_refuses_what_cannot_be_passed() -> None:
    url, creds = split_credentials("https://a%40b:p%3Aw%2F@h/x.git")
    assert url == "https://h/x.git"
    assert creds is not None and (creds.username, creds.password) == ("a@b", "p:w/")
    assert "p:w/" not in repr(creds)
    assert split_credentials("ssh://git@h/x.git") == ("ssh://git@h/x.git", None)
    assert split_credentials("git@h:x.git") == ("git@h:x.git", None)
    with pytest.raises(SourceError, match=r"password in a ssh:// Git URL cannot be used"):
        GitSource("s", "ssh://git:pw@h/x.git", "main", Path("/nonexistent"))
    with pytest.raises(SourceError, match="newline"):
        split_credentials("https://u:a%0Ab@h/x.git")


def test_journal_status_and_state_dir_hold_no_password(
    git_repo: GitRepo, root: Path, state_dir: Path, server: Server
) -> None:
    cfg = one_stack(server.url(f"ops:{PASSWORD}"), root, state_dir)
    result, *_ = one_pass(cfg)
    assert result.converged, result
    server.handler.userinfo = "ops:rotated"
    git_repo.commit({"m/a.yaml": manifest("File", "f", path="/etc/f", content="v2\n")})
    result, status, journal, _ = one_pass(cfg)
    assert result.fetch_error and PASSWORD not in result.fetch_error
    msg = status.condition("Ready").message
    assert "ops:***@127.0.0.1" in msg and "Authentication failed" in msg
    assert all(PASSWORD not in (e.message + repr(e.detail)) for e in journal)
    # Nowhere in the state dir (DB, WAL, mirror, trees) but the helper's own file.
    assert files_holding(state_dir, PASSWORD) == ["sources/repo/auth/credentials"]
