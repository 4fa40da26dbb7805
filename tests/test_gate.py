"""The pass gate: one holder at a time, waiters served by priority then arrival, waits outside."""

from __future__ import annotations

import threading

from setpoint.engine.gate import FULL, PARTIAL, RESUME, PassGate


def test_waiters_are_served_by_priority_then_arrival() -> None:
    gate = PassGate()
    gate.acquire()
    order: list[str] = []
    threads = []
    for name, prio in [("full-1", FULL), ("partial-1", PARTIAL), ("full-2", FULL),
                       ("resume", RESUME), ("partial-2", PARTIAL)]:  # fmt: skip
        queued = threading.Event()  # only waited on, as a short sleep that returns early

        def run(name: str = name, prio: int = prio) -> None:
            with gate.hold(prio):
                order.append(name)

        t = threading.Thread(target=run)
        t.start()
        threads.append(t)
        # Queued in this order: wait until the waiter is in the gate's queue.
        while len(gate._queue) < len(threads):
            queued.wait(0.001)
    gate.release()
    for t in threads:
        t.join(10)
    assert order == ["resume", "partial-1", "partial-2", "full-1", "full-2"]


def test_a_wait_outside_lets_another_holder_in_and_takes_the_gate_back() -> None:
    gate = PassGate()
    inside, other_ran = threading.Event(), threading.Event()
    seen: list[bool] = []

    def waiter() -> None:
        with gate.hold():
            with gate.outside():  # e.g. a rollout's readiness wait
                inside.set()
                seen.append(other_ran.wait(10))
            seen.append(gate.mine)  # taken back after the wait

    t = threading.Thread(target=waiter)
    t.start()
    assert inside.wait(10)
    with gate.hold(PARTIAL):  # a drift revert of another stack runs meanwhile
        other_ran.set()
    t.join(10)
    assert not t.is_alive()
    assert seen == [True, True]
    assert not gate.mine
