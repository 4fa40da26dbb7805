"""The rollout gate against a real nats-server (no agents): status snapshots, maxParallel
leases (create-if-absent, compare-and-set renewal, max_age expiry), and the store down."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.js.client import JetStreamContext

from nats_support import (
    NatsServer,
    nats_server,  # noqa: F401  (the fixture)
)
from setpoint.fleetbus.bus import status_bucket
from setpoint.fleetbus.rollout import RolloutGate, holders, lease_bucket, snapshot
from setpoint.fleetbus.status import Entry, status_key
from setpoint.render.fleet import Rollout

REV = "a" * 40
ONE_AT_A_TIME = Rollout.model_validate(
    {"healthyFor": 0, "waves": [{"name": "all", "maxParallel": 1}]}
)
CANARY_FIRST = Rollout.model_validate(
    {
        "healthyFor": 1,
        "waves": [
            {"name": "canary", "selector": {"matchLabels": {"canary": "true"}}},
            {"name": "rest"},
        ],
    }
)


def run(server: NatsServer, body: Callable[[Any, JetStreamContext], Awaitable[None]]) -> None:
    async def main() -> None:
        nc = await nats.connect(server.url)
        try:
            await body(nc, nc.jetstream())
        finally:
            await nc.close()

    asyncio.run(main())


def gate(nc: Any, host: str, rollout: Rollout, *, labels: dict[str, str] | None = None,
         ttl: float = 30.0) -> RolloutGate:
    return RolloutGate(
        asyncio.get_running_loop(),
        lambda: nc,
        host,
        labels or {},
        lambda stack: rollout,
        lambda stack: None,
        heartbeat=30,
        lease_ttl=ttl,
        timeout=2.0,
    )


async def put_status(nc: Any, host: str, labels: dict[str, str], **kw: Any) -> None:
    kv = await status_bucket(nc)
    e = Entry(host=host, stack="app", labels=labels, heartbeat=time.time(), **kw)
    await kv.put(status_key(host, "app"), e.encode())


async def poll(pred: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_snapshot_is_complete_every_time(nats_server: NatsServer) -> None:  # noqa: F811
    async def body(nc: Any, js: JetStreamContext) -> None:
        await status_bucket(nc)
        assert await snapshot(js, "app") == []  # the bucket exists, nothing in it
        for i in range(60):
            await put_status(nc, f"host-{i}.example", {"n": str(i)}, revision=REV)
        await put_status(nc, "other", {}, revision=REV)  # another stack's key shape below
        kv = await status_bucket(nc)
        await kv.put(status_key("x", "db"), Entry(host="x", stack="db").encode())
        # Hosts keep writing (heartbeats) while the gate reads: every read is still whole.
        stop = asyncio.Event()

        async def heartbeat(i: int) -> None:
            while not stop.is_set():
                await put_status(nc, f"host-{i}.example", {"n": str(i)}, revision=REV)
                await asyncio.sleep(0.01)

        writers = [asyncio.create_task(heartbeat(i)) for i in range(0, 60, 3)]
        try:
            sizes = [len(await snapshot(js, "app")) for _ in range(100)]
        finally:
            stop.set()
            await asyncio.gather(*writers)
        assert sizes == [61] * 100
        got = await snapshot(js, "app")
        assert {h.host for h in got} >= {"host-0.example", "host-59.example"}

    run(nats_server, body)


def test_max_parallel_lease_is_exclusive_released_and_adopted(
    nats_server: NatsServer,  # noqa: F811
) -> None:
    async def body(nc: Any, js: JetStreamContext) -> None:
        await status_bucket(nc)
        a, b = gate(nc, "a", ONE_AT_A_TIME), gate(nc, "b", ONE_AT_A_TIME)
        va, _ = await a.check("app", REV, ONE_AT_A_TIME)
        assert va.allowed and va.detail["slot"] == 0, va
        vb, _ = await b.check("app", REV, ONE_AT_A_TIME)
        assert not vb.allowed
        assert vb.reason == "waiting for a slot in wave all: 1 of 1 (maxParallel) held by a"
        held = await holders(js, "app")
        assert [v["host"] for v in held.values()] == ["a"]
        # Host a's agent restarts mid-apply: the new process takes its own slot back.
        a2 = gate(nc, "a", ONE_AT_A_TIME)
        va2, _ = await a2.check("app", REV, ONE_AT_A_TIME)
        assert va2.allowed and va2.detail["slot"] == 0
        await a2.release("app")
        vb, _ = await b.check("app", REV, ONE_AT_A_TIME)
        assert vb.allowed and vb.detail["slot"] == 0
        info = await js.stream_info(f"KV_{lease_bucket('app')}")
        assert info.config.max_age == 30.0  # the lease TTL is the bucket's max_age
        for g in (a, a2, b):
            await g.close()

    run(nats_server, body)


def test_a_dead_holder_frees_its_slot_when_max_age_expires_it(
    nats_server: NatsServer,  # noqa: F811
) -> None:
    async def body(nc: Any, js: JetStreamContext) -> None:
        await status_bucket(nc)
        a, b = gate(nc, "a", ONE_AT_A_TIME, ttl=2), gate(nc, "b", ONE_AT_A_TIME, ttl=2)
        assert (await a.check("app", REV, ONE_AT_A_TIME))[0].allowed
        # a's renewer keeps the lease past its TTL while a lives.
        await asyncio.sleep(3)
        assert not (await b.check("app", REV, ONE_AT_A_TIME))[0].allowed
        await a.close()  # a dies: no more renewals, no release
        t0 = time.monotonic()

        async def b_gets_it() -> bool:
            return (await b.check("app", REV, ONE_AT_A_TIME))[0].allowed

        await poll(b_gets_it, 10, "the dead host's slot to expire")
        assert time.monotonic() - t0 <= 2 + 1.5  # within the TTL (and a check's time)
        await b.close()

    run(nats_server, body)


def test_canary_gate_follows_live_status_and_unreachable_holds(
    nats_server: NatsServer,  # noqa: F811
) -> None:
    async def body(nc: Any, js: JetStreamContext) -> None:
        await put_status(nc, "c1", {"canary": "true"}, revision="b" * 40, ready=True,
                         healthy=True, ready_since=time.time() - 100)
        r = gate(nc, "r1", CANARY_FIRST)
        v, _ = await r.check("app", REV, CANARY_FIRST)
        assert not v.allowed and "c1 at bbbbbbbbbbbb, not yet at aaaaaaaaaaaa" in v.reason
        await put_status(nc, "c1", {"canary": "true"}, revision=REV, ready=True, healthy=True,
                         ready_since=time.time())
        seen: list[Any] = []

        async def soaking() -> bool:
            seen[:] = await r.check("app", REV, CANARY_FIRST)
            return "for 0.0 s of 1" in seen[0].reason or "for 0.1 s of 1" in seen[0].reason

        await poll(soaking, 10, "the canary's new status seen live")
        at = seen[1]
        assert at is not None
        await asyncio.sleep(max(0.0, at - time.time()))
        view = r.views["app"]
        assert (await r.check("app", REV, CANARY_FIRST))[0].allowed
        # The view followed the writes on its subscription: one complete read in all;
        # once the host may move it stops following.
        assert view.reads == 1 and "app" not in r.views
        # A canary that stalls afterwards is seen too (for a host that has not moved yet).
        await put_status(nc, "c1", {"canary": "true"}, revision=REV, stalled=True,
                         reason="RolledBack", fetched=REV)
        r2 = gate(nc, "r2", CANARY_FIRST)
        v, _ = await r2.check("app", REV, CANARY_FIRST)
        assert not v.allowed and "c1 Stalled at aaaaaaaaaaaa (RolledBack)" in v.reason, v
        # Without a connection the answer is: wait.
        down = gate(None, "r3", CANARY_FIRST)
        v, _ = await down.check("app", REV, CANARY_FIRST)
        assert not v.allowed and "unreachable" in v.reason and v.detail == {"state": "unreachable"}
        for g in (r, r2):
            await g.close()

    run(nats_server, body)


def test_store_stopped_means_wait(nats_server: NatsServer) -> None:  # noqa: F811
    async def body(nc: Any, js: JetStreamContext) -> None:
        await status_bucket(nc)
        r = gate(nc, "r1", CANARY_FIRST)
        nats_server.stop()
        v, _ = await r.check("app", REV, CANARY_FIRST)
        assert not v.allowed and "unreachable" in v.reason
        assert json.dumps(v.detail) == '{"state": "unreachable"}'

    run(nats_server, body)
