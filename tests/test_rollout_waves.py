"""Rollout waves, pure part: the Fleet file's ``rollout``, wave membership, maxParallel,
and the gate's decision (no NATS, no processes: every input is a value)."""

from __future__ import annotations

from pathlib import Path

import pytest

from setpoint.fleetbus.waves import HostState, decide
from setpoint.model.errors import ManifestErrors
from setpoint.render.fleet import Rollout, Wave, load_fleet
from setpoint.render.loader import Limits

ROLLOUT = Rollout.model_validate(
    {
        "healthyFor": 60,
        "waves": [
            {"name": "canary", "selector": {"matchLabels": {"canary": "true"}}},
            {"name": "early", "selector": {"matchLabels": {"zone": "a"}}, "maxParallel": 2},
            {"name": "rest", "maxParallel": "10%"},
        ],
    }
)
R1, R2 = "1" * 40, "2" * 40
NOW = 10_000.0


def st(
    host: str, rev: str | None = R2, *, since: float | None = NOW - 100, **kw: object
) -> HostState:
    labels = kw.pop("labels", {})
    return HostState(
        host=host,
        labels=labels,  # type: ignore[arg-type]
        revision=rev,
        ready=bool(kw.pop("ready", True)),
        healthy=bool(kw.pop("healthy", True)),
        stalled=bool(kw.pop("stalled", False)),
        reason=str(kw.pop("reason", "")),
        ready_since=since,
        heartbeat=float(kw.pop("heartbeat", NOW)),  # type: ignore[arg-type]
    )


CANARY = {"canary": "true"}
ZONE_A = {"zone": "a"}


def test_wave_membership_first_match_and_selectorless_takes_the_rest() -> None:
    assert ROLLOUT.wave_of({"canary": "true", "zone": "a"}) == 0  # first wave that takes it
    assert ROLLOUT.wave_of(ZONE_A) == 1
    assert ROLLOUT.wave_of({}) == 2
    only_selectors = Rollout.model_validate(
        {"waves": [{"name": "a", "selector": {"matchLabels": {"x": "1"}}}]}
    )
    assert only_selectors.wave_of({}) == 1  # taken by no wave: follows the last one
    assert only_selectors.wave_name(1) == "(after the last wave)"


@pytest.mark.parametrize(
    ("value", "hosts", "slots"),
    [(3, 100, 3), ("10%", 100, 10), ("10%", 5, 1), ("10%", 19, 1), ("25%", 10, 2), ("100%", 7, 7)],
)
def test_max_parallel_count_or_percent_rounded_down_at_least_one(
    value: int | str, hosts: int, slots: int
) -> None:
    assert Wave.model_validate({"name": "w", "maxParallel": value}).slots(hosts) == slots


def test_no_max_parallel_is_unbounded() -> None:
    assert Wave(name="w").slots(1000) is None


def test_canary_may_move_at_once_with_its_slots() -> None:
    d = decide(ROLLOUT, "c1", CANARY, R2, [st("c2", R1, labels=CANARY)], NOW)
    assert d.allowed and d.wave_name == "canary" and d.slots is None


def test_later_wave_waits_until_canary_ready_for_healthy_for() -> None:
    soaking = [st("c1", labels=CANARY, since=NOW - 20)]
    d = decide(ROLLOUT, "a1", ZONE_A, R2, soaking, NOW)
    assert not d.allowed
    assert d.reason == f"waiting for wave canary: c1 Ready at {R2[:12]} for 20.0 s of 60"
    assert d.recheck_at == NOW + 40  # when time alone would open it
    done = [st("c1", labels=CANARY, since=NOW - 60)]
    d = decide(ROLLOUT, "a1", ZONE_A, R2, done, NOW)
    assert d.allowed and d.wave_name == "early" and d.slots == 2


def test_every_earlier_wave_counts_not_only_the_previous_one() -> None:
    hosts = [
        st("a1", labels=ZONE_A),
        st("c1", R1, labels=CANARY),  # the canary is not even at R2
    ]
    d = decide(ROLLOUT, "r1", {}, R2, hosts, NOW)
    assert not d.allowed
    assert d.reason == f"waiting for wave canary: c1 at {R1[:12]}, not yet at {R2[:12]}"


