"""A parent directory swapped for a symlink while setpoint works: nothing happens outside.

A separate process (real parallelism, not a thread under the GIL) flips a directory in a
managed path's chain with a symlink to an outside directory in a tight loop, atomically
(``renameat2(RENAME_EXCHANGE)``, so the name always exists), while this process writes,
reads, purges and prunes through that chain again and again, alternating the openat2
walk and the component walk. Not one byte may be written, read or removed outside.

``SETPOINT_RACE_SECONDS`` (default 10) is how long the main race runs; the variants
(root ``/``, purge, prune) run an eighth of it each (at least one second).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from setpoint.model import Action, Change, Location, Resource, SetpointError
from setpoint.providers.base import ProviderContext
from setpoint.providers.files import walk as fs_walk
from setpoint.providers.files.provider import FilesystemProvider, FsState
from setpoint.providers.files.spec import DirectorySpec, FileSpec
from setpoint.providers.files.target import FileTarget

RACE_SECONDS = float(os.environ.get("SETPOINT_RACE_SECONDS", "10"))
SHORT_SECONDS = max(1.0, RACE_SECONDS / 8)
LOC = Location("t.yaml", 1)
SECRET = b"SECRET outside the managed tree\n"

# The flipper: exchanges the real directory and the planted symlink until told to stop,
# then prints how many flips it made.
FLIPPER = r"""
import ctypes, os, sys
a, b, stop = (os.fsencode(x) for x in sys.argv[1:4])
libc = ctypes.CDLL(None, use_errno=True)
flips = 0
while not os.path.exists(stop):
    for _ in range(200):
        if libc.renameat2(-100, a, -100, b, 2) != 0:
            sys.exit(f"renameat2 failed: {os.strerror(ctypes.get_errno())}")
        flips += 1
print(flips)
"""


@dataclass
class Scene:
    """``real``: the directory in the chain (an open fd to it: the test's own writes never
    go through a name the flipper moves); ``outside``: where the symlink points."""

    base: Path  # the host directory holding the flipped name
    chain: str  # the declared path of the flipped directory
    real_fd: int
    outside: Path
    target: FileTarget
    prov: FilesystemProvider
    before: dict[str, bytes | None]

    def declared(self, rel: str) -> str:
        return f"{self.chain}/{rel}"

    def assert_outside_intact(self) -> None:
        after = _outside_snapshot(self.outside)
        assert after == self.before, "something outside the managed tree changed"


def _outside_snapshot(outside: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(outside.rglob("*")):
        out[str(p.relative_to(outside))] = p.read_bytes() if p.is_file() else None
    return out


@contextmanager
def flipping(tmp_path: Path, slash_root: bool) -> Iterator[Scene]:
    """A managed chain ``.../home/alice/.config`` flipped with a symlink to ``outside``."""
    if not hasattr(os, "O_PATH"):
        pytest.skip("Linux only (O_PATH, renameat2)")
    tmp = tmp_path.resolve()
    root = tmp / "root"
    base = root / "home/alice"
    (base / ".config/app").mkdir(parents=True)
    outside = tmp / "outside"
    (outside / "app").mkdir(parents=True)
    for name in ("app.conf", "app/keep", "app/stray-1", "app/stray-2"):
        (outside / name).write_bytes(SECRET)
    (base / ".config-planted").symlink_to(outside)
    before = _outside_snapshot(outside)
    prov = FilesystemProvider(ProviderContext(root=Path("/") if slash_root else root))
    target = prov.target
    chain = str(base / ".config") if slash_root else "/home/alice/.config"
    real_fd = os.open(base / ".config", os.O_RDONLY | os.O_DIRECTORY)
    stop = tmp / "stop"
    proc = subprocess.Popen(
        [sys.executable, "-c", FLIPPER, str(base / ".config"), str(base / ".config-planted"),
         str(stop)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield Scene(base, chain, real_fd, outside, target, prov, before)
        assert proc.poll() is None, "the flipper died early"
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=30)
        os.close(real_fd)
        target.close_dirs()
    assert proc.returncode == 0
    assert int(out) > 1000, f"only {out.strip()} flips: the race was not exercised"
    assert _outside_snapshot(outside) == before, "something outside the managed tree changed"


def _race(
    scene: Scene,
    seconds: float,
    step: Callable[[int], bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run ``step(i)`` (True: it acted, False: refused) until the deadline; both happen."""
    acted = refused = i = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or i < 1000:
        # Alternate the two ways of walking (openat2 where the kernel has it).
        monkeypatch.setattr(fs_walk.OPENAT2, "enabled", i % 2 == 0 and _HAS_OPENAT2)
        scene.target.forget_parents()  # a new pass: no cached descriptor helps
        if step(i):
            acted += 1
        else:
            refused += 1
        i += 1
    print(f"{i} tries: {acted} acted, {refused} refused")  # shown with pytest -s
    assert acted > 0 and refused > 0, (acted, refused)


