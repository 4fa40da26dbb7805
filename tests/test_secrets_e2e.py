"""Secrets end to end: a SOPS file in Git, decrypted by the agent, never leaked.

Real Git repository, real `setpoint` processes (secrets encrypt, plan, apply, agent,
status, history, render), real age keys. After a full run with drift and its revert,
the secret's plaintext is on the target (where it was declared) and nowhere else:
not in the state dir, not in any command's output, not in the agent's log.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pyrage
import yaml

from conftest import GitRepo
from helpers import cli, start_agent, wait_for

SECRET = "pa55-w0rd-never-in-clear"

OVERLAY = """\
apiVersion: setpoint/v1
kind: Overlay
resources: [app.yaml]
vars: {user: app}
secretFiles: {db: secrets.yaml}
"""

APP = """\
apiVersion: setpoint/v1
kind: File
metadata: {name: db-conf}
spec:
  path: /etc/app/db.conf
  template: |
    user = {{ vars.user }}
    password = {{ secrets.db.password }}
  mode: "0600"
"""


def setup(git_repo: GitRepo, tmp_path: Path) -> tuple[Path, Path, Path]:
    ident = pyrage.x25519.Identity.generate()
    key = tmp_path / "age.key"
    key.write_text(f"{ident}\n")
    key.chmod(0o600)
    plain = git_repo.write("env/secrets.yaml", f"password: {SECRET}\n")
    cli("secrets", "encrypt", plain, "--age", str(ident.to_public()), check=0)
    assert SECRET not in plain.read_text()
    git_repo.commit({"env/setpoint.yaml": OVERLAY, "env/app.yaml": APP})
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "root": str(root),
                "state": str(state),
                "listen": "127.0.0.1:0",
                "sources": [{"name": "s", "url": git_repo.url, "interval": 0.2}],
                "stacks": [{"name": "app", "source": "s", "path": "env"}],
                "decryption": {"ageKeyFile": str(key)},
            }
        )
    )
    return config, root, state


def test_secret_reaches_the_target_and_nothing_else(git_repo: GitRepo, tmp_path: Path) -> None:
    config, root, state = setup(git_repo, tmp_path)
    outputs: list[str] = []

    def run(*args: object, check: int | None = None) -> None:
        proc = cli(*map(str, args), check=check)
        outputs.extend([proc.stdout, proc.stderr])

    run("plan", "--config", config, check=2)
    run("apply", "--config", config, check=0)
    conf = root / "etc/app/db.conf"
    assert conf.read_text() == f"user = app\npassword = {SECRET}\n"
    # Drift while an agent runs: found, reverted, journaled (sizes only).
    log = tmp_path / "agent.log"
    agent = start_agent("--config", config, log=log)
    try:
        wait_for(lambda: "stack app: watching" in log.read_text(), what="the agent's watch")
        conf.write_text(f"password = {SECRET}-changed-by-hand\n")
        wait_for(lambda: conf.read_text().endswith(f"{SECRET}\n"), what="the drift reverted")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    run("status", "--state", state, "--json")
    run("history", "--state", state, "--json")
    run("plan", "--config", config, check=0)
    run("render", git_repo.path / "env", "--age-key-file", tmp_path / "age.key", check=0)
    run("explain", "/etc/app/db.conf", "--state", state)
    outputs.append(log.read_text())
    history = cli("history", "--state", state, "--json", check=0).stdout
    assert '"revert"' in history  # the drift was journaled, so the check below means something
    for text in outputs:
        assert SECRET not in text
    leaked = subprocess.run(
        ["grep", "-r", "-l", "-a", SECRET, str(state)], capture_output=True, text=True
    )
    assert leaked.returncode == 1, f"plaintext found in: {leaked.stdout}"


def test_a_tampered_secret_file_refuses_the_revision_naming_it(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    config, root, _ = setup(git_repo, tmp_path)
    cli("apply", "--config", config, check=0)
    enc = git_repo.path / "env/secrets.yaml"
    doc = yaml.safe_load(enc.read_text())
    doc["password"] = doc["password"].replace("data:", "data:AA", 1)
    git_repo.commit({"env/secrets.yaml": yaml.safe_dump(doc)})
    out = cli("apply", "--config", config, check=1)
    assert "env/setpoint.yaml:5: secretFiles.db:" in out.stdout + out.stderr
    assert "env/secrets.yaml" in out.stdout + out.stderr
    assert (root / "etc/app/db.conf").read_text().endswith(f"{SECRET}\n")  # last good kept
