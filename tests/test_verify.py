"""Trusted commits: SSH and OpenPGP signatures with real keys, signed tags, history rewrites."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import GIT_ENV, GitRepo
from helpers import cli, manifest, one_pass, one_stack
from setpoint.config import AgentConfig, ConfigError, load_config


class Keys:
    """Real keys: two SSH signers (alice allowed, eve not) and two OpenPGP keys (bob in the
    keyring, carol not), each usable to sign commits and tags."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        for who in ("alice", "eve"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", d / who],
                check=True,
            )
        pub = (d / "alice.pub").read_text().split()
        self.allowed = d / "allowed_signers"
        self.allowed.write_text(f"alice@example.org {pub[0]} {pub[1]}\n")
        self.gnupg = d / "gnupg"  # the signers' own home: the agent never sees it
        self.gnupg.mkdir(mode=0o700)
        for who in ("bob", "carol"):
            self.gpg("--quick-gen-key", f"{who} <{who}@example.org>", "ed25519", "sign", "never")
        self.keyring = d / "trusted.gpg"
        self.keyring.write_bytes(self.gpg("--export", "bob@example.org"))

    def gpg(self, *args: str) -> bytes:
        env = {**os.environ, "GNUPGHOME": str(self.gnupg)}
        return subprocess.run(
            ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", *args],
            env=env,
            check=True,
            capture_output=True,
        ).stdout

    def sign_args(self, who: str) -> list[str]:
        if who in ("alice", "eve"):
            return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.dir / who}"]
        return ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={who}@example.org"]

    def git(self, repo: GitRepo, who: str | None, *args: str) -> str:
        env = {**os.environ, **GIT_ENV, "GNUPGHOME": str(self.gnupg)}
        sign = self.sign_args(who) if who else []
        return subprocess.run(
            ["git", *sign, *args],
            cwd=repo.path,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def commit(self, repo: GitRepo, who: str | None, content: str) -> str:
        repo.write("m/a.yaml", manifest("File", "f", path="/etc/f", content=content))
        repo.git("add", "-A")
        self.git(repo, who, "commit", "-q", *(["-S"] if who else []), "-m", content.strip())
        return repo.git("rev-parse", "HEAD")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


def config(repo: GitRepo, root: Path, state: Path, **source: Any) -> AgentConfig:
    return one_stack(repo.url, root, state, **source)


def run(cfg: AgentConfig) -> tuple[Any, Any, list[Any]]:
    return one_pass(cfg)[:3]


def test_ssh_signatures_only_allowed_signers_apply(keys, git_repo, root, state_dir):
    cfg = config(git_repo, root, state_dir, verify={"ssh": {"allowedSigners": str(keys.allowed)}})
    good = keys.commit(git_repo, "alice", "v1\n")
    result, status, journal = run(cfg)
    assert result.converged, result
    assert (root / "etc/f").read_text() == "v1\n"
    fetched = [e for e in journal if e.event == "revision.fetched"]
    assert "alice@example.org" in fetched[-1].detail["signer"]

    unsigned = keys.commit(git_repo, None, "v2\n")
    result, status, journal = run(cfg)
    assert result.refused == unsigned and result.revision == good
    stalled = status.condition("Stalled")
    assert stalled.reason == "VerificationFailed"
    assert f"commit {unsigned[:12]} is not signed" in stalled.message
    assert status.last_good_revision == good
    assert (root / "etc/f").read_text() == "v1\n"  # nothing from the revision applied

    # Drift is still corrected from the last verified revision.
    (root / "etc/f").write_text("tampered\n")
    eve = keys.commit(git_repo, "eve", "v3\n")
    result, status, _ = run(cfg)
    assert result.refused == eve
    msg = status.condition("Stalled").message
    assert f"commit {eve[:12]} is signed by ED25519 key SHA256:" in msg
    assert "not in the allowed signers" in msg
    assert (root / "etc/f").read_text() == "v1\n"

    ok = keys.commit(git_repo, "alice", "v4\n")
    result, status, journal = run(cfg)
    assert result.converged and result.revision == ok
    assert status.condition("Stalled") is None
    assert (root / "etc/f").read_text() == "v4\n"
    refused = [e.revision for e in journal if e.event == "revision.refused"]
    assert unsigned in refused and eve in refused


def test_openpgp_signatures_checked_against_the_given_keyring_only(
    keys, git_repo, root, state_dir, monkeypatch
):
    # The user's own keyring (here: the signers' home, which knows carol) must not count.
    monkeypatch.setenv("GNUPGHOME", str(keys.gnupg))
    cfg = config(git_repo, root, state_dir, verify={"gpg": {"keyring": str(keys.keyring)}})
    good = keys.commit(git_repo, "bob", "v1\n")
    result, *_ = run(cfg)
    assert result.converged, result
    carol = keys.commit(git_repo, "carol", "v2\n")
    result, status, _ = run(cfg)
    assert result.refused == carol and result.revision == good
    stalled = status.condition("Stalled")
    assert stalled.reason == "VerificationFailed"
    assert f"commit {carol[:12]} is signed by OpenPGP key" in stalled.message
    assert "not in the keyring" in stalled.message
    ssh_signed = keys.commit(git_repo, "alice", "v3\n")  # not trusted by a gpg-only policy
    result, status, _ = run(cfg)
    assert result.refused == ssh_signed
    assert (root / "etc/f").read_text() == "v1\n"


def test_tampered_signature_is_refused(keys, git_repo, root, state_dir):
    cfg = config(git_repo, root, state_dir, verify={"ssh": {"allowedSigners": str(keys.allowed)}})
    keys.commit(git_repo, "alice", "v1\n")
    assert run(cfg)[0].converged
    keys.commit(git_repo, "alice", "v2\n")
    # Re-write the signed commit object with another message but alice's signature kept.
    raw = git_repo.git("cat-file", "commit", "HEAD").replace("v2", "evil")
    forged = subprocess.run(
        ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
        cwd=git_repo.path,
        input=raw + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    git_repo.git("update-ref", "refs/heads/main", forged)
    result, status, _ = run(cfg)
    assert result.refused == forged
    assert status.condition("Stalled").reason == "VerificationFailed"
    assert forged[:12] in status.condition("Stalled").message


def test_signed_tags(keys, git_repo, root, state_dir):
    signers = {"ssh": {"allowedSigners": str(keys.allowed)}}
    c1 = keys.commit(git_repo, None, "v1\n")  # unsigned commit, signed tag
    keys.git(git_repo, "alice", "tag", "-s", "-m", "release 1", "v1")
    cfg = config(git_repo, root, state_dir, ref="v1", verify={"mode": "tag", **signers})
    result, *_ = run(cfg)
    assert result.converged and result.revision == c1

    # tag-and-head: the same signed tag over an unsigned commit is not enough.
    state2 = state_dir.parent / "state2"
    cfg2 = config(git_repo, root, state2, ref="v1", verify={"mode": "tag-and-head", **signers})
    result, status, _ = run(cfg2)
    assert result.refused == c1
    assert f"commit {c1[:12]} is not signed" in status.condition("Stalled").message

    keys.commit(git_repo, "alice", "v2\n")
    git_repo.git("tag", "v2")  # lightweight: no signature possible
    state3 = state_dir.parent / "state3"
    result, status, _ = run(
        config(git_repo, root, state3, ref="v2", verify={"mode": "tag", **signers})
    )
    assert result.refused and "lightweight tag" in status.condition("Stalled").message

    keys.git(git_repo, "eve", "tag", "-s", "-m", "release 3", "v3")
    state4 = state_dir.parent / "state4"
    result, status, _ = run(
        config(git_repo, root, state4, ref="v3", verify={"mode": "tag", **signers})
    )
    assert result.refused
    assert "tag v3" in status.condition("Stalled").message
    assert "not in the allowed signers" in status.condition("Stalled").message

    # mode: tag on a branch is refused, not silently downgraded.
    state5 = state_dir.parent / "state5"
    result, status, _ = run(config(git_repo, root, state5, verify={"mode": "tag", **signers}))
    assert result.refused and "needs a tag" in status.condition("Stalled").message


def test_force_push_is_refused_unless_rewrites_are_allowed(git_repo, root, state_dir):
    cfg = config(git_repo, root, state_dir)
    git_repo.commit({"m/a.yaml": manifest("File", "f", path="/etc/f", content="v1\n")})
    git_repo.commit({"m/a.yaml": manifest("File", "f", path="/etc/f", content="v2\n")})
    result, *_ = run(cfg)
    applied = result.revision
    assert result.converged and (root / "etc/f").read_text() == "v2\n"
    ff = git_repo.commit({"m/a.yaml": manifest("File", "f", path="/etc/f", content="v3\n")})
    assert run(cfg)[0].revision == ff  # a fast-forward is fine

    git_repo.git("reset", "-q", "--hard", "HEAD~2")
    rewritten = git_repo.commit({"m/a.yaml": manifest("File", "f", path="/etc/f", content="x\n")})
    result, status, _ = run(cfg)
    assert result.refused == rewritten and result.revision == ff
    stalled = status.condition("Stalled")
    assert stalled.reason == "HistoryRewritten"
    assert rewritten[:12] in stalled.message and ff[:12] in stalled.message
    assert (root / "etc/f").read_text() == "v3\n"
    assert applied != rewritten

    result, status, _ = run(config(git_repo, root, state_dir, allowRewrites=True))
    assert result.converged and result.revision == rewritten
    assert (root / "etc/f").read_text() == "x\n"


def test_verify_config_is_checked_and_relative_to_the_config_file(tmp_path, keys):
    base = {"root": ".", "state": "st", "stacks": [{"name": "web", "source": "s"}]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {**base, "sources": [{"name": "s", "url": "/r", "verify": {"mode": "head"}}]}
        )
    )
    with pytest.raises(ConfigError, match=r"verify needs ssh\.allowedSigners or gpg\.keyring"):
        load_config(bad)
    bad.write_text(
        yaml.safe_dump(
            {
                **base,
                "sources": [
                    {
                        "name": "s",
                        "url": "/r",
                        "verify": {"mode": "commit", "gpg": {"keyring": "k"}},
                    }
                ],
            }
        )
    )
    with pytest.raises(ConfigError, match="mode"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(
        yaml.safe_dump(
            {
                **base,
                "sources": [
                    {
                        "name": "s",
                        "url": "/r",
                        "allowRewrites": True,
                        "verify": {"ssh": {"allowedSigners": "keys/allowed"}},
                    }
                ],
            }
        )
    )
    cfg = load_config(good)
    src = cfg.source("s")
    assert src.allow_rewrites is True
    assert src.verify is not None and src.verify.ssh is not None
    assert src.verify.ssh.allowed_signers == tmp_path / "keys/allowed"


def test_missing_allowed_signers_file_refuses_every_revision(
    keys, git_repo, root, state_dir, tmp_path
):
    cfg = config(
        git_repo, root, state_dir, verify={"ssh": {"allowedSigners": str(tmp_path / "nope")}}
    )
    sha = keys.commit(git_repo, "alice", "v1\n")
    result, status, _ = run(cfg)
    assert result.refused == sha and result.revision is None
    assert "is not a readable file" in status.condition("Stalled").message
    assert not (root / "etc/f").exists()


def test_cli_apply_and_status_report_verification_failure(
    keys, git_repo, root, state_dir, tmp_path
):
    keys.commit(git_repo, None, "v1\n")
    conf = tmp_path / "agent.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "root": str(root),
                "state": str(state_dir),
                "sources": [
                    {
                        "name": "repo",
                        "url": git_repo.url,
                        "verify": {"ssh": {"allowedSigners": str(keys.allowed)}},
                    }
                ],
                "stacks": [{"name": "web", "source": "repo", "path": "m"}],
            }
        )
    )
    out = cli("apply", "--config", conf, check=1)
    assert "not signed" in out.stdout + out.stderr
    st = cli("status", "--state", state_dir, "--json", check=0)
    (stack,) = json.loads(st.stdout)
    conds = {c["type"]: c for c in stack["conditions"]}
    assert conds["Stalled"]["reason"] == "VerificationFailed"
    assert not (root / "etc/f").exists()
