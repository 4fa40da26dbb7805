"""FilesystemProvider (File, Directory, Symlink) against a real file system under tmp roots."""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import re
import stat
from pathlib import Path

import pytest

from helpers import TMP_RE
from setpoint.model import Action, Change, Location, ProviderError, Resource
from setpoint.providers.base import ProviderContext
from setpoint.providers.files import walk as fs_walk
from setpoint.providers.files.common import DIFF_INPUT_LIMIT, DIFF_OUTPUT_LIMIT, os_error
from setpoint.providers.files.plan import link_text
from setpoint.providers.files.provider import FilesystemProvider, FsState
from setpoint.providers.files.spec import DirectorySpec, FileSpec, SymlinkSpec
from setpoint.providers.files.target import FileTarget
from setpoint.providers.files.walk import SymlinkInPath

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="chown to another uid needs root")
LOC = Location("t.yaml", 1)


def file_res(path: str, data: bytes = b"hello\n", name: str = "f", **kw: object) -> Resource:
    try:
        spec = FileSpec(path=path, content=data.decode("utf-8"), **kw)
    except UnicodeDecodeError:
        spec = FileSpec(path=path, source="files/blob.bin", **kw)
    return Resource("File", name, spec=spec, location=LOC, blob=data, digest="x")


def dir_res(path: str, name: str = "d", **kw: object) -> Resource:
    spec = DirectorySpec(path=path, **kw)
    return Resource("Directory", name, spec=spec, location=LOC, digest="x")


def link_res(path: str, to: str, name: str = "l", **kw: object) -> Resource:
    spec = SymlinkSpec(path=path, target=to, **kw)
    return Resource("Symlink", name, spec=spec, location=LOC)


