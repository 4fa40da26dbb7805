"""The settled record: a one-shot ``apply``/``plan`` that finds nothing to do, without the engine.

Role: :func:`setpoint.cli_fast.one_shot` asks :func:`confirm` first; when it answers,
the run printed and recorded exactly what a full no-op pass would have, at about the
cost of looking at the files. Otherwise the full path runs, and after an ``apply``
that left every stack converged :func:`save` writes the record for the next run.
:meth:`setpoint.engine.controller.Controller.lock_state` (agent, apply, forget) drops
it with :func:`forget_settled` before changing anything.

What a hit requires, every one checked on every run (any doubt means the full path):

- the same invocation (the plan/apply flags, the working directory, the config file's
  bytes), the same facts (hostname, os, arch, cpus, memory) and the same setpoint code
  (sizes and mtimes of its modules);
- the same content of the files that decide trust (``verify`` keys) as then;
- every source's ref still at the commit the stacks converged at (one ``git
  ls-remote`` per source, as the full path does first; a commit-pinned source needs
  none); sources following a semver range are not eligible;
- the state DB's inventory unchanged (its generation counter), the same stacks known
  to it, and each stack's status as the converged pass left it (its last-pass time
  aside);
- each provider's quick check (:class:`setpoint.providers.base.QuickCheckable`) of its
  resources answering True, with the target root as then.

Stacks rendered from decrypted secrets, stacks with health checks, orphaned stacks or a
provider without a quick check make the record unavailable (the full path always runs).
A hit journals the ``revision.fetched`` entries the full path would (the ones it wrote
then, with the new time), sets each stack's last-pass time (apply), trims the journal
when due, and returns :class:`~setpoint.engine.outcome.PassResult`\\ s of in-sync
resources for the CLI to print as usual.

The file: ``STATE/settled``, a magic line with the SHA-256 of the rest, then JSON. Never
trusted: a damaged, foreign or older file is ignored. No secret is ever in it.
This module imports no pydantic and none of the engine's heavy parts at load time.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from setpoint.engine.outcome import IN_SYNC, PassResult, ResourceOutcome
from setpoint.facts import gather
from setpoint.model.errors import SetpointError
from setpoint.state.journal import JournalEntry

if TYPE_CHECKING:
    from setpoint.engine.controller import Controller
    from setpoint.state.db import StateDB

FORMAT = 1
NAME = "settled"
MAGIC = b"setpoint-settled"
DEFAULT_STATE = "/var/lib/setpoint"  # config.DEFAULT_STATE (config imports pydantic)
_FETCHED = "revision.fetched"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Invocation:
    """Where the state dir is and what the run was asked, as a key (see :func:`invocation`)."""

    state: Path
    key: str


def code_fingerprint() -> str:
    """Sizes and mtimes of setpoint's modules: another version or a local edit renders afresh."""
    base = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                st = os.stat(os.path.join(dirpath, name))
                rel = os.path.relpath(os.path.join(dirpath, name), base)
                h.update(f"{rel} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def invocation(opts: dict[str, Any]) -> Invocation | None:
    """The key of a plan/apply run with these options (cli_fast's), or None if unknowable.

    With ``--config`` the state dir is the override, else the file's ``state:``; the
    key hashes the file's bytes, not its meaning, so any edit is a miss.
    """
    config: Path | None = opts.get("config")
    state: Path | None = opts.get("state")
    material: dict[str, Any] = {
        "format": FORMAT,
        "opts": {k: str(v) if isinstance(v, Path) else v for k, v in sorted(opts.items())},
        "cwd": os.getcwd(),
        "facts": gather(socket.gethostname()),
        "code": code_fingerprint(),
    }
    if config is not None:
        data = Path(config).read_bytes()
        material["config"] = [os.path.abspath(config), hashlib.sha256(data).hexdigest()]
        if state is None:
            state = _state_of(data, Path(config))
            if state is None:
                return None
    blob = json.dumps(material, sort_keys=True).encode()
    return Invocation(Path(state or DEFAULT_STATE), hashlib.sha256(blob).hexdigest())


def _state_of(data: bytes, config: Path) -> Path | None:
    """The ``state:`` a config file names (relative to its folder), the default if none."""
    import yaml

    from setpoint.config_paths import resolve_paths

    try:
        raw = yaml.load(data, Loader=yaml.CSafeLoader)
    except yaml.YAMLError:
        return None
    if not isinstance(raw, dict):
        return None
    resolve_paths(raw, config.resolve().parent)
    state = raw.get("state", DEFAULT_STATE)
    return Path(state) if isinstance(state, str) else None


def forget_settled(state: Path) -> None:
    """Drop the record: whatever comes next may change what it vouches for.

    Never raises: a record that stays (something else in its place, no permission) is
    still checked in full before any use, so it can cost time, never a wrong answer.
    """
    try:
        os.unlink(state / NAME)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", state / NAME, exc)


# -- the fast side ------------------------------------------------------------------


def confirm(inv: Invocation, *, dry_run: bool) -> list[PassResult] | None:
    """A full no-op pass's results, recorded as it would (see the module docstring), or None."""
    started = time.monotonic()
    body = _read(inv.state / NAME)
    if body is None or body.get("key") != inv.key:
        return None
    for path, digest in body["inputs"]:
        if _digest_of(Path(path)) != digest:
            return None
    if not (inv.state / "setpoint.db").exists():
        return None
    from setpoint.state.db import StateDB
    from setpoint.state.lock import StateLockedError, lock_state_dir

    lock = None
    if not dry_run:
        try:
            lock = lock_state_dir(inv.state)
        except StateLockedError:
            return None  # the full path says who holds it
    try:
        db = StateDB(inv.state)
        try:
            if not _db_unchanged(db, body) or not _sources_unmoved(body):
                return None
            root = body["root"]
            for stack in body["stacks"]:
                for checker, entries in stack["checks"]:
                    if not checker.startswith("setpoint.providers."):
                        return None
                    if not importlib.import_module(checker).confirm(root, entries):
                        return None
            return _record_hit(db, body, dry_run, started)
        finally:
            db.close()
    finally:
        if lock is not None:
            lock.close()


def _db_unchanged(db: StateDB, body: dict[str, Any]) -> bool:
    if db.inventory_generation() != body["generation"]:
        return False
    statuses = {s.stack: s for s in db.all_status()}
    if sorted(statuses) != body["known"]:
        return False
    for stack in body["stacks"]:
        st = statuses.get(stack["name"])
        if st is None or _status_digest(st.to_json()) != stack["status"]:
            return False
    return True


def _sources_unmoved(body: dict[str, Any]) -> bool:
    from setpoint.source.auth import SourceAuth
    from setpoint.source.git import GitSource

    for src in body["sources"]:
        auth = src["auth"]
        source = GitSource(
            src["name"],
            src["url"],
            src["ref"],
            Path(src["cache"]),
            auth=SourceAuth(**{k: Path(v) if v else None for k, v in auth.items()})
            if auth is not None
            else None,
        )
        try:
            remote = source.remote_revision()
        except SetpointError:
            return False  # unreachable, ref gone...: the full path reports it
        if (remote or src["ref"]) != src["sha"]:
            return False
    return True


def _record_hit(
    db: StateDB, body: dict[str, Any], dry_run: bool, started: float
) -> list[PassResult]:
    from setpoint.state.retention import ONE_SHOT_TRIM_BATCHES, Retention, trim_if_due

    now = time.time()
    db.append(
        *(
            JournalEntry(now, e["stack"], _FETCHED, e["revision"], e["resource"], e["message"],
                         e["detail"])
            for e in body["fetched"]
        )
    )  # fmt: skip
    results = []
    for stack in body["stacks"]:
        results.append(
            PassResult(
                stack["name"],
                fetched=stack["revision"],
                revision=stack["revision"],
                outcomes=[ResourceOutcome(rid, IN_SYNC) for rid in stack["ids"]],
            )
        )
    duration = time.monotonic() - started
    for r in results:
        r.duration = duration
        if not dry_run:
            st = db.load_status(r.stack)
            if st is not None:
                db.save_status(st.replace(last_pass=time.time()))
    if not dry_run:
        trim_if_due(db, Retention(*body["retention"]), max_batches=ONE_SHOT_TRIM_BATCHES)
    return results


def _read(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    head, _, rest = raw.partition(b"\n")
    if head != MAGIC + b" " + hashlib.sha256(rest).hexdigest().encode():
        return None
    try:
        body = json.loads(rest)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        return None
    return body


def _digest_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _status_digest(doc: dict[str, Any]) -> str:
    rest = {k: v for k, v in doc.items() if k != "last_pass"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


# -- the full side ------------------------------------------------------------------


def journal_mark(db: StateDB) -> int:
    """The id of the newest journal entry (0 if none): :func:`save` takes what follows."""
    latest = db.history(limit=1)
    return latest[0].id or 0 if latest else 0


def save(inv: Invocation, ctl: Controller, results: list[PassResult], since: int) -> bool:
    """Write the record after an apply, if every stack converged and may use it; whether it did.

    ``since`` is :func:`journal_mark` before the run. The caller holds the state dir.
    Never raises for a record it cannot write: the apply it follows has succeeded.
    """
    try:
        forget_settled(inv.state)
        body = _body(inv, ctl, results, since)
        if body is not None:
            _write(inv.state, body)
            return True
    except (OSError, ValueError, SetpointError, sqlite3.Error) as exc:
        log.warning("the settled record was not written (the next run takes the full path): %s",
                    exc)  # fmt: skip
    return False


def _write(state: Path, body: dict[str, Any]) -> None:
    rest = json.dumps(body, separators=(",", ":")).encode()
    data = MAGIC + b" " + hashlib.sha256(rest).hexdigest().encode() + b"\n" + rest
    tmp = state / f".{NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    # No fsync: a torn file fails its checksum; a lost one costs one full run.
    os.replace(tmp, state / NAME)


def _body(
    inv: Invocation, ctl: Controller, results: list[PassResult], since: int
) -> dict[str, Any] | None:
    from setpoint.providers.base import QuickCheckable

    cfg = ctl.config
    if not results or any(not r.converged or r.held or r.health for r in results):
        return None
    if ctl.orphans():
        return None
    sources = []
    for s in cfg.sources:
        src = ctl.sources[s.name]
        sha = ctl.fetched.get(s.name)
        if src.semver is not None or sha is None:
            return None
        auth = {k: str(v) if v else None for k, v in asdict(src.auth).items()} if src.auth else None
        sources.append({"name": s.name, "url": s.url, "ref": s.ref, "cache": str(src.cache_dir),
                        "auth": auth, "sha": sha})  # fmt: skip
    inputs = []
    for s in cfg.sources:
        if s.verify is not None:
            for f in (s.verify.ssh.allowed_signers if s.verify.ssh else None,
                      s.verify.gpg.keyring if s.verify.gpg else None):  # fmt: skip
                if f is not None:
                    inputs.append([str(f), _digest_of(Path(f))])
    claimed = frozenset(ctl.reconciler.inventory.owners())
    stacks = []
    for r in results:
        desired = ctl.reconciler.enforced(r.stack)
        if desired is None or desired.revision != r.revision or desired.secrets:
            return None
        by_provider: dict[int, tuple[Any, list[Any]]] = {}
        for res in desired.ordered.order:
            p = ctl.reconciler.providers[res.kind]
            by_provider.setdefault(id(p), (p, []))[1].append(res)
        checks = []
        for p, resources in by_provider.values():
            check = p.quick_check(resources, claimed) if isinstance(p, QuickCheckable) else None
            if check is None:
                return None
            checks.append([check.checker, check.entries])
        st = ctl.db.load_status(r.stack)
        if st is None:
            return None
        stacks.append({"name": r.stack, "revision": r.revision, "status": _status_digest(
            st.to_json()), "ids": [o.resource for o in r.outcomes], "checks": checks})  # fmt: skip
    fetched = [
        {"stack": e.stack, "revision": e.revision, "resource": e.resource, "message": e.message,
         "detail": e.detail}
        for e in ctl.db.history(limit=1_000_000, events={_FETCHED}, after_id=since)
    ]  # fmt: skip
    j = cfg.journal
    return {
        "format": FORMAT,
        "key": inv.key,
        "root": str(cfg.root),
        "inputs": inputs,
        "generation": ctl.db.inventory_generation(),
        "known": sorted(s.stack for s in ctl.db.all_status()),
        "sources": sources,
        "stacks": stacks,
        "fetched": fetched,
        "retention": [j.max_age_days, j.max_entries, j.diff_max_age_days],
    }
