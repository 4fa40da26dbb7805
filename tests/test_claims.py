"""Batched bookkeeping of a first apply (engine/claims.py): write-ahead claims and the
records of the creates go in one transaction per batch, the journal still holds one
``apply`` per created file in the order of the pass, and the creates a stopped pass
never recorded are recorded and journaled by the next one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import GitRepo
from helpers import docs, manifest, one_pass, one_stack
from setpoint.engine.claims import BATCH, PassClaims
from setpoint.state import StateDB


def many_files(repo: GitRepo, n: int, dirs: int = 3, extra: str = "") -> list[str]:
    """``n`` files in ``dirs`` declared directories; the resource ids in declaration order."""
    files: dict[str, str] = {}
    ids = []
    for d in range(dirs):
        parts = [manifest("Directory", f"d{d}", path=f"/srv/d{d}")]
        ids.append(f"Directory/d{d}")
        for i in range(d, n, dirs):
            parts.append(manifest("File", f"f{i}", path=f"/srv/d{d}/f{i}.txt", content=f"{i}\n"))
            ids.append(f"File/f{i}")
        files[f"m/d{d}.yaml"] = docs(*parts)
    if extra:
        files["m/d1x.yaml"] = extra  # between d1.yaml and d2.yaml
    repo.commit(files)
    return ids


@pytest.fixture
def transactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One item per ``StateDB.record_outcome`` transaction that writes inventory rows."""
    calls: list[int] = []
    real = StateDB.record_outcome

    def counting(self: StateDB, *args: Any, **kwargs: Any) -> None:
        if args or kwargs.get("records") or kwargs.get("removed"):  # not a journal append
            calls.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(StateDB, "record_outcome", counting)
    return calls


def test_a_first_apply_records_its_creates_in_batches_and_journals_each_in_order(
    git_repo: GitRepo, root: Path, state_dir: Path, transactions: list[int]
) -> None:
    ids = many_files(git_repo, 600)
    result, _status, journal, inv = one_pass(one_stack(git_repo.url, root, state_dir))
    assert result.converged, result
    # 603 creates: one transaction per batch claims it and records the batch before it,
    # one at the end records the last (was one per create, plus the claims).
    assert len(transactions) == -(-603 // BATCH) + 1, len(transactions)
    applies = [e for e in journal if e.event == "apply"]
    assert [e.resource for e in applies] == [o.resource for o in result.outcomes]
    assert sorted(e.resource for e in applies) == sorted(ids)
    assert all(e.detail["action"] == "create" for e in applies)
    assert journal.index(applies[-1]) < next(
        i for i, e in enumerate(journal) if e.event == "pass"
    )  # recorded before the pass's own entry
    assert set(inv) == set(ids) and all(rec.digest for rec in inv.values())
    assert (root / "srv/d2/f599.txt").read_text() == "599\n"


def test_a_failed_create_is_journaled_after_the_creates_before_it(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    # /srv/blocked is a file where File/bad needs a directory: its create fails amid
    # batched creates, which are journaled before its failure, in the order of the pass.
    (root / "srv").mkdir(parents=True)
    (root / "srv/blocked").write_text("in the way\n")
    bad = manifest("File", "bad", path="/srv/blocked/x.txt", content="x\n")
    ids = many_files(git_repo, 30, extra=bad)
    result, _status, journal, inv = one_pass(one_stack(git_repo.url, root, state_dir))
    states = {o.resource: o.state for o in result.outcomes}
    assert states.pop("File/bad") == "failed"
    assert set(states.values()) == {"changed"}
    done = [o.resource for o in result.outcomes if o.state in ("changed", "failed")]
    assert [e.resource for e in journal if e.event in ("apply", "failure")] == done
    assert done.index("File/bad") < len(done) - 1, "not a create amid others"
    # Its claim is withdrawn: only what was created is owned, and recorded as applied.
    assert set(inv) == set(ids) and all(rec.digest for rec in inv.values())


def test_creates_a_stopped_pass_did_not_record_are_journaled_by_the_next_pass(
    git_repo: GitRepo, root: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a crash after the creates and before their batch's transaction leaves: the
    claims (digest "") of files that are on the host as declared."""
    ids = many_files(git_repo, 40, dirs=2)
    cfg = one_stack(git_repo.url, root, state_dir)
    with monkeypatch.context() as m:
        # The records of the creates are lost (the process died before writing them).
        m.setattr(PassClaims, "done", lambda self, record, entries: self.fresh.discard(
            record.resource))
        _result, _status, journal, inv = one_pass(cfg)
    assert not [e for e in journal if e.event == "apply"]
    assert set(inv) == set(ids) and not any(rec.digest for rec in inv.values())
    assert (root / "srv/d1/f39.txt").read_text() == "39\n"
    result, _status, journal, inv = one_pass(cfg)
    assert result.converged and not result.changes
    applies = [e for e in journal if e.event == "apply"]
    assert sorted(e.resource for e in applies) == sorted(ids)
    assert all(e.detail == {"action": "create", "path": e.detail["path"], "recovered": True}
               for e in applies)
    assert "the pass that created it stopped before recording it" in applies[0].message
    assert all(rec.digest for rec in inv.values())
    # Recorded once: the pass after does not journal them again.
    _result, _status, again, _inv = one_pass(cfg)
    assert len([e for e in again if e.event == "apply"]) == len(applies)
