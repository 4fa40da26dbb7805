"""A Service's ``env`` values are secrets by default: names (and sizes) only, in plans,
the journal and the CLI; ``command`` is shown as declared."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import cli, docs
from setpoint.model.plan import Action
from svc_support import Env, free_port, release_doc, service_doc

SECRET, SECRET2 = "s3cret-value", "0ther-s3cret-value"


@pytest.fixture
def env(git_repo: GitRepo, root: Path, state_dir: Path) -> Iterator[Env]:
    e = Env(git_repo, root, state_dir)
    yield e
    e.close()


def _deploy(env: Env, shipped: tuple[str, bytes], port: int, *args: str, **env_vars: str) -> None:
    path, data = shipped
    command = [sys.executable, "server.py", *args]
    svc = service_doc("app", port, command=command, env={"PORT": str(port), **env_vars})
    env.commit({"m/app.yaml": docs(release_doc("app", "1.0", data, path), svc)})


def _journal(env: Env) -> str:
    return json.dumps([[e.event, e.message, e.detail] for e in env.ctl.db.history(limit=500)])


def test_env_values_never_reach_plans_the_journal_or_the_cli(env: Env) -> None:
    port, shipped = free_port(), env.ship("1.0")
    _deploy(env, shipped, port, TOKEN=SECRET, OLD="x")
    assert env.sync().converged
    _deploy(env, shipped, port, "--verbose", TOKEN=SECRET2, DB_URL="postgres://u:pw@db/app")
    env.ctl.fetch("repo")
    plan = env.ctl.reconcile("web", dry_run=True)
    (change,) = [o.change for o in plan.outcomes if o.change and o.resource == "Service/app"]
    assert change.action is Action.REPLACE
    shown = [str(f) for f in change.fields]
    assert "env: TOKEN=(hidden, 12 bytes) → TOKEN=(hidden, 18 bytes)" in shown
    assert "env: (none) → DB_URL=(hidden, 22 bytes)" in shown
    assert "env: OLD=(hidden, 1 bytes) → (none)" in shown
    assert SECRET not in change.summary() and "pw@db" not in change.summary()
    out = cli(
        "plan", "--repo", env.repo.url, "--path", "m", "--stack", "web",
        "--root", env.root, "--state", env.state, check=2,
    ).stdout  # fmt: skip
    assert "TOKEN=(hidden, 18 bytes)" in out
    assert '"server.py", "--verbose"]' in out  # the command is shown as declared
    assert SECRET not in out and "pw@db" not in out, out
    assert env.sync().converged
    journal = _journal(env)
    assert "TOKEN=(hidden" in journal
    assert SECRET not in journal and SECRET2 not in journal and "pw@db" not in journal
