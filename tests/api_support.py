"""Helpers for the API tests: HTTP calls against a real agent, SSE reading."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def call(url: str, method: str = "GET", token: str | None = None, body: Any = None,
         timeout: float = 30) -> tuple[int, Any]:
    """(status, JSON body or text) of one request; never raises on an HTTP error."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, ctype = r.read(), r.status, r.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        raw, status, ctype = exc.read(), exc.code, exc.headers.get("content-type", "")
    return status, (json.loads(raw) if "json" in ctype else raw.decode())


def token_file(path: Path, token: str, mode: int = 0o600) -> Path:
    path.write_text(token + "\n")
    os.chmod(path, mode)
    return path


class SSE:
    """A Server-Sent Events client on a real socket: ``next()`` returns one event as a dict."""

    def __init__(self, url: str, last_event_id: int | None = None, query: str = "",
                 timeout: float = 10) -> None:  # fmt: skip
        import http.client
        import urllib.parse

        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", "/events" + query, headers=headers)
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.status

    def next(self) -> dict[str, Any]:
        fields: dict[str, str] = {}
        while True:
            line = self.resp.readline()
            if not line:
                raise EOFError("stream closed")
            text = line.decode().rstrip("\n")
            if text == "":
                if "data" in fields:
                    ev = json.loads(fields["data"])
                    ev["_id"], ev["_type"] = int(fields["id"]), fields["event"]
                    return ev
                fields = {}
                continue
            if text.startswith(":"):
                continue
            key, _, value = text.partition(": ")
            fields[key] = value

    def until(self, pred: Any, limit: int = 200) -> dict[str, Any]:
        for _ in range(limit):
            ev = self.next()
            if pred(ev):
                return ev
        raise AssertionError("event not seen")

    def close(self) -> None:
        self.conn.close()
