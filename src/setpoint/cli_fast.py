"""The ``setpoint`` entry point, with fast paths for ``--help``, ``status``, ``plan``, ``apply``.

Role: ``setpoint`` (pyproject's script) and ``python -m setpoint`` call :func:`main`.
A shell prompt, a monitoring probe or a timer runs ``setpoint status`` and
``setpoint --help`` often (they must start in <= 80 ms), and timers and CI run
``apply``/``plan``; importing typer, building its commands and coercing parameters
(through pydantic) costs 60-100 ms before any work. So these run here with a small
parser for exactly their documented options; anything else (another command, an
option this parser does not know, ``--help`` of a command, a value that looks like
an option) goes to :mod:`setpoint.cli` (typer), whose commands call the same
:func:`status_command` and :func:`one_shot`, so the output is the same.
:data:`HELP` is typer's own group help, checked by ``tests/test_cli.py`` against what
typer prints (regenerate it from there when a command is added or renamed).
This module imports only ``json``, ``os``, ``sys`` and ``time`` (no pathlib, no
typing): ``status`` loads :mod:`setpoint.cli_api` and
:mod:`setpoint.state.status_read` beside it, ``plan``/``apply`` what they need.
"""

from __future__ import annotations

import json
import os
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from setpoint.config import AgentConfig
    from setpoint.model.status import StackStatus

DEFAULT_STATE = "/var/lib/setpoint"  # config.DEFAULT_STATE (config imports pydantic)

HELP = """\
Usage: {prog} [OPTIONS] COMMAND [ARGS]...

  setpoint: a GitOps agent. Git holds the desired state of this host; setpoint
  pulls it, finds drift and corrects it.

Options:
  --version  Print the version and exit.
  --help     Show this message and exit.

Commands:
  validate         Load and check every manifest under DIRECTORY; print...
  render           Print the resources a host with these labels gets...
  plan             Fetch, render and show what would change (create /...
  apply            Run one reconcile pass; exit 0 when the host has...
  agent            Run the loop: poll, reconcile new revisions, resync...
  sync             Ask the running agent for an immediate fetch and full...
  status           Show each stack's conditions, revisions and resource...
  history          Show the journal: revisions, applies, drift found and...
  logs             Show a service's output (stdout and stderr), from its...
  forget           Release a stack that left the config: drop its...
  facts            Print the host's labels and the facts setpoint gathers...
  bootstrap        Install this host: write its config (repository,...
  set              Change fields of one resource in Git: edit where...
  promote          Copy Release versions (version, url, sha256) from one...
  update-versions  Commit the newest version each Release's versionPolicy...
  rollback         Commit the reverse of the stack's changes since...
  capture          Write drifted resources' live state into their...
  explain          Which stack and resource manage TARGET, the commit...
  relay            Take the forge's push webhooks and publish each new...
  fleet            The fleet as NATS sees it (needs nats: in the config).
  secrets          Encrypt and decrypt SOPS secret files (YAML, JSON,...
"""


def main() -> None:
    code = fast(sys.argv[1:])
    if code is None:
        from setpoint.cli import main as full

        full()
    else:
        sys.exit(code)


def fast(argv: list[str]) -> int | None:
    """Exit status of a command served here, or None for typer to run it."""
    if argv == ["--help"]:
        # Click wraps help text at min(terminal width, 80) - 2: identical from 80 columns.
        if _columns() < 80:
            return None
        sys.stdout.write(HELP.replace("{prog}", program_name()))
        return 0
    if argv[:1] == ["status"]:
        parsed = _status_args(argv[1:])
        if parsed is None:
            return None
        return status_command(*parsed)
    if argv[:1] in (["plan"], ["apply"]):
        opts = pass_args(argv[1:])
        if opts is None:
            return None
        return one_shot(dry_run=argv[0] == "plan", **opts)
    return None


def _columns() -> int:
    """shutil.get_terminal_size().columns without importing shutil (and its compressors)."""
    try:
        env = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        env = 0
    if env > 0:
        return env
    out = sys.__stdout__
    try:
        return (os.get_terminal_size(out.fileno()).columns or 80) if out is not None else 80
    except (ValueError, OSError):
        return 80


