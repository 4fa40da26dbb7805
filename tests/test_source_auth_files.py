"""https sources with ``auth: {usernameFile, passwordFile}`` or ``{tokenFile}``: the files are
read at each fetch (rotation works), the secret reaches git only through the credential
helper, and never a command line, the mirror's config, an error, the journal or status.
Against the real smart-HTTP server of test_source_credentials (git http-backend + Basic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import manifest, one_pass, one_stack
from setpoint.config import SourceConfig
from setpoint.model.errors import SourceError
from setpoint.source.auth import SourceAuth
from setpoint.source.configured import git_source
from test_source_credentials import PASSWORD, TOKEN, Server, Spy, files_holding, server, spy

__all__ = ["server", "spy"]  # fixtures


def secret(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / "secrets" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(text + "\n")
    p.chmod(0o600)
    return p


def test_password_file_is_read_at_each_fetch_and_never_leaks(
    tmp_path: Path, git_repo: GitRepo, server: Server, spy: Spy, root: Path, state_dir: Path
) -> None:
    user = secret(tmp_path, "user", "ops")
    password = secret(tmp_path, "password", PASSWORD)
    auth = {"usernameFile": str(user), "passwordFile": str(password)}
    cfg = one_stack(f"{server.base}/repo/.git", root, state_dir, auth=auth)
    result, status, journal, _inv = one_pass(cfg)
    assert result.converged, result.errors
    assert server.handler.authenticated > 0

    # Rotation: the server now wants a new password; the file changes, the config does not.
    server.handler.userinfo = "ops:rotated-9Kd2"
    git_repo.commit({"m/a.yaml": manifest("File", "f", path="/etc/f", content="v2\n")})
    result, status, journal, _inv = one_pass(cfg)
    assert "Authentication failed" in (result.fetch_error or "")
    password.write_text("rotated-9Kd2\n")
    result, status, journal, _inv = one_pass(cfg)
    assert result.converged, result.errors
    assert (root / "etc/f").read_text() == "v2\n"

    everything = spy.everything() + repr(status) + repr(journal)
    assert PASSWORD not in everything and "rotated-9Kd2" not in everything
    cache = state_dir / "sources" / "repo"
    assert files_holding(state_dir, "rotated-9Kd2") == ["sources/repo/auth/credentials"]
    assert "rotated" not in (cache / "repo.git/config").read_text()


def test_token_file_alone_is_the_user_name(
    tmp_path: Path, git_repo: GitRepo, server: Server, spy: Spy
) -> None:
    server.handler.userinfo = f"{TOKEN}:"
    token = secret(tmp_path, "token", TOKEN)
    cfg = SourceConfig.model_validate(
        {"name": "s", "url": f"{server.base}/repo/.git", "auth": {"tokenFile": str(token)}}
    )
    src = git_source(cfg, tmp_path / "cache")
    assert src.fetch() == git_repo.git("rev-parse", "HEAD")
    assert TOKEN not in spy.everything()


def test_unreadable_secret_file_is_named_not_shown(tmp_path: Path, server: Server) -> None:
    src_cfg = SourceConfig.model_validate(
        {
            "name": "s",
            "url": f"{server.base}/repo/.git",
            "auth": {"tokenFile": str(tmp_path / "missing")},
        }
    )
    with pytest.raises(SourceError, match=r"cannot read the token file .*missing"):
        git_source(src_cfg, tmp_path / "cache").fetch()
    two_lines = secret(tmp_path, "two", f"{TOKEN}\nsecond")
    src = git_source(
        src_cfg.model_copy(update={"auth": src_cfg.auth.model_copy(  # type: ignore[union-attr]
            update={"token_file": two_lines})}),
        tmp_path / "cache2",
    )  # fmt: skip
    with pytest.raises(SourceError) as err:
        src.fetch()
    assert "more than one line" in str(err.value) and TOKEN not in str(err.value)


def test_auth_is_checked_against_the_url() -> None:
    base = {"name": "s", "ref": "main"}
    with pytest.raises(ValueError, match="need an https:// URL"):
        SourceConfig.model_validate({**base, "url": "git@h:x", "auth": {"tokenFile": "/t"}})
    with pytest.raises(ValueError, match="need an ssh URL"):
        SourceConfig.model_validate(
            {**base, "url": "https://h/x", "auth": {"sshKeyFile": "/k", "knownHostsFile": "/h"}}
        )
    with pytest.raises(ValueError, match="sshKeyFile needs knownHostsFile"):
        SourceConfig.model_validate({**base, "url": "git@h:x", "auth": {"sshKeyFile": "/k"}})
    with pytest.raises(ValueError, match="in one place"):
        SourceConfig.model_validate(
            {**base, "url": "https://u:p@h/x", "auth": {"tokenFile": "/t"}}
        )
    assert SourceAuth(token_file=Path("/t")).is_https
