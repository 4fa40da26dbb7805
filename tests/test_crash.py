"""Crash safety: SIGKILL the real agent process at random points while it applies large
revisions, restart it, and check that nothing is ever partial or lost.

Each trial: the agent is down and a new revision was committed meanwhile (so a file
created by the killed pass may no longer be declared: the orphan case); restart it;
wait until the host converges on that revision and check host, inventory and journal;
commit another revision (every file's content changes, some files come and go); kill
the agent at a random moment of that apply; check that every managed file is a complete
old or new version and that journal and inventory agree with the host.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import TMP_RE, manifest, start_agent, wait_for
from setpoint.model.status import StackStatus

FILES = 160
TRIALS = 50
FILLER = bytes(range(256)) * 16  # 4 KiB of binary per file (no text diffs in the journal)


def declared(rev: int) -> set[int]:
    """Files of revision ``rev``: a seventh of them alternates, so the files a revision
    creates are exactly those the next one removes (a killed create must not be orphaned)."""
    return {i for i in range(FILES) if i % 7 != rev % 2}


def content(rev: int, i: int) -> bytes:
    return f"rev={rev} file={i}\n".encode() + FILLER + f"\nend of rev={rev} file={i}\n".encode()


def version(data: bytes) -> int:
    first = data.split(b"\n", 1)[0].decode()
    assert first.startswith("rev="), first
    return int(first.split()[0][4:])


def commit(repo: GitRepo, rev: int) -> str:
    for old in (repo.path / "m").glob("*.yaml"):
        old.unlink()
    files: dict[str, str | bytes] = {}
    for chunk in range(0, FILES, 25):  # 12 manifests of 25 resources
        docs = [
            manifest("File", f"f{i}", path=f"/srv/data/f{i}.txt", source=f"data/f{i}.bin")
            for i in range(chunk, chunk + 25)
            if i in declared(rev)
        ]
        if docs:
            files[f"m/part{chunk:03d}.yaml"] = "---\n".join(docs)
    for i in declared(rev):
        files[f"m/data/f{i}.bin"] = content(rev, i)
    return fast_commit(repo, files, f"rev {rev}")


def fast_commit(repo: GitRepo, files: dict[str, str | bytes], message: str) -> str:
    """Commit exactly ``files`` as the new tree of main with one ``git fast-import``
    (10x quicker than writing a work tree and ``git add``-ing 300 files)."""
    out = bytearray()
    for mark, data in enumerate(files.values(), 1):
        blob = data.encode() if isinstance(data, str) else data
        out += b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(blob), blob)
    msg = message.encode()
    now = int(time.time())
    out += b"commit refs/heads/main\n"
    out += b"committer setpoint tests <tests@setpoint.invalid> %d +0000\n" % now
    out += b"data %d\n%s\n" % (len(msg), msg)
    parent = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", "refs/heads/main"],
        cwd=repo.path,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if parent:
        out += b"from %s\n" % parent.encode()
    out += b"deleteall\n"
    for mark, path in enumerate(files, 1):
        out += b"M 100644 :%d %s\n" % (mark, path.encode())
    out += b"\n"
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo.path, input=bytes(out), check=True)
    return repo.git("rev-parse", "refs/heads/main")


Journal = list[tuple[int, str, str | None, str | None]]


def _ro(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{state / 'setpoint.db'}?mode=ro", uri=True, timeout=30)


def read_status(state: Path) -> StackStatus | None:
    conn = _ro(state)
    try:
        row = conn.execute("SELECT doc FROM status WHERE stack = 'web'").fetchone()
    finally:
        conn.close()
    return StackStatus.from_json(json.loads(row[0])) if row else None


def read_db(state: Path) -> tuple[dict[str, str], Journal]:
    """(inventory: resource -> revision, journal rows) read straight from the database."""
    conn = _ro(state)
    try:
        inv = dict(conn.execute("SELECT resource, revision FROM inventory WHERE stack = 'web'"))
        journal = list(
            conn.execute(
                "SELECT id, event, resource, revision FROM journal WHERE stack = 'web' ORDER BY id"
            )
        )
    finally:
        conn.close()
    return inv, journal


def check_no_partial(root: Path, revs: dict[str, int], upto: int) -> None:
    """Every file under /srv/data is one complete version (old or new), nothing else."""
    data = root / "srv/data"
    if not data.exists():
        return
    for p in data.iterdir():
        if TMP_RE.search(p.name):
            continue  # the unpublished temp of an interrupted write: never a managed path
        assert p.name.startswith("f") and p.name.endswith(".txt"), p
        i = int(p.name[1:-4])
        data = p.read_bytes()
        rev = version(data)
        assert 0 <= rev <= upto and data == content(rev, i), f"{p} is partial or corrupt"


def check_db_matches_host(root: Path, state: Path, revs: dict[str, int], upto: int) -> None:
    """Inventory and journal never claim more than the host has (they are written after
    the durable rename, in one transaction)."""
    inv, journal = read_db(state)
    latest: dict[str, tuple[str, str | None]] = {}
    for _id, event, resource, revision in journal:
        if resource and event in ("apply", "revert", "prune"):
            latest[resource] = (event, revision)
    for resource, (event, revision) in latest.items():
        i = int(resource.split("/f")[1])
        p = root / f"srv/data/f{i}.txt"
        if event == "prune":
            # Pruned, unless declared again since (then owned again before its create).
            assert resource not in inv or i in declared(upto), resource
            continue
        assert resource in inv, f"{resource}: applied per the journal, missing from the inventory"
        assert revision in revs
        # The file holds the journaled version or a newer one (a later, unrecorded write).
        if p.exists():
            on_disk = version(p.read_bytes())
            assert on_disk >= revs[revision], (resource, on_disk, revs[revision])
        else:
            # Only a prune interrupted between the unlink and its record leaves this.
            assert revs[revision] < max(revs.values()), resource


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """Root and state on a tmpfs when we may mount one: a SIGKILL is not a power cut, so
    the fsyncs a disk would make us wait for prove nothing here and would cost minutes."""
    mnt = tmp_path / "work"
    mnt.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_sigkill_during_applies_never_leaves_partial_files_or_lost_records(tmp_path, work):
    seed = int(os.environ.get("SETPOINT_CRASH_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    seed_note = f"(replay with SETPOINT_CRASH_SEED={seed})"
    repo = GitRepo(tmp_path / "repo")
    root = work / "root"
    root.mkdir()
    state = work / "state"
    conf = tmp_path / "agent.yaml"
    conf.write_text(
        f"root: {root}\nstate: {state}\nretry: {{base: 0.2, max: 1}}\n"
        f"sources: [{{name: repo, url: {repo.url}, interval: 0.1}}]\n"
        "stacks: [{name: web, source: repo, path: m, resync: 600}]\n"
    )
    revs: dict[str, int] = {}
    rev = 0
    revs[commit(repo, rev)] = rev
    seen_journal: list[tuple[int, str, str | None, str | None]] = []
    window = 0.3  # how long after an apply starts we may kill: adapted to this machine
    kills_mid_apply = 0
    log = tmp_path / "agent.log"

    for trial in range(TRIALS):
        sha = next(s for s, r in revs.items() if r == rev)
        agent = start_agent("--config", conf, log=log)
        try:
            last: list[object] = []

            def converged(sha: str = sha, rev: int = rev, last: list[object] = last) -> bool:
                if not (state / "setpoint.db").exists():
                    return False
                st = read_status(state)
                last[:] = [st]
                if st is None or st.last_good_revision != sha:
                    return False
                ready = st.condition("Ready")
                if not (ready and ready.status):
                    return False
                # A temp file of a write killed mid-way is never a managed path; it
                # stays until that path is written again (the provider's cleanup).
                files = {
                    p.name
                    for p in (root / "srv/data").iterdir()
                    if not TMP_RE.search(p.name)
                }
                want = {f"f{i}.txt" for i in declared(rev)}
                last.append(("extra", sorted(files - want), "missing", sorted(want - files)))
                return files == want

            try:
                wait_for(converged, timeout=60, interval=0.05, what="convergence")
            except AssertionError:
                raise AssertionError(
                    f"trial {trial}: no convergence on rev {rev} {seed_note}: {last}\n"
                    + log.read_text()[-3000:]
                ) from None
            # Converged: exact contents, an exact inventory, no orphan, no journal loss.
            for i in declared(rev):
                assert (root / f"srv/data/f{i}.txt").read_bytes() == content(rev, i)
            inv, journal = read_db(state)
            assert set(inv) == {f"File/f{i}" for i in declared(rev)}, "orphan or stray record"
            ids = {j[0] for j in journal}
            lost = [j for j in seen_journal if j[0] not in ids]
            assert not lost, f"journal entries lost across a SIGKILL: {lost[:3]}"
            seen_journal = journal

            # Next revision; kill the agent at a random moment of its apply (which has
            # started once the data directory changes: every write renames into it).
            data = root / "srv/data"
            before = data.stat().st_mtime_ns
            rev += 1
            revs[commit(repo, rev)] = rev
            wait_for(
                lambda data=data, before=before: data.stat().st_mtime_ns != before,
                timeout=60,
                interval=0.002,
                what="the apply to start",
            )
            time.sleep(rng.uniform(0, window))
        finally:
            agent.send_signal(signal.SIGKILL)
            agent.wait(timeout=30)
        check_no_partial(root, revs, rev)
        check_db_matches_host(root, state, revs, rev)
        _, journal = read_db(state)
        done = sum(
            1
            for i in declared(rev)
            if (root / f"srv/data/f{i}.txt").exists()
            and version((root / f"srv/data/f{i}.txt").read_bytes()) == rev
        )
        if done == len(declared(rev)):
            window *= 0.7  # killed too late: the apply had finished
        else:
            kills_mid_apply += 1
            window = min(window * 1.1, 3.0)
        ids = {j[0] for j in journal}
        assert all(j[0] in ids for j in seen_journal), "journal entries lost on SIGKILL"
        seen_journal = journal
        # While the agent is down, another commit lands (files come and go).
        rev += 1
        revs[commit(repo, rev)] = rev

    # Enough of the kills must have hit an apply under way for the test to mean anything.
    assert kills_mid_apply >= TRIALS // 2, (kills_mid_apply, seed_note)


def test_crash_test_runs_in_ci():
    """The crash test is marked slow but not deselected: pytest's config must not skip it."""
    out = subprocess.run(
        ["git", "grep", "-n", "-e", "not slow", "--", "pyproject.toml", "scripts", ".ci"],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.stdout == "", out.stdout


def test_leftover_temporary_files_are_removed_at_the_next_pass_and_only_ours(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    from helpers import one_pass, one_stack
    from setpoint.providers.files.target import tmp_token

    root, state = tmp_path / "root", tmp_path / "state"
    (root / "etc").mkdir(parents=True)
    git_repo.commit({"m/f.yaml": manifest("File", "motd", path="/etc/motd", content="hi\n")})
    cfg = one_stack(git_repo.url, root, state)
    one_pass(cfg)
    token = tmp_token(state)
    ours = root / f"etc/.motd.setpoint-{token}.tmp"  # what a crash mid-write leaves
    ours.write_text("half a wri")
    users = [root / "etc/.motd.setpoint-tmp", root / "etc/.motd.setpoint-0badc0de.tmp"]
    for p in users:
        p.write_text("not setpoint's (or another state dir's)\n")
    result, _status, journal, _inv = one_pass(cfg)
    assert result.converged
    assert not ours.exists()
    assert all(p.read_text().startswith("not setpoint's") for p in users)
    cleanups = [e for e in journal if e.event == "cleanup"]
    assert [e.message for e in cleanups] == [
        f"removed /etc/.motd.setpoint-{token}.tmp, a temporary file left by an interrupted write"
    ]
    assert cleanups[0].resource == "File/motd"


@pytest.mark.slow
def test_sigkill_during_a_first_apply_of_thousands_leaves_no_file_unknown_to_the_inventory(
    tmp_path: Path, work: Path
) -> None:
    """The write-ahead claims are taken in batches (engine/claims.py): stopped anywhere in a
    first apply of thousands of files (SIGSTOP freezes it between two system calls: what a
    SIGKILL there would leave), no file is partial and every file on the host is in the
    inventory (claimed before it was created); killed, the next apply converges cleanly."""
    import sys

    n = 3000
    repo = GitRepo(tmp_path / "repo")
    files: dict[str, str | bytes] = {}
    for part in range(30):
        files[f"m/part{part:02d}.yaml"] = "---\n".join(
            manifest("File", f"f{i}", path=f"/srv/data/f{i}.txt", content=f"file {i}\n" * 20)
            for i in range(part * 100, part * 100 + 100)
        )
    fast_commit(repo, files, "thousands")
    want = {f"f{i}.txt": f"file {i}\n" * 20 for i in range(n)}
    root, state = work / "root", work / "state"
    root.mkdir()
    data = root / "srv/data"
    args = ["--repo", repo.url, "--path", "m", "--stack", "web", "--root", str(root),
            "--state", str(state)]  # fmt: skip

    def check() -> int:
        """The host against the inventory, now: how many files are there."""
        on_host = {p for p in os.listdir(data) if not TMP_RE.search(p)}
        for name in on_host:
            assert (data / name).read_text() == want[name], f"{name} is partial"
        conn = _ro(state)
        try:
            inv = {r for (r,) in conn.execute("SELECT resource FROM inventory WHERE stack = 'web'")}
        finally:
            conn.close()
        unknown = sorted(name for name in on_host if f"File/{name[:-4]}" not in inv)
        assert not unknown, f"files no inventory knows: {unknown[:5]}"
        return len(on_host)

    proc = subprocess.Popen(
        [sys.executable, "-m", "setpoint", "apply", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples = []
    try:
        wait_for(lambda: data.is_dir() and len(os.listdir(data)) >= 20, timeout=120,
                 interval=0.002, what="the first apply to create files")  # fmt: skip
        rng = random.Random(7)
        while proc.poll() is None and len(samples) < 60:
            proc.send_signal(signal.SIGSTOP)
            try:
                samples.append(check())
            finally:
                proc.send_signal(signal.SIGCONT)
            time.sleep(rng.uniform(0, 0.01))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = check()
    assert len([s for s in samples if 0 < s < n]) >= 10, samples  # most stops mid-apply
    # The next apply converges: every file, exact inventory, no claim left unapplied.
    from helpers import cli

    cli("apply", *args, check=0)
    assert check() == n, killed_at
    conn = _ro(state)
    try:
        rows = dict(conn.execute("SELECT resource, digest FROM inventory WHERE stack = 'web'"))
    finally:
        conn.close()
    assert set(rows) == {f"File/{name[:-4]}" for name in want}
    assert all(rows.values()), "a claim was left without its applied record"