def program_name() -> str:
    """The program name click shows in ``Usage:`` (``setpoint`` or ``python -m setpoint``)."""
    main_mod = sys.modules["__main__"]
    path = sys.argv[0]
    package = getattr(main_mod, "__package__", None)
    if package in (None, ""):
        return os.path.basename(path)
    name = os.path.splitext(os.path.basename(path))[0]
    module = package if name == "__main__" else f"{package}.{name}"
    return f"python -m {module.lstrip('.')}"


def _status_args(args: list[str]) -> tuple[str, bool] | None:
    state, as_json = DEFAULT_STATE, False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--json":
            as_json = True
        elif a == "--state" and i + 1 < len(args) and not args[i + 1].startswith("-"):
            state = args[i + 1]
            i += 1
        elif a.startswith("--state=") and len(a) > len("--state="):
            state = a[len("--state=") :]
        else:
            return None  # typer parses (and explains) anything else
        i += 1
    return state, as_json


# plan/apply options (see setpoint.cli.plan): option -> parameter; flags -> (parameter, value).
_VALUES = {
    "--config": "config",
    "-c": "config",
    "--repo": "repo",
    "--ref": "ref",
    "--path": "path",
    "--stack": "stack",
    "--root": "root",
    "--state": "state",
    "--drift": "drift",
}
_FLAGS = {
    "--prune": ("prune", True),
    "--no-prune": ("prune", False),
    "--json": ("as_json", True),
    "--unchanged": ("unchanged", True),
}


def pass_args(args: list[str]) -> dict[str, Any] | None:
    """The parameters of ``plan``/``apply``, or None to let typer parse (and explain)."""
    opts: dict[str, Any] = {
        "config": None, "repo": None, "ref": "main", "path": ".", "stack": "default",
        "root": None, "state": None, "drift": "revert", "prune": True, "as_json": False,
        "unchanged": False,
    }  # fmt: skip
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
        if name in _VALUES:
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("-"):
                    return None
                i += 1
                value = args[i]
            if not value:
                return None
            opts[_VALUES[name]] = value
        elif a in _FLAGS:
            key, flag = _FLAGS[a]
            opts[key] = flag
        else:
            return None
        i += 1
    from pathlib import Path

    for key in ("config", "root", "state"):
        if opts[key] is not None:
            opts[key] = Path(opts[key])
    return opts


def build_config(
    config: Path | None,
    repo: str | None,
    ref: str,
    path: str,
    stack: str,
    root: Path | None,
    state: Path | None,
    interval: float = 60.0,
    resync: float = 300.0,
    drift: str = "revert",
    prune: bool = True,
) -> AgentConfig:
    """The config of a command's --config / --repo flags (SetpointError if neither or both)."""
    from setpoint.config import config_from_flags, load_config
    from setpoint.model.errors import SetpointError

    if config is not None and repo is not None:
        raise SetpointError("give either --config FILE or --repo URL, not both")
    if config is not None:
        overrides = {"root": str(root) if root else None, "state": str(state) if state else None}
        return load_config(config, overrides)
    if repo is None:
        raise SetpointError("no source: give --config FILE or --repo URL (see --help)")
    return config_from_flags(repo, ref, path, stack, root, state, interval, resync, drift, prune)


def one_shot(
    *,
    dry_run: bool,
    config: Path | None,
    repo: str | None,
    ref: str,
    path: str,
    stack: str,
    root: Path | None,
    state: Path | None,
    drift: str,
    prune: bool,
    as_json: bool,
    unchanged: bool,
) -> int:
    """``plan`` (dry run) or ``apply``: fetch, one pass per stack, print; the exit status.

    plan: 0 in sync, 2 changes pending, 1 error; apply: 0 converged, 1 otherwise.
    """
    from setpoint.engine import settled
    from setpoint.model.errors import SetpointError

    opts: dict[str, Any] = {"config": config, "repo": repo, "ref": ref, "path": path,
                            "stack": stack, "root": root, "state": state, "drift": drift,
                            "prune": prune}  # fmt: skip
    results, inv = None, None
    if config is None or repo is None:
        try:  # nothing to do, as a full pass would find (engine/settled.py)? Else run one.
            inv = settled.invocation(opts)
            results = settled.confirm(inv, dry_run=dry_run) if inv is not None else None
        except (OSError, ValueError, SetpointError):
            results = None
    if results is None:
        from setpoint.engine.controller import Controller

        try:
            cfg = build_config(**opts)
            ctl = Controller(cfg)
        except SetpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            if not dry_run:
                ctl.lock_state()
            mark = settled.journal_mark(ctl.db) if inv is not None and not dry_run else 0
            results = ctl.run_once(dry_run=dry_run)
            if inv is not None and not dry_run:
                settled.save(inv, ctl, results, mark)
        except SetpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            ctl.close()
    from setpoint.cli_output import print_plan
    from setpoint.engine.outcome import result_json

    if as_json:
        print(json.dumps([result_json(r) for r in results], indent=2))
    else:
        for r in results:
            print_plan(r, applied=not dry_run, unchanged=unchanged)
    if not dry_run:
        return 0 if all(r.converged for r in results) else 1
    if any(r.revision is None or r.refused or r.fetch_error for r in results):
        return 1
    return 2 if any(r.changes for r in results) else 0


