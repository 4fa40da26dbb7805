"""The ``setpoint`` command: validate, plan, apply, agent, status, history, forget.

Thin shell over :mod:`setpoint.engine` and :mod:`setpoint.state`; output
formatting lives in :mod:`setpoint.cli_output`.

Start-up time matters (``setpoint --help`` and ``status`` run in <= 80 ms, and
``apply``/``plan`` run from timers and CI): this module imports only typer and
light stdlib at the top; each command imports what it needs (the engine for
apply/plan, the API stack for ``agent`` only). ``tests/test_cli.py`` checks that
importing it loads neither fastapi, uvicorn, rich nor pydantic.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

import setpoint
from setpoint.cli_fast import build_config, one_shot
from setpoint.cli_secrets import secrets_app
from setpoint.model.errors import ManifestErrors, SetpointError

if TYPE_CHECKING:
    from setpoint.config import AgentConfig
    from setpoint.state import StateDB

app = typer.Typer(
    help="setpoint: a GitOps agent. Git holds the desired state of this host; setpoint "
    "pulls it, finds drift and corrects it.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (YAML) declaring sources and stacks."),
]
RepoOpt = Annotated[
    str | None,
    typer.Option("--repo", help="Git URL or local path (shortcut for a one-stack config)."),
]
RefOpt = Annotated[str, typer.Option("--ref", help="Branch, tag or commit SHA to follow.")]
PathOpt = Annotated[
    str, typer.Option("--path", help="Directory inside the repository holding the manifests.")
]
StackOpt = Annotated[str, typer.Option("--stack", help="Name of the stack (with --repo).")]
RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root", help="Target root: absolute manifest paths are placed under it. Default: /"
    ),
]
StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state", help="The agent's own data (SQLite state, git cache). Default: /var/lib/setpoint"
    ),
]
DriftOpt = Annotated[str, typer.Option("--drift", help="revert (default) or report (with --repo).")]
PruneOpt = Annotated[
    bool, typer.Option("--prune/--no-prune", help="Delete what was removed from Git (with --repo).")
]
UnchangedOpt = Annotated[
    bool, typer.Option("--unchanged", help="Also list the resources already in sync (no-op).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _version() -> str:
    """The installed distribution's version; the package's own when run from a checkout."""
    import importlib.metadata

    try:
        return importlib.metadata.version("setpoint")
    except importlib.metadata.PackageNotFoundError:
        return setpoint.__version__


def _print_version(value: bool) -> None:
    if value:
        print(f"setpoint {_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # No docstring: the group's help stays the one given to typer.Typer above.
    pass


_config = build_config  # cli_forget and agent use it by this name


def _fail(exc: BaseException) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@app.command(epilog="Example: setpoint validate examples/hosts/web")
def validate(directory: Annotated[Path, typer.Argument(help="Directory of manifests.")]) -> None:
    """Load and check every manifest under DIRECTORY; print every error as file:line: message."""
    from setpoint.engine.desired import order_stack
    from setpoint.providers.base import ProviderContext
    from setpoint.providers.registry import default_registry
    from setpoint.render import load_stack

    registry = default_registry()
    if not directory.is_dir():
        raise _fail(SetpointError(f"{directory} is not a directory"))
    from setpoint.cli_render import repo_and_path, shown_path
    from setpoint.facts import gather
    from setpoint.render import Host

    tree, subdir = repo_and_path(directory)  # an overlay may build on ../base
    try:
        # Templates see this host's facts, as the agent's would (`render --labels` for more).
        resources = load_stack(tree, subdir, registry, host=Host(gather()))
        order_stack("", resources, registry.providers(ProviderContext()))
    except ManifestErrors as exc:
        for e in exc.errors:
            typer.echo(f"{shown_path(directory, tree, subdir, e.file)}:{e.line}: {e.message}")
        typer.echo(f"{len(exc.errors)} error(s)", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{len(resources)} resource(s) valid")


@app.command(epilog="Example: setpoint render envs/prod --labels role=web,env=prod")
def render(
    directory: Annotated[Path, typer.Argument(help="Stack directory (an overlay or manifests).")],
    labels: Annotated[
        str, typer.Option("--labels", help="The host's labels: KEY=VALUE,KEY=VALUE.")
    ] = "",
    as_json: JsonOpt = False,
    age_key_file: Annotated[
        Optional[Path],  # noqa: UP045 (typer reads the annotation at run time)
        typer.Option(
            "--age-key-file",
            help="age identities for secretFiles (else SOPS_AGE_KEY_FILE / SOPS_AGE_KEY).",
        ),
    ] = None,
) -> None:
    """Print the resources a host with these labels gets (overlays, patches, templates applied).

    Values derived from secrets are masked.
    """
    from setpoint.cli_render import run_render

    run_render(directory, labels, as_json, age_key_file)


@app.command(
    epilog="Example: setpoint plan --repo ./infra --path hosts/web --root /tmp/sandbox "
    "--state /tmp/sp-state\n\nExit status: 0 in sync, 2 changes pending, 1 error."
)
def plan(
    config: ConfigOpt = None,
    repo: RepoOpt = None,
    ref: RefOpt = "main",
    path: PathOpt = ".",
    stack: StackOpt = "default",
    root: RootOpt = None,
    state: StateOpt = None,
    drift: DriftOpt = "revert",
    prune: PruneOpt = True,
    as_json: JsonOpt = False,
    unchanged: UnchangedOpt = False,
) -> None:
    """Fetch, render and show what would change (create / update / delete / no-op)."""
    raise typer.Exit(
        one_shot(
            dry_run=True, config=config, repo=repo, ref=ref, path=path, stack=stack, root=root,
            state=state, drift=drift, prune=prune, as_json=as_json, unchanged=unchanged,
        )
    )  # fmt: skip


@app.command(
    epilog="Example: setpoint apply --repo ./infra --path hosts/web --root /tmp/sandbox "
    "--state /tmp/sp-state\n\nExit status: 0 converged, 1 otherwise."
)
def apply(
    config: ConfigOpt = None,
    repo: RepoOpt = None,
    ref: RefOpt = "main",
    path: PathOpt = ".",
    stack: StackOpt = "default",
    root: RootOpt = None,
    state: StateOpt = None,
    drift: DriftOpt = "revert",
    prune: PruneOpt = True,
    as_json: JsonOpt = False,
    unchanged: UnchangedOpt = False,
) -> None:
    """Run one reconcile pass; exit 0 when the host has converged, 1 otherwise."""
    raise typer.Exit(
        one_shot(
            dry_run=False, config=config, repo=repo, ref=ref, path=path, stack=stack, root=root,
            state=state, drift=drift, prune=prune, as_json=as_json, unchanged=unchanged,
        )
    )  # fmt: skip


@app.command(
    epilog="Example: setpoint agent --repo https://git.example.org/ops/infra.git "
    "--path hosts/web --interval 30"
)
def agent(
    config: ConfigOpt = None,
    repo: RepoOpt = None,
    ref: RefOpt = "main",
    path: PathOpt = ".",
    stack: StackOpt = "default",
    root: RootOpt = None,
    state: StateOpt = None,
    interval: Annotated[
        float, typer.Option(help="Seconds between polls of the source (±10% jitter).")
    ] = 60.0,
    resync: Annotated[float, typer.Option(help="Seconds between full drift checks.")] = 300.0,
    drift: DriftOpt = "revert",
    prune: PruneOpt = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
    log_format: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--log-format",
            help="text or json (one JSON object per line). Default: logFormat: in the config, "
            "else text.",
        ),
    ] = None,
    listen: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--listen",
            help="HOST:PORT of the HTTP API (GET /status, POST /sync, POST /hooks/git); "
            "port 0 picks a free one; 'off': no HTTP listener (status from the state dir, "
            "no sync). Default: listen: in the config, else 127.0.0.1:9090.",
        ),
    ] = None,
    webhook_secret_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--webhook-secret-file",
            help="File holding the webhook secret (GitHub/GitLab/X-Setpoint-Signature). "
            "Without one, POST /hooks/git refuses every call.",
        ),
    ] = None,
) -> None:
    """Run the loop: poll, reconcile new revisions, resync against drift, retry with back-off."""
    import asyncio

    from setpoint.api.auth import check_startup  # no FastAPI: `listen: off` stays light
    from setpoint.engine.agent import Agent
    from setpoint.engine.controller import Controller
    from setpoint.obs import logs

    if log_format not in (None, "text", "json"):
        raise _fail(SetpointError(f"--log-format {log_format!r}: give text or json"))
    logs.setup(log_level, log_format or "text")
    try:
        cfg = _config(config, repo, ref, path, stack, root, state, interval, resync, drift, prune)
        cfg = _agent_overrides(cfg, listen, webhook_secret_file)
        if log_format is None and cfg.log_format != "text":
            logs.setup(log_level, cfg.log_format)
        check_startup(cfg)
        secret = _read_secret(cfg.webhook_secret_file)
        ctl = Controller(cfg)
        ctl.lock_state()
    except SetpointError as exc:
        raise _fail(exc) from None

    # The agent logs events (setpoint.obs.logs), one line each; plans stay in the journal.
    try:
        asyncio.run(Agent(ctl, webhook_secret=secret, api=cfg.api_on).run())
    finally:
        ctl.close()


def _agent_overrides(cfg: AgentConfig, listen: str | None, secret_file: Path | None) -> AgentConfig:
    from setpoint.config import AGENT_LISTEN_RE

    update: dict[str, object] = {}
    if listen is not None:
        if not re.match(AGENT_LISTEN_RE, listen):
            raise SetpointError(
                f"--listen {listen!r}: give HOST:PORT, e.g. 127.0.0.1:9090, or off"
            )
        update["listen"] = listen
    if secret_file is not None:
        update["webhook_secret_file"] = secret_file.resolve()
    return cfg.model_copy(update=update) if update else cfg


def _read_secret(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise SetpointError(f"cannot read the webhook secret file {path}: {exc.strerror}") from exc
    if not secret:
        raise SetpointError(f"the webhook secret file {path} is empty")
    return secret


@app.command(
    epilog="Example: setpoint sync web --state /var/lib/setpoint\n\n"
    "Exit status: 0 converged, 1 otherwise (or no agent running)."
)
def sync(
    stack: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(help="The stack to sync (default: every stack)."),
    ] = None,
    state: Annotated[Path, typer.Option("--state", help="The running agent's state dir.")] = Path(
        "/var/lib/setpoint"
    ),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the pass.")] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Ask the running agent for an immediate fetch and full pass; print its outcome."""
    from setpoint.cli_api import agent_without_api, running_agent

    client = running_agent(state)
    pid = agent_without_api(state) if client is None else None
    if pid is not None:
        raise _fail(
            SetpointError(
                f"the agent running in {state} (pid {pid}) has no HTTP listener (listen: "
                "off), so it cannot be asked to sync; it polls its sources on its own. To "
                "sync on demand, run it with listen: HOST:PORT (or --listen 127.0.0.1:0)"
            )
        )
    if client is None or client.token is None:
        raise _fail(
            SetpointError(
                f"no running agent found in {state}; start `setpoint agent --state "
                f"{state}` first (its HTTP API must be on)"
            )
        )
    try:
        answer = client.call("POST", "/sync", {"stack": stack}, timeout=timeout)
    except SetpointError as exc:
        raise _fail(SetpointError(str(exc).replace("refused", "refused the sync", 1))) from None
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        for r in answer["results"]:
            state_word = "converged" if r.get("converged") else "NOT converged"
            rev = (r.get("revision") or "(none)")[:12]
            typer.echo(f"stack {r['stack']}: {state_word} at {rev}")
            for key in ("errors",):
                for line in r.get(key) or []:
                    typer.echo(f"  error: {line}")
            for o in r.get("resources") or []:
                if o.get("state") != "in_sync":
                    typer.echo(f"  {o.get('state')}: {o.get('id')}")
    raise typer.Exit(0 if answer.get("converged") else 1)


