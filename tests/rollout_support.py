"""A small fleet for rollout tests and the rollout bench: real agents, one Git repo, NATS.

Each agent is a real ``setpoint agent`` process with its own root, state dir, labels
and ``host:`` name, all reading one Fleet file whose stack ``app`` rolls out in waves.
Journals are read straight from each agent's state DB (SQLite, read-only), so what a
test asserts about order and parallelism is what the agents themselves recorded.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from helpers import manifest, start_agent, stop_process
from setpoint.state.db import DB_NAME

STACK = "app"


def fleet_yaml(healthy_for: float, waves: list[dict[str, Any]]) -> str:
    doc = {
        "apiVersion": "setpoint/v1",
        "kind": "Fleet",
        "metadata": {"name": "infra"},
        "stacks": [
            {
                "name": STACK,
                "path": STACK,
                "rollout": {"healthyFor": healthy_for, "waves": waves},
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def app_files(version: str) -> dict[str, str]:
    return {f"{STACK}/conf.yaml": manifest("File", "conf", path="/etc/app.conf", content=version)}


BAD = {f"{STACK}/conf.yaml": "apiVersion: setpoint/v1\nkind: File\nmetadata: {name: conf}\n"
       "spec: {path: /etc/app.conf, contents: typo}\n"}


@dataclass
class Host:
    name: str
    labels: dict[str, str]
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    conf: Path = field(init=False)

    def __post_init__(self) -> None:
        self.conf = self.dir / "config.yaml"

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def content(self) -> str | None:
        try:
            return (self.root / "etc/app.conf").read_text()
        except FileNotFoundError:
            return None

    def journal(self, *events: str) -> list[dict[str, Any]]:
        """This agent's journal entries of stack ``app`` (of ``events``, if given)."""
        db = self.state / DB_NAME
        if not db.exists():
            return []
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute(
                "SELECT ts, event, revision, message, detail FROM journal WHERE stack = ? "
                "ORDER BY id",
                (STACK,),
            ).fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet
        finally:
            conn.close()
        out = [
            {"ts": ts, "event": ev, "revision": rev, "message": msg, "detail": json.loads(det)}
            for ts, ev, rev, msg, det in rows
        ]
        return [e for e in out if not events or e["event"] in events]

    def first(self, event: str, revision: str) -> float | None:
        for e in self.journal(event):
            if e["revision"] == revision:
                return float(e["ts"])
        return None

    def status(self) -> dict[str, Any] | None:
        db = self.state / DB_NAME
        if not db.exists():
            return None
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute("SELECT doc FROM status WHERE stack = ?", (STACK,)).fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            conn.close()
        return json.loads(row[0]) if row else None

    def condition(self, type_: str) -> dict[str, Any] | None:
        st = self.status() or {}
        return next((c for c in st.get("conditions", []) if c["type"] == type_), None)


def write_config(h: Host, repo_url: str, nats_url: str, *, interval: float = 0.3,
                 heartbeat: float = 1.0) -> None:
    h.root.mkdir(parents=True, exist_ok=True)
    doc = {
        "root": str(h.root),
        "state": str(h.state),
        "host": h.name,
        "labels": h.labels,
        "listen": "127.0.0.1:0",
        "sources": [{"name": "infra", "url": repo_url, "ref": "main", "interval": interval}],
        "fleet": {"source": "infra", "path": "fleet.yaml"},
        "nats": {"url": nats_url, "heartbeatSeconds": heartbeat},
        "retry": {"base": 0.5, "max": 2},
    }
    h.conf.write_text(yaml.safe_dump(doc))


def start(h: Host) -> None:
    h.proc = start_agent("--config", h.conf, log=h.dir / "agent.log")


def stop(h: Host) -> None:
    if h.proc is not None:
        stop_process(h.proc)
    h.proc = None


def intervals(hosts: list[Host], revision: str) -> dict[str, tuple[float, float]]:
    """Per host: (admitted, applied) times of ``revision``, from its own journal."""
    out: dict[str, tuple[float, float]] = {}
    for h in hosts:
        a, b = h.first("revision.admitted", revision), h.first("revision.applied", revision)
        if a is not None and b is not None:
            out[h.name] = (a, b)
    return out


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant (a span ending as another starts: not overlapping)."""
    points = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans],
                    key=lambda p: (p[0], p[1]))
    cur = best = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best
