"""The provider contract, for every kind of the default registry served by FilesystemProvider.

From several starting states, ``apply(plan(read()))`` must converge: the next
``plan(read())`` is a NOOP (idempotence), and a second apply cycle changes nothing on
disk (same lstat, mtime and inode for every entry under the root).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from setpoint.model import Location, Resource
from setpoint.providers.base import Target
from setpoint.providers.fs import FilesystemProvider
from setpoint.providers.fs_spec import DirectorySpec, FileSpec, SymlinkSpec
from setpoint.providers.registry import default_registry

IS_ROOT = os.geteuid() == 0
LOC = Location("t.yaml", 1)
BINARY = bytes(range(256)) * 3


def _file(path: str, data: bytes, source: bool = False, **kw: object) -> Resource:
    if source:
        spec = FileSpec(path=path, source="files/data.bin", **kw)
    else:
        spec = FileSpec(path=path, content=data.decode(), **kw)
    return Resource("File", "f", spec=spec, location=LOC, blob=data, digest="x")


def _dir(path: str, **kw: object) -> Resource:
    spec = DirectorySpec(path=path, **kw)
    return Resource("Directory", "d", spec=spec, location=LOC, digest="x")


def _link(path: str, to: str) -> Resource:
    return Resource("Symlink", "l", spec=SymlinkSpec(path=path, target=to), location=LOC)


_owned: dict[str, object] = {"owner": 1, "group": 1} if IS_ROOT else {}

# Representative declarations per kind; the declared path is always /t/x.
SPECS: dict[str, dict[str, Callable[[], Resource]]] = {
    "File": {
        "text": lambda: _file("/t/x", b"line 1\nline 2\n"),
        "empty": lambda: _file("/t/x", b"", mode="0600"),
        "binary-owned": lambda: _file("/t/x", BINARY, source=True, mode="0640", **_owned),
        "setgid": lambda: _file("/t/x", b"#!/bin/sh\n", mode="2755"),
    },
    "Directory": {
        "plain": lambda: _dir("/t/x"),
        "private-owned": lambda: _dir("/t/x", mode="0700", **_owned),
        "purge": lambda: _dir("/t/x", mode="0750", purge=True),
    },
    "Symlink": {
        "absolute": lambda: _link("/t/x", "/usr/share/zoneinfo/UTC"),
        "relative": lambda: _link("/t/x", "../elsewhere"),
    },
}


def _absent(host: Path) -> None:
    host.parent.mkdir(parents=True, exist_ok=True)


def _no_parents(host: Path) -> None:
    pass


def _wrong_file(host: Path) -> None:
    _absent(host)
    host.write_bytes(b"line 1\nline two\n")
    os.chmod(host, 0o666)


def _right_content_wrong_mode(host: Path) -> None:
    _absent(host)
    host.write_bytes(b"line 1\nline 2\n")
    os.chmod(host, 0o604)
    if IS_ROOT:
        os.chown(host, 0, 2)


def _full_dir(host: Path) -> None:
    (host / "sub").mkdir(parents=True)
    (host / "sub/f").write_bytes(b"x")
    (host / "g").write_bytes(b"y")
    (host / "link").symlink_to("/nowhere")
    os.chmod(host, 0o777)


def _link_elsewhere(host: Path) -> None:
    _absent(host)
    host.symlink_to("/etc")


def _fifo(host: Path) -> None:
    _absent(host)
    os.mkfifo(host)


STATES: dict[str, Callable[[Path], None]] = {
    "absent": _absent,
    "no-parents": _no_parents,
    "wrong-file": _wrong_file,
    "right-content-wrong-mode": _right_content_wrong_mode,
    "dir-with-entries": _full_dir,
    "wrong-symlink": _link_elsewhere,
    "fifo": _fifo,
}


def _fs_kinds() -> list[str]:
    reg = default_registry()
    providers = reg.providers(Target(root=Path("/")))
    return [k for k in reg.kinds if isinstance(providers[k], FilesystemProvider)]


CASES = [
    pytest.param(kind, spec, state, id=f"{kind}-{spec}-{state}")
    for kind in _fs_kinds()
    for spec in SPECS.get(kind, {})  # a kind without specs fails test_every_fs_kind_has_specs
    for state in STATES
]


def test_every_fs_kind_has_specs() -> None:
    assert set(_fs_kinds()) == {"File", "Directory", "Symlink"}
    assert set(_fs_kinds()) <= set(SPECS)


Snapshot = dict[str, tuple[object, ...]]


def snapshot(root: Path) -> Snapshot:
    """Every entry under the root: lstat essentials, mtime/ctime, inode, link text, bytes."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            extra: object = None
            if os.path.islink(p):
                extra = os.readlink(p)
            elif os.path.isfile(p):  # regular files only (not FIFOs)
                extra = Path(p).read_bytes()
            out[p] = (
                st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size,
                st.st_mtime_ns, st.st_ctime_ns, extra,
            )  # fmt: skip
    return out


@pytest.mark.parametrize(("kind", "spec_name", "state"), CASES)
def test_converges_and_is_idempotent(kind: str, spec_name: str, state: str, root: Path) -> None:
    target = Target(root=root)
    provider = default_registry().providers(target)[kind]
    res = SPECS[kind][spec_name]()
    assert res.kind == kind
    if state == "dir-with-entries" and kind != "Directory":
        # Replacing a non-empty directory needs force: true (test_provider_fs checks the refusal).
        res = replace(res, spec=res.spec.model_copy(update={"force": True}))
    declared_path = provider.claims(res)[0]
    target.declared = {declared_path}
    host = Path(target.host_path(declared_path))
    STATES[state](host)

    first = provider.plan(res, provider.read(res))
    provider.apply(res, first)
    target.fsync_touched()

    second = provider.plan(res, provider.read(res))
    assert second.is_noop, f"not idempotent after {first.summary()}: {second.summary()}"
    before = snapshot(root)
    provider.apply(res, second)
    target.fsync_touched()
    again = provider.plan(res, provider.read(res))
    assert again.is_noop, again.summary()
    assert snapshot(root) == before
    assert not [p for p in before if p.endswith(".setpoint-tmp")]
