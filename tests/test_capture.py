"""``setpoint capture``: drift found on the host (drift: report), or the last reverted drift
(--from-journal), written back into the manifests on a new branch; once merged, it is the
desired state (plan exits 0). Sensitive, templated and binary resources and truncated
journal diffs are refused. Real bare repositories, real agent passes, a real target root."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import cli, manifest
from setpoint.config import load_config
from setpoint.engine.controller import Controller
from wb_helpers import AUTHOR, Remote, git

ROOT = os.geteuid() == 0


def stack_files() -> dict[str, str]:
    owner = {"owner": "root"} if ROOT else {}
    return {
        "m/motd.yaml": "# the login banner\n"
        + manifest("File", "motd", path="/etc/motd", content="welcome\n", mode="0644", **owner),
        "m/app.yaml": manifest("File", "app", path="/etc/app.conf", source="files/app.conf"),
        "m/files/app.conf": "threads=4\n",
        "m/link.yaml": manifest("Symlink", "current", path="/opt/current", target="/opt/app-1"),
        "m/dirs.yaml": manifest("Directory", "opt", path="/opt/app-1", mode="0755"),
    }


def write_config(tmp_path: Path, remote: Remote, drift: str) -> Path:
    cfg = {
        "root": str(tmp_path / "root"),
        "state": str(tmp_path / "state"),
        "sources": [{"name": "repo", "url": remote.url, "ref": "main"}],
        "stacks": [{"name": "web", "source": "repo", "path": "m", "drift": drift}],
    }
    (tmp_path / "root").mkdir(exist_ok=True)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_pass(config: Path) -> Any:
    ctl = Controller(load_config(config))
    try:
        (result,) = ctl.run_once()
        return result, ctl.db.load_status("web")
    finally:
        ctl.close()


def merge(remote: Remote, branch: str) -> None:
    git(remote.work, "fetch", "-q", "origin", branch)
    git(remote.work, "merge", "-q", "--ff-only", "FETCH_HEAD")
    git(remote.work, "push", "-q", "origin", "HEAD:main")


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


def test_captured_branch_once_merged_makes_the_drift_desired(
    tmp_path: Path, remote: Remote
) -> None:
    remote.push_files(stack_files())
    config = write_config(tmp_path, remote, "report")
    root = tmp_path / "root"
    assert one_pass(config)[0].converged
    (root / "opt/app-2").mkdir()
    (root / "etc/motd").write_text("welcome\nmaintenance tonight 22:00\n")
    (root / "etc/motd").chmod(0o600)
    if ROOT:
        shutil.chown(root / "etc/motd", "nobody")
    (root / "etc/app.conf").write_text("threads=8\n")
    (root / "opt/current").unlink()
    (root / "opt/current").symlink_to(str(root / "opt/app-2"))
    _result, status = one_pass(config)
    drifted = {"File/motd", "File/app", "Symlink/current"}
    assert {r for r, s in status.resources.items() if s == "drifted"} == drifted
    before = remote.head()

    out = cli("capture", "web", "--config", config, "--branch", "fix/hand-edits",
              "--author", AUTHOR, "--push", check=0)  # fmt: skip
    assert "captured onto the new branch fix/hand-edits" in out.stdout
    assert remote.head() == before  # main untouched: the change waits for review
    merge(remote, "fix/hand-edits")
    motd = remote.show("m/motd.yaml")
    assert motd.startswith("# the login banner\n")  # the rest of the file is kept
    spec = yaml.safe_load(motd)["spec"]
    assert spec["content"] == "welcome\nmaintenance tonight 22:00\n"
    assert spec["mode"] == "0600"
    assert spec.get("owner") == ("nobody" if ROOT else None)
    assert remote.show("m/files/app.conf") == "threads=8\n"
    assert yaml.safe_load(remote.show("m/link.yaml"))["spec"]["target"] == "/opt/app-2"

    plan = cli("plan", "--config", config)
    assert plan.returncode == 0, plan.stdout + plan.stderr


def test_sensitive_templated_and_binary_are_refused_the_rest_captured(
    tmp_path: Path, remote: Remote
) -> None:
    remote.push_files(
        {
            **stack_files(),
            "m/token.yaml": manifest("File", "token", path="/etc/token", content="t0\n",
                                     sensitive=True),
            "m/tpl.yaml": manifest("File", "tpl", path="/etc/tpl", template="static\n"),
            "m/bin.yaml": manifest("File", "bin", path="/etc/bin", content="text\n"),
        }
    )  # fmt: skip
    config = write_config(tmp_path, remote, "report")
    root = tmp_path / "root"
    one_pass(config)
    (root / "etc/token").write_text("stolen\n")
    (root / "etc/tpl").write_text("edited\n")
    (root / "etc/bin").write_bytes(b"\x00\x01binary")
    (root / "etc/app.conf").write_text("threads=2\n")
    one_pass(config)
    out = cli("capture", "web", "--config", config, "--branch", "cap", "--author", AUTHOR,
              "--push", check=1)  # fmt: skip
    assert "refused: File/token: sensitive" in out.stderr
    assert "refused: File/tpl: templated" in out.stderr
    assert "refused: File/bin: the live content is binary" in out.stderr
    assert "stolen" not in out.stdout + out.stderr
    assert git(remote.bare, "show", "cap:m/files/app.conf") == "threads=2\n"
    assert git(remote.bare, "show", "cap:m/token.yaml") == remote.show("m/token.yaml")


def test_from_journal_rebuilds_a_reverted_drift_and_refuses_a_truncated_diff(
    tmp_path: Path, remote: Remote
) -> None:
    remote.push_files(stack_files())
    config = write_config(tmp_path, remote, "revert")
    root = tmp_path / "root"
    one_pass(config)
    (root / "etc/motd").write_text("welcome\nhot fix: do not reboot\n")
    (root / "etc/motd").chmod(0o640)
    one_pass(config)  # reverted, journaled with its diff
    assert (root / "etc/motd").read_text() == "welcome\n"

    cli("capture", "web", "--config", config, "--from-journal", "--branch", "keep-fix",
        "--author", AUTHOR, "--push", check=0)  # fmt: skip
    merge(remote, "keep-fix")
    spec = yaml.safe_load(remote.show("m/motd.yaml"))["spec"]
    assert spec["content"] == "welcome\nhot fix: do not reboot\n" and spec["mode"] == "0640"
    one_pass(config)
    assert (root / "etc/motd").read_text() == "welcome\nhot fix: do not reboot\n"

    (root / "etc/app.conf").write_text("".join(f"line {i}\n" for i in range(8000)))  # > 64 KiB
    one_pass(config)
    out = cli("capture", "web", "File/app", "--config", config, "--from-journal",
              "--branch", "big", "--author", AUTHOR, "--push", check=1)  # fmt: skip
    assert "File/app: the journal's diff was truncated" in out.stderr
