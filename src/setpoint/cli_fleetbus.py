"""The fleet bus commands: ``setpoint fleet status|watch`` and ``setpoint relay``.

Registered on the ``setpoint`` app by :mod:`setpoint.cli` (:func:`register`). Nothing
here imports ``nats`` until a command runs, so ``setpoint --help`` and every other
command stay as quick as before. :data:`fleet_app` is the ``setpoint fleet`` group:
other fleet commands (a rollout's view) add themselves to it.

Examples::

    setpoint fleet status --config /etc/setpoint/config.yaml --selector role=web
    setpoint fleet watch --config /etc/setpoint/config.yaml
    setpoint relay --nats nats://nats.example:4222 --listen 0.0.0.0:9091 \\
        --webhook-secret-file /etc/setpoint/webhook-secret
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from setpoint.config import LISTEN_RE, ConfigError, NatsConfig, load_config
from setpoint.model.errors import SetpointError

if TYPE_CHECKING:
    from setpoint.fleetbus.status import Entry
    from setpoint.render.selector import Selector

fleet_app = typer.Typer(
    help="The fleet as NATS sees it (needs nats: in the config).", no_args_is_help=True
)

ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--config", "-c", help="A config file whose nats: names the server."),
]
NatsOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--nats", help="The NATS server URL (instead of, or over, the config's)."),
]
SelectorOpt = Annotated[
    str, typer.Option("--selector", "-l", help="Only hosts whose labels match: role=web,wave=1.")
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _nats_config(config: Path | None, url: str | None) -> NatsConfig:
    if config is not None:
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        if cfg.nats is None and url is None:
            raise _fail(f"{config}: no nats: section; add nats: {{url: nats://HOST:4222}} "
                        "or pass --nats URL")
        if cfg.nats is not None:
            return cfg.nats if url is None else cfg.nats.model_copy(update={"url": url})
    if url is None:
        raise _fail("give --config FILE (with a nats: section) or --nats URL")
    try:
        return NatsConfig.model_validate({"url": url})
    except ValueError as exc:
        raise _fail(f"--nats {url!r}: give nats://HOST:PORT or tls://HOST:PORT ({exc})") from None


def _selector(text: str) -> Selector | None:
    from setpoint.fleetbus.table import parse_selector

    if not text.strip():
        return None
    try:
        return parse_selector(text)
    except ValueError as exc:
        raise _fail(str(exc)) from None


async def _connect(cfg: NatsConfig) -> Any:
    import nats

    from setpoint.fleetbus.client import connect_options, redact

    opts = connect_options(cfg, "setpoint-cli") | {"allow_reconnect": False}
    try:
        return await nats.connect(**opts)
    except Exception as exc:
        raise SetpointError(f"cannot connect to NATS at {redact(cfg.url)}: {exc or type(exc)}; "
                            "is the server running and the URL right?") from None


async def _bucket(nc: Any) -> Any:
    import nats.js.errors

    from setpoint.fleetbus.status import BUCKET

    try:
        return await nc.jetstream().key_value(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        return None


async def _status(cfg: NatsConfig) -> list[Entry]:
    from setpoint.fleetbus.status import read_all

    nc = await _connect(cfg)
    try:
        kv = await _bucket(nc)
        return [] if kv is None else list((await read_all(nc.jetstream())).values())
    finally:
        await nc.close()


@fleet_app.command(
    epilog="Example: setpoint fleet status --config /etc/setpoint/config.yaml -l role=web --json"
)
def status(
    config: ConfigOpt = None,
    nats_url: NatsOpt = None,
    selector: SelectorOpt = "",
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of rows.")] = False,
) -> None:
    """The hosts x stacks table: revision, Ready, drifted, failed, age of the last heartbeat."""
    from setpoint.fleetbus.table import fleet_rows, format_table

    cfg = _nats_config(config, nats_url)
    sel = _selector(selector)
    try:
        entries = asyncio.run(_status(cfg))
    except SetpointError as exc:
        raise _fail(str(exc)) from None
    rows = fleet_rows(entries, time.time(), sel)
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        typer.echo(format_table(rows))


async def _watch(cfg: NatsConfig, sel: Selector | None, as_json: bool) -> None:
    from setpoint.fleetbus.status import decode_entry, read_all
    from setpoint.fleetbus.table import fleet_rows, format_row, format_table, row_of

    nc = await _connect(cfg)
    try:
        kv = await _bucket(nc)
        while kv is None:  # no agent has reported yet: wait for the first
            await asyncio.sleep(2)
            kv = await _bucket(nc)
        entries = await read_all(nc.jetstream())
        rows = fleet_rows(entries.values(), time.time(), sel)
        if not as_json:
            typer.echo(format_table(rows))
        shown = {(r.host, r.stack): r for r in rows}

        def emit(e: Entry | None, key: tuple[str, str], now: float) -> None:
            if e is None:
                shown.pop(key, None)
                line = {"host": key[0], "stack": key[1], "removed": True}
                typer.echo(json.dumps(line) if as_json else f"{key[0]}  {key[1]}  (removed)")
                return
            row = row_of(e, now)
            if shown.get(key) == row or (sel is not None and not sel.matches(e.labels)):
                return
            shown[key] = row
            stamp = time.strftime("%H:%M:%S", time.localtime(now))
            typer.echo(json.dumps(row.to_json()) if as_json
                       else f"{stamp}  " + "  ".join(format_row(row)).rstrip())

        watcher = await kv.watchall(include_history=False)
        import nats.errors

        while True:
            try:
                upd = await watcher.updates(timeout=1.0)
            except nats.errors.TimeoutError:
                upd = None
            now = time.time()
            if upd is not None:
                deleted = upd.operation is not None or not upd.value
                e = None if deleted else decode_entry(upd.value)
                if e is not None:
                    entries[upd.key] = e
                    emit(e, (e.host, e.stack), now)
                elif deleted and upd.key in entries:
                    old = entries.pop(upd.key)
                    emit(None, (old.host, old.stack), now)
            # Heartbeats that stop produce no update: an entry turns unknown with time.
            for e in entries.values():
                r = shown.get((e.host, e.stack))
                if r is not None and (r.ready is None) != e.stale(now):
                    emit(e, (e.host, e.stack), now)
    finally:
        await nc.close()


@fleet_app.command(epilog="Example: setpoint fleet watch --config /etc/setpoint/config.yaml")
def watch(
    config: ConfigOpt = None,
    nats_url: NatsOpt = None,
    selector: SelectorOpt = "",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON row per change.")] = False,
) -> None:
    """The fleet table, then one line per change as it happens (Ctrl-C stops)."""
    cfg = _nats_config(config, nats_url)
    sel = _selector(selector)
    try:
        asyncio.run(_watch(cfg, sel, as_json))
    except KeyboardInterrupt:
        return
    except SetpointError as exc:
        raise _fail(str(exc)) from None


def relay(
    nats_url: Annotated[str, typer.Option("--nats", help="The NATS server URL.")],
    webhook_secret_file: Annotated[
        Path, typer.Option("--webhook-secret-file", help="File holding the webhook secret.")
    ],
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to take webhooks on.")
    ] = "127.0.0.1:9091",
    creds_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--creds-file", help="NATS credentials (.creds) of the relay's user."),
    ] = None,
    tls_ca_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--tls-ca-file", help="CA that signed the NATS server's certificate."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
) -> None:
    """Take the forge's push webhooks and publish each new commit to the fleet over NATS."""
    import logging

    from setpoint.fleetbus.relay import Relay, serve

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if not re.match(LISTEN_RE, listen):
        raise _fail(f"--listen {listen!r}: give HOST:PORT, e.g. 0.0.0.0:9091")
    try:
        secret = webhook_secret_file.read_bytes().strip()
    except OSError as exc:
        raise _fail(f"cannot read the webhook secret file {webhook_secret_file}: "
                    f"{exc.strerror}") from None
    if not secret:
        raise _fail(f"the webhook secret file {webhook_secret_file} is empty")
    data: dict[str, Any] = {"url": nats_url}
    if creds_file is not None:
        data["credsFile"] = str(creds_file.resolve())
    if tls_ca_file is not None:
        data["tls"] = {"caFile": str(tls_ca_file.resolve())}
    try:
        cfg = NatsConfig.model_validate(data)
    except ValueError as exc:
        raise _fail(f"--nats {nats_url!r}: give nats://HOST:PORT or tls://HOST:PORT "
                    f"({exc})") from None
    host, _, port = listen.rpartition(":")
    asyncio.run(serve(Relay(cfg, secret), host.strip("[]"), int(port)))


def register(app: typer.Typer) -> None:
    app.add_typer(fleet_app, name="fleet")
    app.command(
        epilog="Example: setpoint relay --nats nats://nats.example:4222 --listen 0.0.0.0:9091 "
        "--webhook-secret-file /etc/setpoint/webhook-secret"
    )(relay)
