"""The settled record (engine/settled.py): a no-op ``apply``/``plan`` without the engine.

Every run here is a real ``setpoint`` process on a real Git repository and a temp-dir
root. A probe wrapper says whether the run loaded the engine (the full path) or not
(the record confirmed the no-op), so each test shows which path answered, and that
the fast path records and prints what the full path does.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import GitRepo
from helpers import docs, manifest, start_agent, wait_for
from setpoint.state import StateDB

PROBE = (
    "import sys\n"
    "from setpoint.cli_fast import fast\n"
    "code = fast(sys.argv[1:])\n"
    "sys.stderr.write('\\nENGINE=%s PYDANTIC=%s\\n' % ('setpoint.engine.controller' in "
    "sys.modules, 'pydantic' in sys.modules))\n"
    "sys.exit(code)\n"
)


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        m = re.search(r"ENGINE=(\w+) PYDANTIC=(\w+)", proc.stderr)
        assert m, proc.stderr
        self.engine = m.group(1) == "True"
        self.pydantic = m.group(2) == "True"

    @property
    def fast(self) -> bool:
        return not self.engine


def sp(*args: str | Path) -> Run:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    return Run(proc)


def stack_docs(content: str = "one\n") -> str:
    return docs(
        manifest("Directory", "d", path="/srv/d", purge=True),
        manifest("Directory", "sub", path="/srv/d/sub", mode="0750"),
        manifest("File", "f1", path="/srv/d/f1", content=content),
        manifest("File", "f2", path="/srv/d/sub/f2", content="two\n", mode="0600"),
        manifest("File", "own", path="/srv/d/own", content="mine\n", owner="root", group=0),
        manifest("Symlink", "link", path="/srv/d/link", target="/srv/d/f1"),
    )


def flags(repo: GitRepo, root: Path, state: Path) -> list[str]:
    return ["--repo", repo.url, "--path", "m", "--root", str(root), "--state", str(state)]


@pytest.fixture
def settled_stack(git_repo: GitRepo, root: Path, state_dir: Path) -> list[str]:
    git_repo.commit({"m/a.yaml": stack_docs()})
    args = flags(git_repo, root, state_dir)
    first = sp("apply", *args)
    assert first.code == 0 and first.engine, first.err
    assert (state_dir / "settled").is_file()
    return args


def no_ms(text: str) -> str:
    return re.sub(r"\(\d+ ms\)", "(N ms)", text)


def test_a_noop_after_a_converged_apply_loads_no_engine_and_prints_the_same(
    settled_stack: list[str], state_dir: Path
) -> None:
    outputs: dict[str, list[Run]] = {}
    for form in (["apply"], ["apply", "--json"], ["apply", "--unchanged"], ["plan"],
                 ["plan", "--json", "--unchanged"]):  # fmt: skip
        if not (state_dir / "settled").exists():  # a full plan does not write it
            assert sp("apply", *settled_stack).engine
        fast = sp(*form, *settled_stack)
        assert fast.fast and not fast.pydantic, (form, fast.err)
        (state_dir / "settled").unlink()  # the full path, for the same question
        full = sp(*form, *settled_stack)
        assert full.engine
        outputs[" ".join(form)] = [fast, full]
        assert (fast.code, no_ms(fast.out)) == (full.code, no_ms(full.out)), form
        assert fast.code == 0
    assert "6 unchanged" in outputs["apply"][0].out
    assert json.loads(outputs["apply --json"][0].out)[0]["converged"] is True


def _journal(state: Path, after: int) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(state / "setpoint.db")
    try:
        return conn.execute(
            "SELECT stack, event, revision, resource, message, detail, count FROM journal "
            "WHERE id > ? ORDER BY id", (after,)
        ).fetchall()  # fmt: skip
    finally:
        conn.close()


def _last_id(state: Path) -> int:
    conn = sqlite3.connect(state / "setpoint.db")
    try:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM journal").fetchone()[0])
    finally:
        conn.close()


def _status(state: Path) -> dict[str, Any]:
    db = StateDB(state)
    try:
        st = db.load_status("default")
        assert st is not None
        return st.to_json()
    finally:
        db.close()


def test_the_fast_path_records_what_a_full_noop_pass_records(
    settled_stack: list[str], state_dir: Path
) -> None:
    before = _status(state_dir)
    mark = _last_id(state_dir)
    fast = sp("apply", *settled_stack)
    assert fast.fast and fast.code == 0
    fast_entries, fast_status = _journal(state_dir, mark), _status(state_dir)
    assert fast_status["last_pass"] > before["last_pass"]

    (state_dir / "settled").unlink()
    mark = _last_id(state_dir)
    full = sp("apply", *settled_stack)
    assert full.engine and full.code == 0
    full_entries, full_status = _journal(state_dir, mark), _status(state_dir)

    assert fast_entries == full_entries and [e[1] for e in fast_entries] == ["revision.fetched"]
    drop = {"last_pass"}
    assert {k: v for k, v in fast_status.items() if k not in drop} == {
        k: v for k, v in full_status.items() if k not in drop
    }
    assert (state_dir / "settled").is_file()  # the full no-op wrote it again


def _content(root: Path) -> None:
    (root / "srv/d/f1").write_text("ONE\n")  # same size, other bytes


def _mode(root: Path) -> None:
    os.chmod(root / "srv/d/sub", 0o755)


def _owner(root: Path) -> None:
    os.chown(root / "srv/d/own", 1, 1)


def _deleted(root: Path) -> None:
    (root / "srv/d/sub/f2").unlink()


def _symlink_swapped_in(root: Path) -> None:
    (root / "srv/d/f1").rename(root / "srv/f1.real")
    (root / "srv/d/f1").symlink_to(root / "srv/f1.real")


def _parent_swapped_for_symlink(root: Path) -> None:
    # Same files, reached through a symlink: the full pass puts the directory back.
    (root / "srv/d/sub").rename(root / "srv/sub.real")
    (root / "srv/d/sub").symlink_to(root / "srv/sub.real")


def _stray(root: Path) -> None:
    (root / "srv/d/stray").write_text("left by hand\n")


def _link_target(root: Path) -> None:
    (root / "srv/d/link").unlink()
    (root / "srv/d/link").symlink_to(root / "srv/d/own")


@pytest.mark.parametrize(
    "drift",
    [_content, _mode, _owner, _deleted, _symlink_swapped_in, _parent_swapped_for_symlink,
     _stray, _link_target],
    ids=lambda f: f.__name__.strip("_"),
)  # fmt: skip
def test_drift_sends_the_run_down_the_full_path(
    drift: Any, settled_stack: list[str], root: Path, state_dir: Path
) -> None:
    if drift is _owner and os.geteuid() != 0:
        pytest.skip("chown needs root")
    drift(root)
    plan = sp("plan", *settled_stack)
    assert plan.engine and plan.code in (1, 2), plan.out + plan.err
    run = sp("apply", *settled_stack)
    assert run.engine, run.err
    assert run.code == 0 and re.search(r"reverted drift|purge", run.out), run.out
    again = sp("apply", *settled_stack)
    assert again.fast and again.code == 0


def test_a_new_commit_is_applied_by_the_full_path(
    settled_stack: list[str], git_repo: GitRepo, root: Path
) -> None:
    git_repo.commit({"m/a.yaml": stack_docs(content="one, v2\n")})
    run = sp("apply", *settled_stack)
    assert run.engine and run.code == 0 and "1 updated" in run.out
    assert (root / "srv/d/f1").read_text() == "one, v2\n"
    assert sp("apply", *settled_stack).fast


def test_a_changed_config_file_is_a_miss(git_repo: GitRepo, root: Path, tmp_path: Path) -> None:
    git_repo.commit({"m/a.yaml": stack_docs()})
    state = tmp_path / "cfg-state"
    cfg: dict[str, Any] = {
        "root": str(root), "state": "cfg-state",  # relative to the config file's folder
        "sources": [{"name": "s", "url": git_repo.url}],
        "stacks": [{"name": "web", "source": "s", "path": "m"}],
    }  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert sp("apply", "--config", config).engine
    assert (state / "settled").is_file()
    hit = sp("apply", "--config", config)
    assert hit.fast and hit.code == 0
    cfg["labels"] = {"tier": "a"}
    config.write_text(yaml.safe_dump(cfg))
    miss = sp("apply", "--config", config)
    assert miss.engine and miss.code == 0
    assert sp("apply", "--config", config).fast


def test_an_inventory_changed_behind_its_back_is_a_miss(
    settled_stack: list[str], state_dir: Path
) -> None:
    db = StateDB(state_dir)
    try:
        db.record_outcome(removed=[("default", "File/f1")])
    finally:
        db.close()
    run = sp("apply", *settled_stack)
    assert run.engine and run.code == 0
    db = StateDB(state_dir)
    try:
        assert "File/f1" in db.inventory("default")  # the full pass took it back
    finally:
        db.close()


def test_a_damaged_record_is_ignored_and_rewritten(
    settled_stack: list[str], state_dir: Path
) -> None:
    path = state_dir / "settled"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    run = sp("apply", *settled_stack)
    assert run.engine and run.code == 0
    assert sp("apply", *settled_stack).fast


def test_a_running_agent_keeps_the_state_dir(
    settled_stack: list[str], state_dir: Path, tmp_path: Path
) -> None:
    agent = start_agent(*settled_stack, "--listen", "127.0.0.1:0", log=tmp_path / "agent.log")
    try:
        wait_for(lambda: (state_dir / "agent.json").exists(), what="the agent's API")
        assert not (state_dir / "settled").exists()  # the agent dropped it when it started
        run = sp("apply", *settled_stack)
        assert run.engine and run.code == 1 and "in use by" in run.err
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def test_no_record_for_a_stack_that_did_not_converge(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    git_repo.commit({"m/a.yaml": docs(
        manifest("File", "ok", path="/srv/ok", content="x\n"),
        manifest("File", "bad", path="/srv/bad", content="x\n", owner="no-such-user-here"),
    )})  # fmt: skip
    args = flags(git_repo, root, state_dir)
    assert sp("apply", *args).code == 1
    assert not (state_dir / "settled").exists()
    assert sp("apply", *args).engine


def test_no_record_for_a_stack_rendered_from_secrets(git_repo: GitRepo, tmp_path: Path) -> None:
    from test_secrets_e2e import SECRET, setup

    config, root, state = setup(git_repo, tmp_path)
    assert sp("apply", "--config", config).code == 0
    second = sp("apply", "--config", config)
    assert second.engine and second.code == 0
    assert SECRET in (root / "etc/app/db.conf").read_text()
    assert not (state / "settled").exists()


def test_a_record_that_cannot_be_written_does_not_fail_the_apply(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    git_repo.commit({"m/a.yaml": stack_docs()})
    args = flags(git_repo, root, state_dir)
    (state_dir / "settled").mkdir(parents=True)  # in the way of the record's file
    run = sp("apply", *args)
    assert run.engine and run.code == 0, run.err
    assert (root / "srv/d/f1").read_text() == "one\n"
    assert sp("apply", *args).engine  # no record: the full path again
