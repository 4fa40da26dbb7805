"""``setpoint rollback``: a commit reversing the stack's changes since a revision (its files,
overlays and bases included, nothing else), naming both revisions and the reason; once
pulled by an agent it restores the old files. Real bare repositories, real agent passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import cli, manifest, one_pass, one_stack
from wb_helpers import AUTHOR, Remote, git

OV = "apiVersion: setpoint/v1\nkind: Overlay\n"


def v1() -> dict[str, str]:
    return {
        "m/setpoint.yaml": OV + "resources: [app.yaml, ../base]\n",
        "m/app.yaml": manifest("File", "app", path="/etc/app.conf", source="files/app.conf"),
        "m/files/app.conf": "threads=4\n",
        "base/setpoint.yaml": OV + "resources: [motd.yaml]\n",
        "base/motd.yaml": manifest("File", "motd", path="/etc/motd", content="welcome\n"),
        "other/readme.md": "not read by the stack\n",
    }


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


def test_rollback_commit_once_pulled_restores_the_old_files(
    remote: Remote, root: Path, state_dir: Path
) -> None:
    good = remote.push_files(v1(), "v1")
    cfg = one_stack(remote.url, root, state_dir)
    assert one_pass(cfg)[0].converged
    bad = remote.push_files(
        {
            "m/files/app.conf": "threads=64\n",
            "base/motd.yaml": manifest("File", "motd", path="/etc/motd", content="broken\n"),
            "m/extra.yaml": manifest("File", "extra", path="/etc/extra", content="new\n"),
            "m/setpoint.yaml": OV + "resources: [app.yaml, extra.yaml, ../base]\n",
            "other/readme.md": "changed elsewhere, kept\n",
        },
        "v2: bigger",
    )
    result = one_pass(cfg)[0]
    assert result.converged and (root / "etc/extra").exists()
    assert (root / "etc/motd").read_text() == "broken\n"

    out = cli("rollback", "web", "--repo", remote.url, "--path", "m", "--state", state_dir,
              "-m", "v2 overloads the database", "--author", AUTHOR, "--push", check=0)  # fmt: skip
    assert f"back to {good[:12]} (from {bad[:12]})" in out.stdout

    body = remote.log("%B")
    assert body.startswith(f"Roll back stack web to {good[:12]} (from {bad[:12]})")
    assert "Reason: v2 overloads the database" in body
    assert f"Rolled back to:   {good}" in body and f"In force on the host: {bad}" in body
    assert remote.log("%an <%ae>") == AUTHOR + "\n"
    for path in ("m/files/app.conf", "base/motd.yaml", "m/setpoint.yaml"):
        assert remote.show(path) == v1()[path]
    assert "m/extra.yaml" not in git(remote.bare, "ls-tree", "-r", "--name-only", "main")
    assert remote.show("other/readme.md") == "changed elsewhere, kept\n"  # not the stack's

    result, status, _journal, _inv = one_pass(cfg)
    assert result.converged, result.errors
    assert (root / "etc/app.conf").read_text() == "threads=4\n"
    assert (root / "etc/motd").read_text() == "welcome\n"
    assert not (root / "etc/extra").exists()  # pruned: no longer declared
    assert status.applied_revision == remote.head()


def test_rollback_to_an_explicit_revision_and_nothing_to_do(remote: Remote) -> None:
    first = remote.push_files(v1(), "v1")
    remote.push_files({"m/files/app.conf": "threads=8\n"}, "v2")
    remote.push_files({"m/files/app.conf": "threads=16\n"}, "v3")
    cli("rollback", "web", "--repo", remote.url, "--path", "m", "--to", first[:10],
        "-m", "back to the start", "--author", AUTHOR, "--push", check=0)  # fmt: skip
    assert remote.show("m/files/app.conf") == "threads=4\n"
    again = cli("rollback", "web", "--repo", remote.url, "--path", "m", "--to", first,
                "-m", "again", "--author", AUTHOR, "--push", check=3)  # fmt: skip
    assert "nothing to roll back" in again.stdout


def test_without_to_the_journal_must_know_an_earlier_revision(
    remote: Remote, root: Path, state_dir: Path
) -> None:
    remote.push_files(v1(), "v1")
    one_pass(one_stack(remote.url, root, state_dir))
    out = cli("rollback", "web", "--repo", remote.url, "--path", "m", "--state", state_dir,
              "-m", "why", "--author", AUTHOR, check=1)  # fmt: skip
    assert "has had one revision only" in out.stderr and "--to REVISION" in out.stderr
    out = cli("rollback", "web", "--repo", remote.url, "--to", "nope", "-m", "why",
              "--author", AUTHOR, check=1)  # fmt: skip
    assert "--to 'nope': no such commit" in out.stderr


def test_a_tip_whose_stack_no_longer_reads_is_rolled_back_too(remote: Remote) -> None:
    first = remote.push_files(v1(), "v1")
    remote.push_files({"m/setpoint.yaml": "kind: Overlay\nresources: [missing.yaml\n"}, "oops")
    cli("rollback", "web", "--repo", remote.url, "--path", "m", "--to", first,
        "-m", "broken overlay", "--author", AUTHOR, "--push", check=0)  # fmt: skip
    assert remote.show("m/setpoint.yaml") == v1()["m/setpoint.yaml"]