def test_a_stalled_canary_halts_the_rollout_and_says_who() -> None:
    hosts = [
        st("host-3", R2, labels=CANARY, stalled=True, ready=False, reason="RolledBack"),
        st("host-1", labels=CANARY),
    ]
    d = decide(ROLLOUT, "r1", {}, R2, hosts, NOW)
    assert not d.allowed
    assert d.reason == f"waiting for wave canary: host-3 Stalled at {R2[:12]} (RolledBack)"
    assert d.detail["state"] == "stalled" and d.detail["host"] == "host-3"


def test_not_ready_unhealthy_and_silent_hosts_hold() -> None:
    for h, words in [
        (st("c1", labels=CANARY, ready=False, since=None), "c1 not Ready"),
        (st("c1", labels=CANARY, healthy=False, since=None), "c1 not Healthy"),
        (st("c1", labels=CANARY, heartbeat=NOW - 100), "c1 unknown (no heartbeat for 100 s)"),
    ]:
        d = decide(ROLLOUT, "a1", ZONE_A, R2, [h], NOW, heartbeat=30)
        assert not d.allowed and words in d.reason


def test_own_entry_is_ignored_and_percent_counts_the_wave_hosts() -> None:
    hosts = [st(f"r{i}", R1) for i in range(39)] + [st("me", R1, labels=CANARY)]
    d = decide(ROLLOUT, "me", {}, R2, hosts, NOW)
    assert d.allowed and d.wave_hosts == 40 and d.slots == 4  # 10% of 40


def test_empty_earlier_waves_do_not_block() -> None:
    d = decide(ROLLOUT, "r1", {}, R2, [], NOW)
    assert d.allowed and d.wave_name == "rest" and d.slots == 1


FLEET_HEAD = """\
apiVersion: setpoint/v1
kind: Fleet
metadata: {name: infra}
stacks:
  - name: web
    path: web
    rollout:
"""


def fleet_errors(tmp_path: Path, rollout: str) -> list[str]:
    (tmp_path / "fleet.yaml").write_text(FLEET_HEAD + rollout)
    with pytest.raises(ManifestErrors) as exc:
        load_fleet(tmp_path, "fleet.yaml", Limits())
    return [str(e) for e in exc.value.errors]


def test_fleet_file_rollout_parses(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(
        FLEET_HEAD
        + "      healthyFor: 2\n"
        + "      waves:\n"
        + "        - {name: canary, selector: {matchLabels: {canary: 'true'}}}\n"
        + "        - {name: rest, maxParallel: '50%'}\n"
    )
    loaded = load_fleet(tmp_path, "fleet.yaml", Limits())
    ro = loaded.fleet.stacks[0].rollout
    assert ro is not None and ro.healthy_for == 2 and [w.name for w in ro.waves] == [
        "canary",
        "rest",
    ]


@pytest.mark.parametrize(
    ("rollout", "line", "words"),
    [
        ("      waves: []\n", 8, "waves: give at least one wave"),
        (
            "      waves:\n        - {name: a, maxParallel: 0}\n",
            9,
            "maxParallel: must be at least 1 host (got 0)",
        ),
        (
            "      waves:\n        - {name: a, maxParallel: '150%'}\n",
            9,
            "neither a number of hosts (e.g. 2) nor a percentage from 1% to 100%",
        ),
        (
            "      waves:\n        - {name: a}\n        - {name: b}\n",
            7,
            "wave 'a' has no selector, so it takes every host left and wave 'b' after it",
        ),
        (
            "      waves:\n        - {name: a, selector: {}}\n        - {name: a}\n",
            7,
            "wave 'a' is declared twice",
        ),
        (
            "      healthyFor: -1\n      waves:\n        - {name: a}\n",
            8,
            "healthyFor: Input should be greater than or equal to 0",
        ),
        ("      waves:\n        - {name: a, parallel: 2}\n", 9, "parallel: unknown field"),
    ],
)
def test_fleet_file_rollout_errors_name_file_and_line(
    tmp_path: Path, rollout: str, line: int, words: str
) -> None:
    errors = fleet_errors(tmp_path, rollout)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"fleet.yaml:{line}:"), errors
    assert words in errors[0], errors
