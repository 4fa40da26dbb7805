"""A PostgresRole's password from a SOPS secret: set, compared, reverted, never leaked.

Real Git, real age key, real ``setpoint`` processes (secrets encrypt, plan, apply, agent,
status, history, render) and a real PostgreSQL server (tests/pg_support.py). The password
is compared with the server's SCRAM verifier; it appears in no output, no journal entry,
no file of the state dir and not in the agent's log.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pyrage
import yaml

from conftest import GitRepo
from helpers import cli, manifest, start_agent, wait_for
from pg_support import PgServer, pg, pg_server  # noqa: F401 (fixtures)
from setpoint.providers.postgres.values import password_matches

SECRET = "Pg-pa55-w0rd-never-in-clear"

OVERLAY = """\
apiVersion: setpoint/v1
kind: Overlay
resources: [roles.yaml]
secretFiles: {db: secrets.yaml}
"""


def stored(pg: PgServer) -> str:  # noqa: F811
    ((value,),) = pg.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    return str(value)


def test_password_from_a_secret_is_set_reverted_and_never_leaked(
    git_repo: GitRepo, tmp_path: Path, pg: PgServer  # noqa: F811
) -> None:
    ident = pyrage.x25519.Identity.generate()
    key = tmp_path / "age.key"
    key.write_text(f"{ident}\n")
    key.chmod(0o600)
    plain = git_repo.write("env/secrets.yaml", f"app: {{password: {SECRET}}}\n")
    cli("secrets", "encrypt", plain, "--age", str(ident.to_public()), check=0)
    roles = manifest("PostgresRole", "app", login=True,
                     passwordFrom={"secret": "db", "key": "app.password"})
    git_repo.commit({"env/setpoint.yaml": OVERLAY, "env/roles.yaml": roles})
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    conn = {"host": pg.socket_dir, "port": pg.port, "user": pg.user}
    config.write_text(yaml.safe_dump({
        "root": str(tmp_path), "state": str(state), "listen": "127.0.0.1:0",
        "sources": [{"name": "s", "url": git_repo.url, "interval": 0.2}],
        "stacks": [{"name": "db", "source": "s", "path": "env", "resync": 0.5,
                    "postgres": {"connection": conn}}],
        "decryption": {"ageKeyFile": str(key)},
    }))
    outputs: list[str] = []

    def run(*args: object, check: int | None = None) -> None:
        proc = cli(*map(str, args), check=check)
        outputs.extend([proc.stdout, proc.stderr])

    run("plan", "--config", config, "--json", check=2)
    run("apply", "--config", config, check=0)
    assert password_matches(SECRET, stored(pg), "app")
    run("plan", "--config", config, check=0)
    # Changed by hand: the next pass of the agent finds it and sets the secret again.
    pg.sql("ALTER ROLE app PASSWORD 'by-hand'")
    log = tmp_path / "agent.log"
    agent = start_agent("--config", config, log=log)
    try:
        wait_for(lambda: password_matches(SECRET, stored(pg), "app"), timeout=60,
                 what="the password reverted")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    outputs.append(log.read_text())
    run("status", "--state", state, "--json")
    run("plan", "--config", config, "--json", check=0)
    run("render", git_repo.path / "env", "--age-key-file", key, check=0)
    history = cli("history", "--state", state, "--json", check=0).stdout
    outputs.append(history)
    assert '"revert"' in history and "(passwordFrom)" in history  # journaled, as a marker
    for text in outputs:
        assert SECRET not in text
    leaked = subprocess.run(
        ["grep", "-r", "-l", "-a", SECRET, str(state)], capture_output=True, text=True
    )
    assert leaked.returncode == 1, f"plaintext found in: {leaked.stdout}"
    # Sent as a SCRAM verifier, the plaintext never reached the server either.
    assert SECRET not in (pg.root / "server.log").read_text(errors="replace")
