"""Rollouts in waves with real agents and a real nats-server on loopback.

Five agents (separate processes, roots, state dirs, labels and ``host:`` names) read
one Fleet file whose stack ``app`` rolls out in three waves: canary (c1), early (a1),
rest (r1..r3, maxParallel 1), healthyFor 1 s. What is asserted about order and
parallelism comes from the agents' own journals (``revision.admitted`` is when a host
may start to apply, ``revision.applied`` when it is Ready at the revision).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import GitRepo
from helpers import cli, wait_for
from nats_support import (
    NatsServer,
    nats_server,  # noqa: F401  (the fixture)
)
from rollout_support import (
    BAD,
    Host,
    app_files,
    fleet_yaml,
    intervals,
    max_overlap,
    start,
    stop,
    write_config,
)

HEALTHY_FOR = 1.0
WAVES = [
    {"name": "canary", "selector": {"matchLabels": {"canary": "true"}}},
    {"name": "early", "selector": {"matchLabels": {"zone": "a"}}},
    {"name": "rest", "maxParallel": 1},
]


@pytest.fixture
def fleet(
    git_repo: GitRepo, tmp_path: Path, nats_server: NatsServer  # noqa: F811
) -> Iterator[tuple[list[Host], str]]:
    first = git_repo.commit({"fleet.yaml": fleet_yaml(HEALTHY_FOR, WAVES), **app_files("v1\n")})
    hosts = [
        Host("c1", {"canary": "true", "zone": "a"}, tmp_path / "c1"),
        Host("a1", {"zone": "a"}, tmp_path / "a1"),
        *(Host(f"r{i}", {"zone": "b"}, tmp_path / f"r{i}") for i in (1, 2, 3)),
    ]
    for h in hosts:
        write_config(h, git_repo.url, nats_server.url)
        start(h)
    try:
        # The first revision goes through the waves too (nothing is in force to keep).
        everywhere(hosts, first, "v1\n")
        yield hosts, first
    finally:
        for h in hosts:
            stop(h)
        for h in hosts:
            log = (h.dir / "agent.log").read_text()
            assert "Traceback" not in log, f"{h.name}:\n{log[-3000:]}"


def everywhere(hosts: list[Host], rev: str, content: str) -> None:
    """Wait until every host has applied ``rev`` (its file, and its journal says so)."""
    wait_for(
        lambda: all(h.content() == content and h.first("revision.applied", rev) for h in hosts),
        timeout=90,
        what=f"{content.strip()} applied everywhere",
    )


def check_order(hosts: list[Host], rev: str) -> None:
    """No host of a wave was admitted before every host of the earlier waves had been
    Ready at ``rev`` for healthyFor; the rest wave never had two hosts moving at once."""
    spans = intervals(hosts, rev)
    assert set(spans) == {h.name for h in hosts}, spans
    by = {h.name: spans[h.name] for h in hosts}
    canary_ready = by["c1"][1]
    assert by["a1"][0] >= canary_ready + HEALTHY_FOR, by
    early_ready = max(canary_ready, by["a1"][1])
    for r in ("r1", "r2", "r3"):
        assert by[r][0] >= early_ready + HEALTHY_FOR, by
    assert max_overlap([by[r] for r in ("r1", "r2", "r3")]) == 1, by


def test_waves_in_order_max_parallel_and_a_bad_canary_halts(
    fleet: tuple[list[Host], str], git_repo: GitRepo
) -> None:
    hosts, _ = fleet  # the first revision: hosts not yet in the store cannot hold a wave
    c1, a1, r1 = hosts[0], hosts[1], hosts[2]

    # A good revision: canary first, then early after healthyFor, then rest one by one.
    v2 = git_repo.commit(app_files("v2\n"))
    everywhere(hosts, v2, "v2\n")
    check_order(hosts, v2)

    # A bad revision: the canary refuses it (Stalled); nobody else ever applies it.
    bad = git_repo.commit(BAD)
    wait_for(lambda: (c1.condition("Stalled") or {}).get("status"), timeout=30,
             what="the canary Stalled")
    for h in hosts[1:]:
        wait_for(
            lambda h=h: any(
                e["revision"] == bad and "c1 Stalled at " + bad[:12] in e["message"]
                for e in h.journal("revision.held")
            ),
            timeout=30,
            what=f"{h.name} holding the bad revision because of the canary",
        )
    msg = (a1.condition("Reconciling") or {}).get("message", "")
    assert f"waiting for wave canary: c1 Stalled at {bad[:12]}" in msg, msg
    # `setpoint fleet rollout` shows the halt: the canary Stalled, the later waves waiting.
    view = json.loads(cli("fleet", "rollout", "app", "--config", a1.conf, "--json", check=0).stdout)
    assert view["revision"] == bad
    assert [(w["wave"], w["state"]) for w in view["waves"]] == [
        ("canary", "halted"), ("early", "waiting"), ("rest", "waiting")
    ]
    assert view["waves"][0]["hosts"][0]["state"] == "stalled"
    text = cli("fleet", "rollout", "app", "--config", a1.conf, check=0).stdout
    assert f"stack app: revision {bad[:12]}, healthyFor 1 s" in text and "halted" in text
    # Drift correction is never gated: a held host still puts its file back.
    (r1.root / "etc/app.conf").write_text("tampered\n")
    wait_for(lambda: r1.content() == "v2\n", timeout=15, what="drift reverted while held")
    for h in hosts[1:]:
        assert h.first("revision.admitted", bad) is None, h.name
        assert h.first("revision.applied", bad) is None, h.name
        assert h.content() == "v2\n"

    # A newer commit starts a new rollout, which reaches every host in order.
    v3 = git_repo.commit(app_files("v3\n"))
    everywhere(hosts, v3, "v3\n")
    check_order(hosts, v3)
    for h in hosts[1:]:
        assert h.first("apply", bad) is None, h.name


def test_store_unreachable_holds_new_revisions_and_drift_is_still_corrected(
    fleet: tuple[list[Host], str], git_repo: GitRepo, nats_server: NatsServer  # noqa: F811
) -> None:
    hosts, _ = fleet
    c1, r1 = hosts[0], hosts[2]
    nats_server.stop()
    v2 = git_repo.commit(app_files("v2\n"))
    for h in hosts:
        wait_for(
            lambda h=h: any(
                e["revision"] == v2 and "unreachable" in e["message"]
                for e in h.journal("revision.held")
            ),
            timeout=30,
            what=f"{h.name} holding v2 while the store is down",
        )
    (c1.root / "etc/app.conf").write_text("tampered\n")
    (r1.root / "etc/app.conf").write_text("tampered\n")
    wait_for(lambda: c1.content() == r1.content() == "v1\n", timeout=15,
             what="drift reverted while the store is down")
    assert all(h.first("revision.admitted", v2) is None for h in hosts)
    assert all(h.content() == "v1\n" for h in hosts)

    nats_server.start()
    everywhere(hosts, v2, "v2\n")
    check_order(hosts, v2)
