"""The ``facts`` and ``bootstrap`` commands: a host's labels, and a new host in one command.

Registered on the ``setpoint`` app by :mod:`setpoint.cli`. ``bootstrap`` writes the
minimal local config (sources, labels, fleet) and, on a systemd host, the unit
file :func:`unit_text` makes (the same text as ``deploy/systemd/setpoint.service``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from setpoint.config import DEFAULT_STATE, ConfigError, load_config
from setpoint.facts import gather
from setpoint.model.errors import SetpointError
from setpoint.render.selector import parse_labels

DEFAULT_CONFIG = Path("/etc/setpoint/config.yaml")
UNIT_NAME = "setpoint.service"
SYSTEMD_UNITS = Path("/etc/systemd/system")


def unit_text(program: str, config: Path) -> str:
    """The systemd unit that runs the agent (KillMode=process: services outlive restarts)."""
    return _UNIT.format(program=program, config=config)


_UNIT = """\
# setpoint agent as a system service. Install:
#   install -m 0644 deploy/systemd/setpoint.service /etc/systemd/system/
#   systemctl daemon-reload && systemctl enable --now setpoint
# The agent runs as root: it writes declared files anywhere under `root:` and starts
# services as their `user:`. Everything below is inherited by the services it supervises,
# so only options that neither the agent nor a supervised service can trip over are set.
[Unit]
Description=setpoint GitOps agent (pulls the desired state from Git, reverts drift)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={program} agent --config {config}
Restart=always
RestartSec=5
# Stop or restart the agent only: the services it supervises keep running and the next
# agent adopts them (pid + start time, through a pidfd). The default (control-group)
# would kill every supervised service with it.
KillMode=process
# SIGTERM finishes the pass under way, which may wait for a rollout's readiness
# (readyTimeout, 60 s by default, and as long again for a rollback).
TimeoutStopSec=150
# No sandboxing options, on purpose: supervised services are the agent's children and
# inherit all of them. NoNewPrivileges would still let root drop to a service's user, but
# a service could no longer run setuid programs (sudo, ping, postdrop); ProtectSystem /
# ProtectHome / ProtectKernelModules hide or freeze paths manifests may declare;
# ProtectClock breaks an NTP service, PrivateTmp/PrivateDevices change the services' /tmp
# and /dev, RestrictSUIDSGID refuses a declared 4755 file, SystemCallArchitectures=native
# a 32-bit service. Confine each service by its own `user:` instead.
# With KillMode=process the services stay in this unit's cgroup: `systemctl status
# setpoint` lists them, and its resource accounting includes them.

[Install]
WantedBy=multi-user.target
"""


def facts(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Also show this config's labels.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the host's labels and the facts setpoint gathers (selectors match both)."""
    labels: dict[str, str] = {}
    host = None
    if config is not None:
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        labels, host = dict(cfg.labels), cfg.host
    found = gather(host)
    if as_json:
        typer.echo(json.dumps({"labels": labels, "facts": found}, indent=2))
        return
    for key, value in sorted(labels.items()):
        typer.echo(f"{key}={value}")
    for key, value in sorted(found.items()):
        typer.echo(f"{key}={value}    (fact)")


def bootstrap(
    repo: Annotated[str, typer.Option("--repo", help="Git URL of the fleet repository.")],
    labels: Annotated[
        str, typer.Option("--labels", help="This host's labels: role=web,env=prod.")
    ] = "",
    ref: Annotated[str, typer.Option("--ref", help="Branch, tag or commit to follow.")] = "main",
    fleet: Annotated[
        str, typer.Option("--fleet", help="The Fleet file, relative to the repository root.")
    ] = "fleet.yaml",
    state: Annotated[Path, typer.Option("--state", help="The agent's state dir.")] = Path(
        DEFAULT_STATE
    ),
    root: Annotated[Path, typer.Option("--root", help="Target root (default /).")] = Path("/"),
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Where to write the config.")
    ] = DEFAULT_CONFIG,
    print_unit: Annotated[
        bool, typer.Option("--print-unit", help="Print the systemd unit instead of installing it.")
    ] = False,
    unit_dir: Annotated[
        Path, typer.Option("--unit-dir", help="Where systemd units go.")
    ] = SYSTEMD_UNITS,
    start: Annotated[
        bool, typer.Option("--start/--no-start", help="Enable and start the unit (systemd).")
    ] = True,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing config file.")
    ] = False,
) -> None:
    """Install this host: write its config (repository, labels, fleet) and its systemd unit."""
    try:
        host_labels = parse_labels(labels)
        doc = _bootstrap_config(repo, ref, fleet, host_labels, state, root)
        if config.exists() and not force:
            raise SetpointError(f"{config} exists; pass --force to replace it")
        config.parent.mkdir(parents=True, exist_ok=True)
        _write(config, yaml.safe_dump(doc, sort_keys=False), 0o600)
        load_config(config)  # what we wrote must be a config the agent accepts
    except (ValueError, SetpointError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {config}")
    program = shutil.which("setpoint") or f"{sys.executable} -m setpoint"
    unit = unit_text(program, config.resolve())
    if print_unit or not Path("/run/systemd/system").is_dir():
        if not print_unit:
            typer.echo("no systemd here: run the agent with your service manager, e.g.:")
            typer.echo(f"  {program} agent --config {config}")
            typer.echo(f"a systemd unit for it ({UNIT_NAME}):")
        typer.echo(unit, nl=False)
        return
    path = unit_dir / UNIT_NAME
    _write(path, unit, 0o644)
    typer.echo(f"wrote {path}")
    if start:
        for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", UNIT_NAME]):
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                typer.echo(f"error: {' '.join(cmd)} failed: {done.stderr.strip()}", err=True)
                raise typer.Exit(1)
        typer.echo(f"started {UNIT_NAME}")


def _bootstrap_config(
    repo: str, ref: str, fleet: str, labels: dict[str, str], state: Path, root: Path
) -> dict[str, Any]:
    return {
        "root": str(root.absolute()),
        "state": str(state.absolute()),
        "sources": [{"name": "fleet", "url": repo, "ref": ref}],
        "labels": labels,
        "fleet": {"source": "fleet", "path": fleet},
    }


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
