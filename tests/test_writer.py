"""New files written in the background (providers/files/writer.py, ``Pipelining``):
a create that fails after it was queued is reported, journaled and withdrawn like a
failed ``apply``, its dependents wait, the journal times each create, and no writer
thread outlives its pass."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import docs, manifest, one_pass, one_stack
from setpoint.providers.base import Landed
from setpoint.providers.files import writer
from setpoint.providers.files.common import tmp_name
from setpoint.providers.files.target import tmp_token
from setpoint.providers.files.writer import Writer


@pytest.fixture
def landed(monkeypatch: pytest.MonkeyPatch) -> list[Landed]:
    """What each ``Writer.land`` gave (the creates that really went through the writer)."""
    seen: list[Landed] = []
    real = Writer.land

    def recording(self: Writer) -> Landed:
        out = real(self)
        seen.append(out)
        return out

    monkeypatch.setattr(Writer, "land", recording)
    return seen


def stack_files(repo: GitRepo, n: int, *extra: str) -> list[str]:
    """``n`` new files in /srv/d0 and /srv/d1, then ``extra`` documents; the file ids."""
    parts, ids = [], []
    for i in range(n):
        parts.append(manifest("File", f"f{i}", path=f"/srv/d{i % 2}/f{i}.txt", content=f"{i}\n"))
        ids.append(f"File/f{i}")
    repo.commit({"m/files.yaml": docs(*parts, *extra)})
    return ids


def test_a_create_failing_in_the_writer_is_reported_withdrawn_and_holds_its_dependents(
    git_repo: GitRepo, root: Path, state_dir: Path, landed: list[Landed]
) -> None:
    # A directory in the way of File/late's temporary file: the create is queued (its
    # parent exists, its owner resolves), and fails in the writer's thread.
    state_dir.mkdir(parents=True, exist_ok=True)
    blocker = root / "srv/d0" / tmp_name("late.txt", tmp_token(state_dir))
    blocker.mkdir(parents=True)
    late = manifest("File", "late", path="/srv/d0/late.txt", content="late\n")
    after = manifest("File", "after", path="/srv/d1/after.txt", content="after\n",
                     dependsOn=["File/late"])
    ids = stack_files(git_repo, 150, late, after)
    cfg = one_stack(git_repo.url, root, state_dir)
    result, status, journal, inv = one_pass(cfg)

    assert any("File/late" in x.failed for x in landed), "the failure came from the writer"
    states = {o.resource: o for o in result.outcomes}
    assert states["File/late"].state == "failed"
    assert "in the way of setpoint's temporary file" in (states["File/late"].error or "")
    assert states["File/after"].state == "waiting"
    assert {states[i].state for i in ids} == {"changed"}
    assert len(result.outcomes) == len(ids) + 2
    # Nothing of it is owned or left behind; its dependent was never written.
    assert "File/late" not in inv and "File/after" not in inv
    assert set(inv) == set(ids) and all(rec.digest for rec in inv.values())
    assert not (root / "srv/d0/late.txt").exists() and not (root / "srv/d1/after.txt").exists()
    assert blocker.is_dir()
    assert not [p for p in (root / "srv").rglob("*.tmp") if p != blocker]
    # Journaled like a failed apply, after the creates queued before it.
    failures = [e for e in journal if e.event == "failure"]
    assert [e.resource for e in failures] == ["File/late"]
    assert "in the way" in failures[0].message
    assert not [e for e in journal if e.event == "apply" and e.resource == "File/late"]
    assert status.resources["File/late"] == "failed" and status.counts["failed"] == 1
    assert not next(c for c in status.conditions if c.type == "Ready").status

    # The operator removes what was in the way: the next pass creates both.
    blocker.rmdir()
    result, _status, _journal, inv = one_pass(cfg)
    assert result.converged, result
    assert (root / "srv/d0/late.txt").read_text() == "late\n"
    assert (root / "srv/d1/after.txt").read_text() == "after\n"
    assert {"File/late", "File/after"} <= set(inv)


def test_each_background_create_is_journaled_with_its_own_time_and_mode(
    git_repo: GitRepo, root: Path, state_dir: Path, landed: list[Landed]
) -> None:
    ids = stack_files(git_repo, 300)
    result, _status, journal, _inv = one_pass(one_stack(git_repo.url, root, state_dir))
    assert result.converged, result
    timed = {rid: s for x in landed for rid, s in x.seconds.items()}
    assert set(timed) == set(ids), "every new file went through the writer"
    applies = {e.resource: e for e in journal if e.event == "apply"}
    assert set(applies) == set(ids)
    for rid in ids:
        # The time the write itself took, as landed (not the instant of queueing it).
        assert applies[rid].detail["ms"] == round(timed[rid] * 1000, 3)
    f = root / "srv/d1/f299.txt"
    assert f.read_text() == "299\n" and (f.stat().st_mode & 0o7777) == 0o644


def test_no_writer_thread_outlives_its_pass(
    git_repo: GitRepo, root: Path, state_dir: Path
) -> None:
    before = {t.ident for t in threading.enumerate()}
    stack_files(git_repo, 200)
    result, _status, _journal, _inv = one_pass(one_stack(git_repo.url, root, state_dir))
    assert result.converged, result
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert not [n for n in left if n.startswith("setpoint-")], left
    assert len(os.listdir(root / "srv/d0")) == 100


def test_a_batch_the_writer_cannot_carry_through_fails_its_creates_and_leaves_nothing(
    git_repo: GitRepo, root: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread to fsync with (a process limit): those creates fail, none is recorded,
    no temporary is left, the pass ends (nothing waits on a writer that died), and the
    next pass creates them."""
    ids = stack_files(git_repo, 200)
    cfg = one_stack(git_repo.url, root, state_dir)
    class NoThreads(ThreadPoolExecutor):
        def map(self, *_a: object, **_k: object) -> Iterator[object]:  # type: ignore[override]
            raise RuntimeError("can't start new thread")

    with monkeypatch.context() as m:
        m.setattr(writer, "ThreadPoolExecutor", NoThreads)  # the writer's syncers only
        result, _status, journal, inv = one_pass(cfg)
    failed = [o for o in result.outcomes if o.state == "failed"]
    assert failed and all("can't start new thread" in (o.error or "") for o in failed)
    assert not {o.resource for o in failed} & set(inv)
    assert all(rec.digest for rec in inv.values())
    assert all((root / f"srv/d{int(i[6:]) % 2}/{i[5:]}.txt").is_file() for i in inv)
    assert not list((root / "srv").rglob("*.tmp"))
    assert {e.resource for e in journal if e.event == "failure"} == {o.resource for o in failed}
    result, _status, _journal, inv = one_pass(cfg)
    assert result.converged, result
    assert set(inv) == set(ids)
