"""setpoint.source.git: polling, fetching and exporting real Git repositories."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import GIT_ENV, GitRepo
from setpoint.model.errors import SourceError
from setpoint.source import GitSource, export, normalize_url, redact_url
from setpoint.source import git as gitmod

MISSING_SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def bare(tmp_path: Path, git_repo: GitRepo) -> Path:
    """A bare "server" repository cloned from ``git_repo`` after a first commit."""
    git_repo.commit({"hosts/web/motd.yaml": "kind: File\n"}, message="first")
    path = tmp_path / "server.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(git_repo.path), str(path)],
        check=True,
        capture_output=True,
    )
    return path


def push(repo: GitRepo, bare: Path, *refs: str, force: bool = False) -> None:
    repo.git("push", "-q", *(["--force"] if force else []), str(bare), *(refs or ("main",)))


def source(tmp_path: Path, url: str | Path, ref: str = "main", **kw: object) -> GitSource:
    return GitSource("test", str(url), ref, tmp_path / "cache", **kw)  # type: ignore[arg-type]


# -- branches, tags, commits ------------------------------------------------------


def test_branch_is_followed_and_remote_revision_tracks_it(
    tmp_path: Path, git_repo: GitRepo, bare: Path
) -> None:
    src = source(tmp_path, bare)
    first = git_repo.git("rev-parse", "HEAD")
    assert src.remote_revision() == first
    assert src.fetch() == first

    second = git_repo.commit({"hosts/web/motd.yaml": "kind: File\n# v2\n"}, message="second")
    assert src.remote_revision() == first  # not pushed yet
    push(git_repo, bare)
    assert src.remote_revision() == second
    assert src.fetch() == second
    assert (src.tree(second) / "hosts/web/motd.yaml").read_text() == "kind: File\n# v2\n"
    assert (src.tree(first) / "hosts/web/motd.yaml").read_text() == "kind: File\n"


def test_force_pushed_branch_is_followed(tmp_path: Path, git_repo: GitRepo, bare: Path) -> None:
    base = git_repo.git("rev-parse", "HEAD")
    git_repo.commit({"a": "1"}, message="to be rewritten")
    push(git_repo, bare)
    src = source(tmp_path, bare)
    src.fetch()

    git_repo.git("reset", "-q", "--hard", base)
    rewritten = git_repo.commit({"a": "2"}, message="rewritten")
    push(git_repo, bare, force=True)
    assert src.remote_revision() == rewritten
    assert src.fetch() == rewritten
    assert (src.tree(rewritten) / "a").read_text() == "2"


@pytest.mark.parametrize("annotated", [False, True], ids=["lightweight", "annotated"])
def test_tag(tmp_path: Path, git_repo: GitRepo, bare: Path, annotated: bool) -> None:
    tagged = git_repo.git("rev-parse", "HEAD")
    git_repo.git("tag", *(["-a", "-m", "release"] if annotated else []), "v1.0")
    git_repo.commit({"later": "x"}, message="after the tag")
    push(git_repo, bare, "main", "v1.0")

    src = source(tmp_path, bare, "v1.0")
    assert src.remote_revision() == tagged  # peeled to the commit
    assert src.fetch() == tagged
    assert not (src.tree(tagged) / "later").exists()

    # A tag moved on the server (bad practice, but it happens) is followed too.
    git_repo.git("tag", "-f", *(["-a", "-m", "moved"] if annotated else []), "v1.0", "main")
    push(git_repo, bare, "v1.0", force=True)
    head = git_repo.git("rev-parse", "HEAD")
    assert src.remote_revision() == head
    assert src.fetch() == head


def test_full_ref_names_and_ambiguity(tmp_path: Path, git_repo: GitRepo, bare: Path) -> None:
    tagged = git_repo.git("rev-parse", "HEAD")
    git_repo.git("tag", "release")
    branch_tip = git_repo.commit({"b": "1"}, message="on the branch")
    git_repo.git("branch", "release")
    push(git_repo, bare, "main", "refs/heads/release", "refs/tags/release")

    with pytest.raises(SourceError, match=r"ambiguous.*refs/heads/release and refs/tags/release"):
        source(tmp_path, bare, "release").fetch()
    assert source(tmp_path, bare, "refs/tags/release").fetch() == tagged
    assert source(tmp_path, bare, "refs/heads/release").fetch() == branch_tip
    assert source(tmp_path, bare, "HEAD").fetch() == git_repo.git("rev-parse", "main")


def test_commit_sha_ref(tmp_path: Path, git_repo: GitRepo, bare: Path) -> None:
    pinned = git_repo.git("rev-parse", "HEAD")
    git_repo.commit({"later": "x"}, message="newer")
    push(git_repo, bare)

    src = source(tmp_path, bare, pinned)
    assert src.remote_revision() is None  # nothing to poll
    assert src.fetch() == pinned
    assert not (src.tree(pinned) / "later").exists()

    # Once fetched, a commit needs no network: it works with the server gone.
    bare.rename(bare.with_name("gone.git"))
    assert src.fetch() == pinned


def test_commit_sha_when_the_server_refuses_sha_wants(
    tmp_path: Path, git_repo: GitRepo, bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Protocol v0 without uploadpack.allow*SHA1InWant refuses a non-tip sha:
    # the source falls back to fetching all branches and tags.
    older = git_repo.git("rev-parse", "HEAD")
    git_repo.commit({"later": "x"}, message="newer")
    push(git_repo, bare)
    monkeypatch.setattr(gitmod, "_GIT_OPTS", (*gitmod._GIT_OPTS, "-c", "protocol.version=0"))
    src = source(tmp_path, f"file://{bare}", older)
    assert src.fetch() == older
    assert (src.tree(older) / "hosts/web/motd.yaml").is_file()


def test_commit_not_found(tmp_path: Path, bare: Path) -> None:
    with pytest.raises(SourceError) as err:
        source(tmp_path, bare, MISSING_SHA).fetch()
    assert f"commit {MISSING_SHA} not found in {bare}" in str(err.value)


# -- URLs ---------------------------------------------------------------------------


def test_file_url_and_relative_path(
    tmp_path: Path, git_repo: GitRepo, bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = git_repo.git("rev-parse", "HEAD")
    assert source(tmp_path, f"file://{bare}").fetch() == head

    monkeypatch.chdir(bare.parent)
    src = GitSource("rel", bare.name, "main", tmp_path / "cache-rel")
    assert src.url == str(bare)  # made absolute at construction
    monkeypatch.chdir("/")
    assert src.fetch() == head


def test_normalize_and_redact_urls() -> None:
    assert normalize_url("git@example.com:ops/hosts.git") == "git@example.com:ops/hosts.git"
    assert normalize_url("https://example.com/x.git") == "https://example.com/x.git"
    assert normalize_url("/srv/git/x.git") == "/srv/git/x.git"
    assert normalize_url("./a:b") == os.path.abspath("a:b")
    for bad in ("", "--upload-pack=touch /tmp/x", " x", "a\nb"):
        with pytest.raises(SourceError):
            normalize_url(bad)
    assert redact_url("https://bot:s3cret@example.com/x.git") == "https://bot:***@example.com/x.git"
    assert redact_url("https://ghp_token@example.com/x.git") == "https://***@example.com/x.git"
    assert redact_url("ssh://git@example.com/x.git") == "ssh://git@example.com/x.git"
    assert redact_url("git@example.com:x.git") == "git@example.com:x.git"


def test_invalid_refs_are_refused(tmp_path: Path) -> None:
    for bad in ("", "a..b", "-x", "a b", "x.lock", "a:b", "refs/heads/", "@"):
        with pytest.raises(SourceError, match="not a valid"):
            GitSource("s", "/srv/x.git", bad, tmp_path)
    with pytest.raises(ValueError, match="keep_trees"):
        GitSource("s", "/srv/x.git", "main", tmp_path, keep_trees=0)


# -- errors -------------------------------------------------------------------------


def test_ref_not_found(tmp_path: Path, bare: Path) -> None:
    src = source(tmp_path, bare, "nope")
    for call in (src.remote_revision, src.fetch):
        with pytest.raises(SourceError) as err:
            call()
        msg = str(err.value)
        assert "ref 'nope' not found in" in msg
        assert str(bare) in msg
        assert "refs/heads/nope" in msg
    with pytest.raises(SourceError, match="full 40-character sha"):
        source(tmp_path, bare, "deadbeef").fetch()


def test_unreachable_url(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-repo.git"
    src = source(tmp_path, missing)
    for call in (src.remote_revision, src.fetch):
        with pytest.raises(SourceError) as err:
            call()
        msg = str(err.value)
        assert f"cannot reach {missing}" in msg
        assert "does not appear to be a git repository" in msg  # git's own words


def test_credentials_are_masked_in_errors(tmp_path: Path) -> None:
    # Port 9 on localhost: connection refused at once, no network needed.
    src = source(tmp_path, "http://bot:s3cret@127.0.0.1:9/x.git", timeout=20)
    with pytest.raises(SourceError) as err:
        src.remote_revision()
    assert "s3cret" not in str(err.value)
    assert "bot:***@127.0.0.1" in str(err.value)
    assert "s3cret" not in repr(src)


def test_hanging_remote_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text("#!/bin/sh\nsleep 60\n")
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(fake_ssh))
    src = source(tmp_path, "ssh://example.invalid/x.git", timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"timed out after 0.5s"):
        src.remote_revision()
    assert time.monotonic() - t0 < 10


def test_callers_git_environment_is_ignored(
    tmp_path: Path, git_repo: GitRepo, bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = git_repo.git("rev-parse", "HEAD")
    # As when the agent is started from a git hook, or with a hostile ~/.gitconfig.
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_WORK_TREE", str(tmp_path))
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text('[url "file:///nonexistent/"]\n\tinsteadOf = /\n')
    monkeypatch.setenv("HOME", str(home))
    assert source(tmp_path, bare).fetch() == head


# -- trees --------------------------------------------------------------------------


def test_tree_holds_the_exact_committed_files(
    tmp_path: Path, git_repo: GitRepo, bare: Path
) -> None:
    binary = bytes(range(256)) * 4 + b"\r\n\0"
    git_repo.write("bin/tool.sh", "#!/bin/sh\necho hi\n")
    (git_repo.path / "bin/tool.sh").chmod(0o755)
    os.symlink("../files/motd", git_repo.path / "bin/motd-link")
    os.symlink("/etc/hostname", git_repo.path / "abs-link")
    sha = git_repo.commit(
        {
            "files/motd": "hello\n",
            "files/blob.bin": binary,
            "files/crlf.txt": "a\nb\n",
            "files/ignored.txt": "still here\n",
            "files/subst.txt": "$Format:%H$\n",
            ".gitattributes": (
                "*.txt text eol=crlf\nignored.txt export-ignore\nsubst.txt export-subst\n"
            ),
        },
        message="files",
    )
    push(git_repo, bare)
    src = source(tmp_path, bare)
    assert src.fetch() == sha
    tree = src.tree(sha)

    assert tree == tmp_path / "cache" / "trees" / sha
    assert (tree / "files/motd").read_text() == "hello\n"
    assert (tree / "files/blob.bin").read_bytes() == binary
    # The repository's attributes do not rewrite or hide anything.
    assert (tree / "files/crlf.txt").read_bytes() == b"a\nb\n"
    assert (tree / "files/ignored.txt").read_text() == "still here\n"
    assert (tree / "files/subst.txt").read_text() == "$Format:%H$\n"
    # Symlinks stay symlinks, with their committed targets.
    assert os.readlink(tree / "bin/motd-link") == "../files/motd"
    assert os.readlink(tree / "abs-link") == "/etc/hostname"
    # Executable bit kept; everything read-only.
    assert stat.S_IMODE((tree / "bin/tool.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE((tree / "files/motd").stat().st_mode) == 0o444
    assert stat.S_IMODE((tree / "files").stat().st_mode) == 0o555
    assert stat.S_IMODE(tree.stat().st_mode) == 0o555
    # Reused, not exported again.
    inode = (tree / "files/motd").stat().st_ino
    assert src.tree(sha) == tree
    assert (tree / "files/motd").stat().st_ino == inode


def test_hostile_tree_cannot_write_outside(tmp_path: Path, git_repo: GitRepo) -> None:
    # A tree no honest git client makes: a symlink "link" to a directory outside,
    # and a directory "link" holding a file. Extracted naively, the file would
    # be written through the symlink.
    outside = tmp_path / "outside"
    outside.mkdir()

    def plumb(*args: str, data: str = "") -> str:
        return subprocess.run(
            ["git", *args], cwd=git_repo.path, input=data, check=True, capture_output=True,
            text=True, env={**os.environ, **GIT_ENV},
        ).stdout.strip()  # fmt: skip

    blob = plumb("hash-object", "-w", "--stdin", data="pwned\n")
    target = plumb("hash-object", "-w", "--stdin", data=str(outside))
    sub = plumb("mktree", data=f"100644 blob {blob}\tevil\n")
    tree = plumb("mktree", data=f"120000 blob {target}\tlink\n040000 tree {sub}\tlink\n")
    sha = plumb("commit-tree", "-m", "evil", tree)
    plumb("update-ref", "refs/heads/evil", sha)

    src = source(tmp_path, git_repo.path, "evil")
    assert src.fetch() == sha
    with pytest.raises(SourceError, match="cannot export"):
        src.tree(sha)
    assert list(outside.iterdir()) == []
    assert list((tmp_path / "cache" / "trees").iterdir()) == []


def test_two_sources_share_one_cache_dir(tmp_path: Path, git_repo: GitRepo, bare: Path) -> None:
    # Two objects on one cache dir stand for two processes: the flock keeps
    # their exports and tree removals apart.
    shas = [git_repo.commit({"n": str(i)}, message=f"c{i}") for i in range(4)]
    push(git_repo, bare)
    a, b = source(tmp_path, bare, keep_trees=2), source(tmp_path, bare, keep_trees=2)
    a.fetch()
    errors: list[BaseException] = []

    def work(src: GitSource) -> None:
        try:
            for _ in range(3):
                for sha in shas:
                    # Not read back here: with keep_trees=2 the other "process"
                    # may legitimately remove it before we could look.
                    src.tree(sha)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    left = sorted(p.name for p in (tmp_path / "cache" / "trees").iterdir())
    trees = [n for n in left if not n.endswith(".manifest")]
    assert len(trees) <= 2
    assert set(trees) <= set(shas)  # no temp dirs left behind
    assert sorted(n for n in left if n.endswith(".manifest")) == [f"{t}.manifest" for t in trees]
    assert (a.tree(shas[0]) / "n").read_text() == "0"


def test_tree_of_unknown_or_malformed_sha(tmp_path: Path, bare: Path) -> None:
    src = source(tmp_path, bare)
    src.fetch()
    with pytest.raises(SourceError, match="not in the local mirror"):
        src.tree(MISSING_SHA)
    for bad in ("--output=/tmp/x", "HEAD", "abc"):
        with pytest.raises(SourceError, match="not a full 40-hex"):
            src.tree(bad)


def test_tree_gc_keeps_the_most_recently_used(
    tmp_path: Path, git_repo: GitRepo, bare: Path
) -> None:
    shas = [git_repo.git("rev-parse", "HEAD")]
    shas += [git_repo.commit({"n": str(i)}, message=f"c{i}") for i in range(3)]
    push(git_repo, bare)
    src = source(tmp_path, bare, keep_trees=2)
    src.fetch()
    trees = tmp_path / "cache" / "trees"

    def kept() -> set[str]:
        names = {p.name for p in trees.iterdir()}
        shas = {n for n in names if not n.endswith(".manifest")}
        assert names - shas == {f"{s}.manifest" for s in shas}  # removed together
        return shas

    src.tree(shas[0])
    src.tree(shas[1])
    assert kept() == {shas[0], shas[1]}
    src.tree(shas[2])
    assert kept() == {shas[1], shas[2]}
    src.tree(shas[1])  # used again: now the most recent
    src.tree(shas[3])
    assert kept() == {shas[1], shas[3]}

    one = source(tmp_path, bare, keep_trees=1)
    assert one.tree(shas[0]).is_dir()  # the one asked for is never removed
    assert kept() == {shas[0]}


def test_leftovers_of_a_killed_export_are_cleaned(
    tmp_path: Path, git_repo: GitRepo, bare: Path
) -> None:
    sha = git_repo.git("rev-parse", "HEAD")
    src = source(tmp_path, bare)
    src.fetch()
    trees = tmp_path / "cache" / "trees"
    # What a SIGKILL during an export (or during a removal) leaves behind.
    partial = trees / ".tmp-k1ll3d" / "tree" / "deep"
    partial.mkdir(parents=True)
    (partial / "half-written").write_text("x")
    os.symlink("/etc", partial / "link")
    for d in (partial, partial.parent):
        d.chmod(0o555)
    (trees / ".tmp-k1ll3d" / "tree.tar").write_bytes(b"\0" * 100)
    old = trees / f".tmp-old-{MISSING_SHA}-1"
    old.mkdir()
    old.chmod(0o555)

    tree = src.tree(sha)
    assert sorted(p.name for p in trees.iterdir()) == [sha, f"{sha}.manifest"]
    assert (tree / "hosts/web/motd.yaml").is_file()
    assert Path("/etc").is_dir()  # the symlink was removed, not followed


def test_stale_git_locks_from_a_killed_fetch_are_removed(
    tmp_path: Path, git_repo: GitRepo, bare: Path
) -> None:
    src = source(tmp_path, bare)
    src.fetch()
    new = git_repo.commit({"x": "1"}, message="new")
    push(git_repo, bare)
    repo = tmp_path / "cache" / "repo.git"
    # What `git fetch` leaves when SIGKILLed while updating refs.
    (repo / "refs/heads/main.lock").write_text("")
    (repo / "packed-refs.lock").write_text("")
    assert src.fetch() == new
    assert not (repo / "refs/heads/main.lock").exists()


def test_failed_export_leaves_nothing(
    tmp_path: Path, git_repo: GitRepo, bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = git_repo.git("rev-parse", "HEAD")
    src = source(tmp_path, bare)
    src.fetch()

    def boom(_root: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(export, "make_read_only", boom)
    with pytest.raises(SourceError, match="disk full"):
        src.tree(sha)
    assert list((tmp_path / "cache" / "trees").iterdir()) == []
    monkeypatch.undo()
    assert src.tree(sha).is_dir()


def test_commit_info(tmp_path: Path, git_repo: GitRepo, bare: Path) -> None:
    sha = git_repo.commit({"x": "1"}, message="Add motd for web hosts\n\nLonger body.")
    push(git_repo, bare)
    src = source(tmp_path, bare)
    src.fetch()
    info = src.commit_info(sha)
    assert info["sha"] == sha
    assert info["author"] == "setpoint tests <tests@setpoint.invalid>"
    assert info["subject"] == "Add motd for web hosts"
    assert datetime.fromisoformat(info["date"]).tzinfo is not None


def test_a_slow_fetch_does_not_hold_up_reading_the_fetched_tree(
    tmp_path: Path, git_repo: GitRepo
) -> None:
    first = git_repo.commit({"a.txt": "one\n"})
    src = GitSource("s", git_repo.url, "main", tmp_path / "cache")
    assert src.fetch() == first
    git_repo.commit({"a.txt": "two\n"})
    inside, release = threading.Event(), threading.Event()
    real = src._fetch_named

    def slow_fetch(known: str | None) -> str:
        inside.set()  # the fetch holds the mirror's locks now, as on a slow network
        release.wait(30)
        return real(known)

    src._fetch_named = slow_fetch  # type: ignore[method-assign]
    fetcher = threading.Thread(target=src.fetch)
    fetcher.start()
    try:
        assert inside.wait(10)
        got: list[Path] = []
        reader = threading.Thread(target=lambda: got.append(src.tree(first)))
        reader.start()
        reader.join(10)  # blocked on the fetch's lock, it would still be waiting
        assert not reader.is_alive(), "reading the fetched tree waited for the fetch"
        assert (got[0] / "a.txt").read_text() == "one\n"
        assert src.tree_id(first) is not None and src.commit_info(first)["sha"] == first
    finally:
        release.set()
        fetcher.join(30)


def test_a_fetched_commit_costs_git_once_per_question(
    tmp_path: Path, git_repo: GitRepo, bare: Path
) -> None:
    """What git said of a full sha is kept (objects never change) until the next fetch."""
    first = git_repo.git("rev-parse", "HEAD")
    src = source(tmp_path, bare)
    assert src.fetch() == first
    second = git_repo.commit({"hosts/web/motd.yaml": "kind: File\n# v2\n"}, message="second")
    push(git_repo, bare)
    ran: list[str] = []
    real = src._run

    def counted(args: list[str], **kw: object) -> tuple[int, bytes, bytes]:
        ran.append(args[0])
        return real(args, **kw)  # type: ignore[arg-type]

    src._run = counted  # type: ignore[method-assign,assignment]
    assert src.fetch() == second
    assert ran == ["fetch", "show"]
    tree_id = git_repo.git("rev-parse", f"{second}:hosts")
    for _ in range(2):  # the questions a pass asks, twice: git answers each once
        info = src.commit_info(second)
        assert info["subject"] == "second" and info["sha"] == second
        assert src.parents(second) == [first]
        assert src.tree_id(second, "hosts") == tree_id
        assert src.object_ids(second, ["hosts"]) == {"hosts": tree_id}
        assert (src.tree(second) / "hosts/web/motd.yaml").read_text() == "kind: File\n# v2\n"
    assert ran.count("show") == 1 and ran.count("rev-parse") == 1
    assert ran.count("ls-tree") == 1 and ran.count("archive") == 1
    # Never read in this process: asked of git, and an absent path is never kept.
    assert src.parents(first) is None and src.commit_info(first)["subject"] == "first"
    assert src.tree_id(second, "nope") is None and src.tree_id(second, "nope") is None
    assert ran.count("rev-parse") == 3
    # A fetch forgets what it knew (gc may have dropped objects meanwhile).
    src.fetch()
    src.commit_info(second)
    assert ran.count("show") == 3


def test_fetch_checks_for_gc_on_its_first_fetch_and_every_16th(
    tmp_path: Path, git_repo: GitRepo, bare: Path
) -> None:
    src = source(tmp_path, bare)
    fetches: list[list[str]] = []
    real = src._run

    def counted(args: list[str], **kw: object) -> tuple[int, bytes, bytes]:
        if args[0] == "fetch":
            fetches.append(list(args))
        return real(args, **kw)  # type: ignore[arg-type]

    src._run = counted  # type: ignore[method-assign,assignment]
    for _ in range(17):
        src.fetch()
    auto = [i for i, a in enumerate(fetches) if "--auto-maintenance" in a]
    assert auto == [0, 16]
    assert all("--no-auto-maintenance" in a for i, a in enumerate(fetches) if i not in auto)
