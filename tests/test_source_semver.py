"""``ref: {semver: RANGE}``: the highest matching tag is applied, named in status and the
journal, a new tag is followed at the next poll, and a tag that moves is refused
(HistoryRewritten) unless allowRewrites. Real repositories, real agent passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import GitRepo
from helpers import cli, manifest, one_pass, one_stack


def release(repo: GitRepo, version: str, *, annotated: bool = False) -> str:
    sha = repo.commit({"m/f.yaml": manifest("File", "f", path="/etc/f", content=version)})
    if annotated:
        repo.git("tag", "-a", f"v{version}", "-m", f"release {version}")
    else:
        repo.git("tag", f"v{version}")
    return sha


@pytest.fixture
def tagged(git_repo: GitRepo) -> GitRepo:
    release(git_repo, "1.3.0")
    release(git_repo, "1.4.2", annotated=True)
    release(git_repo, "1.5.0", annotated=True)
    release(git_repo, "2.0.0")
    git_repo.commit({"m/f.yaml": manifest("File", "f", path="/etc/f", content="main")})
    return git_repo


def semver_stack(repo: GitRepo, root: Path, state: Path, rng: str, **src: Any) -> Any:
    return one_stack(repo.url, root, state, ref={"semver": rng}, **src)


def test_highest_matching_tag_is_applied_and_named(
    tagged: GitRepo, root: Path, state_dir: Path
) -> None:
    cfg = semver_stack(tagged, root, state_dir, ">=1.4 <2")
    result, status, journal, _inv = one_pass(cfg)
    assert result.converged, result.errors
    assert (root / "etc/f").read_text() == "1.5.0"
    assert status.applied_revision == tagged.git("rev-parse", "v1.5.0^{commit}")
    assert status.applied_tag == "v1.5.0"
    (fetched,) = [e for e in journal if e.event == "revision.fetched"]
    assert fetched.detail["tag"] == "v1.5.0"
    assert "(tag v1.5.0)" in fetched.message
    out = cli("status", "--state", state_dir, check=0).stdout
    assert "(tag v1.5.0)" in out


def test_a_new_tag_is_followed_at_the_next_poll_and_pre_releases_only_when_named(
    tagged: GitRepo, root: Path, state_dir: Path
) -> None:
    cfg = semver_stack(tagged, root, state_dir, ">=1.4 <2")
    one_pass(cfg)
    release(tagged, "1.7.0-rc.1")  # a pre-release: not in a range that names none
    result, status, _journal, _inv = one_pass(cfg)
    assert status.applied_tag == "v1.5.0"
    release(tagged, "1.6.0")
    result, status, _journal, _inv = one_pass(cfg)
    assert result.converged, result.errors
    assert (root / "etc/f").read_text() == "1.6.0"
    assert status.applied_tag == "v1.6.0"

    # A range naming a pre-release admits them (another host: rc.1 is older than 1.6.0's
    # commit, so here it would be a step back in history).
    other = root.parent / "other"
    (other / "root").mkdir(parents=True)
    pre = semver_stack(tagged, other / "root", other / "state", ">=1.4.0-0 <2")
    result, status, _journal, _inv = one_pass(pre)
    assert result.converged, result.errors
    assert status.applied_tag == "v1.7.0-rc.1"


@pytest.mark.parametrize("annotated", [False, True])
def test_a_moved_tag_is_refused_even_when_it_moves_forward(
    tagged: GitRepo, root: Path, state_dir: Path, annotated: bool
) -> None:
    cfg = semver_stack(tagged, root, state_dir, ">=1.4 <2")
    release(tagged, "1.6.0", annotated=annotated)
    result, status, _journal, _inv = one_pass(cfg)
    good = status.applied_revision
    assert status.applied_tag == "v1.6.0"
    # Re-tag v1.6.0 on a later commit: a descendant, so only the tag check can catch it.
    moved = tagged.commit({"m/f.yaml": manifest("File", "f", path="/etc/f", content="sneaky")})
    tagged.git("tag", "-f", *(["-a", "-m", "again"] if annotated else []), "v1.6.0", moved)
    for _ in range(2):  # and again after a restart: the mirror keeps the tag where it was
        result, status, journal, _inv = one_pass(cfg)
        assert result.refused == moved
        ready = status.condition("Ready")
        assert ready is not None and ready.reason == "HistoryRewritten"
        assert "tag v1.6.0 moved" in ready.message
        assert status.applied_revision == good
        assert (root / "etc/f").read_text() == "1.6.0"
    assert any(e.event == "revision.refused" for e in journal)

    allowed = semver_stack(tagged, root, state_dir, ">=1.4 <2", allowRewrites=True)
    result, status, _journal, _inv = one_pass(allowed)
    assert result.converged, result.errors
    assert (root / "etc/f").read_text() == "sneaky"


def test_no_matching_tag_is_a_clear_source_failure(
    tagged: GitRepo, root: Path, state_dir: Path
) -> None:
    cfg = semver_stack(tagged, root, state_dir, "^3")
    result, _status, _journal, _inv = one_pass(cfg)
    assert "no tag of" in (result.fetch_error or "")
    assert "matches the semver range '^3'" in (result.fetch_error or "")
    assert "v2.0.0" in (result.fetch_error or "")