_HAS_OPENAT2 = fs_walk.OPENAT2.enabled


def _file(path: str, data: bytes) -> Resource:
    spec = FileSpec(path=path, content=data.decode())
    return Resource("File", "app", spec=spec, location=LOC, blob=data, digest="x")


def _write_step(scene: Scene, leaks: list[int]) -> Callable[[int], bool]:
    path = scene.declared("app.conf")

    def step(i: int) -> bool:
        data = f"managed {i}\n".encode()
        res = _file(path, data)
        try:
            obs = scene.prov.read(res)
            if obs is not None and isinstance(obs.data, FsState) and obs.data.content == SECRET:
                leaks.append(i)  # read through the symlink: the secret would reach a diff
            scene.prov.apply(res, Change(res.id, Action.CREATE, path))
        except (SetpointError, OSError):
            return False
        return True

    return step


@pytest.mark.parametrize("slash_root", [False, True], ids=["tmp-root", "slash-root"])
def test_writes_through_a_flipping_parent_never_escape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slash_root: bool
) -> None:
    with flipping(tmp_path, slash_root) as scene:
        seconds = SHORT_SECONDS if slash_root else RACE_SECONDS
        leaks: list[int] = []
        _race(scene, seconds, _write_step(scene, leaks), monkeypatch)
        scene.assert_outside_intact()
        assert leaks == [], f"{len(leaks)} reads saw the outside file's content"
        # Whatever got written landed in the real directory, never outside.
        data = (Path(f"/proc/self/fd/{scene.real_fd}") / "app.conf").read_bytes()
        assert data.startswith(b"managed ")


@pytest.mark.parametrize("slash_root", [False, True], ids=["tmp-root", "slash-root"])
def test_purge_through_a_flipping_parent_never_removes_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slash_root: bool
) -> None:
    with flipping(tmp_path, slash_root) as scene:
        app = scene.declared("app")
        res = Resource("Directory", "app", spec=DirectorySpec(path=app, purge=True), location=LOC)
        scene.target.declared = {app, f"{app}/keep"}
        app_fd = os.open("app", os.O_RDONLY | os.O_DIRECTORY, dir_fd=scene.real_fd)
        strays = (f"{app}/stray-1", f"{app}/stray-2")

        def step(i: int) -> bool:
            for name in ("stray-1", "stray-2"):  # recreated in the real directory, by fd
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=app_fd))
            try:
                if i % 4 == 0:
                    change = scene.prov.plan(res, scene.prov.read(res))
                else:
                    change = Change(res.id, Action.UPDATE, app, extra=strays)
                scene.prov.apply(res, change)
            except (SetpointError, OSError):
                return False
            return True

        try:
            _race(scene, SHORT_SECONDS, step, monkeypatch)
        finally:
            os.close(app_fd)
        scene.assert_outside_intact()


@pytest.mark.parametrize("slash_root", [False, True], ids=["tmp-root", "slash-root"])
def test_prune_through_a_flipping_parent_never_removes_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slash_root: bool
) -> None:
    with flipping(tmp_path, slash_root) as scene:
        path = scene.declared("app.conf")

        def step(i: int) -> bool:
            os.close(os.open("app.conf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=scene.real_fd))
            try:
                said = scene.prov.delete("File", {"path": path})
            except (SetpointError, OSError):
                return False
            return said == f"deleted {path}"

        _race(scene, SHORT_SECONDS, step, monkeypatch)
        scene.assert_outside_intact()


def test_openat2_refuses_a_symlink_anywhere_and_dotdot_above_the_start(tmp_path: Path) -> None:
    (tmp_path / "real/sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    start = os.open(tmp_path, fs_walk.DIR_FLAGS)
    try:
        fd = fs_walk.OPENAT2(start, "real/sub", fs_walk.DIR_FLAGS)
        if fd is None:
            pytest.skip("openat2 is not available here (kernel or seccomp): the walk is used")
        os.close(fd)
        for rel, code in (("link/sub", errno.ELOOP), ("link", errno.ELOOP), ("..", errno.EXDEV)):
            with pytest.raises(OSError) as info:
                fs_walk.OPENAT2(start, rel, fs_walk.DIR_FLAGS)
            assert info.value.errno == code, rel
    finally:
        os.close(start)
