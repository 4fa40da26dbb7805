"""One NATS connection that outlives the server: connect, reconnect forever, back off.

Used by :class:`setpoint.fleetbus.bus.FleetBus` (in the agent's asyncio loop),
``setpoint relay`` and ``setpoint fleet status|watch``. nats-py retries a lost
connection a few times a second apart (a server restarting; subscriptions are kept);
after that, and when the first connect fails, :meth:`BusClient.run` connects anew
with capped, jittered back-off, forever, and ``on_connect`` re-subscribes. The agent
never waits for NATS: drift correction and polling go on while the bus is down.

Credentials (a ``.creds`` file: user JWT + nkey seed) and TLS files are read by
nats-py at each connect; their contents and the URL's password are never logged.

Example::

    client = BusClient(cfg.nats, name="setpoint-agent web-1", on_connect=subscribe)
    await client.run(stop_event)       # returns when stop_event is set
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from setpoint.config import NatsConfig
from setpoint.model.errors import SetpointError

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger("setpoint.fleetbus")

CONNECT_TIMEOUT = 2.0
QUICK_RETRIES = 3
RECONNECT_WAIT = 1.0  # between nats-py's own reconnect attempts (it adds jitter)
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


def redact(url: str) -> str:
    """The server URL(s) without user:password (for log lines and errors)."""
    return re.sub(r"(://)[^/@,]*@", r"\1***@", url)


def servers(cfg: NatsConfig) -> list[str]:
    return [u.strip() for u in cfg.url.split(",") if u.strip()]


def tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    """The TLS context for ``tls:`` (or a tls:// URL); None for plain nats://."""
    wants_tls = cfg.tls is not None or any(u.startswith("tls://") for u in servers(cfg))
    if not wants_tls:
        return None
    ca = cfg.tls.ca_file if cfg.tls is not None else None
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cfg.tls is not None and cfg.tls.cert_file is not None and cfg.tls.key_file:
            ctx.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise SetpointError(
            f"nats.tls: cannot load the CA or client certificate: {exc}; check caFile, "
            "certFile and keyFile in the config"
        ) from exc
    return ctx


def connect_options(cfg: NatsConfig, name: str) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` (raises SetpointError for unreadable files)."""
    opts: dict[str, Any] = {
        "servers": servers(cfg),
        "name": name,
        "connect_timeout": CONNECT_TIMEOUT,
        "allow_reconnect": True,
        # A few quick tries (a server restarting); then nats-py closes the connection and
        # BusClient.run reconnects with capped, jittered back-off, forever. (With -1,
        # nats-py would retry every second without back-off, the first connect included:
        # a recovering server would meet the whole fleet every second.)
        "max_reconnect_attempts": QUICK_RETRIES,
        "reconnect_time_wait": RECONNECT_WAIT,
        # An agent acts on others' notices, never on its own (it acted already).
        "no_echo": True,
        "ping_interval": 20,
        "max_outstanding_pings": 3,
    }
    ctx = tls_context(cfg)
    if ctx is not None:
        opts["tls"] = ctx
    if cfg.creds_file is not None:
        try:
            with open(cfg.creds_file, "rb"):
                pass
        except OSError as exc:
            raise SetpointError(
                f"nats.credsFile {cfg.creds_file}: cannot read it: {exc.strerror}; give the "
                "path of the .creds file of this host's NATS user"
            ) from exc
        opts["user_credentials"] = str(cfg.creds_file)
    return opts


class BusClient:
    """A NATS connection kept up for as long as :meth:`run` runs."""

    def __init__(
        self,
        cfg: NatsConfig,
        name: str,
        *,
        on_connect: Callable[[Client], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.on_connect = on_connect
        self.rng = rng or random.Random()
        self.nc: Client | None = None
        self.connects = 0
        self.error: str | None = None  # the last connection problem (for status)
        self._up = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            return False
        return self.connected

    async def run(self, stop: asyncio.Event) -> None:
        import nats
        import nats.errors

        failures = 0
        closed = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            self.error = _describe(exc)
            log.debug("nats %s: %s", redact(self.cfg.url), self.error)

        async def on_disconnect() -> None:
            if not stop.is_set():
                log.warning("nats %s: disconnected; reconnecting", redact(self.cfg.url))

        async def on_reconnect() -> None:
            self.error = None
            log.info("nats %s: reconnected", redact(self.cfg.url))

        async def on_closed() -> None:
            closed.set()

        try:
            while not stop.is_set():
                try:
                    opts = connect_options(self.cfg, self.name)
                    nc = await nats.connect(
                        **opts,
                        error_cb=on_error,
                        disconnected_cb=on_disconnect,
                        reconnected_cb=on_reconnect,
                        closed_cb=on_closed,
                    )
                except (OSError, TimeoutError, SetpointError, nats.errors.Error) as exc:
                    failures += 1
                    self.error = _describe(exc)
                    # Once loud, then quiet: a host whose NATS is down keeps working.
                    level = logging.WARNING if failures == 1 else logging.DEBUG
                    log.log(level, "nats %s: cannot connect (%s); retrying with back-off, "
                            "polling goes on meanwhile", redact(self.cfg.url), self.error)
                    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures - 1, 10))
                    await _wait(stop, delay * self.rng.uniform(0.8, 1.0))
                    continue
                failures = 0
                self.error = None
                self.nc = nc
                self.connects += 1
                closed.clear()
                log.info("nats %s: connected", redact(self.cfg.url))
                try:
                    if self.on_connect is not None:
                        await self.on_connect(nc)
                except Exception as exc:  # a refused subscription, a JetStream error
                    self.error = _describe(exc)
                    log.warning("nats %s: setting up after connect failed: %s; retrying",
                                redact(self.cfg.url), self.error)
                    await _close(nc)
                    self.nc = None
                    await _wait(stop, BACKOFF_BASE * 4)
                    continue
                self._up.set()
                stops = asyncio.ensure_future(stop.wait())
                ends = asyncio.ensure_future(closed.wait())
                try:
                    await asyncio.wait([stops, ends], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stops.cancel()
                    ends.cancel()
                self._up.clear()
                if not stop.is_set():
                    # nats-py gave up reconnecting: start again, after a pause.
                    failures += 1
                    self.nc = None
                    log.warning("nats %s: connection lost; reconnecting with back-off",
                                redact(self.cfg.url))
                    await _wait(stop, BACKOFF_BASE * self.rng.uniform(0.8, 1.0))
        finally:
            nc_ = self.nc
            self.nc = None
            if nc_ is not None:
                await _close(nc_)


async def _close(nc: Client) -> None:
    try:
        await asyncio.wait_for(nc.close(), timeout=2.0)
    except Exception:  # closing a broken connection: nothing left to save
        log.debug("nats: close failed", exc_info=True)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact(text)[:300]
