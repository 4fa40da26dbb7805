"""Fleet: the agent's stacks come from a Fleet file in Git, chosen by host labels.

Real Git repositories, real files, real passes (in process and as an agent process).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import GitRepo
from helpers import cli, docs, manifest, start_agent, wait_for
from setpoint.config import AgentConfig, ConfigError, load_config
from setpoint.engine.controller import Controller
from setpoint.facts import gather

FLEET = """\
apiVersion: setpoint/v1
kind: Fleet
metadata: {name: infra}
stacks:
  - {name: base, path: base}
  - name: web
    path: envs/prod/web
    selector: {matchLabels: {role: web, env: prod}}
  - name: db
    path: db
    selector:
      matchExpressions:
        - {key: role, operator: In, values: [db]}
"""


def fleet_repo(repo: GitRepo, fleet: str = FLEET) -> None:
    repo.commit(
        {
            "fleet.yaml": fleet,
            "base/motd.yaml": manifest("File", "motd", path="/etc/motd", content="base\n"),
            "envs/prod/web/site.yaml": manifest(
                "File", "site", path="/srv/www/index.html", content="prod site\n"
            ),
            "db/conf.yaml": manifest("File", "dbconf", path="/etc/db.conf", content="db\n"),
        }
    )


def host(url: str, tmp: Path, name: str, labels: dict[str, str], **extra: Any) -> AgentConfig:
    (tmp / name / "root").mkdir(parents=True, exist_ok=True)
    return AgentConfig.model_validate(
        {
            "root": str(tmp / name / "root"),
            "state": str(tmp / name / "state"),
            "sources": [{"name": "infra", "url": url, "ref": "main"}],
            "labels": labels,
            "fleet": {"source": "infra", "path": "fleet.yaml"},
            **extra,
        }
    )


def run(cfg: AgentConfig) -> tuple[dict[str, Any], list[Any]]:
    """One fetch + pass of every stack; the results by stack and the journal."""
    ctl = Controller(cfg)
    try:
        results = {r.stack: r for r in ctl.run_once()}
        return results, ctl.db.history(limit=1000)
    finally:
        ctl.close()


def test_two_hosts_with_different_labels_get_different_stacks(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    fleet_repo(git_repo)
    web = host(git_repo.url, tmp_path, "web1", {"role": "web", "env": "prod"})
    db = host(git_repo.url, tmp_path, "db1", {"role": "db", "env": "prod"})
    web_results, _ = run(web)
    db_results, _ = run(db)
    assert sorted(web_results) == ["base", "web"]
    assert sorted(db_results) == ["base", "db"]
    assert (tmp_path / "web1/root/srv/www/index.html").read_text() == "prod site\n"
    assert not (tmp_path / "web1/root/etc/db.conf").exists()
    assert (tmp_path / "db1/root/etc/db.conf").read_text() == "db\n"
    assert not (tmp_path / "db1/root/srv/www/index.html").exists()
    for h in ("web1", "db1"):
        assert (tmp_path / h / "root/etc/motd").read_text() == "base\n"


def test_facts_are_labels_under_the_reserved_prefix(git_repo: GitRepo, tmp_path: Path) -> None:
    arch = gather()["setpoint.io/arch"]
    fleet_repo(
        git_repo,
        FLEET
        + f"""\
  - name: arch
    path: db
    selector: {{matchLabels: {{setpoint.io/arch: "{arch}"}}}}