@pytest.fixture(autouse=True, params=["openat2", "walk"])
def walk_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with both ways of reaching a path: openat2 (where the kernel has
    it) and the component-by-component walk that replaces it under seccomp or old kernels."""
    if request.param == "walk":
        monkeypatch.setattr(fs_walk.OPENAT2, "enabled", False)
    return str(request.param)


@pytest.fixture
def prov(root: Path) -> FilesystemProvider:
    return FilesystemProvider(ProviderContext(root=root))


@pytest.fixture
def target(prov: FilesystemProvider) -> FileTarget:
    return prov.target


def plan(prov: FilesystemProvider, res: Resource) -> Change:
    return prov.plan(res, prov.read(res))


def converge(prov: FilesystemProvider, res: Resource) -> Change:
    change = plan(prov, res)
    prov.apply(res, change)
    prov.target.fsync_touched()
    after = plan(prov, res)
    assert after.is_noop, after.summary()
    return change


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TMP_RE.search(p.name)]


def fields(change: Change) -> dict[str, tuple[str | None, str | None]]:
    return {f.field: (f.old, f.new) for f in change.fields}


def lstat_key(p: Path) -> tuple[int, ...]:
    st = os.lstat(p)
    return (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns)


# --- File -------------------------------------------------------------------------------


def test_file_create_then_noop(prov: FilesystemProvider, root: Path) -> None:
    res = file_res("/etc/motd", b"managed\n", mode="0640")
    assert prov.read(res) is None
    change = plan(prov, res)
    assert change.action is Action.CREATE
    assert change.path == "/etc/motd"
    assert fields(change)["mode"] == (None, "0640")
    assert change.diff is not None and "+managed" in change.diff
    converge(prov, res)
    host = root / "etc/motd"
    assert host.read_bytes() == b"managed\n"
    assert stat.S_IMODE(host.stat().st_mode) == 0o640
    assert temps(root) == []


def test_missing_parents_created_0755(prov: FilesystemProvider, root: Path) -> None:
    old_umask = os.umask(0o077)  # the parents must be 0755 whatever the umask
    try:
        converge(prov, file_res("/a/b/c/file", b"x"))
    finally:
        os.umask(old_umask)
    for rel in ("a", "a/b", "a/b/c"):
        assert stat.S_IMODE((root / rel).stat().st_mode) == 0o755
    assert prov.target.touched_dirs == set()  # fsync_touched consumed them


def test_touched_dirs_collected_for_batched_fsync(prov: FilesystemProvider, root: Path) -> None:
    (root / "etc").mkdir()
    res = file_res("/etc/x", b"1")
    prov.apply(res, plan(prov, res))
    assert prov.target.touched_dirs == {str(root / "etc")}


def test_text_content_drift_has_unified_diff(prov: FilesystemProvider, root: Path) -> None:
    res = file_res("/etc/app.conf", b"a=1\nb=2\nc=3\n")
    converge(prov, res)
    (root / "etc/app.conf").write_bytes(b"a=1\nb=9\nc=3\n")
    change = plan(prov, res)
    assert change.action is Action.UPDATE
    assert set(fields(change)) == {"content"}
    assert change.diff is not None
    assert "-b=9\n" in change.diff and "+b=2\n" in change.diff
    assert "/etc/app.conf (current)" in change.diff
    converge(prov, res)
    assert (root / "etc/app.conf").read_bytes() == b"a=1\nb=2\nc=3\n"


def test_size_change_detected_and_no_newline_marker(prov: FilesystemProvider, root: Path) -> None:
    res = file_res("/f", b"one\ntwo")
    converge(prov, res)
    (root / "f").write_bytes(b"one\n")
    change = plan(prov, res)
    assert change.action is Action.UPDATE
    assert change.diff is not None and "\\ No newline at end of file" in change.diff


def test_binary_content_drift(prov: FilesystemProvider, root: Path) -> None:
    new = bytes(range(256))
    res = file_res("/bin.dat", new)
    assert isinstance(res.spec, FileSpec) and res.spec.source is not None
    create = plan(prov, res)
    assert create.action is Action.CREATE and create.diff is None
    assert (fields(create)["content"][1] or "").startswith("binary, 256 bytes")
    converge(prov, res)
    old = b"\xff\x00" + bytes(254)
    (root / "bin.dat").write_bytes(old)
    change = plan(prov, res)
    assert change.action is Action.UPDATE
    old_sha, new_sha = hashlib.sha256(old).hexdigest(), hashlib.sha256(new).hexdigest()
    assert change.diff == f"binary content differs (old sha256 {old_sha}, new sha256 {new_sha})\n"
    field_old, field_new = fields(change)["content"]
    assert field_old is not None and field_old.startswith("binary, 256 bytes, sha256 ")
    assert field_new is not None and new_sha[:12] in field_new
    converge(prov, res)
    assert (root / "bin.dat").read_bytes() == new


def test_large_file_differing_in_size_is_hashed_not_diffed(
    prov: FilesystemProvider, root: Path
) -> None:
    big = b"x" * (DIFF_INPUT_LIMIT + 10)
    (root / "big").write_bytes(big)
    res = file_res("/big", b"small\n")
    obs = prov.read(res)
    assert obs is not None and isinstance(obs.data, FsState)
    assert obs.data.content is None and obs.data.sha256 == hashlib.sha256(big).hexdigest()
    change = prov.plan(res, obs)
    assert change.diff is not None and "too large for a line diff" in change.diff
    converge(prov, res)


def test_diff_is_capped(prov: FilesystemProvider, root: Path) -> None:
    old = "".join(f"old line {i}\n" for i in range(12_000)).encode()
    new = "".join(f"new line {i}\n" for i in range(12_000)).encode()
    assert len(new) < DIFF_INPUT_LIMIT
    (root / "long").write_bytes(old)
    change = plan(prov, file_res("/long", new))
    assert change.diff is not None
    assert change.diff.endswith("… (diff truncated)\n")
    assert len(change.diff.encode()) <= DIFF_OUTPUT_LIMIT + 64


@pytest.mark.parametrize(
    "text",
    ["", "one\n", "one", "a\nb\n", "a\n\nb", "\n", "é\r\nü\n", "line\n" * 14_000],
)
def test_a_creates_diff_is_the_unified_diff_from_nothing(
    prov: FilesystemProvider, text: str
) -> None:
    """A create's all-added diff is built without difflib's matcher (plan._all_added);
    it must read exactly as difflib's, truncation and no-newline marker included."""
    import difflib

    from setpoint.providers.files.plan import NO_EOL, TRUNCATED

    parts = text.split("\n")  # lines end at LF only (a CR stays in its line)
    lines = [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    want, size = [], 0
    for line in difflib.unified_diff(
        [], lines, fromfile="/new.txt (current)", tofile="/new.txt (declared)"
    ):
        line = line if line.endswith("\n") else line + NO_EOL
        size += len(line.encode())
        if size > DIFF_OUTPUT_LIMIT:
            want.append(TRUNCATED)
            break
        want.append(line)
    change = plan(prov, file_res("/new.txt", text.encode()))
    assert change.action is Action.CREATE
    assert change.diff == "".join(want)


def test_mode_drift_fixed_in_place(prov: FilesystemProvider, root: Path) -> None:
    res = file_res("/etc/secret", b"s", mode="0600")
    converge(prov, res)
    host = root / "etc/secret"
    os.chmod(host, 0o644)
    before = os.lstat(host)
    change = plan(prov, res)
    assert change.action is Action.UPDATE
    assert change.fields[0].field == "mode" and str(change.fields[0]) == "mode: 0644 → 0600"
    converge(prov, res)
    after = os.lstat(host)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert stat.S_IMODE(after.st_mode) == 0o600


@needs_root
def test_owner_drift_compared_by_id_shown_by_name(prov: FilesystemProvider, root: Path) -> None:
    other = pwd.getpwuid(1).pw_name
    res = file_res("/etc/owned", b"o", owner="root", group=0)
    converge(prov, res)
    host = root / "etc/owned"
    os.chown(host, 1, 1)
    before = os.lstat(host)
    change = plan(prov, res)
    got = fields(change)
    assert got["owner"] == (other, "root")
    assert got["group"][1] == "root"
    converge(prov, res)
    after = os.lstat(host)
    assert (after.st_uid, after.st_gid) == (0, 0)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@needs_root
def test_numeric_owner_and_setgid_mode_survive_chown(prov: FilesystemProvider, root: Path) -> None:
    res = file_res("/usr/bin/tool", b"#!/bin/sh\n", mode="2755", owner=1, group=1)
    converge(prov, res)
    st = os.lstat(root / "usr/bin/tool")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1, 1, 0o2755)


