"""What both providers of the family share, so that neither imports the other's modules.

The Release side (:mod:`.release`, :mod:`.release_store`) needs to know which release
directories a live service runs from (never collected), which means reading the
service records; the Service side (:mod:`.service`, :mod:`.service_proc`) writes them.
Both read them here. The dependency is one way: the Service side uses the release
store (:mod:`.release_store`); the Release side imports nothing of the Service side.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RECORD = "record.json"


def services_dir(state_dir: Path) -> Path:
    return state_dir / "services"


def service_dir(state_dir: Path, name: str) -> Path:
    return services_dir(state_dir) / name


def ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    if len(rest) < 20 or rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def is_same_process(pid: int | None, started: int | None) -> bool:
    return bool(pid) and started is not None and start_time(pid or 0) == started


def live_release_dirs(state_dir: Path) -> set[str]:
    """Release directories that a live recorded service process runs from."""
    out: set[str] = set()
    root = services_dir(state_dir)
    if not root.is_dir():
        return out
    for d in root.iterdir():
        rec = read_json(d / RECORD)
        if not rec:
            continue
        cfg = rec.get("config") or {}
        rel = cfg.get("release_dir")
        if rel and is_same_process(rec.get("pid"), rec.get("started")):
            out.add(str(rel))
    return out


def record_name(record: dict[str, Any], prefix: str) -> str:
    """The name in a delete record: ``{"name": N}``, or an old row's ``{"path": prefix+N}``."""
    name = record.get("name")
    if isinstance(name, str):
        return name
    path = record.get("path")
    if isinstance(path, str) and path.startswith(prefix):
        return path[len(prefix) :]
    return ""
