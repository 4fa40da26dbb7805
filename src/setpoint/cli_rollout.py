"""``setpoint fleet rollout STACK``: where a rollout in waves stands.

Registered on the ``setpoint fleet`` group by :mod:`setpoint.cli` (:func:`register`).
Reads three buckets of the NATS server the config names: the stack's rollout spec
(``setpoint-rollouts``, recorded by the agents), every host's status for the stack
(``setpoint-status``) and the stack's leases (``setpoint-leases-STACK``). ``nats`` is
imported only when the command runs.

Example::

    $ setpoint fleet rollout web --config /etc/setpoint/config.yaml
    stack web: revision 1fd9ce109a1f, healthyFor 60 s
    WAVE    HOST   IN FORCE      STATE                                LEASE
    canary  c1     1fd9ce109a1f  done (Ready at 1fd9ce109a1f)
    rest    r1     38fef03bf7a7  waiting for wave canary              -
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from setpoint.model.errors import SetpointError


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


async def _read(url_cfg: Any, stack: str) -> dict[str, Any]:
    import nats
    import nats.js.errors

    from setpoint.fleetbus.client import connect_options, redact
    from setpoint.fleetbus.rollout import SPEC_BUCKET, holders, snapshot

    opts = connect_options(url_cfg, "setpoint-cli") | {"allow_reconnect": False}
    try:
        nc = await nats.connect(**opts)
    except Exception as exc:
        raise SetpointError(
            f"cannot connect to NATS at {redact(url_cfg.url)}: {exc or type(exc)}; is the "
            "server running and the URL right?"
        ) from None
    try:
        js = nc.jetstream()
        try:
            spec = json.loads((await (await js.key_value(SPEC_BUCKET)).get(stack)).value or b"")
        except (nats.js.errors.NotFoundError, ValueError):
            raise SetpointError(
                f"no rollout is recorded for stack {stack!r}: no agent running it has a Fleet "
                "entry with rollout: (or none has connected to this NATS server yet)"
            ) from None
        try:
            hosts = await snapshot(js, stack)
        except nats.js.errors.NotFoundError:
            hosts = []
        try:
            leases = await holders(js, stack)
        except nats.js.errors.NotFoundError:
            leases = {}
        return {"spec": spec, "hosts": hosts, "leases": leases}
    finally:
        await nc.close()


def rollout_view(stack: str, spec: Any, hosts: list[Any], leases: dict[str, Any],
                 now: float) -> dict[str, Any]:
    """The JSON view: the revision being rolled out, and each wave's hosts and state."""
    from setpoint.fleetbus.waves import host_state, members
    from setpoint.render.fleet import Rollout

    ro = Rollout.model_validate(spec)
    fetched = collections.Counter(h.fetched or h.revision for h in hosts if h.fetched or h.revision)
    target = fetched.most_common(1)[0][0] if fetched else None
    held = {v.get("host"): k for k, v in leases.items()}
    waves = []
    blocked = False
    for i, hs in sorted(members(ro, hosts).items()):
        rows = []
        for h in hs:
            state, words = host_state(h, target or "", ro.healthy_for, now, h.period)
            rows.append({"host": h.host, "revision": h.revision, "fetched": h.fetched,
                         "state": state, "detail": words, "lease": held.get(h.host)})
        done = all(r["state"] == "done" for r in rows)
        stalled = any(r["state"] == "stalled" for r in rows)
        wave_state = ("halted" if stalled else "done" if done
                      else "waiting" if blocked else "in progress")
        blocked = blocked or not done
        waves.append({"wave": ro.wave_name(i), "state": wave_state, "hosts": rows})
    return {"stack": stack, "revision": target, "healthyFor": ro.healthy_for,
            "waves": waves, "leases": leases}


def rollout(
    stack: Annotated[str, typer.Argument(help="The Fleet stack whose rollout to show.")],
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", "-c", help="A config file whose nats: names the server."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The view as JSON.")] = False,
) -> None:
    """Where a rollout in waves stands: waves, hosts, revisions, states, who holds leases."""
    import asyncio

    from setpoint.config import ConfigError, load_config  # pydantic: only when it runs

    if config is None:
        raise _fail("give --config FILE (its nats: section names the server)")
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if cfg.nats is None:
        raise _fail(f"{config}: no nats: section; add nats: {{url: nats://HOST:4222}}")
    try:
        got = asyncio.run(_read(cfg.nats, stack))
        view = rollout_view(stack, got["spec"], got["hosts"], got["leases"], time.time())
    except (SetpointError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    rev = (view["revision"] or "(none)")[:12]
    typer.echo(f"stack {stack}: revision {rev}, healthyFor {view['healthyFor']:g} s")
    lines = [("WAVE", "HOST", "IN FORCE", "STATE", "LEASE")]
    for w in view["waves"]:
        lines.append((w["wave"], "", "", w["state"], ""))
        for r in w["hosts"]:
            lines.append(("", r["host"], (r["revision"] or "(none)")[:12],
                          f"{r['state']}: {r['detail']}", r["lease"] or "-"))
    widths = [max(len(row[i]) for row in lines) for i in range(5)]
    for row in lines:
        typer.echo("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())


def register(group: typer.Typer) -> None:
    """Add ``rollout`` to the ``setpoint fleet`` group."""
    group.command(
        epilog="Example: setpoint fleet rollout web --config /etc/setpoint/config.yaml"
    )(rollout)
