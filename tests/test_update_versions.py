"""``setpoint update-versions``: a Release follows its versionPolicy, archives checked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from helpers import cli
from wb_helpers import AUTHOR, Remote


def archive(tmp: Path, version: str) -> tuple[str, str]:
    path = tmp / "dist" / f"api-{version}.tar.gz"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(f"archive of api {version}".encode())
    return path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()


def index(tmp: Path, versions: list[str], *, bad: str | None = None) -> str:
    entries = []
    for v in versions:
        url, sha = archive(tmp, v)
        entries.append({"version": v, "url": url, "sha256": "0" * 64 if v == bad else sha})
    path = tmp / "index.json"
    path.write_text(json.dumps(entries))
    return path.as_uri()


def manifest(tmp: Path, index_url: str, version: str = "1.4.0", rng: str = "~1.4") -> str:
    url, sha = archive(tmp, version)
    return (
        "apiVersion: setpoint/v1\nkind: Release\nmetadata:\n  name: api\nspec:\n"
        f"  version: {version}   # follows the policy\n  url: {url}\n  sha256: {sha}\n"
        f"  versionPolicy:\n    semver: '{rng}'\n    index: {index_url}\n"
    )


VERSIONS = ["1.3.0", "1.4.0", "1.4.7", "1.4.10-rc.1", "1.5.0", "2.0.0"]


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


def update(remote: Remote, check: int) -> str:
    proc = cli("update-versions", "--repo", remote.url, "--author", AUTHOR, "--push", check=check)
    return proc.stdout + proc.stderr


def test_commits_the_newest_version_in_range(remote: Remote, tmp_path: Path) -> None:
    text = manifest(tmp_path, index(tmp_path, VERSIONS))
    remote.push_files({"api.yaml": text})
    update(remote, 0)
    after = remote.show("api.yaml")
    url, sha = archive(tmp_path, "1.4.7")
    spec = yaml.safe_load(after)["spec"]
    assert (spec["version"], spec["url"], spec["sha256"]) == ("1.4.7", url, sha)
    assert "version: 1.4.7   # follows the policy\n" in after  # comment kept
    assert remote.log("%s") == "update-versions: api 1.4.7\n"
    assert "Release/api spec.version: 1.4.0 -> 1.4.7 (api.yaml:6)" in remote.log("%B")


def test_pre_releases_only_when_the_range_names_one(remote: Remote, tmp_path: Path) -> None:
    text = manifest(tmp_path, index(tmp_path, VERSIONS), rng=">=1.4.8-0 <1.5")
    remote.push_files({"api.yaml": text})
    update(remote, 0)
    assert yaml.safe_load(remote.show("api.yaml"))["spec"]["version"] == "1.4.10-rc.1"


def test_an_archive_that_does_not_match_its_sha256_is_refused(
    remote: Remote, tmp_path: Path
) -> None:
    text = manifest(tmp_path, index(tmp_path, VERSIONS, bad="1.4.7"))
    remote.push_files({"api.yaml": text})
    before = remote.head()
    out = update(remote, 1)
    assert "Release/api: refused 1.4.7" in out and "0" * 64 in out
    assert remote.head() == before
    assert remote.show("api.yaml") == text


def test_already_newest_is_nothing_to_change(remote: Remote, tmp_path: Path) -> None:
    remote.push_files({"api.yaml": manifest(tmp_path, index(tmp_path, VERSIONS), "1.4.7")})
    assert "nothing to change" in update(remote, 3)


def test_the_agent_accepts_a_release_with_a_version_policy(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "api.yaml").write_text(manifest(tmp_path, index(tmp_path, VERSIONS)))
    cli("validate", tmp_path / "m", check=0)
