"""``setpoint explain``: stack, resource, declaring commit, file:line, applied time, drift."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import GitRepo
from helpers import cli, docs, manifest


def src(repo: GitRepo, root: Path, state: Path) -> list[str | Path]:
    return ["--repo", repo.url, "--path", "m", "--stack", "web", "--root", root, "--state", state]


def test_explain_a_path_names_stack_commit_line_and_drift(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    declared = git_repo.commit(
        {
            "m/base.yaml": docs(
                manifest("Directory", "etc", path="/etc"),
                manifest("File", "motd", path="/etc/motd", content="hello\n"),
            )
        },
        message="motd says hello",
    )
    git_repo.commit(
        {"m/other.yaml": manifest("File", "issue", path="/etc/issue", content="i\n")},
        message="unrelated change",
    )
    cli("apply", *src(git_repo, root, state_dir), check=0)
    (root / "etc/motd").write_text("hacked\n")
    cli("apply", *src(git_repo, root, state_dir), check=0)

    out = cli("explain", "/etc/motd", "--state", state_dir, "--json", check=0)
    e = json.loads(out.stdout)
    assert (e["stack"], e["resource"], e["source"], e["stack_path"]) == (
        "web",
        "File/motd",
        "repo",
        "m",
    )
    assert e["declared_at"] == "m/base.yaml:8"
    assert e["commit"]["sha"] == declared
    assert e["commit"]["subject"] == "motd says hello"
    assert e["commit"]["author"] == "setpoint tests <tests@setpoint.invalid>"
    assert e["applied_at"]
    assert e["drift_count"] == 1
    # The drift's diff goes from what was found to what is declared.
    assert "-hacked\n+hello" in e["last_drift"]["diff"]

    text = cli("explain", "File/motd", "--state", state_dir, check=0).stdout
    assert "declared at: m/base.yaml:8" in text
    assert "motd says hello" in text and "drift:       1 time(s)" in text


def test_explain_an_unmanaged_path_names_the_nearest_managed_parent(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    git_repo.commit({"m/base.yaml": manifest("Directory", "etc", path="/etc")})
    cli("apply", *src(git_repo, root, state_dir), check=0)
    out = cli("explain", "/etc/ssh/sshd_config", "--state", state_dir, check=3).stdout
    assert "/etc/ssh/sshd_config is not managed by setpoint" in out
    assert "Nearest managed parent: /etc (Directory/etc, stack web)" in out
    e = json.loads(cli("explain", "/var/x", "--state", state_dir, "--json", check=3).stdout)
    assert e["managed"] is False and e["nearest_parent"] is None


def test_explain_through_an_overlay_patch_and_a_template(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    base = manifest("File", "conf", path="/etc/app.conf", templateSource="app.conf.j2")
    git_repo.commit(
        {
            "base/app.yaml": base,
            "base/app.conf.j2": "workers = {{ vars.workers }}\n",
            "base/setpoint.yaml": "apiVersion: setpoint/v1\nkind: Overlay\nresources: [app.yaml]\n",
            "m/setpoint.yaml": (
                "apiVersion: setpoint/v1\nkind: Overlay\nresources: [../base]\n"
                "vars: {workers: 2}\n"
                "patches:\n  - target: {kind: File, name: conf}\n"
                "    patch: {spec: {mode: '0600'}}\n"
            ),
        },
        message="app config from a template",
    )
    template_change = git_repo.commit(
        {"base/app.conf.j2": "# tuned\nworkers = {{ vars.workers }}\n"},
        message="tune the template",
    )
    cli("apply", *src(git_repo, root, state_dir), check=0)
    e = json.loads(cli("explain", "/etc/app.conf", "--state", state_dir, "--json", check=0).stdout)
    assert e["overlays"] == ["base/setpoint.yaml", "m/setpoint.yaml"]
    assert e["patches"] == ["m/setpoint.yaml patches[0]"]
    assert e["template"] == "base/app.conf.j2"
    # The template is part of the declaration: its last change is the declaring commit.
    assert e["commit"]["sha"] == template_change
    text = cli("explain", "File/conf", "--state", state_dir, check=0).stdout
    assert "template:    base/app.conf.j2" in text