""",
    )
    results, _ = run(host(git_repo.url, tmp_path, "h", {}))
    assert sorted(results) == ["arch", "base"]


def test_configured_labels_may_not_use_the_fact_prefix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved for the facts"):
        host("/nowhere", tmp_path, "h", {"setpoint.io/os": "plan9"})


def test_host_whose_labels_change_loses_only_what_no_longer_matches(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    fleet_repo(git_repo)
    results, _ = run(host(git_repo.url, tmp_path, "h", {"role": "web", "env": "prod"}))
    assert sorted(results) == ["base", "web"]
    motd = tmp_path / "h/root/etc/motd"
    inode = motd.stat().st_ino
    results, journal = run(host(git_repo.url, tmp_path, "h", {"role": "db", "env": "prod"}))
    assert sorted(results) == ["base", "db"]
    assert not (tmp_path / "h/root/srv/www/index.html").exists()  # pruned
    assert (tmp_path / "h/root/etc/db.conf").read_text() == "db\n"
    assert motd.stat().st_ino == inode  # untouched
    removed = [e for e in journal if e.event == "fleet.removed"]
    assert [e.stack for e in removed] == ["web"]
    assert "1 resource(s) pruned" in removed[0].message
    ctl = Controller(host(git_repo.url, tmp_path, "h", {"role": "db", "env": "prod"}))
    try:
        assert ctl.db.inventory("web") == {}
        assert ctl.db.load_status("web") is None
    finally:
        ctl.close()


def test_stack_removed_from_the_fleet_file_is_pruned(git_repo: GitRepo, tmp_path: Path) -> None:
    fleet_repo(git_repo)
    cfg = host(git_repo.url, tmp_path, "h", {"role": "web", "env": "prod"})
    run(cfg)
    git_repo.commit({"fleet.yaml": FLEET.replace("  - {name: base, path: base}\n", "")})
    results, _ = run(cfg)
    assert sorted(results) == ["web"]
    assert not (tmp_path / "h/root/etc/motd").exists()
    assert (tmp_path / "h/root/srv/www/index.html").exists()


def test_fleet_stack_policy_applies(git_repo: GitRepo, tmp_path: Path) -> None:
    fleet_repo(
        git_repo,
        FLEET.replace("{name: base, path: base}", "{name: base, path: base, prune: false}"),
    )
    git_repo.commit(
        {"base/issue.yaml": manifest("File", "issue", path="/etc/issue", content="i\n")}
    )
    cfg = host(git_repo.url, tmp_path, "h", {})
    run(cfg)
    git_repo.remove("base/motd.yaml")
    git_repo.commit()
    results, _ = run(cfg)
    assert (tmp_path / "h/root/etc/motd").exists()  # prune: false keeps it
    assert [c.reason for c in results["base"].prunes] == [
        "removed from Git, kept: prune is disabled for this stack"
    ]


@pytest.mark.parametrize(
    ("fleet", "where", "message"),
    [
        (
            FLEET.replace("{name: base, path: base}", "{name: base, path: base, source: other}"),
            "fleet.yaml:5",
            "a Fleet stack takes no source",
        ),
        (FLEET + "  - {name: base, path: db}\n", "fleet.yaml:14", "declared twice"),
        (FLEET.replace("path: db\n", "path: db\n    resink: 5\n"), "fleet.yaml:11", "resink"),
        (FLEET.replace("kind: Fleet", "kind: Flet"), "fleet.yaml:2", "kind must be Fleet"),
        (
            FLEET.replace("{name: base, path: base}", "{name: base, path: ../up}"),
            "fleet.yaml:5",
            "inside the repository",
        ),
        (FLEET.replace("operator: In", "operator: Inn"), "fleet.yaml:", "operator"),
        ("stacks: [\n", "fleet.yaml:", "YAML"),
    ],
)
def test_broken_fleet_file_is_refused_with_file_and_line_and_last_good_stays(
    git_repo: GitRepo, tmp_path: Path, fleet: str, where: str, message: str
) -> None:
    fleet_repo(git_repo)
    cfg = host(git_repo.url, tmp_path, "h", {"role": "web", "env": "prod"})
    run(cfg)
    good = git_repo.git("rev-parse", "HEAD")
    bad = git_repo.commit(
        {
            "fleet.yaml": fleet,
            "envs/prod/web/site.yaml": manifest(
                "File", "site", path="/srv/www/index.html", content="new site\n"
            ),
        }
    )
    results, journal = run(cfg)
    assert sorted(results) == ["base", "web"]  # the last good selection
    for r in results.values():
        assert r.refused == bad
        assert r.revision == good  # the last good revision stays in force
        assert any(e.startswith(where) and message in e for e in r.errors), r.errors
    assert (tmp_path / "h/root/srv/www/index.html").read_text() == "prod site\n"
    refused = [e for e in journal if e.event == "fleet.refused"]
    assert sorted(e.stack for e in refused) == ["base", "web"]
    assert where in refused[0].message


def test_fleet_stack_name_clash_with_a_config_stack_is_refused(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    fleet_repo(git_repo)
    cfg = host(
        git_repo.url,
        tmp_path,
        "h",
        {},
        stacks=[{"name": "base", "source": "infra", "path": "db"}],
    )
    results, journal = run(cfg)
    assert sorted(results) == ["base"]  # only the config's stack runs
    assert (tmp_path / "h/root/etc/db.conf").exists()
    refused = [e for e in journal if e.event == "fleet.refused"]
    assert (
        refused
        and "fleet.yaml:5: Fleet: stack 'base': a stack of this name is in the host's config too"
        in refused[0].message
    )


def test_config_without_stacks_needs_a_fleet(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"name": "s", "url": "/x"}]}))
    with pytest.raises(ConfigError, match="declare at least one stack, or a fleet"):
        load_config(path)
    path.write_text(
        yaml.safe_dump({"sources": [{"name": "s", "url": "/x"}], "fleet": {"source": "t"}})
    )
    with pytest.raises(ConfigError, match="fleet uses source 't', which is not declared"):
        load_config(path)


def test_facts_command_prints_labels_and_facts(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "sources": [{"name": "s", "url": "/x"}],
                "labels": {"role": "web"},
                "fleet": {"source": "s"},
            }
        )
    )
    out = cli("facts", "--config", cfg, "--json", check=0).stdout
    doc = json.loads(out)
    assert doc["labels"] == {"role": "web"}
    assert set(doc["facts"]) == {
        f"setpoint.io/{k}" for k in ("hostname", "os", "arch", "cpus", "memory-mib")
    }
    assert doc["facts"]["setpoint.io/cpus"] == str(os.cpu_count())


def test_bootstrap_writes_a_config_the_agent_runs(git_repo: GitRepo, tmp_path: Path) -> None:
    fleet_repo(git_repo)
    cfg = tmp_path / "etc/config.yaml"
    (tmp_path / "root").mkdir()
    out = cli(
        "bootstrap",
        "--repo",
        git_repo.url,
        "--labels",
        "role=web,env=prod",
        "--state",
        tmp_path / "state",
        "--root",
        tmp_path / "root",
        "--config",
        cfg,
        "--print-unit",
        check=0,
    ).stdout
    assert "KillMode=process" in out
    assert f"agent --config {cfg}" in out
    assert cfg.stat().st_mode & 0o777 == 0o600
    loaded = load_config(cfg)
    assert loaded.labels == {"role": "web", "env": "prod"}
    assert loaded.fleet is not None and loaded.fleet.path == "fleet.yaml"
    cli("apply", "--config", cfg, check=0)
    assert (tmp_path / "root/srv/www/index.html").read_text() == "prod site\n"
    again = cli("bootstrap", "--repo", git_repo.url, "--config", cfg, "--print-unit")
    assert again.returncode == 1 and "exists; pass --force" in again.stderr


def test_bootstrap_unit_matches_the_shipped_unit() -> None:
    from setpoint.cli_fleet import unit_text

    shipped = Path(__file__).parents[1] / "deploy/systemd/setpoint.service"
    assert (
        unit_text("/usr/local/bin/setpoint", Path("/etc/setpoint/config.yaml"))
        == shipped.read_text()
    )


def test_agent_starts_and_stops_stacks_as_the_fleet_changes(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    fleet_repo(
        git_repo, FLEET.replace("{name: base, path: base}", "{name: base, path: base, resync: 1}")
    )
    cfg = host(git_repo.url, tmp_path, "h", {"role": "web", "env": "prod"})
    conf = tmp_path / "h.yaml"
    doc = cfg.model_dump(by_alias=True, mode="json", exclude_defaults=True)
    doc["sources"][0]["interval"] = 0.2
    doc["listen"] = "127.0.0.1:0"
    conf.write_text(yaml.safe_dump(doc))
    root = tmp_path / "h/root"
    proc = start_agent("--config", conf, log=tmp_path / "agent.log")
    try:
        wait_for(lambda: (root / "srv/www/index.html").exists(), what="web stack applied")
        git_repo.commit(
            {
                "fleet.yaml": FLEET.replace("role: web, env: prod", "role: none")
                + "  - {name: extra, path: db, selector: {matchLabels: {env: prod}}}\n"
            }
        )
        wait_for(lambda: (root / "etc/db.conf").exists(), what="the new stack applied")
        wait_for(lambda: not (root / "srv/www/index.html").exists(), what="web stack pruned")
        # Watches start after a stack's first full pass (issue 14 closes that gap).
        log = tmp_path / "agent.log"
        wait_for(lambda: "stack extra: watching" in log.read_text(), what="extra watched")
        # The stopped stack's worker no longer runs: a file of it put back stays.
        (root / "srv/www/index.html").write_text("mine now\n")
        (root / "etc/db.conf").write_text("drift\n")
        wait_for(lambda: (root / "etc/db.conf").read_text() == "db\n", what="drift reverted")
        assert (root / "srv/www/index.html").read_text() == "mine now\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    log = (tmp_path / "agent.log").read_text()
    assert "stack extra: now runs on this host (Fleet)" in log
    assert "stack web: no longer runs on this host (Fleet)" in log
    assert "Traceback" not in log


def test_fleet_and_overlay_documents_are_not_manifests(git_repo: GitRepo, tmp_path: Path) -> None:
    # A Fleet file inside a stack's path is not loaded as a resource.
    git_repo.commit(
        {
            "fleet.yaml": FLEET.replace("path: base}", "path: .}"),
            "base/motd.yaml": docs(manifest("File", "motd", path="/etc/motd", content="x\n")),
            "envs/prod/web/site.yaml": manifest("File", "s", path="/srv/s", content="s\n"),
            "db/conf.yaml": manifest("File", "d", path="/etc/d", content="d\n"),
        }
    )
    results, _ = run(host(git_repo.url, tmp_path, "h", {}))
    assert results["base"].errors == []
    assert (tmp_path / "h/root/etc/motd").exists()