def _db(state: Path) -> StateDB:
    from setpoint.state import StateDB

    if not (state / "setpoint.db").exists():
        raise _fail(
            SetpointError(f"no setpoint state in {state} (has an agent run with --state {state}?)")
        )
    return StateDB(state)


@app.command(epilog="Example: setpoint status --state /var/lib/setpoint --json")
def status(
    state: Annotated[Path, typer.Option("--state", help="The agent's state dir.")] = Path(
        "/var/lib/setpoint"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Show each stack's conditions, revisions and resource counts."""
    from setpoint.cli_fast import status_command

    raise typer.Exit(status_command(state, as_json))


@app.command(epilog="Example: setpoint history --state /var/lib/setpoint --stack web -n 50")
def history(
    state: Annotated[Path, typer.Option("--state", help="The agent's state dir.")] = Path(
        "/var/lib/setpoint"
    ),
    stack: Annotated[Optional[str], typer.Option("--stack", help="Only this stack.")] = None,  # noqa: UP045
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many entries.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Show the journal: revisions, applies, drift found and reverted, failures, with times."""
    from setpoint.cli_api import journal_query, running_agent
    from setpoint.cli_output import print_history
    from setpoint.state import JournalEntry
    from setpoint.state.retention import Trimmed, last_trim

    client = running_agent(state)
    entries: list[JournalEntry] | None = None
    trimmed: Trimmed | None = None
    if client is not None:  # the running agent's journal; the state dir if it cannot answer
        try:
            page = client.call("GET", journal_query(stack, limit))
            entries = [
                JournalEntry(
                    ts=d["ts"], stack=d["stack"], event=d["event"], revision=d["revision"],
                    resource=d["resource"], message=d["message"], detail=d["detail"], id=d["id"],
                    count=d.get("count", 1), last_at=d.get("lastAt"),
                )
                for d in reversed(page["entries"])
            ]  # fmt: skip
            trimmed = Trimmed(**page["trimmed"]) if page.get("trimmed") else None
        except (SetpointError, KeyError, TypeError) as exc:
            typer.echo(f"warning: {exc}; reading the state dir instead", err=True)
    if entries is None:
        db = _db(state)
        try:
            entries = db.history(stack=stack, limit=limit)
            trimmed = db.use(last_trim)
        finally:
            db.close()
    if as_json:
        typer.echo(json.dumps([e.__dict__ for e in entries], indent=2, default=str))
    else:
        print_history(entries, trimmed)


@app.command(epilog="Example: setpoint logs web --state /var/lib/setpoint -f")
def logs(
    service: Annotated[str, typer.Argument(help="The Service's name (metadata.name).")],
    state: Annotated[Path, typer.Option("--state", help="The agent's state dir.")] = Path(
        "/var/lib/setpoint"
    ),
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many lines to show.")] = 100,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep showing new output.")
    ] = False,
) -> None:
    """Show a service's output (stdout and stderr), from its rotated logs in the state dir."""
    from setpoint.providers.services.service_proc import tail_logs

    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    try:
        found = tail_logs(state, service, lines, follow, write)
    except KeyboardInterrupt:
        return
    except OSError as exc:
        raise _fail(SetpointError(f"cannot read the logs of {service}: {exc}")) from None
    if not found:
        raise _fail(SetpointError(f"no logs for service {service!r} in {state}/services"))


def _register_extra() -> None:
    from setpoint.cli_fleet import bootstrap, facts
    from setpoint.cli_forget import EPILOG, forget

    app.command(epilog=EPILOG)(forget)
    app.command(epilog="Example: setpoint facts --config /etc/setpoint/config.yaml")(facts)
    app.command(
        epilog="Example: setpoint bootstrap --repo https://git.example/infra.git "
        "--labels role=web,env=prod"
    )(bootstrap)


_register_extra()


def _register_writeback() -> None:
    from setpoint.cli_writeback import register

    register(app)


_register_writeback()


def _register_fleetbus() -> None:
    # setpoint fleet status|watch|rollout, setpoint relay (nats is imported when one runs)
    from setpoint.cli_fleetbus import fleet_app, register
    from setpoint.cli_rollout import register as register_rollout

    register_rollout(fleet_app)
    register(app)


_register_fleetbus()

app.add_typer(secrets_app, name="secrets")  # setpoint secrets encrypt|decrypt


def main() -> None:
    app()


if __name__ == "__main__":
    main()
