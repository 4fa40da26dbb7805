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
