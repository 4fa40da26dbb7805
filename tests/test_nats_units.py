"""The fleet bus's pure parts: subjects, notices, status keys and entries, the table."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from setpoint.config import AgentConfig, ConfigError, load_config
from setpoint.facts import host_labels
from setpoint.fleetbus.status import (
    Entry,
    decode_entry,
    entry_for,
    escape_host,
    parse_key,
    status_key,
    unescape_host,
)
from setpoint.fleetbus.subjects import (
    CommitNotice,
    decode_notice,
    notices_from_webhook,
    push_info,
    ref_may_match,
    source_key,
    subject_for,
)
from setpoint.fleetbus.table import fleet_rows, format_table, parse_selector
from setpoint.model.status import StackStatus

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_one_repository_has_one_subject_whatever_the_url_form():
    forms = ["https://git.example/ops/infra.git", "git@git.example:ops/infra",
             "ssh://git@GIT.example:22/ops/infra.git/", "http://user:pw@git.example/ops/infra"]
    assert len({subject_for(u) for u in forms}) == 1
    assert subject_for(forms[0]) == "setpoint.source." + source_key(forms[0])
    assert len(source_key(forms[0])) == 16
    assert subject_for("https://git.example/ops/other") != subject_for(forms[0])


def test_notices_round_trip_and_junk_is_ignored():
    n = CommitNotice("https://git.example/a.git", "refs/heads/main", SHA)
    assert decode_notice(n.encode()) == n
    for junk in (b"", b"[]", b"{}", b'{"url": 3}', b"x" * 5000, b"\xff"):
        assert decode_notice(junk) is None
    # A commit that is not a sha is dropped (the notice still means "check").
    assert decode_notice(b'{"url": "u", "commit": "; rm -rf /"}') == CommitNotice("u")


def test_push_info_reads_the_forges_formats():
    assert push_info(json.dumps({"ref": "refs/heads/main", "after": SHA}).encode()) == (
        "refs/heads/main", SHA)
    assert push_info(json.dumps({"checkout_sha": SHA.upper()}).encode()) == (None, SHA)
    assert push_info(json.dumps({"ref": "refs/heads/x", "after": "0" * 40}).encode()) == (
        "refs/heads/x", None)  # a deleted branch
    assert push_info(b"not json") == (None, None)
    body = json.dumps({"after": SHA, "repository": {
        "clone_url": "https://g.example/o/r.git", "ssh_url": "git@g.example:o/r.git",
        "html_url": "https://g.example/o/r"}}).encode()
    assert len(notices_from_webhook(body)) == 1


@pytest.mark.parametrize(("mine", "pushed", "match"), [
    ("main", "refs/heads/main", True),
    ("main", "refs/heads/dev", False),
    ("refs/heads/main", "refs/heads/dev", False),
    ("v1.2.0", "refs/tags/v1.2.0", True),
    ("main", None, True),
    (SHA, "refs/heads/dev", True),
    ("refs/tags/v1", "refs/heads/dev", True),
])
def test_ref_may_match(mine, pushed, match):
    assert ref_may_match(mine, pushed) is match


@given(st.text(min_size=1, max_size=60))
def test_host_escaping_is_reversible_and_yields_one_key_token(host):
    token = escape_host(host)
    assert "." not in token and all(c.isascii() and (c.isalnum() or c in "-_") for c in token)
    assert unescape_host(token) == host
    assert parse_key(status_key(host, "web")) == (host, "web")


def test_escaped_examples():
    assert escape_host("web-1.eu.example") == "web-1_2Eeu_2Eexample"
    assert escape_host("a_b") == "a__b"


def _status(ready: bool, rev: str, health: str = "Healthy") -> StackStatus:
    s = StackStatus(stack="web", applied_revision=rev, fetched_revision=rev)
    s.set_condition("Ready", ready, "ReconciliationSucceeded" if ready else "ApplyFailed",
                    "" if ready else "1 failed", 1.0)
    s.health = {"Service/app": {"health": health, "message": ""}}
    s.counts = {"drifted": 0, "failed": 0 if ready else 1}
    return s


def test_ready_since_holds_at_one_revision_and_restarts_with_the_next():
    e1 = entry_for("h", {}, _status(True, "a" * 40), None, now=100.0, period=30)
    assert e1.ready and e1.healthy and e1.ready_since == 100.0
    e2 = entry_for("h", {}, _status(True, "a" * 40), e1, now=130.0, period=30)
    assert e2.ready_since == 100.0 and e2.same_state(e1)  # only the heartbeat moved
    e3 = entry_for("h", {}, _status(True, "b" * 40), e2, now=160.0, period=30)
    assert e3.ready_since == 160.0
    assert entry_for("h", {}, _status(True, "b" * 40, "Progressing"), e3, 170.0, 30).ready_since \
        is None
    bad = entry_for("h", {}, _status(False, "b" * 40), e3, now=190.0, period=30)
    assert bad.ready_since is None and bad.failed == 1 and bad.reason == "ApplyFailed"
    assert decode_entry(bad.encode()) == bad
    assert decode_entry(b"nope") is None


def test_stale_entries_are_unknown_in_the_table():
    fresh = Entry(host="a", stack="web", ready=True, revision=SHA, heartbeat=100.0, period=30)
    old = Entry(host="b", stack="web", ready=True, revision=SHA, heartbeat=0.0, period=30,
                labels={"role": "db"})
    rows = fleet_rows([old, fresh], now=100.0 + 30)
    assert [(r.host, r.ready) for r in rows] == [("a", True), ("b", None)]
    assert rows[1].to_json()["unknown"] is True
    assert "stack web: 1/2 Ready, 1 unknown" in format_table(rows)
    assert [r.host for r in fleet_rows([old, fresh], 0, parse_selector("role=db"))] == ["b"]
    assert [r.host for r in fleet_rows([old, fresh], 0, parse_selector("!role"))] == ["a"]
    with pytest.raises(ValueError, match="--selector"):
        parse_selector("!bad key")


def test_nats_and_host_config(tmp_path):
    base = {"sources": [{"name": "s", "url": "/r"}], "stacks": [{"name": "w", "source": "s"}]}
    cfg = AgentConfig.model_validate(base)
    assert cfg.nats is None and cfg.host
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps(base | {"host": "web-1.example", "nats": {
        "url": "nats://a:4222,tls://b:4222", "credsFile": "host.creds",
        "tls": {"caFile": "ca.pem"}, "spreadSeconds": 5}}))
    cfg = load_config(p)
    assert cfg.nats is not None and cfg.nats.heartbeat_seconds == 30
    assert cfg.nats.creds_file == tmp_path / "host.creds"
    assert cfg.nats.tls is not None and cfg.nats.tls.ca_file == tmp_path / "ca.pem"
    assert host_labels({}, host=cfg.host)["setpoint.io/hostname"] == "web-1.example"
    for bad in ({"url": "http://x"}, {"url": "nats://x", "spreadSeconds": -1},
                {"url": "nats://x", "tls": {"certFile": "c"}}):
        p.write_text(json.dumps(base | {"nats": bad}))
        with pytest.raises(ConfigError, match="nats"):
            load_config(p)
