"""GET /metrics: every metric the README documents, parsed by prometheus-client; the
alert rules and the dashboard use only exported names (promtool checks the rules too)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import test_watch
from helpers import manifest, wait_for
from setpoint.obs.metrics import METRICS
from test_watch import FAST, read

run_agent = test_watch.run_agent  # the shared fixture: a real agent process

REPO = Path(__file__).resolve().parent.parent
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def documented() -> dict[str, set[str]]:
    """README's Metrics table: name -> labels."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("### Metrics") :]
    rows = re.findall(r"^\| `(setpoint_\w+)` \| \w+ \| ([^|]*) \|", table, re.MULTILINE)
    return {name: set(re.findall(r"`(\w+)`", labels)) for name, labels in rows}


def scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    samples: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        samples.setdefault(fam.name, [])  # a family with no sample yet still counts
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def test_metrics_hold_every_documented_metric_with_its_labels(git_repo, root, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    agent = run_agent()
    (root / "etc/motd").write_text("drift\n")
    wait_for(lambda: read(root / "etc/motd") == "x\n", timeout=FAST, what="reverted")
    wait_for(lambda: scrape(agent.url).get("setpoint_reverts_total"), timeout=FAST,
             what="the revert counted")  # fmt: skip
    doc = documented()
    assert set(doc) == set(METRICS), "README's table and the code disagree"
    got = scrape(agent.url)
    for name, labels in doc.items():
        assert name in got or name.removesuffix("_total") in got, f"{name} not exported"
        series = [k for k in got if k == name or k.removesuffix(SUFFIXES[0]) == name
                  or k.removesuffix(SUFFIXES[1]) == name or k.removesuffix(SUFFIXES[2]) == name]
        for s in (s for k in series for s in got[k]):
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
    # Values, for what this run did: one drift, one revert, one restore time, one File synced.
    assert got["setpoint_drift_total"][0].value == 1
    assert got["setpoint_drift_total"][0].labels == {"stack": "web", "kind": "File"}
    assert got["setpoint_reverts_total"][0].value == 1
    assert got["setpoint_drift_restore_seconds_count"][0].value == 1
    (res,) = got["setpoint_resources"]
    assert res.labels == {"stack": "web", "kind": "File", "sync": "Synced", "health": "Healthy"}
    (info,) = got["setpoint_stack_info"]
    assert info.labels["revision"] == git_repo.git("rev-parse", "HEAD")
    assert got["setpoint_pass_duration_seconds_count"][0].value >= 2
    ready = [s for s in got["setpoint_stack_condition"] if s.labels["type"] == "Ready"]
    assert ready[0].value == 1


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yaml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads((REPO / "deploy/grafana/setpoint.json").read_text())
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    out += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return out


@pytest.mark.parametrize("exprs", [rule_exprs, dashboard_exprs], ids=["alerts", "dashboard"])
def test_alerts_and_dashboard_use_only_exported_metric_names(exprs):
    exported = set(METRICS)
    used = {n for e in exprs() for n in re.findall(r"\bsetpoint_\w+", e)}
    assert used, "no setpoint metric used"
    for name in used:
        base = name
        for suffix in SUFFIXES[:3]:  # histogram series
            if name.endswith(suffix) and name.removesuffix(suffix) in exported:
                base = name.removesuffix(suffix)
        assert base in exported, f"{name} is not a metric the agent exports"
    wanted = {"SetpointAgentDown", "SetpointStackStalled", "SetpointPassFailing",
              "SetpointDriftStorm"}  # fmt: skip
    names = {r["alert"] for g in yaml.safe_load(
        (REPO / "deploy/prometheus/alerts.yaml").read_text())["groups"] for r in g["rules"]}
    assert wanted <= names


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_alert_rules():
    rules = str(REPO / "deploy/prometheus/alerts.yaml")
    proc = subprocess.run(["promtool", "check", "rules", rules], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
