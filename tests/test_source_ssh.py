"""ssh sources with a deploy key against a real sshd: clone, poll and push; host keys pinned.

The sshd (tests/sshd_support.py) runs on a loopback port with its own host key and
one unprivileged git account whose only authorized key is the deploy key.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import GitRepo
from helpers import cli, manifest, one_pass, one_stack
from setpoint.model.errors import SourceError
from setpoint.source import GitSource
from setpoint.source.auth import SourceAuth, explain_ssh_failure, ssh_command, ssh_host
from sshd_support import Sshd, other_host_key, start_sshd
from wb_helpers import AUTHOR


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    yield from start_sshd(tmp_path)


@pytest.fixture
def bare(sshd: Sshd, git_repo: GitRepo) -> Path:
    git_repo.commit({"m/f.yaml": manifest("File", "f", path="/etc/f", content="v1\n")})
    return sshd.bare_repo("infra.git", git_repo.path)


def auth_of(sshd: Sshd, known: Path | None = None) -> dict[str, str]:
    return {"sshKeyFile": str(sshd.deploy_key), "knownHostsFile": str(known or sshd.known_hosts)}


def test_agent_clones_polls_and_set_pushes_over_ssh_with_a_deploy_key(
    tmp_path: Path, sshd: Sshd, bare: Path, root: Path, state_dir: Path
) -> None:
    cfg = one_stack(sshd.url("infra.git"), root, state_dir, auth=auth_of(sshd))
    result, status, _journal, _inv = one_pass(cfg)
    assert result.converged, result.errors
    assert (root / "etc/f").read_text() == "v1\n"

    # The pipeline's commit goes over the same ssh source, with its key (--config).
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
    cli("set", "File/f", "spec.content=v2", "--config", config_file, "--author", AUTHOR,
        "--push", check=0)  # fmt: skip

    result, status, _journal, _inv = one_pass(cfg)  # the poll sees the new commit
    assert result.converged, result.errors
    assert (root / "etc/f").read_text() == "v2"
    assert status.applied_revision == status.fetched_revision
    assert "Accepted publickey" in sshd.log.read_text()  # the deploy key, not anything else


def test_unknown_host_key_is_refused(tmp_path: Path, sshd: Sshd, bare: Path) -> None:
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    auth = SourceAuth(sshd.deploy_key, known)
    src = GitSource("infra", sshd.url("infra.git"), "main", tmp_path / "cache", auth=auth)
    for call in (src.remote_revision, src.fetch):
        with pytest.raises(SourceError) as err:
            call()
        assert f"host key of [127.0.0.1]:{sshd.port} is not in {known}" in str(err.value)
    assert not (tmp_path / "cache/repo.git/refs/heads/main").exists()
    assert known.read_text() == ""  # never accepted on first use


def test_changed_host_key_is_refused(
    tmp_path: Path, sshd: Sshd, bare: Path, root: Path, state_dir: Path
) -> None:
    known = tmp_path / "stale_known_hosts"
    known.write_text(f"{sshd.host} {other_host_key(tmp_path)}\n")
    cfg = one_stack(sshd.url("infra.git"), root, state_dir, auth=auth_of(sshd, known))
    result, status, journal, _inv = one_pass(cfg)
    assert not result.converged
    assert f"host key of [127.0.0.1]:{sshd.port} has changed" in (result.fetch_error or "")
    ready = status.condition("Ready")
    assert ready is not None and not ready.status and ready.reason == "SourceFailed"
    assert any(e.event == "source.failed" and "has changed" in e.message for e in journal)
    assert not (root / "etc/f").exists()


def test_a_key_the_server_does_not_know_is_refused(
    tmp_path: Path, sshd: Sshd, bare: Path
) -> None:
    key = tmp_path / "stranger_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
    )
    src = GitSource(
        "infra", sshd.url("infra.git"), "main", tmp_path / "cache",
        auth=SourceAuth(key, sshd.known_hosts),
    )  # fmt: skip
    with pytest.raises(SourceError, match="Permission denied"):
        src.fetch()


def test_ssh_command_quotes_paths_and_turns_checking_on() -> None:
    auth = SourceAuth(Path("/keys/deploy key"), Path("/etc/known hosts;rm -rf x"))
    words = shlex.split(ssh_command(auth))
    assert words == [
        "ssh", "-i", "/keys/deploy key", "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/etc/known hosts;rm -rf x",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
    ]  # fmt: skip


def test_host_names_in_messages_follow_known_hosts_spelling() -> None:
    assert ssh_host("ssh://git@example.com/ops/infra.git") == "example.com"
    assert ssh_host("ssh://git@example.com:2222/ops/infra.git") == "[example.com]:2222"
    assert ssh_host("git@example.com:ops/infra.git") == "example.com"
    msg = explain_ssh_failure(
        "No ED25519 host key is known for example.com and you have requested strict checking."
        " | Host key verification failed.",
        "git@example.com:ops/infra.git",
        SourceAuth(Path("/k"), Path("/etc/setpoint/known_hosts")),
    )
    assert msg is not None
    assert "host key of example.com is not in /etc/setpoint/known_hosts" in msg
    assert explain_ssh_failure("Permission denied (publickey).", "git@h:x", None) is None
