"""Outgoing webhooks: signed bodies, retried from a queue that survives a restart, and a
receiver that hangs never delays a pass (real agents, a real HTTP receiver)."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import test_watch
from api_support import token_file
from helpers import manifest, wait_for
from test_watch import FAST, read

run_agent = test_watch.run_agent  # the shared fixture: a real agent process
SECRET = "hook-secret-42"


class Receiver:
    """A webhook receiver on loopback; ``hang`` makes it accept and never answer."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.hang = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.hang.is_set():
                    outer.release.wait(60)
                    return  # no answer at all
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def stack_with(url: str, secret, events=("drift", "applied")) -> list[dict]:
    return [{"name": "web", "source": "infra", "path": "m", "notifications": [
        {"url": url, "events": list(events), "secretFile": str(secret)}]}]  # fmt: skip


def test_deliveries_are_signed_over_timestamp_and_body(git_repo, root, tmp_path, receiver,
                                                       run_agent):  # fmt: skip
    sha = git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    secret = token_file(tmp_path / "hook.secret", SECRET)
    run_agent(stacks=stack_with(receiver.url, secret))
    (root / "etc/motd").write_text("hand edit\n")
    wait_for(lambda: {json.loads(b)["event"] for _, b in receiver.got} >= {"applied", "drift"},
             timeout=FAST, what="applied and drift delivered")  # fmt: skip
    for headers, body in receiver.got:
        ts = headers["x-setpoint-timestamp"]
        want = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["x-setpoint-signature"] == "sha256=" + want
        assert abs(int(ts) - time.time()) < 60
    drift = next(json.loads(b) for _, b in receiver.got if json.loads(b)["event"] == "drift")
    assert drift["stack"] == "web" and drift["resource"] == "File/motd"
    assert drift["revision"] == sha and "changed outside setpoint" in drift["message"]
    assert drift["host"]


def test_a_hanging_receiver_never_delays_a_pass_and_the_queue_survives_a_restart(
    git_repo, root, state_dir, tmp_path, receiver
):
    git_repo.commit({"m/a.yaml": manifest("File", "motd", path="/etc/motd", content="x\n")})
    secret = token_file(tmp_path / "hook.secret", SECRET)
    receiver.hang.set()
    agent = test_watch.RunningAgent(tmp_path, git_repo, root, state_dir,
                                    stacks=stack_with(receiver.url, secret, ["drift"]))  # fmt: skip
    try:
        wait_for(agent.watching, what="watches set up")
        for i in range(3):
            (root / "etc/motd").write_text(f"edit {i}\n")
            wait_for(lambda: read(root / "etc/motd") == "x\n", timeout=FAST, what="reverted")
            wait_for(lambda i=i: len(agent.journal("revert")) == i + 1, what="revert journaled")
        # Each revert took what a revert takes, not the receiver's 5 s timeout.
        assert max(e["detail"]["restore_ms"] for e in agent.journal("revert")) < 1000
        assert not receiver.got
    finally:
        agent.stop()  # with the three drift deliveries still pending

    def pending() -> int:
        with sqlite3.connect(state_dir / "notifications.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM delivery").fetchone()[0])

    assert pending() == 3
    receiver.hang.clear()
    receiver.release.set()
    again = test_watch.RunningAgent(tmp_path, git_repo, root, state_dir,
                                    stacks=stack_with(receiver.url, secret, ["drift"]))  # fmt: skip
    try:
        # Delivered after the restart (the first attempt's back-off is at most 2 s).
        wait_for(lambda: len(receiver.got) == 3, timeout=FAST, what="queued deliveries sent")
        wait_for(lambda: pending() == 0, timeout=FAST, what="queue emptied")
    finally:
        again.stop()
    assert all(json.loads(b)["event"] == "drift" for _, b in receiver.got)
