"""POST /hooks/git on a real agent: signatures checked, bad calls trigger nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import test_watch
from helpers import manifest, wait_for
from test_watch import FAST, read

SECRET = b"hook-secret"

run_agent = test_watch.run_agent  # the shared fixture: a real agent process


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url + "/hooks/git", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@pytest.fixture
def hooked(git_repo, tmp_path: Path, run_agent):  # type: ignore[no-untyped-def]
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v1\n")})
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    agent = run_agent(webhookSecretFile=str(secret))
    return agent


def checks(agent) -> int:  # type: ignore[no-untyped-def]
    return int(agent.status()["agent"]["sources"]["infra"]["checks"])


def fetched(agent) -> list[str]:  # type: ignore[no-untyped-def]
    return [e["revision"] for e in agent.journal("revision.fetched")]


def test_bad_or_missing_signatures_get_401_and_fetch_nothing(git_repo, root, hooked):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v2\n")})
    n = checks(hooked)
    body = b'{"ref": "refs/heads/main"}'
    for headers in (
        {},
        {"X-Hub-Signature-256": sign(body, b"wrong")},
        {"X-Hub-Signature-256": "sha256="},
        {"X-Gitlab-Token": "wrong"},
        {"X-Setpoint-Signature": sign(b"other body")},
    ):
        status, answer = post(hooked.url, body, headers)
        assert status == 401, (headers, answer)
    assert hooked.status()["agent"]["webhook"]["refused"] == 5
    assert checks(hooked) == n
    assert len(fetched(hooked)) == 1  # only the first revision, at start-up
    assert read(root / "etc/motd") == "v1\n"


@pytest.mark.parametrize("kind", ["github", "gitlab", "generic"])
def test_a_valid_webhook_fetches_and_applies_at_once(git_repo, root, hooked, kind):
    new = git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v2\n")})
    body = json.dumps({"repository": {"clone_url": git_repo.url}}).encode()
    headers = {
        "github": {"X-Hub-Signature-256": sign(body)},
        "gitlab": {"X-Gitlab-Token": SECRET.decode()},
        "generic": {"X-Setpoint-Signature": sign(body)},
    }[kind]
    status, answer = post(hooked.url, body, headers)
    assert status == 202 and answer == {"sources": ["infra"]}
    wait_for(lambda: read(root / "etc/motd") == "v2\n", timeout=FAST, what="commit applied")
    assert fetched(hooked)[-1] == new


def test_a_payload_for_another_repository_triggers_nothing(git_repo, hooked):
    body = json.dumps({"repository": {"clone_url": "https://git.example.org/other.git"}}).encode()
    n = checks(hooked)
    status, answer = post(hooked.url, body, {"X-Hub-Signature-256": sign(body)})
    assert status == 202 and answer == {"sources": []}
    assert checks(hooked) == n


def test_a_storm_of_webhooks_collapses_into_one_fetch(git_repo, root, hooked):
    new = git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="v3\n")})
    n = checks(hooked)
    body = b"{}"  # no repository named: every source
    # A storm: 30 calls at once (as a busy Git host's retries and fan-out deliver them).
    with ThreadPoolExecutor(30) as pool:
        codes = list(pool.map(
            lambda _: post(hooked.url, body, {"X-Setpoint-Signature": sign(body)})[0], range(30)
        ))
    assert codes == [202] * 30
    wait_for(lambda: read(root / "etc/motd") == "v3\n", timeout=FAST, what="commit applied")
    wait_for(lambda: not hooked.passes()["queued"], what="queue drained")
    assert fetched(hooked).count(new) == 1
    assert checks(hooked) - n < 30 / 3  # calls during a check collapse into one more
