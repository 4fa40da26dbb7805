"""The provider contract, for every kind of the default registry.

From several starting states, ``apply(plan(read()))`` must converge: the next
``plan(read())`` is a NOOP (idempotence), and a second apply cycle changes nothing on
disk (same lstat, mtime and inode for every entry under the root, or the release store).
File, Directory and Symlink run on a temp root; Release on real archives served from
``file://`` and from an HTTP server on 127.0.0.1; Service with real processes (the same
process keeps running through the second cycle). ``test_every_kind_has_contract_cases``
fails when a kind is registered without cases here.

Deletion (``test_record_then_delete_removes_it``): the ``record`` a provider gives at
claim time is JSON with no secret in it, and ``delete(kind, record)`` alone (the
declaration is gone by then) removes what was applied: the next plan is a CREATE.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import TMP_RE
from setpoint.atomic import write_json_atomic
from setpoint.model import Location, Resource
from setpoint.model.plan import Action
from setpoint.providers.base import PassAware, PassInfo, Pipelining, ProviderContext
from setpoint.providers.files.provider import FilesystemProvider
from setpoint.providers.files.spec import DirectorySpec, FileSpec, SymlinkSpec
from setpoint.providers.registry import default_registry
from setpoint.providers.services.common import RECORD, read_json, start_time
from setpoint.providers.services.release import ReleaseProvider
from setpoint.providers.services.release_store import leftovers
from setpoint.providers.services.service import ServiceProvider
from setpoint.providers.services.service_spec import ReleaseSpec, ServiceSpec
from svc_support import kill_recorded, sha, tar_gz, zip_bytes

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
    providers = reg.providers(ProviderContext(root=Path("/")))
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
    ctx = ProviderContext(root=root)
    provider = default_registry().providers(ctx)[kind]
    assert isinstance(provider, PassAware)
    res = SPECS[kind][spec_name]()
    assert res.kind == kind
    if state == "dir-with-entries" and kind != "Directory":
        # Replacing a non-empty directory needs force: true (test_provider_fs checks the refusal).
        res = replace(res, spec=res.spec.model_copy(update={"force": True}))
    declared_path = provider.claims(res)[0]
    provider.begin_pass(PassInfo("s", True, 300.0, {declared_path}))
    host = Path(ctx.host_path(declared_path))
    STATES[state](host)

    first = provider.plan(res, provider.read(res))
    provider.apply(res, first)
    provider.end_pass()

    second = provider.plan(res, provider.read(res))
    assert second.is_noop, f"not idempotent after {first.summary()}: {second.summary()}"
    before = snapshot(root)
    provider.apply(res, second)
    provider.end_pass()
    again = provider.plan(res, provider.read(res))
    assert again.is_noop, again.summary()
    assert snapshot(root) == before
    assert not [p for p in before if TMP_RE.search(p)]


@pytest.mark.parametrize(("kind", "spec_name", "state"), CASES)
def test_a_pipelined_apply_converges_like_apply(
    kind: str, spec_name: str, state: str, root: Path
) -> None:
    """``Pipelining``: ``apply_later`` takes a create only; once landed it converged
    exactly as ``apply`` would (the next plan is a NOOP, nothing temporary is left)."""
    ctx = ProviderContext(root=root)
    provider = default_registry().providers(ctx)[kind]
    assert isinstance(provider, Pipelining) and isinstance(provider, PassAware)
    res = SPECS[kind][spec_name]()
    if state == "dir-with-entries" and kind != "Directory":
        res = replace(res, spec=res.spec.model_copy(update={"force": True}))
    declared_path = provider.claims(res)[0]
    provider.begin_pass(PassInfo("s", True, 300.0, {declared_path}))
    STATES[state](Path(ctx.host_path(declared_path)))

    first = provider.plan(res, provider.read(res))
    queued = provider.apply_later(res, first)
    assert queued == (first.action is Action.CREATE and kind == "File"), first.summary()
    if not queued:
        provider.apply(res, first)
    landed = provider.land()
    assert not landed.failed, landed.failed
    assert set(landed.seconds) == ({res.id} if queued else set())
    provider.end_pass()
    again = provider.plan(res, provider.read(res))
    assert again.is_noop, f"not converged after {first.summary()}: {again.summary()}"
    assert not [p for p in snapshot(root) if TMP_RE.search(p)]


# -- Release ------------------------------------------------------------------------------

OLD_ARCHIVE = tar_gz({"version.txt": "1\n", "bin/run.sh": "#!/bin/sh\necho 1\n"})
ARCHIVES: dict[str, tuple[str, bytes]] = {
    "tar.gz": ("app-2.tar.gz", tar_gz({"version.txt": "2\n", "bin/run.sh": "#!/bin/sh\n"})),
    "zip": ("app-2.zip", zip_bytes({"version.txt": "2\n", "lib/a.py": "x = 1\n"})),
    "single-file": ("tool", b"#!/bin/sh\necho tool 2\n"),
}


@pytest.fixture(scope="module")
def http_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serves ARCHIVES from 127.0.0.1 (the same bytes as the file:// cases)."""
    served = tmp_path_factory.mktemp("www")
    for name, data in ARCHIVES.values():
        (served / name).write_bytes(data)
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _release(url: str, data: bytes, version: str = "2", **kw: object) -> Resource:
    spec = ReleaseSpec(version=version, url=url, sha256=sha(data), **kw)
    return Resource("Release", "app", spec, LOC, digest="x")