def status_command(state: str | os.PathLike[str], as_json: bool) -> int:
    """``setpoint status``: the running agent's view, else the state dir's; exit status."""
    from setpoint.cli_api import running_agent
    from setpoint.model.status import StackStatus

    client = running_agent(state)
    stacks: list[StackStatus] | None = None
    waits: dict[str, str] = {}
    if client is not None:  # the running agent's view; the state dir if it cannot answer
        from setpoint.model.errors import SetpointError

        try:
            doc = client.call("GET", "/status")
            stacks = [StackStatus.from_json(d) for d in doc["stacks"]]
            passes = doc.get("agent", {}).get("passes", {})
            waits = {n: p["waiting"] for n, p in passes.items() if p.get("waiting")}
        except (SetpointError, KeyError, TypeError, AttributeError) as exc:
            print(f"warning: {exc}; reading the state dir instead", file=sys.stderr)
    if stacks is None:
        from setpoint.state.status_read import DB_NAME, read_statuses

        if not os.path.exists(os.path.join(state, DB_NAME)):
            from pathlib import PurePath

            where = PurePath(state)  # printed as a Path prints (typer passes one)
            print(
                f"error: no setpoint state in {where} (has an agent run with --state {where}?)",
                file=sys.stderr,
            )
            return 1
        try:
            stacks = read_statuses(state)
        except _setpoint_error() as exc:  # a newer schema: what to do, not a traceback
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if as_json:
        print(json.dumps([s.to_json() | {"waiting": waits.get(s.stack)} for s in stacks], indent=2))
    else:
        print_status(stacks)
        for name, what in sorted(waits.items()):
            print(f"stack {name}: {what}")
    return 0


def _setpoint_error() -> type[Exception]:
    """SetpointError, imported only when an ``except`` clause names it, that is when an
    exception is on its way: model.errors loads dataclasses (~10 ms of ``status``)."""
    from setpoint.model.errors import SetpointError

    return SetpointError


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "(none)"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"


def print_status(stacks: list[StackStatus]) -> None:
    out: list[str] = []
    if not stacks:
        out.append("no stacks have run yet")
    for s in stacks:
        ready = s.condition("Ready")
        head = "Ready" if ready and ready.status else "NotReady"
        out.append(f"stack {s.stack} (source {s.source}, path {s.path}): {head}")
        for c in s.conditions:
            first, *rest = c.message.splitlines() or [""]
            out.append(f"  {c.type}={c.status} {c.reason} since {_when(c.since)}: {first}")
            out += [f"      {line}" for line in rest]
        tag = f" (tag {s.applied_tag})" if s.applied_tag else ""
        out.append(
            f"  fetched {_short(s.fetched_revision)}  applied {_short(s.applied_revision)}{tag}"
            f"  last good {_short(s.last_good_revision)}  last pass {_when(s.last_pass)}"
        )
        n = s.counts
        out.append(
            f"  resources: {n.get('total', 0)} total, {n.get('in_sync', 0)} in sync, "
            f"{n.get('drifted', 0)} drifted, {n.get('failed', 0)} failed, "
            f"{n.get('waiting', 0)} waiting"
        )
        out += [f"    {st}: {rid}" for rid, st in sorted(s.resources.items())]
        if s.health:
            out.append("  health:")
        for rid, h in sorted(s.health.items()):
            first = (str(h.get("message") or "").splitlines() or [""])[0]
            why = f" ({first})" if first else ""
            out.append(f"    {h.get('health', 'Unknown')}: {rid}{why}")
    print("\n".join(out))
