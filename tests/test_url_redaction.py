"""Credentials in URLs (user:password, tokens in the query string) never reach errors, the
journal, status, logs or validation messages; user:password@ works as Basic auth."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import cli, docs, manifest
from setpoint.model.redact import redact_text, redact_url
from setpoint.providers.services.probes import run_probe
from setpoint.providers.services.service_spec import HttpProbe, ProbeSpec
from setpoint.source.git import redact_url as git_redact_url
from svc_support import Env, sha, tar_gz

PASSWORD, SIGNATURE = "pa55word-xyz", "t0psecret-sig"
ARCHIVE = tar_gz({"version.txt": "1.0\n"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pa55@host/a.tgz", "https://user:***@host/a.tgz"),
        ("https://ghp_t0ken@host/a.tgz", "https://***@host/a.tgz"),
        ("https://u:p@ss@host:8443/a.tgz", "https://u:***@host:8443/a.tgz"),
        (
            "https://bucket.s3/a.tgz?X-Amz-Credential=AK%2F1&X-Amz-Signature=abc#frag",
            "https://bucket.s3/a.tgz?…redacted",
        ),
        ("https://host/a.tgz", "https://host/a.tgz"),
        ("file:///srv/a.tgz", "file:///srv/a.tgz"),
        ("ssh://git@host/repo.git", "ssh://git@host/repo.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("/srv/repo", "/srv/repo"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    if "?" not in url and url.count("@") < 2:  # the same rule as Git URLs'
        assert git_redact_url(url) == shown


def test_redact_url_can_keep_the_query() -> None:
    assert redact_url("https://u:p@h/x?a=1", query=False) == "https://u:***@h/x?a=1"


def test_redact_text_masks_pieces_a_library_quotes() -> None:
    url = f"https://user:{PASSWORD}@host/a.tgz?sig={SIGNATURE}"
    text = f"nonnumeric port: '{PASSWORD}@host' fetching {url} (sig={SIGNATURE})"
    out = redact_text(text, url)
    assert PASSWORD not in out and SIGNATURE not in out
    assert "https://user:***@host/a.tgz?…redacted" in out


class _Server:
    """Serves ARCHIVE at /app.tar.gz, only with Basic user:PASSWORD and ?sig=SIGNATURE."""

    def __init__(self) -> None:
        want = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
        self.seen: list[str] = []
        seen = self.seen

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                seen.append(self.path)
                path, _, query = self.path.partition("?")
                ok = self.headers.get("Authorization") == want and query == f"sig={SIGNATURE}"
                if not ok:
                    self.send_error(403)
                elif path == "/app.tar.gz":
                    self._send(200, ARCHIVE)
                elif path == "/health":
                    self._send(200, b"ok")
                else:
                    self.send_error(404)

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://user:{PASSWORD}@127.0.0.1:{self.port}{path}?sig={SIGNATURE}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def env(git_repo: GitRepo, root: Path, state_dir: Path) -> Iterator[Env]:
    e = Env(git_repo, root, state_dir)
    yield e
    e.close()


def test_release_url_credentials_work_and_are_never_shown(
    env: Env, server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = manifest("Release", "app", version="1.0", url=server.url("/app.tar.gz"),
                    sha256=sha(ARCHIVE))  # fmt: skip
    wrong_sha = manifest("Release", "bad", version="1.0", url=server.url("/app.tar.gz"),
                         sha256="0" * 64)  # fmt: skip
    missing = manifest("Release", "gone", version="1.0", url=server.url("/nothing.tar.gz"),
                       sha256=sha(ARCHIVE))  # fmt: skip
    env.commit({"m/r.yaml": docs(good, wrong_sha, missing)})
    result = env.sync()
    states = {o.resource: (o.state, o.error or "") for o in result.outcomes}
    assert states["Release/app"][0] == "changed"  # Basic auth and the signed query worked
    assert (env.state / "releases/app/current/version.txt").read_text() == "1.0\n"
    shown = f"http://user:***@127.0.0.1:{server.port}"
    assert states["Release/bad"] == (
        "failed",
        f"cannot create: Release/bad: {shown}/app.tar.gz?…redacted has sha256 {sha(ARCHIVE)}, "
        f"but {'0' * 64} is declared; the download is refused and nothing was changed",
    )
    assert states["Release/gone"] == (
        "failed",
        f"cannot create: cannot download {shown}/nothing.tar.gz?…redacted: HTTP Error 404: "
        "Not Found",
    )
    entries = [[e.message, e.detail] for e in env.ctl.db.history(limit=500)]
    journal = json.dumps(entries, ensure_ascii=False)
    status = cli("status", "--state", env.state).stdout
    status_json = cli("status", "--state", env.state, "--json").stdout
    assert f"{shown}/nothing.tar.gz?…redacted" in journal and shown in status_json
    for text in (journal, status, status_json, caplog.text):
        assert PASSWORD not in text and SIGNATURE not in text


def test_probe_url_credentials_work_and_are_never_shown(server: _Server) -> None:
    ok, message = run_probe(ProbeSpec(http=HttpProbe(url=server.url("/health"))))
    assert (ok, message) == (
        True, f"GET http://user:***@127.0.0.1:{server.port}/health?…redacted → 200"
    )  # fmt: skip
    server.close()
    ok, message = run_probe(ProbeSpec(http=HttpProbe(url=server.url("/health"))))
    assert not ok and message.startswith("probe failed: ")
    assert PASSWORD not in message and SIGNATURE not in message


def test_validation_errors_do_not_show_the_url_credentials(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        manifest("Release", "app", version="1", sha256="0" * 64,
                 url=f"ftp://user:{PASSWORD}@host/a.tgz?sig={SIGNATURE}")
        + "---\n"
        + manifest("Service", "web", command=["x"],
                   readiness={"http": {"url": f"ftp://u:{PASSWORD}@h/?sig={SIGNATURE}"}})
    )  # fmt: skip
    out = cli("validate", tmp_path, check=1)
    text = out.stdout + out.stderr
    assert "url 'ftp://user:***@host/a.tgz?…redacted' must start with file://" in text
    assert "probe url 'ftp://u:***@h/?…redacted' must be http://" in text
    assert PASSWORD not in text and SIGNATURE not in text