@needs_root
def test_undeclared_owner_kept_on_rewrite(prov: FilesystemProvider, root: Path) -> None:
    host = root / "home.conf"
    host.write_bytes(b"old")
    os.chown(host, 1, 1)
    converge(prov, file_res("/home.conf", b"new"))
    st = os.lstat(host)
    assert (st.st_uid, st.st_gid) == (1, 1)
    assert host.read_bytes() == b"new"


def test_unknown_owner_is_a_permanent_error(prov: FilesystemProvider, root: Path) -> None:
    res = file_res("/etc/x", b"x", owner="no-such-user-zz")
    change = plan(prov, res)
    assert fields(change)["owner"] == (None, "no-such-user-zz (no such user)")
    with pytest.raises(ProviderError) as info:
        prov.apply(res, change)
    assert not info.value.transient
    assert "no user named 'no-such-user-zz'" in str(info.value)
    assert "/etc/x" in str(info.value)
    assert not (root / "etc/x").exists() and temps(root) == []


def test_unknown_group_is_a_permanent_error(prov: FilesystemProvider) -> None:
    res = dir_res("/srv", group="no-such-group-zz")
    with pytest.raises(ProviderError) as info:
        prov.apply(res, plan(prov, res))
    assert not info.value.transient and "no group named" in str(info.value)