RELEASE_SPECS: dict[str, Callable[[str], Resource]] = {
    "tar.gz": lambda http: _release("file:///dist/app-2.tar.gz", ARCHIVES["tar.gz"][1]),
    "zip": lambda http: _release("file:///dist/app-2.zip", ARCHIVES["zip"][1]),
    "single-file": lambda http: _release("file:///dist/tool", ARCHIVES["single-file"][1]),
    "http": lambda http: _release(f"{http}/app-2.tar.gz", ARCHIVES["tar.gz"][1]),
    "keep-1": lambda http: _release("file:///dist/app-2.tar.gz", ARCHIVES["tar.gz"][1], keep=1),
}


def _install_old(p: ReleaseProvider) -> None:
    old = _release("file:///dist/app-1.tar.gz", OLD_ARCHIVE, version="1")
    p.apply(old, p.plan(old, p.read(old)))


def _release_older_current(p: ReleaseProvider, res: Resource, store: Path) -> None:
    _install_old(p)


def _release_tampered(p: ReleaseProvider, res: Resource, store: Path) -> None:
    p.apply(res, p.plan(res, p.read(res)))
    tree = store / "current"
    for f in [x for x in tree.rglob("*") if x.is_file()]:
        f.write_bytes(f.read_bytes() + b"tampered")
    (tree / "added").write_text("not released")


def _release_current_elsewhere(p: ReleaseProvider, res: Resource, store: Path) -> None:
    _install_old(p)
    old_link = os.readlink(store / "current")
    p.apply(res, p.plan(res, p.read(res)))
    os.unlink(store / "current")
    os.symlink(old_link, store / "current")  # e.g. a rollback by hand


def _release_leftovers(p: ReleaseProvider, res: Resource, store: Path) -> None:
    _install_old(p)
    (store / "versions/.tmp-2-crashed/bin").mkdir(parents=True)
    (store / "versions/.trash-1-crashed").mkdir()
    (store / "archives/.2.part").write_bytes(b"half")
    (store / ".current.1234").symlink_to("versions/nowhere")


RELEASE_STATES: dict[str, Callable[[ReleaseProvider, Resource, Path], None]] = {
    "absent": lambda p, res, store: None,
    "older-current": _release_older_current,
    "tampered": _release_tampered,
    "current-elsewhere": _release_current_elsewhere,
    "leftovers": _release_leftovers,
}


@pytest.mark.parametrize("state", RELEASE_STATES)
@pytest.mark.parametrize("spec_name", RELEASE_SPECS)
def test_release_converges_and_is_idempotent(
    spec_name: str, state: str, root: Path, tmp_path: Path, http_base: str
) -> None:
    provider = default_registry().providers(
        ProviderContext(root=root, state_dir=tmp_path / "state")
    )
    p = provider["Release"]
    assert isinstance(p, ReleaseProvider)
    (root / "dist").mkdir()
    (root / "dist/app-1.tar.gz").write_bytes(OLD_ARCHIVE)
    for name, data in ARCHIVES.values():
        (root / "dist" / name).write_bytes(data)
    res = RELEASE_SPECS[spec_name](http_base)
    store = tmp_path / "state/releases/app"
    RELEASE_STATES[state](p, res, store)

    first = p.plan(res, p.read(res))
    p.apply(res, first)
    second = p.plan(res, p.read(res))
    assert second.is_noop, f"not idempotent after {first.summary()}: {second.summary()}"
    before = snapshot(store)
    p.apply(res, second)
    again = p.plan(res, p.read(res))
    assert again.is_noop, again.summary()
    assert snapshot(store) == before
    assert p.health(res) == ("Healthy", "version 2 in place")
    assert leftovers(store) == []
    assert not p.drain_events({res.id})  # no removal failed
    assert sorted(os.listdir(store / "versions"))[-1].startswith("2-")
    if spec_name == "keep-1":
        assert len(os.listdir(store / "versions")) == 1


# -- Service ------------------------------------------------------------------------------

SLEEP = "import time; time.sleep(120)"


