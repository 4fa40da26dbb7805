"""The agent's log: one line per event, as text or JSON lines, with stable field names.

Fields: ``stack``, ``resource``, ``revision``, ``event``, ``ms`` (and ``restore_ms``,
``path``, counts). Diffs never reach INFO: they stay in the journal and are logged
at DEBUG only. A pass that changed nothing logs nothing at INFO.

Example (text)::

    2025-01-02 10:00:00,123 INFO drift stack=web resource=File/motd revision=1a2b3c4d5e6f
        path=/etc/motd: /etc/motd changed outside setpoint: content
    2025-01-02 10:00:00,124 INFO revert stack=web resource=File/motd revision=1a2b3c4d5e6f
        ms=0.8 restore_ms=3.1 path=/etc/motd: update File/motd /etc/motd (content)

(one line each; wrapped here)

Example (``--log-format json``)::

    {"ts": "2025-01-02T10:00:00.123Z", "level": "INFO", "event": "revert", "stack": "web", ...}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from setpoint.engine.outcome import CHANGED, FAILED, REVERTED, PassResult
from setpoint.state import JournalEntry

log = logging.getLogger("setpoint.events")

FIELDS = "fields"  # the LogRecord attribute holding the structured fields
_LEVELS = {
    "failure": logging.ERROR,
    "source.failed": logging.ERROR,
    "revision.refused": logging.ERROR,
    "fleet.refused": logging.ERROR,
    "orphaned": logging.WARNING,
    "revision.fetched": logging.INFO,
    "pass": logging.DEBUG,  # logged from the pass result (with counts), not twice
}
_ORDER = ("event", "stack", "resource", "revision", "ms", "restore_ms", "path")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _iso(record.created), "level": record.levelname}
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["logger"] = record.name
        out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL event key=value ...: message`` (key=value for the record's fields)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            keys = [k for k in _ORDER if k in fields] + sorted(set(fields) - set(_ORDER))
            parts = [str(fields.get("event", ""))] + [
                f"{k}={_text(fields[k])}" for k in keys if k != "event" and fields[k] is not None
            ]
            record.message = " ".join(parts) + (f": {record.message}" if record.message else "")
        return super().formatMessage(record)


def _text(v: Any) -> str:
    s = str(v)
    return json.dumps(s) if (not s or any(c in s for c in ' "=\n')) else s


def setup(level: str, fmt: str) -> None:
    """Configure the root logger: ``fmt`` is ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _first_line(text: str) -> str:
    return (text.splitlines() or [""])[0]


def log_entries(entries: list[JournalEntry]) -> None:
    """One line per journal entry; its diff (if any) at DEBUG only."""
    for e in entries:
        level = _LEVELS.get(str(e.event), logging.INFO)
        if not log.isEnabledFor(level):
            continue
        detail = e.detail if isinstance(e.detail, dict) else {}
        fields: dict[str, Any] = {
            "event": str(e.event),
            "stack": e.stack,
            "resource": e.resource,
            "revision": e.revision[:12] if e.revision else None,
        }
        for key in ("ms", "restore_ms", "path"):
            if detail.get(key) is not None:
                fields[key] = detail[key]
        log.log(level, "%s", _first_line(e.message), extra={FIELDS: fields})
        diff = detail.get("diff")
        if isinstance(diff, str) and log.isEnabledFor(logging.DEBUG):
            log.debug("%s", diff, extra={FIELDS: fields | {"event": f"{e.event}.diff"}})


def log_pass_start(stack: str, only: set[str] | None) -> None:
    """``pass started``, at DEBUG: a pass that changes nothing logs nothing at INFO."""
    if log.isEnabledFor(logging.DEBUG):
        fields: dict[str, object] = {"event": "pass.start", "stack": stack}
        fields["partial"] = only is not None or None
        if only is not None:
            fields["resources"] = len(only)
        log.debug("pass started", extra={FIELDS: fields})


def log_pass(r: PassResult) -> None:
    """``pass`` with counts and duration: INFO for a full pass that changed or failed something,
    DEBUG otherwise (a watch-driven pass is told by its drift and revert lines)."""
    changed = r.count(CHANGED, REVERTED) + sum(1 for p in r.prunes if not p.is_noop)
    failed = r.count(FAILED) + len(r.prune_failures)
    busy = changed or failed or r.errors or r.refused
    level = logging.INFO if busy and not r.partial else logging.DEBUG
    if not log.isEnabledFor(level):
        return
    fields = {
        "event": "pass",
        "stack": r.stack,
        "revision": r.revision[:12] if r.revision else None,
        "ms": round(r.duration * 1000, 1),
        "applied": r.count(CHANGED),
        "reverted": r.count(REVERTED),
        "pruned": sum(1 for p in r.prunes if not p.is_noop),
        "failed": failed,
        "partial": r.partial or None,
    }
    log.log(level, "pass finished", extra={FIELDS: fields})