def test_directory_in_place_of_file_is_replaced_with_force(
    prov: FilesystemProvider, root: Path
) -> None:
    (root / "etc/motd/sub").mkdir(parents=True)
    (root / "etc/motd/sub/x").write_text("x")
    res = file_res("/etc/motd", b"m\n", force=True)
    change = plan(prov, res)
    assert change.action is Action.REPLACE
    assert fields(change)["type"] == ("directory", "regular file")
    assert change.reason == (
        "a directory holding 1 entry is where a regular file is declared; force: removes it"
    )
    converge(prov, res)
    assert (root / "etc/motd").read_bytes() == b"m\n"


@pytest.mark.parametrize("kind", ["File", "Symlink"])
def test_non_empty_directory_is_not_replaced_without_force(
    prov: FilesystemProvider, root: Path, kind: str
) -> None:
    data = root / "srv/data"
    (data / "sub").mkdir(parents=True)
    for i in range(11):
        (data / f"f{i}").write_text("precious")
    res = file_res("/srv/data", b"x") if kind == "File" else link_res("/srv/data", "/elsewhere")
    change = plan(prov, res)
    assert change.action is Action.REPLACE
    assert change.reason == (
        f"a directory holding 12 entries is where a "
        f"{'regular file' if kind == 'File' else 'symlink'} is declared; apply will refuse "
        "(a non-empty directory is replaced only with force: true)"
    )
    with pytest.raises(ProviderError) as info:
        prov.apply(res, change)
    assert str(info.value) == (
        "/srv/data is a directory holding 12 entries; setpoint replaces a non-empty "
        f"directory only with force: true on {res.id}"
    )
    assert not info.value.transient
    assert sorted(p.name for p in data.iterdir()) == sorted(["sub", *(f"f{i}" for i in range(11))])
    assert temps(root) == []


@pytest.mark.parametrize("kind", ["File", "Symlink"])
def test_empty_directory_is_replaced_without_force(
    prov: FilesystemProvider, root: Path, kind: str
) -> None:
    (root / "srv/empty").mkdir(parents=True)
    res = file_res("/srv/empty", b"x") if kind == "File" else link_res("/srv/empty", "rel")
    change = converge(prov, res)
    assert change.action is Action.REPLACE
    assert change.reason == (
        f"a directory is where a {'regular file' if kind == 'File' else 'symlink'} is declared"
    )
    assert not (root / "srv/empty").is_dir()


def test_symlink_in_place_of_file_is_replaced_not_followed(
    prov: FilesystemProvider, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"hello\n")  # the declared content: following the link would match
    (root / "f").symlink_to(outside)
    res = file_res("/f", b"hello\n")
    assert plan(prov, res).action is Action.REPLACE
    converge(prov, res)
    assert not (root / "f").is_symlink()
    assert outside.read_bytes() == b"hello\n"


def test_noop_apply_changes_nothing(prov: FilesystemProvider, root: Path) -> None:
    res = file_res("/etc/stable", b"same\n")
    converge(prov, res)
    before = lstat_key(root / "etc/stable"), lstat_key(root / "etc")
    change = plan(prov, res)
    assert change.is_noop and change.reason == "in sync"
    prov.apply(res, change)
    assert (lstat_key(root / "etc/stable"), lstat_key(root / "etc")) == before


def test_parent_is_a_file_fails_without_temp(prov: FilesystemProvider, root: Path) -> None:
    (root / "etc").write_text("not a dir")
    res = file_res("/etc/motd", b"x")
    assert prov.read(res) is None
    with pytest.raises(ProviderError) as info:
        prov.apply(res, plan(prov, res))
    assert info.value.transient
    assert "cannot create /etc/motd: /etc is a regular file" in str(info.value)
    assert temps(root) == []
    with pytest.raises(ProviderError, match="/etc is a regular file"):
        prov.apply(file_res("/etc/sub/motd"), plan(prov, file_res("/etc/sub/motd")))


