"""Outgoing webhooks per stack (``notifications:`` in a stack's config).

Events: ``applied`` (a new revision in force), ``drift``, ``failed``, ``stalled``
(a revision refused), ``recovered`` (a stack converged again after a failed pass).
Each delivery is a POST of a JSON body (host, stack, event, revision, resource,
message, ts) or, with ``format: slack``, ``{"text": ...}``, signed when the
notification has a ``secretFile``::

    X-Setpoint-Timestamp: 1735812000
    X-Setpoint-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

so a receiver can check the signature and refuse old timestamps (replays). The
timestamp is that of the attempt: a retried delivery is signed afresh.

A pass never waits for a receiver: :meth:`Notifier.offer` only puts the delivery
on an in-memory queue; one thread stores it in ``STATE/notifications.db`` (a
bounded queue, oldest dropped past ``MAX_QUEUE``), another sends it, retrying with
exponential back-off (capped at an hour, given up after a day). Deliveries not
yet sent survive a restart of the agent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import random
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from setpoint.config import NotificationConfig

log = logging.getLogger("setpoint.notify")

DB_FILE = "notifications.db"
MAX_QUEUE = 1000
TIMEOUT = 5.0  # seconds per attempt: a hanging receiver holds only this thread, this long
MAX_BACKOFF = 3600.0
GIVE_UP = 86400.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS delivery (id INTEGER PRIMARY KEY, uid TEXT NOT NULL, "
    "url TEXT NOT NULL, secret_file TEXT, event TEXT NOT NULL, body BLOB NOT NULL, "
    "attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, created REAL NOT NULL)"
)


@dataclass(frozen=True)
class Notice:
    """Something that happened to a stack, to be told to its notification receivers."""

    stack: str
    event: str  # applied | drift | failed | stalled | recovered
    message: str
    revision: str | None = None
    resource: str | None = None
    ts: float = 0.0


def body_for(n: Notice, host: str, fmt: str) -> bytes:
    if fmt == "slack":
        what = f" {n.resource}" if n.resource else ""
        rev = f" at {n.revision[:12]}" if n.revision else ""
        text = f"[{host}] stack {n.stack}: {n.event}{what}{rev}: {n.message}"
        return json.dumps({"text": text}).encode()
    doc = {
        "host": host,
        "stack": n.stack,
        "event": n.event,
        "revision": n.revision,
        "resource": n.resource,
        "message": n.message,
        "ts": n.ts,
    }
    return json.dumps(doc).encode()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def shown(url: str) -> str:
    """A receiver's URL for the log: scheme and host only (a Slack URL's path is its secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/…"


