"""GET /events: drift and revert as Server-Sent Events, resumable with Last-Event-ID."""

from __future__ import annotations

import test_watch
from api_support import SSE
from helpers import manifest

run_agent = test_watch.run_agent  # the shared fixture: a real agent process


def test_a_drift_and_its_revert_arrive_on_the_stream_in_order(git_repo, root, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    agent = run_agent()
    stream = SSE(agent.url)  # no Last-Event-ID: live events only
    try:
        (root / "etc/motd").write_text("edited\n")
        drift = stream.until(lambda e: e["_type"] == "drift")
        revert = stream.next()
    finally:
        stream.close()
    assert drift["resource"] == "File/motd" and drift["stack"] == "web"
    assert "-edited" in drift["detail"]["diff"]
    assert revert["_type"] == "revert" and revert["_id"] == drift["_id"] + 1
    assert revert["detail"]["restore_ms"] >= 0
    # The ids are the journal's.
    journal = {e["id"]: e["event"] for e in agent.journal()}
    assert journal[drift["_id"]] == "drift" and journal[revert["_id"]] == "revert"


def test_a_client_resumes_with_last_event_id_without_gaps(git_repo, root, run_agent):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    agent = run_agent()
    stream = SSE(agent.url)
    (root / "etc/motd").write_text("one\n")
    first = stream.until(lambda e: e["_type"] == "revert")
    stream.close()
    # Missed while disconnected:
    (root / "etc/motd").write_text("two\n")
    test_watch.wait_for(lambda: len(agent.journal("revert")) == 2, what="second revert")
    again = SSE(agent.url, last_event_id=first["_id"])
    try:
        missed = [again.next()]
        while missed[-1]["_type"] != "revert":
            missed.append(again.next())
    finally:
        again.close()
    # Every entry after the one it had, in order: the pass after the first revert, then
    # the second drift and its revert.
    assert [e["_id"] for e in missed] == list(range(first["_id"] + 1, first["_id"] + 4))
    assert [e["_type"] for e in missed] == ["pass", "drift", "revert"]
    # From the very start (older than anything in memory: read from the journal), in id order.
    ids = [e["id"] for e in agent.journal()]
    whole = SSE(agent.url, last_event_id=0, query="?types=drift,revert,apply")
    try:
        got = [whole.next() for _ in range(5)]
    finally:
        whole.close()
    kinds = {e["id"]: e["event"] for e in agent.journal()}
    want = [i for i in ids if kinds[i] in ("drift", "revert", "apply")][:5]
    assert [e["_id"] for e in got] == want