def test_failure_after_temp_written_removes_temp(prov: FilesystemProvider, root: Path) -> None:
    res = file_res("/conf", b"new")
    (root / "conf").write_bytes(b"old")
    change = plan(prov, res)
    assert change.action is Action.UPDATE
    # The target changes between plan and apply: a non-empty directory now stands there,
    # so the rename fails after the temp was written and fsynced.
    (root / "conf").unlink()
    (root / "conf").mkdir()
    (root / "conf/keep").write_text("k")
    with pytest.raises(ProviderError, match="cannot update /conf"):
        prov.apply(res, change)
    assert temps(root) == []
    assert (root / "conf/keep").read_text() == "k"  # UPDATE never removes a directory


def test_stale_temp_is_replaced_and_never_written_through(
    prov: FilesystemProvider, root: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.link(victim, root / f".motd.setpoint-{prov.target.tmp_token}.tmp")  # a planted hard link
    converge(prov, file_res("/motd", b"managed"))
    assert victim.read_bytes() == b"precious"
    assert temps(root) == []


def test_parent_symlink_escape_is_refused(
    prov: FilesystemProvider, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "etc").symlink_to(outside)
    res = file_res("/etc/passwd", b"evil")
    with pytest.raises(SymlinkInPath, match="outside the target root") as info:
        prov.read(res)
    msg = f"refusing to reach /etc/passwd: /etc is a symlink to {outside}, outside the target"
    assert str(info.value).startswith(msg)
    assert info.value.transient  # an operator removes it; then the resource converges
    with pytest.raises(SymlinkInPath, match="/etc is a symlink"):
        prov.apply(res, Change(res.id, Action.CREATE, "/etc/passwd"))
    with pytest.raises(SymlinkInPath, match="/etc is a symlink"):
        prov.delete("File", {"path": "/etc/passwd"})
    assert list(outside.iterdir()) == []


def test_undeclared_parent_symlink_inside_root_is_refused(
    prov: FilesystemProvider, root: Path
) -> None:
    (root / "real").mkdir()
    (root / "real/motd").write_text("ok")
    (root / "etc").symlink_to(root / "real")
    res = file_res("/etc/motd", b"ok")
    msg = (
        f"refusing to reach /etc/motd: /etc is a symlink to {root}/real that no Symlink "
        "resource declares"
    )
    with pytest.raises(SymlinkInPath, match=re.escape(msg)):
        prov.read(res)  # never read through it either (no diff of what it points to)
    with pytest.raises(SymlinkInPath, match=re.escape(msg)):
        prov.apply(res, Change(res.id, Action.UPDATE, "/etc/motd"))
    assert (root / "real/motd").read_text() == "ok"


def test_declared_parent_symlink_is_followed_inside_the_root(
    prov: FilesystemProvider, target: FileTarget, root: Path
) -> None:
    """A Symlink resource of the pass may be on the way, as declared and inside the root."""
    link = link_res("/srv/app/current", "releases/2")
    conf = file_res("/srv/app/current/app.conf", b"ok")
    absolute = file_res("/srv/abs/x.conf", b"abs", name="g")
    abs_link = link_res("/srv/abs", "/srv/app/releases/2", name="m")
    target.declared = {"/srv/app/current", "/srv/app/current/app.conf", "/srv/abs"}
    target.declared |= {"/srv/abs/x.conf"}
    (root / "srv/app/releases/2").mkdir(parents=True)
    converge(prov, link)
    converge(prov, conf)
    assert (root / "srv/app/releases/2/app.conf").read_bytes() == b"ok"
    converge(prov, abs_link)
    converge(prov, absolute)
    assert (root / "srv/app/releases/2/x.conf").read_bytes() == b"abs"
    # Not as declared (someone re-pointed it): refused until the Symlink is reverted.
    os.unlink(root / "srv/app/current")
    os.symlink("releases/1", root / "srv/app/current")
    with pytest.raises(SymlinkInPath, match="not to 'releases/2' as its Symlink resource"):
        prov.read(conf)
    converge(prov, link)
    assert plan(prov, conf).is_noop
    # No longer declared (the next pass): refused like any other symlink.
    target.declared.discard("/srv/app/current")
    target.forget_parents()
    with pytest.raises(SymlinkInPath, match="that no Symlink resource declares"):
        prov.read(conf)


def test_declared_parent_symlink_leading_outside_is_refused(
    prov: FilesystemProvider, target: FileTarget, root: Path, tmp_path: Path
) -> None:
    rel = os.path.relpath(tmp_path / "outside", root / "etc")  # ../../outside
    (tmp_path / "outside").mkdir()
    link = link_res("/etc/out", rel)
    res = file_res("/etc/out/f", b"x")
    target.declared = {"/etc/out", "/etc/out/f"}
    converge(prov, link)
    with pytest.raises(ProviderError, match="leads outside the target root") as info:
        prov.apply(res, plan(prov, res))
    assert not info.value.transient
    assert list((tmp_path / "outside").iterdir()) == []


@pytest.mark.nonroot(reason="root bypasses permission checks")
def test_permission_denied_is_transient(prov: FilesystemProvider, root: Path) -> None:
    (root / "ro").mkdir(mode=0o555)
    res = file_res("/ro/x", b"x")
    with pytest.raises(ProviderError, match=r"cannot create /ro/x: .*EACCES") as info:
        prov.apply(res, plan(prov, res))
    assert info.value.transient and temps(root) == []


@pytest.mark.nonroot(reason="root can open any directory")
def test_mode_fixed_on_a_dir_the_agent_cannot_open(prov: FilesystemProvider, root: Path) -> None:
    (root / "wo").mkdir(mode=0o300)
    os.chmod(root / "wo", 0o300)
    res = dir_res("/wo", mode="0755")
    assert fields(plan(prov, res)) == {"mode": ("0300", "0755")}
    converge(prov, res)


def test_name_too_long_is_permanent(prov: FilesystemProvider) -> None:
    res = file_res("/" + "n" * 300, b"x")
    with pytest.raises(ProviderError) as info:
        prov.apply(res, plan(prov, res))
    assert not info.value.transient


def test_os_error_transience() -> None:
    for code in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EIO):
        err = os_error("write", "/etc/x", OSError(code, os.strerror(code)))
        assert err.transient and str(err).startswith("cannot write /etc/x: ")
    assert "read-only" in str(os_error("write", "/x", OSError(errno.EROFS, "Read-only")))


