"""``setpoint promote``: Release versions move from one overlay to another, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import cli
from wb_helpers import AUTHOR, SHA_A, SHA_B, Remote, release

MOTD = (
    "apiVersion: setpoint/v1\nkind: File\nmetadata:\n  name: motd\n"
    "spec:\n  path: /etc/motd\n  content: base\n"
)
STAGING = f"""\
apiVersion: setpoint/v1
kind: Overlay
resources:
  - ../../base
patches:
  - target: {{kind: Release, name: api}}
    patch:
      spec:
        version: 1.5.0
        url: https://artifacts.example/api-1.5.0.tar.gz
        sha256: {SHA_B}
  - target: {{kind: File, name: motd}}
    patch:
      spec: {{content: staging only}}
"""
PROD = """\
apiVersion: setpoint/v1
kind: Overlay   # production
resources:
  - ../../base
"""
DEV = "apiVersion: setpoint/v1\nkind: Overlay\nresources: [../../base]\n"


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    r = Remote(tmp_path)
    r.push_files(
        {
            "base/api.yaml": release("api", "1.4.2"),
            "base/web.yaml": release("web", "2.0.0"),
            "base/motd.yaml": MOTD,
            "envs/staging/setpoint.yaml": STAGING,
            "envs/prod/setpoint.yaml": PROD,
            "envs/dev/setpoint.yaml": DEV,
        }
    )
    return r


def promote(remote: Remote, *args: str, check: int = 0) -> str:
    proc = cli(
        "promote",
        "--from",
        "envs/staging",
        "--to",
        "envs/prod",
        *args,
        "--repo",
        remote.url,
        "--author",
        AUTHOR,
        "--push",
        check=check,
    )
    return proc.stdout + proc.stderr


def test_promote_adds_a_patch_to_the_target_overlay_and_never_edits_the_base(
    remote: Remote,
) -> None:
    promote(remote)
    assert remote.show("base/api.yaml") == release("api", "1.4.2")
    assert remote.show("envs/dev/setpoint.yaml") == DEV
    prod = remote.show("envs/prod/setpoint.yaml")
    assert prod.startswith(PROD)  # the overlay's own lines, comment included, untouched
    assert yaml.safe_load(prod)["patches"] == [
        {
            "target": {"kind": "Release", "name": "api"},
            "patch": {
                "spec": {
                    "version": "1.5.0",
                    "url": "https://artifacts.example/api-1.5.0.tar.gz",
                    "sha256": SHA_B,
                }
            },
        }
    ]
    message = remote.log("%B")
    assert message.startswith("promote envs/staging -> envs/prod: api")
    assert "Release/api spec.version: 1.4.2 -> 1.5.0 (envs/prod/setpoint.yaml:" in message
    assert f"Release/api spec.sha256: {SHA_A} -> {SHA_B}" in message
    assert "motd" not in message and "staging only" not in prod  # nothing else moves
    assert remote.count() == 2


def test_promote_twice_has_nothing_to_change(remote: Remote) -> None:
    promote(remote)
    out = promote(remote, check=3)
    assert "nothing to change" in out
    assert remote.count() == 2


def test_a_field_the_target_overlay_patches_is_edited_in_place(remote: Remote) -> None:
    prod = PROD + (
        "patches:\n"
        "  - target: {kind: Release, name: api}\n"
        "    patch:\n"
        "      spec:\n"
        "        version: '1.4.0'   # pinned\n"
        "        url: https://artifacts.example/api-1.4.0.tar.gz\n"
        f"        sha256: {SHA_A}\n"
    )
    remote.push_files({"envs/prod/setpoint.yaml": prod})
    promote(remote, "Release/api")
    expected = (
        prod.replace("'1.4.0'", "'1.5.0'")
        .replace("api-1.4.0", "api-1.5.0")
        .replace(f"sha256: {SHA_A}", f"sha256: {SHA_B}")
    )
    assert remote.show("envs/prod/setpoint.yaml") == expected


def test_only_the_named_releases_move(remote: Remote) -> None:
    staging = STAGING + (
        "  - target: {kind: Release, name: web}\n    patch: {spec: {version: 2.1.0}}\n"
    )
    remote.push_files({"envs/staging/setpoint.yaml": staging})
    promote(remote, "Release/web")
    patches = yaml.safe_load(remote.show("envs/prod/setpoint.yaml"))["patches"]
    assert patches == [
        {"target": {"kind": "Release", "name": "web"}, "patch": {"spec": {"version": "2.1.0"}}}
    ]


def test_a_plain_target_directory_is_edited_in_its_own_manifest(remote: Remote) -> None:
    remote.push_files({"hosts/one/api.yaml": release("api", "1.4.2", comment="  # pinned")})
    cli(
        "promote",
        "--from",
        "envs/staging",
        "--to",
        "hosts/one",
        "--repo",
        remote.url,
        "--author",
        AUTHOR,
        "--push",
        check=0,
    )
    assert remote.show("hosts/one/api.yaml") == (
        release("api", "1.4.2", comment="  # pinned")
        .replace("version: 1.4.2", "version: 1.5.0")
        .replace("api-1.4.2", "api-1.5.0")
        .replace(SHA_A, SHA_B)
    )
