"""The provider seam (issue 11): settings per stack, every claim owned, delete records, prune order.

A fake provider family (kinds ``Demo`` and ``DemoChild``, keys ``demo://...``, a
``demo:`` settings section) driven through the real controller, Git repos and state DB:
nothing here is file-shaped, which is the point.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import setpoint.config as config
from conftest import GitRepo
from helpers import docs, manifest
from setpoint.config import AgentConfig, ConfigError, StackConfig, load_config
from setpoint.engine.controller import Controller
from setpoint.engine.prune import prune_order
from setpoint.model.errors import ManifestErrors
from setpoint.model.fields import STRICT
from setpoint.model.plan import Action, Change
from setpoint.model.resource import Resource
from setpoint.providers.base import Observed, ProviderContext, Registry
from setpoint.providers.registry import default_registry
from setpoint.providers.services.release import ReleaseProvider
from setpoint.render.fleet import load_fleet
from setpoint.render.loader import Limits
from setpoint.state import InventoryRecord, StateDB
from setpoint.state.db import _MIGRATIONS


class DemoSettings(BaseModel):
    model_config = STRICT
    dsn: str
    port: int = 1


class DemoSpec(BaseModel):
    model_config = STRICT
    keys: list[str]
    parent: str = ""  # a DemoChild's implicit dependency: the Demo claiming demo://PARENT
    dependsOn: list[str] = []


WORLD: dict[str, list[str]] = {}  # the fake target: resource id -> keys
DELETED: list[str] = []
SEEN: dict[str, Any] = {}  # resource id -> the settings its provider saw at apply


class DemoProvider:
    kinds: ClassVar[tuple[str, ...]] = ("Demo", "DemoChild")

    def __init__(self, ctx: ProviderContext) -> None:
        self.ctx = ctx

    def claims(self, resource: Resource) -> tuple[str, ...]:
        return tuple(f"demo://{k}" for k in _spec(resource).keys)

    def record(self, resource: Resource) -> dict[str, Any]:
        return {"id": resource.id, "stack": resource.stack}

    def implicit_dependencies(self, resource: Resource, by_path: dict[str, str]) -> Iterable[str]:
        parent = _spec(resource).parent
        rid = by_path.get(f"demo://{parent}") if parent else None
        return (rid,) if rid else ()

    def read(self, resource: Resource) -> Observed | None:
        keys = WORLD.get(resource.id)
        return None if keys is None else Observed(resource.id, keys)

    def plan(self, resource: Resource, observed: Observed | None) -> Change:
        if observed is None:
            return Change(resource.id, Action.CREATE, resource.id)
        if observed.data != _spec(resource).keys:
            return Change(resource.id, Action.UPDATE, resource.id)
        return Change(resource.id, Action.NOOP, resource.id)

    def apply(self, resource: Resource, change: Change) -> None:
        WORLD[resource.id] = list(_spec(resource).keys)
        SEEN[resource.id] = self.ctx.settings(resource.stack, "demo")

    def delete(self, kind: str, record: dict[str, Any]) -> str:
        DELETED.append(record["id"])
        WORLD.pop(record["id"], None)
        return f"deleted {record['id']} of stack {record['stack']}"


def _spec(resource: Resource) -> DemoSpec:
    assert isinstance(resource.spec, DemoSpec)
    return resource.spec


def demo_registry() -> Registry:
    reg = default_registry()
    reg.register("Demo", DemoSpec, DemoProvider)
    reg.register("DemoChild", DemoSpec, DemoProvider)
    reg.register_settings("demo", DemoSettings)
    return reg


@pytest.fixture(autouse=True)
def demo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The config knows the ``demo:`` section (as if a family registered it by default)."""
    monkeypatch.setattr(config, "settings_models", demo_registry().settings_models)
    WORLD.clear()
    DELETED.clear()
    SEEN.clear()
    yield


def two_stacks(repo: GitRepo, root: Path, state: Path, **web: Any) -> AgentConfig:
    return AgentConfig.model_validate({
        "root": str(root), "state": str(state),
        "sources": [{"name": "repo", "url": repo.url, "ref": "main"}],
        "stacks": [
            {"name": "web", "source": "repo", "path": "m", **web},
            {"name": "other", "source": "repo", "path": "n"},
        ],
    })  # fmt: skip


def one_run(cfg: AgentConfig) -> dict[str, Any]:
    ctl = Controller(cfg, demo_registry())
    try:
        return {r.stack: r for r in ctl.run_once()}
    finally:
        ctl.close()