# --- Directory --------------------------------------------------------------------------


def test_directory_create_mode_and_noop(prov: FilesystemProvider, root: Path) -> None:
    res = dir_res("/srv/app", mode="0750")
    change = plan(prov, res)
    assert change.action is Action.CREATE and fields(change)["mode"] == (None, "0750")
    converge(prov, res)
    assert stat.S_IMODE((root / "srv/app").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "srv").stat().st_mode) == 0o755


def test_directory_mode_drift(prov: FilesystemProvider, root: Path) -> None:
    res = dir_res("/srv", mode="0700")
    converge(prov, res)
    os.chmod(root / "srv", 0o777)
    assert fields(plan(prov, res)) == {"mode": ("0777", "0700")}
    converge(prov, res)


@needs_root
def test_directory_owner_drift(prov: FilesystemProvider, root: Path) -> None:
    res = dir_res("/srv", owner=1, group=1)
    converge(prov, res)
    assert (root / "srv").stat().st_uid == 1
    os.chown(root / "srv", 0, 0)
    assert set(fields(plan(prov, res))) == {"owner", "group"}
    converge(prov, res)
    assert (root / "srv").stat().st_gid == 1


@pytest.mark.parametrize("what", ["file", "symlink"])
def test_non_directory_in_place_of_directory(
    prov: FilesystemProvider, root: Path, tmp_path: Path, what: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if what == "file":
        (root / "srv").write_text("x")
    else:
        (root / "srv").symlink_to(outside)  # a link to a directory is still not a directory
    res = dir_res("/srv")
    change = plan(prov, res)
    assert change.action is Action.REPLACE
    converge(prov, res)
    assert (root / "srv").is_dir() and not (root / "srv").is_symlink()
    assert outside.is_dir()


def test_purge_removes_only_undeclared(
    prov: FilesystemProvider, target: FileTarget, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    d = root / "etc/app"
    (d / "conf.d").mkdir(parents=True)
    (d / "conf.d/declared.conf").write_text("x")
    (d / "managed.conf").write_text("x")
    (d / "stray.conf").write_text("x")
    (d / "stray-dir/deep").mkdir(parents=True)
    (d / "stray-dir/deep/f").write_text("x")
    (d / "stray-link").symlink_to(outside)
    res = dir_res("/etc/app", purge=True)
    target.declared = {"/etc/app", "/etc/app/managed.conf", "/etc/app/conf.d/declared.conf"}
    change = plan(prov, res)
    assert change.action is Action.UPDATE
    assert change.extra == ("/etc/app/stray-dir", "/etc/app/stray-link", "/etc/app/stray.conf")
    assert change.reason == "purge 3 undeclared entries"
    converge(prov, res)
    assert sorted(p.name for p in d.iterdir()) == ["conf.d", "managed.conf"]
    assert (outside / "keep").read_text() == "k"  # the link was removed, not followed


def test_purge_needs_the_declared_set(prov: FilesystemProvider, root: Path) -> None:
    (root / "srv").mkdir()
    (root / "srv/x").write_text("x")
    with pytest.raises(ProviderError, match=r"PassInfo\.claimed") as info:
        prov.read(dir_res("/srv", purge=True))
    assert not info.value.transient
    assert (root / "srv/x").exists()


def test_purge_refuses_entries_outside_the_directory(
    prov: FilesystemProvider, target: FileTarget
) -> None:
    res = dir_res("/srv", purge=True)
    target.declared = {"/srv"}
    converge(prov, res)
    bad = Change(res.id, Action.UPDATE, "/srv", extra=("/etc",))
    with pytest.raises(ProviderError, match="not an entry of /srv"):
        prov.apply(res, bad)


def test_no_purge_leaves_entries(prov: FilesystemProvider, root: Path) -> None:
    (root / "srv").mkdir()
    (root / "srv/x").write_text("x")
    assert plan(prov, dir_res("/srv")).is_noop


# --- Symlink ----------------------------------------------------------------------------


def test_symlink_absolute_target_placed_under_root(prov: FilesystemProvider, root: Path) -> None:
    res = link_res("/etc/localtime", "/usr/share/zoneinfo/UTC")
    change = plan(prov, res)
    assert change.action is Action.CREATE
    converge(prov, res)
    assert os.readlink(root / "etc/localtime") == f"{root}/usr/share/zoneinfo/UTC"


def test_symlink_relative_target_kept(prov: FilesystemProvider, root: Path) -> None:
    converge(prov, link_res("/etc/alt", "../usr/bin/x"))
    assert os.readlink(root / "etc/alt") == "../usr/bin/x"


def test_link_text_at_real_root() -> None:
    assert link_text("/usr/x", "/") == "/usr/x"
    assert link_text("/usr/x", "/r") == "/r/usr/x"
    assert link_text("x", "/r") == "x"


def test_symlink_target_drift(prov: FilesystemProvider, root: Path) -> None:
    res = link_res("/cur", "/releases/2")
    converge(prov, res)
    os.unlink(root / "cur")
    os.symlink(f"{root}/releases/1", root / "cur")
    # The drifted link's inode: still allocated when the new link is made aside,
    # so a rename-over must give another one (an unlinked inode could be reused).
    ino = os.lstat(root / "cur").st_ino
    change = plan(prov, res)
    assert change.action is Action.UPDATE
    assert fields(change) == {"target": ("/releases/1", "/releases/2")}
    converge(prov, res)
    assert os.readlink(root / "cur") == f"{root}/releases/2"
    assert os.lstat(root / "cur").st_ino != ino  # replaced by rename, not edited


@pytest.mark.parametrize("what", ["file", "dir"])
def test_symlink_replaces_other_types(prov: FilesystemProvider, root: Path, what: str) -> None:
    if what == "file":
        (root / "cur").write_text("x")
    else:
        (root / "cur/sub").mkdir(parents=True)
        (root / "cur/sub/f").write_text("x")
    res = link_res("/cur", "rel", force=what == "dir")
    assert plan(prov, res).action is Action.REPLACE
    converge(prov, res)
    assert os.readlink(root / "cur") == "rel"


# --- delete (prune) ---------------------------------------------------------------------


def test_delete_file_and_symlink(prov: FilesystemProvider, root: Path, tmp_path: Path) -> None:
    (root / "f").write_text("x")
    outside = tmp_path / "o"
    outside.write_text("o")
    (root / "l").symlink_to(outside)
    assert prov.delete("File", {"path": "/f"}) == "deleted /f"
    assert prov.delete("Symlink", {"path": "/l"}) == "deleted /l"
    assert not (root / "f").exists() and not (root / "l").is_symlink()
    assert outside.read_text() == "o"
    assert prov.delete("File", {"path": "/f"}) == "/f already absent"
    assert prov.delete("File", {"path": "/no/such/parent"}) == "/no/such/parent already absent"


def test_delete_file_keeps_a_directory(prov: FilesystemProvider, root: Path) -> None:
    (root / "f").mkdir()
    assert prov.delete("File", {"path": "/f"}).startswith("kept /f")
    assert (root / "f").is_dir()


def test_delete_directory_only_when_empty(prov: FilesystemProvider, root: Path) -> None:
    (root / "empty").mkdir()
    (root / "full").mkdir()
    (root / "full/x").write_text("x")
    (root / "notdir").write_text("x")
    assert prov.delete("Directory", {"path": "/empty"}) == "removed directory /empty"
    msg = prov.delete("Directory", {"path": "/full"})
    assert msg == "kept /full: not empty (holds entries setpoint does not manage)"
    assert (root / "full/x").exists()
    assert prov.delete("Directory", {"path": "/notdir"}).startswith("kept /notdir")
    assert prov.delete("Directory", {"path": "/empty"}) == "/empty already absent"


def test_delete_action_via_apply(prov: FilesystemProvider, root: Path) -> None:
    (root / "f").write_text("x")
    res = file_res("/f")
    prov.apply(res, Change(res.id, Action.DELETE, "/f"))
    assert not (root / "f").exists()


# --- claims and ordering ----------------------------------------------------------------


def test_claims_and_implicit_dependencies(prov: FilesystemProvider) -> None:
    res = file_res("/etc/app/conf.d/x.conf")
    assert prov.claims(res) == ("/etc/app/conf.d/x.conf",)
    by_path = {"/etc": "Directory/etc", "/etc/app": "Directory/app", prov.claims(res)[0]: res.id}
    assert list(prov.implicit_dependencies(res, by_path)) == ["Directory/app"]
    assert list(prov.implicit_dependencies(file_res("/x"), by_path)) == []
    link = link_res("/etc/link", "/etc/app")  # the target is not a dependency
    assert list(prov.implicit_dependencies(link, by_path)) == ["Directory/etc"]


def test_plan_is_deterministic(prov: FilesystemProvider, root: Path) -> None:
    (root / "f").write_bytes(b"a\n")
    res = file_res("/f", b"b\n", mode="0600")
    obs = prov.read(res)
    assert prov.plan(res, obs) == prov.plan(res, obs)
