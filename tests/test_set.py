"""``setpoint set``: edit a field where it is declared, validate, commit, push (real bare repos)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import cli
from setpoint.writeback.gitwork import Author
from setpoint.writeback.setfield import FieldSetter, parse_assignments
from setpoint.writeback.transaction import Conflict, Target, commit_message, land
from wb_helpers import AUTHOR, SHA_A, SHA_B, Remote, git, release

FORMATTED = f"""\
# Releases of the api service.  Owner: team-api
apiVersion: setpoint/v1
kind: Release
metadata:
    name: api        # the public API
spec:
    # bumped by CI
    version: '1.4.2'   # keep quoted
    url: "https://artifacts.example/api-1.4.2.tar.gz"
    sha256: {SHA_A}
    keep:   3
    dependsOn: [ ]

---
# a second document, untouched
apiVersion: setpoint/v1
kind: File
metadata: {{name: motd}}
spec: {{path: /etc/motd, content: "hi\\n"}}
"""


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


def set_cmd(remote: Remote, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    return cli("set", *args, "--repo", remote.url, "--author", AUTHOR, "--push", check=check)


def test_only_the_edited_scalars_change_byte_for_byte(remote: Remote) -> None:
    remote.push_files({"apps/api.yaml": FORMATTED})
    new_url = "https://artifacts.example/api-1.4.3.tar.gz"
    set_cmd(
        remote, "Release/api", "spec.version=1.4.3", f"spec.url={new_url}", f"spec.sha256={SHA_B}"
    )
    expected = (
        FORMATTED.replace("version: '1.4.2'", "version: '1.4.3'")
        .replace('"https://artifacts.example/api-1.4.2.tar.gz"', f'"{new_url}"')
        .replace(f"sha256: {SHA_A}", f"sha256: {SHA_B}")
    )
    assert remote.show("apps/api.yaml") == expected
    assert remote.log("%an <%ae>") == AUTHOR + "\n"
    body = remote.log("%B")
    assert body.startswith("set Release/api spec.version=1.4.3")
    assert "Release/api spec.version: 1.4.2 -> 1.4.3 (apps/api.yaml:8)" in body


def test_a_version_that_looks_like_a_number_stays_a_string(remote: Remote) -> None:
    remote.push_files({"api.yaml": release("api", "1.4.2")})
    set_cmd(remote, "Release/api", "spec.version=1.10")
    text = remote.show("api.yaml")
    assert 'version: "1.10"\n' in text
    assert yaml.safe_load(text)["spec"]["version"] == "1.10"
    assert text == release("api", "1.4.2").replace("version: 1.4.2", 'version: "1.10"')


def test_nothing_to_change_exits_3_and_commits_nothing(remote: Remote) -> None:
    remote.push_files({"api.yaml": release("api", "1.4.2")})
    before = remote.head()
    proc = set_cmd(remote, "Release/api", "spec.version=1.4.2", check=3)
    assert "nothing to change" in proc.stdout
    assert remote.head() == before


def test_an_invalid_value_is_refused_with_file_and_line(remote: Remote) -> None:
    remote.push_files({"api.yaml": release("api", "1.4.2")})
    before = remote.head()
    proc = set_cmd(remote, "Release/api", "spec.sha256=not-hex", check=1)
    assert "api.yaml:" in proc.stderr and "sha256 must be 64 hexadecimal digits" in proc.stderr
    assert remote.head() == before


def test_unknown_resource_names_what_is_declared(remote: Remote) -> None:
    remote.push_files({"api.yaml": release("api", "1.4.2")})
    proc = set_cmd(remote, "Release/web", "spec.version=2.0.0", check=1)
    assert "Release/web is not declared" in proc.stderr and "Release/api" in proc.stderr


def test_without_push_it_is_a_dry_run(remote: Remote) -> None:
    remote.push_files({"api.yaml": release("api", "1.4.2")})
    before = remote.head()
    proc = cli(
        "set",
        "Release/api",
        "spec.version=1.5.0",
        "--repo",
        remote.url,
        "--author",
        AUTHOR,
        check=0,
    )
    assert "-  version: 1.4.2" in proc.stdout and "+  version: 1.5.0" in proc.stdout
    assert "dry run" in proc.stdout
    assert remote.head() == before


def test_a_field_set_by_an_overlay_patch_is_edited_in_the_patch(remote: Remote) -> None:
    base = release("api", "1.4.2")
    overlay = (
        "apiVersion: setpoint/v1\nkind: Overlay\nresources:\n  - ../../base\npatches:\n"
        "  - target: {kind: Release, name: api}\n    patch:\n      spec:\n"
        "        version: 1.4.0   # prod lags behind\n"
    )
    remote.push_files({"base/api.yaml": base, "envs/prod/setpoint.yaml": overlay})
    set_cmd(remote, "Release/api", "spec.version=1.4.1", "--path", "envs/prod")
    assert remote.show("base/api.yaml") == base
    assert remote.show("envs/prod/setpoint.yaml") == overlay.replace("1.4.0 ", "1.4.1 ")


def test_config_names_repository_branch_and_path(remote: Remote, tmp_path: Path) -> None:
    remote.push_files({"hosts/web/api.yaml": release("api", "1.4.2")})
    git(remote.work, "push", "-q", "origin", "HEAD:refs/heads/prod")
    conf = tmp_path / "config.yaml"
    conf.write_text(
        f"sources: [{{name: infra, url: {remote.url}, ref: prod}}]\n"
        "stacks: [{name: web, source: infra, path: hosts/web}]\n"
    )
    cli(
        "set",
        "Release/api",
        "spec.version=1.4.3",
        "--config",
        conf,
        "--author",
        AUTHOR,
        "--push",
        check=0,
    )
    assert "version: 1.4.3" in remote.show("hosts/web/api.yaml", "prod")
    assert "version: 1.4.2" in remote.show("hosts/web/api.yaml", "main")


def test_two_concurrent_sets_of_different_releases_both_land(remote: Remote) -> None:
    remote.push_files({"a.yaml": release("a", "1.0.0"), "b.yaml": release("b", "1.0.0")})
    for i in range(1, 21):
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "setpoint",
                    "set",
                    f"Release/{name}",
                    f"spec.version=1.0.{i}",
                    "--repo",
                    remote.url,
                    "--author",
                    AUTHOR,
                    "--push",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("a", "b")
        ]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, f"iteration {i}: {out}\n{err}"
        assert f"version: 1.0.{i}\n" in remote.show("a.yaml"), f"iteration {i}"
        assert f"version: 1.0.{i}\n" in remote.show("b.yaml"), f"iteration {i}"
    assert remote.count() == 1 + 2 * 20


def test_the_same_field_changed_meanwhile_is_a_conflict(remote: Remote, tmp_path: Path) -> None:
    remote.push_files({"api.yaml": release("api", "1.4.2")})
    setter = FieldSetter(".", "Release/api", parse_assignments(["spec.version=1.5.0"]))
    calls = 0

    def edit_then_race(tree: Path) -> list:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        if calls == 1:  # another pipeline lands 1.4.9 between our clone and our push
            remote.push_files({"api.yaml": release("api", "1.4.9")}, "other pipeline")
        return setter(tree)

    target = Target(remote.url, "main", ".")
    with pytest.raises(Conflict, match=r"Release/api spec.version changed .* from 1.4.2 to 1.4.9"):
        land(
            target,
            edit_then_race,
            lambda ch: commit_message("s", ch, ".", None),
            author=Author.parse(AUTHOR),
            sign=False,
            push=True,
        )
    assert "version: 1.4.9" in remote.show("api.yaml")


def test_the_same_value_landed_meanwhile_is_nothing_to_change(remote: Remote) -> None:
    remote.push_files({"api.yaml": release("api", "1.4.2")})
    setter = FieldSetter(".", "Release/api", parse_assignments(["spec.version=1.5.0"]))
    calls = 0

    def edit_then_race(tree: Path) -> list:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        if calls == 1:
            remote.push_files({"api.yaml": release("api", "1.5.0")}, "other pipeline")
        return setter(tree)

    landed = land(
        Target(remote.url, "main", "."),
        edit_then_race,
        lambda ch: commit_message("s", ch, ".", None),
        author=Author.parse(AUTHOR),
        sign=False,
        push=True,
    )
    assert landed.commit is None and calls == 2


def test_sign_signs_the_commit_with_gits_own_config(remote: Remote, tmp_path: Path) -> None:
    key = tmp_path / "signing_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f"[gpg]\n\tformat = ssh\n[user]\n\tsigningkey = {key}\n")
    remote.push_files({"api.yaml": release("api", "1.4.2")})
    env_args = {"GIT_CONFIG_GLOBAL": str(gitconfig)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "setpoint",
            "set",
            "Release/api",
            "spec.version=1.4.3",
            "--repo",
            remote.url,
            "--author",
            AUTHOR,
            "--push",
            "--sign",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env_args},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    raw = git(remote.bare, "cat-file", "commit", "main")
    assert "gpgsig -----BEGIN SSH SIGNATURE-----" in raw