class Notifier:
    def __init__(self, state: Path, host: str | None = None) -> None:
        self.path = Path(state) / DB_FILE
        self.host = host or socket.gethostname()
        self.rules: dict[str, list[NotificationConfig]] = {}
        self._inbox: queue.SimpleQueue[tuple[NotificationConfig, Notice]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stored = threading.Event()  # new rows for the sender
        self._threads: list[threading.Thread] = []
        self._rng = random.Random()
        self.sent = 0
        self.dropped = 0

    def set_rules(self, rules: Mapping[str, Sequence[NotificationConfig]]) -> None:
        self.rules = {k: list(v) for k, v in rules.items() if v}
        if self.rules or self.path.exists():
            self.start()

    def offer(self, notice: Notice) -> None:
        """Any thread, never blocks: queue ``notice`` for the receivers that want it."""
        for rule in self.rules.get(notice.stack, ()):
            if notice.event in rule.events:
                self._inbox.put((rule, notice))
                self._wake.set()

    def start(self) -> None:
        if self._threads:
            return
        # Two threads: storing never waits behind a delivery stuck on a slow receiver.
        for target, name in ((self._store_loop, "store"), (self._send_loop, "send")):
            t = threading.Thread(target=target, name=f"setpoint-notify-{name}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Store what was offered (a restart sends it); a delivery under way is abandoned."""
        self._stop.set()
        self._stored.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)

    # -- the threads -------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(_SCHEMA)
        return conn

    def _store_loop(self) -> None:
        try:
            conn = self._open()
        except (OSError, sqlite3.Error) as exc:
            log.error("notifications are off: cannot open %s: %s", self.path, exc)
            return
        try:
            while not self._stop.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                if self._store(conn):
                    self._stored.set()
            self._store(conn)  # nothing offered is lost at a clean stop
        finally:
            conn.close()

    def _send_loop(self) -> None:
        try:
            conn = self._open()
        except (OSError, sqlite3.Error):
            return  # the store thread said why
        try:
            while not self._stop.is_set():
                wait = self._send_due(conn)
                self._stored.wait(wait)
                self._stored.clear()
        finally:
            conn.close()

    def _store(self, conn: sqlite3.Connection) -> bool:
        rows = []
        now = time.time()
        while True:
            try:
                rule, n = self._inbox.get_nowait()
            except queue.Empty:
                break
            rows.append(
                (
                    uuid.uuid4().hex,
                    rule.url,
                    str(rule.secret_file) if rule.secret_file else None,
                    n.event,
                    body_for(n, self.host, rule.format),
                    now,
                    now,
                )
            )
        if not rows:
            return False
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO delivery (uid, url, secret_file, event, body, next_at, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        (count,) = conn.execute("SELECT COUNT(*) FROM delivery").fetchone()
        over = int(count) - MAX_QUEUE
        if over > 0:
            conn.execute(
                "DELETE FROM delivery WHERE id IN (SELECT id FROM delivery ORDER BY id LIMIT ?)",
                (over,),
            )
            self.dropped += over
            log.warning("notification queue full: dropped the %d oldest deliveries", over)
        conn.execute("COMMIT")
        return True

    def _send_due(self, conn: sqlite3.Connection) -> float:
        """Send what is due, oldest first; the seconds until the next one is due."""
        now = time.time()
        due = conn.execute(
            "SELECT id, uid, url, secret_file, event, body, attempts, created FROM delivery "
            "WHERE next_at <= ? ORDER BY id LIMIT 20",
            (now,),
        ).fetchall()
        for row_id, uid, url, secret_file, event, body, attempts, created in due:
            if self._stop.is_set():
                break
            error = self._deliver(uid, url, secret_file, event, bytes(body))
            if error is None:
                conn.execute("DELETE FROM delivery WHERE id = ?", (row_id,))
                self.sent += 1
                continue
            attempts += 1
            if time.time() - created > GIVE_UP:
                log.warning(
                    "notification to %s given up after %d attempts: %s", shown(url), attempts, error
                )
                conn.execute("DELETE FROM delivery WHERE id = ?", (row_id,))
                continue
            delay = min(MAX_BACKOFF, 2.0**attempts) * self._rng.uniform(0.8, 1.0)
            if attempts in (1, 5) or attempts % 20 == 0:
                log.warning(
                    "notification to %s failed (attempt %d, next in %.0fs): %s",
                    shown(url), attempts, delay, error,
                )  # fmt: skip
            conn.execute(
                "UPDATE delivery SET attempts = ?, next_at = ? WHERE id = ?",
                (attempts, time.time() + delay, row_id),
            )
        if due:
            return 0.0
        (nxt,) = conn.execute("SELECT MIN(next_at) FROM delivery").fetchone()
        return 60.0 if nxt is None else max(0.0, min(60.0, float(nxt) - time.time()))

    def _deliver(
        self, uid: str, url: str, secret_file: str | None, event: str, body: bytes
    ) -> str | None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "setpoint",
            "X-Setpoint-Event": event,
            "X-Setpoint-Delivery": uid,
        }
        if secret_file:
            try:
                secret = Path(secret_file).read_bytes().strip()
            except OSError as exc:
                return f"cannot read the secret file {secret_file}: {exc.strerror}"
            ts = str(int(time.time()))
            headers["X-Setpoint-Timestamp"] = ts
            headers["X-Setpoint-Signature"] = sign(secret, ts, body)
        req = urllib.request.Request(  # noqa: S310 (the config allows http(s) URLs only)
            url, data=body, method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:  # noqa: S310 (http(s) only)
                resp.read(65536)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            return str(getattr(exc, "reason", None) or exc)
        return None