def _service(**kw: object) -> Resource:
    kw.setdefault("command", [sys.executable, "-c", SLEEP])
    spec = ServiceSpec(stop={"graceSeconds": 5}, **kw)  # type: ignore[arg-type]
    return Resource("Service", "c", spec, LOC, digest="x")


SERVICE_SPECS: dict[str, Callable[[], Resource]] = {
    "argv": lambda: _service(),
    "shell": lambda: _service(command=[f"exec {sys.executable} -c '{SLEEP}'"], shell=True),
    "env-and-dir": lambda: _service(env={"A": "1", "TOKEN": "s3cret"}, workingDir="/t"),
    "exec-readiness": lambda: _service(
        readiness={"exec": {"command": ["/bin/true"]}, "periodSeconds": 0.05}
    ),
}


def _service_other_config(p: ServiceProvider, res: Resource, state: Path) -> None:
    other = _service(env={"OTHER": "1"})
    p.apply(other, p.plan(other, p.read(other)))


def _service_stale_record(p: ServiceProvider, res: Resource, state: Path) -> None:
    # A record from an earlier agent whose pid now belongs to someone else (pid 1,
    # another start time): never signalled, and the service is started anew.
    d = state / "services/c"
    d.mkdir(parents=True)
    write_json_atomic(d / RECORD, {"pid": 1, "started": 1, "digest": "old", "config": {}})


SERVICE_STATES: dict[str, Callable[[ServiceProvider, Resource, Path], None]] = {
    "absent": lambda p, res, state: None,
    "other-config": _service_other_config,
    "stale-record": _service_stale_record,
}


@pytest.mark.parametrize("state", SERVICE_STATES)
@pytest.mark.parametrize("spec_name", SERVICE_SPECS)
def test_service_converges_and_is_idempotent(
    spec_name: str, state: str, root: Path, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    p = default_registry().providers(ProviderContext(root=root, state_dir=state_dir))["Service"]
    assert isinstance(p, ServiceProvider)
    (root / "t").mkdir()
    res = SERVICE_SPECS[spec_name]()
    try:
        SERVICE_STATES[state](p, res, state_dir)
        first = p.plan(res, p.read(res))
        p.apply(res, first)
        second = p.plan(res, p.read(res))
        assert second.is_noop, f"not idempotent after {first.summary()}: {second.summary()}"
        record = state_dir / "services/c" / RECORD
        pid, before = read_json(record)["pid"], record.read_bytes()  # type: ignore[index]
        p.apply(res, second)
        again = p.plan(res, p.read(res))
        assert again.is_noop, again.summary()
        assert record.read_bytes() == before and start_time(pid) is not None  # same process
        assert p.health(res)[0] == "Healthy"
        assert "s3cret" not in first.summary()
    finally:
        p.delete("Service", {"name": "c"})
        kill_recorded(state_dir)


DELETE_CASES: dict[str, Callable[[str], Resource]] = {
    "File": lambda http: SPECS["File"]["text"](),
    "Directory": lambda http: SPECS["Directory"]["plain"](),
    "Symlink": lambda http: SPECS["Symlink"]["absolute"](),
    "Release": lambda http: RELEASE_SPECS["http"](http),
    "Service": lambda http: _service(env={"TOKEN": "s3cret"}),
}


@pytest.mark.parametrize("kind", DELETE_CASES)
def test_record_then_delete_removes_it(
    kind: str, root: Path, tmp_path: Path, http_base: str
) -> None:
    state_dir = tmp_path / "state"
    provider = default_registry().providers(ProviderContext(root=root, state_dir=state_dir))[kind]
    res = DELETE_CASES[kind](http_base)
    assert res.kind == kind
    claims = provider.claims(res)
    if isinstance(provider, PassAware):
        provider.begin_pass(PassInfo("s", True, 300.0, set(claims)))
    try:
        provider.apply(res, provider.plan(res, provider.read(res)))
        record = provider.record(res)
        text = json.dumps(record)  # what the inventory stores
        assert json.loads(text) == record
        assert "s3cret" not in text
        said = provider.delete(kind, json.loads(text))
        assert isinstance(said, str) and said
        if isinstance(provider, PassAware):
            provider.end_pass()
        after = provider.plan(res, provider.read(res))
        assert after.action is Action.CREATE, after.summary()
    finally:
        if kind == "Service":
            kill_recorded(state_dir)


def test_every_kind_has_contract_cases() -> None:
    # The PostgreSQL kinds' cases run against a real server, in test_postgres_contract.py.
    from test_postgres_contract import POSTGRES_DELETE_CASES, POSTGRES_SPECS

    covered = set(SPECS) | {"Release": RELEASE_SPECS, "Service": SERVICE_SPECS}.keys()
    covered |= set(POSTGRES_SPECS)
    assert set(default_registry().kinds) == covered
    assert set(default_registry().kinds) == set(DELETE_CASES) | set(POSTGRES_DELETE_CASES)