# -- settings -------------------------------------------------------------------------


def test_a_provider_reads_its_stacks_settings_section(git_repo, root, state_dir) -> None:
    git_repo.commit({
        "m/a.yaml": manifest("Demo", "one", keys=["one"]),
        "n/b.yaml": manifest("Demo", "two", keys=["two"]),
    })  # fmt: skip
    cfg = two_stacks(git_repo, root, state_dir, demo={"dsn": "host=db", "port": 5})
    results = one_run(cfg)
    assert all(r.converged for r in results.values()), results
    assert SEEN["Demo/one"] == DemoSettings(dsn="host=db", port=5)
    assert SEEN["Demo/two"] is None  # stack "other" has no demo: section


def test_settings_sections_in_the_config_file_are_checked_by_their_model(tmp_path) -> None:
    base = "sources: [{name: s, url: u}]\nstacks:\n  - name: a\n    source: s\n"
    good = tmp_path / "good.yaml"
    good.write_text(base + "    demo: {dsn: x}\n")
    st = load_config(good).stacks[0]
    assert st.settings("demo") == DemoSettings(dsn="x")
    # Dumped under its own key (STATE/fleet.json), read back the same.
    assert st.model_dump(by_alias=True)["demo"] == {"dsn": "x", "port": 1}
    assert StackConfig.model_validate(st.model_dump(by_alias=True)) == st
    for text, said in [
        ("    demo: {dsn: x, port: nine}\n", "stacks.0: demo.port: Input should be a valid int"),
        ("    demo: {dsn: x, bogus: 1}\n", "stacks.0: demo.bogus: unknown field"),
        ("    postgrse: {dsn: x}\n", "stacks.0.postgrse: Extra inputs are not permitted"),
        ("    provider_settings: {demo: {dsn: x}}\n", "provider_settings: unknown field"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(base + text)
        with pytest.raises(ConfigError) as info:
            load_config(bad)
        assert f"{bad}: " in str(info.value)
        assert said in str(info.value), str(info.value)


def test_a_fleet_entry_carries_settings_sections_and_refuses_unknown_keys(tmp_path) -> None:
    fleet = (
        "apiVersion: setpoint/v1\nkind: Fleet\nmetadata: {name: f}\nstacks:\n"
        "  - name: db\n    path: db\n    demo: {dsn: fleet}\n"
    )
    (tmp_path / "fleet.yaml").write_text(fleet)
    (st,) = load_fleet(tmp_path, "fleet.yaml", Limits()).fleet.stacks
    assert st.settings("demo") == DemoSettings(dsn="fleet")
    (tmp_path / "fleet.yaml").write_text(fleet + "    bogus: 1\n")
    with pytest.raises(ManifestErrors) as info:
        load_fleet(tmp_path, "fleet.yaml", Limits())
    assert "fleet.yaml:8" in str(info.value) and "bogus: unknown field" in str(info.value)


# -- identity: every claim -------------------------------------------------------------


def test_every_claim_is_recorded_and_checked_for_conflicts(git_repo, root, state_dir) -> None:
    git_repo.commit({
        "m/a.yaml": manifest("Demo", "one", keys=["k1", "shared"]),
        "n/b.yaml": manifest("Demo", "two", keys=["k2", "shared"]),
    })  # fmt: skip
    results = one_run(two_stacks(git_repo, root, state_dir))
    assert results["web"].converged
    other = results["other"]
    assert other.refused and other.refused_reason == "Conflict"
    assert "path demo://shared is already managed by stack 'web'" in " ".join(other.errors)
    with StateDB(state_dir) as db:
        rec = db.inventory("web")["Demo/one"]
        assert rec.claims == ("demo://k1", "demo://shared")
        assert rec.record == {"id": "Demo/one", "stack": "web"}
        owners = db.owners_by_path()
        assert owners["demo://k1"].resource == owners["demo://shared"].resource == "Demo/one"
    assert "Demo/two" not in WORLD


# -- prune: records and reverse dependency order ----------------------------------------


def test_prune_deletes_dependents_first_from_recorded_dependencies(
    git_repo, root, state_dir
) -> None:
    """A deep key must not go first: the child depends (implicitly) on the parent."""
    git_repo.commit({
        "m/a.yaml": docs(
            manifest("Demo", "parent", keys=["a/b/c/d"]),
            manifest("DemoChild", "child", keys=["x"], parent="a/b/c/d"),
            manifest("Demo", "user", keys=["u"], dependsOn=["DemoChild/child"]),
            manifest("File", "f", path="/srv/d/f", content="x"),
            manifest("Directory", "d", path="/srv/d"),
        ),
        "n/keep.yaml": manifest("Demo", "keep", keys=["keep"]),
    })  # fmt: skip
    cfg = two_stacks(git_repo, root, state_dir)
    assert one_run(cfg)["web"].converged
    with StateDB(state_dir) as db:
        inv = db.inventory("web")
    assert inv["DemoChild/child"].deps == ("Demo/parent",)
    assert inv["Demo/user"].deps == ("DemoChild/child",)
    assert inv["File/f"].deps == ("Directory/d",)
    git_repo.commit({"m/a.yaml": manifest("Demo", "stay", keys=["stay"])})
    result = one_run(cfg)["web"]
    assert result.converged, result
    assert DELETED == ["Demo/user", "DemoChild/child", "Demo/parent"]
    pruned = [c.resource for c in result.prunes]
    assert pruned.index("File/f") < pruned.index("Directory/d")
    assert not (root / "srv/d").exists()


def test_prune_order_ties_go_deepest_path_first() -> None:
    def rec(rid: str, path: str, deps: tuple[str, ...] = ()) -> InventoryRecord:
        return InventoryRecord("s", rid, rid.split("/")[0], path, "a:1", "d", "r", 0.0, deps=deps)

    recs = [
        rec("Directory/a", "/a"),
        rec("File/b", "/a/b/c"),
        rec("Directory/ab", "/a/b"),
        rec("Release/app", "release:app"),
        rec("Service/app", "service:app", deps=("Release/app", "Directory/a")),
    ]
    order = [r.resource for r in prune_order(recs)]
    assert order.index("Service/app") < order.index("Release/app")
    assert order.index("Service/app") < order.index("Directory/a")
    assert order.index("File/b") < order.index("Directory/ab") < order.index("Directory/a")
    # A cycle (edited rows) still deletes everything, in path order for what is left.
    cyc = [rec("X/a", "/a", ("X/b",)), rec("X/b", "/a/b", ("X/a",))]
    assert [r.resource for r in prune_order(cyc)] == ["X/b", "X/a"]


def test_a_version_1_inventory_keeps_working(tmp_path: Path) -> None:
    """Rows written before records: claims and the delete record come from the path."""
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / "setpoint.db")
    for statement in _MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    for rid, kind, path in [("Release/app", "Release", "release:app"),
                            ("File/motd", "File", "/etc/motd")]:  # fmt: skip
        conn.execute(
            "INSERT INTO inventory VALUES (?, ?, ?, ?, 'a.yaml:1', 'd', 'r', 0, 1)",
            ("web", rid, kind, path),
        )
    conn.commit()
    conn.close()
    with StateDB(state) as db:
        inv = db.inventory("web")
        assert inv["Release/app"].claims == ("release:app",)
        assert inv["Release/app"].record == {"path": "release:app"}
        assert inv["File/motd"].record == {"path": "/etc/motd"}
        assert set(db.owners_by_path()) == {"release:app", "/etc/motd"}
    root = tmp_path / "root"
    root.mkdir()
    release = ReleaseProvider(ProviderContext(root, state_dir=state))
    assert release.delete("Release", inv["Release/app"].record) == "release app already absent"


# -- the settled record (engine/settled.py) ---------------------------------------------


def _settle(cfg: AgentConfig, state: Path) -> bool:
    """A one-shot apply in process, then the settled record's save: was it written?"""
    from setpoint.engine import settled

    inv = settled.Invocation(state, "test-key")
    ctl = Controller(cfg, demo_registry())
    try:
        ctl.lock_state()
        mark = settled.journal_mark(ctl.db)
        results = ctl.run_once()
        assert all(r.converged for r in results), results
        return settled.save(inv, ctl, results, mark)
    finally:
        ctl.close()


def test_a_family_without_a_quick_check_gets_no_settled_record(
    git_repo, root, state_dir
) -> None:
    git_repo.commit({
        "m/a.yaml": manifest("File", "f", path="/srv/f", content="x\n"),
        "n/b.yaml": manifest("File", "g", path="/srv/g", content="y\n"),
    })  # fmt: skip
    cfg = two_stacks(git_repo, root, state_dir)
    assert _settle(cfg, state_dir) and (state_dir / "settled").is_file()
    # The same stacks plus one resource of a family that cannot vouch cheaply.
    git_repo.commit({"n/c.yaml": manifest("Demo", "one", keys=["one"])})
    assert not _settle(cfg, state_dir)
    assert not (state_dir / "settled").exists()
