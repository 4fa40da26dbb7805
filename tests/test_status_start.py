"""``setpoint status`` stays light: what it loads, that it only reads, and the plain
status classes it builds (model/status.py, state/status_read.py).

The command must start in <= 80 ms (timed in bench/oneshot.py, never here); what
keeps it there is what it does not import, which a real process reports below, so
a new top-level import of dataclasses, typing, pathlib or pydantic on its path
fails here rather than slowing every shell prompt that runs it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli
from setpoint.model.status import Condition, StackStatus
from setpoint.state import SCHEMA_VERSION, StateDB

# Runs cli_fast.fast as `setpoint` would, then says which modules it loaded itself.
PROBE = (
    "import sys\n"
    "before = set(sys.modules)\n"
    "from setpoint.cli_fast import fast\n"
    "code = fast(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "sys.stderr.write('\\nLOADED=' + ','.join(sorted(set(sys.modules) - before)) + '\\n')\n"
    "sys.exit(code)\n"
)
# What the status path must not load: each costs it milliseconds (dataclasses pulls
# inspect and ast; the full StateDB the journal, threading and the migrations).
HEAVY = {"dataclasses", "inspect", "ast", "typing", "pathlib", "pydantic", "typer",
         "setpoint.state.db", "setpoint.state.journal", "setpoint.model.errors",
         "urllib.request"}  # fmt: skip


def probe(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        capture_output=True, text=True, timeout=60, env=os.environ.copy(),
    )  # fmt: skip
    head, _, loaded = proc.stderr.rpartition("\nLOADED=")
    assert loaded, proc.stderr
    proc.stderr = head
    return proc, set(loaded.strip().split(","))


def sample() -> StackStatus:
    st = StackStatus(
        stack="web", source="main", path="hosts/web", fetched_revision="a" * 40,
        applied_revision="a" * 40, counts={"total": 2, "in_sync": 1, "failed": 1},
        resources={"File/x": "failed"}, stalls={"File/x": ["ApplyFailed", "no", "a"]},
        health={"Service/s": {"health": "Degraded", "message": "exit 3\nmore"}},
    )  # fmt: skip
    st.set_condition("Ready", False, "ApplyFailed", "File/x: no\nsecond line", 1000.0)
    st.set_condition("Reconciling", False, "ApplyFailed", "pass finished", 1000.0)
    return st


def files(state: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(state.iterdir())}


def test_status_loads_nothing_heavy_and_prints_what_the_state_db_holds(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateDB(state) as db:
        db.save_status(sample())
        db.save_status(StackStatus(stack="api"))
        stored = db.all_status()
    proc, loaded = probe("status", "--state", state, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [s.to_json() | {"waiting": None} for s in stored]
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    assert "setpoint.state.status_read" in loaded  # it did read the state dir
    proc, loaded = probe("status", "--state", state)
    assert proc.returncode == 0, proc.stderr
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    assert "stack web (source main, path hosts/web): NotReady" in proc.stdout
    assert "      second line" in proc.stdout and "    Degraded: Service/s (exit 3)" in proc.stdout
    assert "stack api (source , path ): NotReady" in proc.stdout
    assert proc.stdout == cli("status", "--state", state, check=0).stdout  # as `setpoint` prints


def test_status_leaves_the_state_dir_as_it_found_it(tmp_path: Path) -> None:
    """A read: no migration, no WAL switch, no -wal/-shm files left behind."""
    state = tmp_path / "state"
    with StateDB(state) as db:
        db.save_status(sample())
    conn = sqlite3.connect(state / "setpoint.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")  # as an older setpoint left it
    conn.close()
    before = files(state)
    assert "stack web" in cli("status", "--state", state, check=0).stdout
    assert files(state) == before


def test_status_of_an_empty_or_newer_state_db(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "setpoint.db").write_bytes(b"")  # created, never initialised
    assert cli("status", "--state", state, check=0).stdout == "no stacks have run yet\n"
    assert (state / "setpoint.db").read_bytes() == b""
    with StateDB(state) as db:
        db.save_status(sample())
    conn = sqlite3.connect(state / "setpoint.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    proc = cli("status", "--state", state, check=1)
    assert f"has schema version {SCHEMA_VERSION + 1}, newer than this setpoint" in proc.stderr
    assert "upgrade setpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_stack_status_keeps_what_the_dataclass_gave() -> None:
    params = list(inspect.signature(StackStatus).parameters)
    assert params == list(StackStatus.FIELDS)
    assert list(inspect.signature(Condition).parameters) == list(Condition.FIELDS)
    st = sample()
    doc = st.to_json()
    assert list(doc) == list(StackStatus.FIELDS)
    assert StackStatus.from_json(json.loads(json.dumps(doc))) == st
    doc["counts"]["total"] = 9  # a deep copy, as dataclasses.asdict made
    doc["conditions"][0]["status"] = True
    doc["stalls"]["File/x"].append("x")
    assert st.counts["total"] == 2 and not st.conditions[0].status
    assert st.stalls["File/x"] == ["ApplyFailed", "no", "a"]
    assert st.conditions[0].__dict__ == doc["conditions"][0] | {"status": False}  # the API's view
    moved = st.replace(last_pass=5.0)
    assert moved.last_pass == 5.0 and moved.conditions is st.conditions and st.last_pass is None
    assert moved != st and StackStatus("a") == StackStatus("a")
    assert StackStatus("a").counts is not StackStatus("a").counts  # fresh containers
    with pytest.raises(TypeError):
        st.replace(bogus=1)
    with pytest.raises(TypeError):
        hash(st)
    assert repr(StackStatus("a")).startswith("StackStatus(stack='a', source='', path='',")
    assert repr(st.conditions[0]).startswith("Condition(type='Ready', status=False,")
