"""The core's queue runner on a real ring: budget, in-flight chains, rewinding at a stop, and
the two rules a device must keep for commands in flight (vhostsuite.core.device)."""

from __future__ import annotations

import os

import pytest

from vhostsuite.core.device import PENDING, QueueSpec
from vhostsuite.core.loop import Loop
from vhostsuite.core.ring import Virtqueue
from vhostsuite.core.vring import BUDGET_CHAINS, Vring
from vhostsuite.testing.ringutil import GuestRing


class Owner:
    """What a Vring needs from its connection, recording what the error policy was asked."""

    event_idx = False

    def __init__(self, g: GuestRing) -> None:
        self.mem = g.mem
        self.broken: list[str] = []
        self.stopped: list[int] = []
        self.device = self
        #: What the device does when a queue is about to stop (Device.queue_stopping).
        self.on_stopping = None

    def queue_stopping(self, index: int) -> None:
        if self.on_stopping is not None:
            self.on_stopping(index)

    def queue_stopped(self, index: int) -> None:
        self.stopped.append(index)

    def mark_broken(self, reason: str, index: int | None = None) -> None:
        self.broken.append(reason)


def make(handler, serial: bool, num: int = 16, batch_end=None):  # noqa: ANN001, ANN201
    g = GuestRing(num)
    owner = Owner(g)
    r = Vring(0, QueueSpec("q", handler, serial=serial, batch_end=batch_end), Loop(), owner)
    r.vq = g.queue(Virtqueue)
    r.started = r.enabled = True
    return g, owner, r


def test_serial_queue_waits_behind_a_pending_chain_and_rewinds_at_a_stop() -> None:
    seen = []

    def handler(chain):  # noqa: ANN001, ANN202
        seen.append(chain.head)
        return PENDING if len(seen) == 1 else b"ok"

    g, owner, r = make(handler, serial=True)
    heads = [g.add_chain([b"c"], [8]).head for _ in range(3)]
    r.run()
    assert seen == heads[:1] and list(r.inflight) and g.used_idx() == 0
    assert r.stop() == 0, "the pending chain is not counted"  # a VM stop
    assert owner.stopped == [0]
    # the ring again, from the reported base: the same chain comes first, once
    seen.clear()
    r.vq = g.queue(Virtqueue, last_avail_idx=0)
    r.started = True
    r.run()
    first = r.inflight[0]
    assert r.complete(first, b"late") is True
    r.run()  # the rest, behind it
    assert seen == [heads[0], heads[1], heads[2]]
    assert [g.used_elem(i)[0] for i in range(3)] == heads and owner.broken == []


def test_a_device_completes_what_must_not_run_again_when_the_queue_stops() -> None:
    """A GPU's fenced 3D command already ran before it went pending: at a stop the device
    answers it (queue_stopping) instead of letting it be popped and run again; the base
    counts it, the driver is notified, and what is still pending is rewound as before."""
    g, owner, r = make(lambda chain: PENDING, serial=False)
    heads = [g.add_chain([b"c"], [8]).head for _ in range(3)]
    notified = []
    r.call_fd = 99
    r.notify = lambda: notified.append(len(r.inflight))  # type: ignore[method-assign]
    r.run()
    assert len(r.inflight) == 3
    owner.on_stopping = lambda index: r.complete(r.inflight[0], b"done")
    assert r.stop() == 1, "the base is past the answered chain, before the two still pending"
    assert g.used_idx() == 1 and g.used_elem(0)[0] == heads[0]
    assert notified == [2], "the driver hears of it before the ring goes"
    assert owner.stopped == [0] and owner.broken == []


def test_a_completion_for_a_stopped_ring_is_ignored() -> None:
    g, owner, r = make(lambda chain: PENDING, serial=True)
    g.add_chain([b"c"], [8])
    r.run()
    old = r.inflight[0]
    r.stop()
    assert r.complete(old, b"late") is False
    assert g.used_idx() == 0


def test_mixing_pending_and_answered_on_a_non_serial_queue_is_a_device_bug() -> None:
    answers = iter([PENDING, b"now"])
    g, owner, r = make(lambda chain: next(answers), serial=False)
    g.add_chain([b"c"], [8])
    g.add_chain([b"c"], [8])
    r.run()
    assert len(owner.broken) == 1 and "answered while an earlier one is pending" in owner.broken[0]
    assert g.used_idx() == 0


def test_completing_out_of_pop_order_is_a_device_bug() -> None:
    g, owner, r = make(lambda chain: PENDING, serial=False)
    for _ in range(2):
        g.add_chain([], [8])
    r.run()
    first, second = r.inflight
    with pytest.raises(RuntimeError, match="before older pending ones"):
        r.complete(second, b"x")
    assert r.complete(first, b"a") and r.complete(second, b"b")
    assert g.used_idx() == 2


def test_one_turn_pops_at_most_the_budget() -> None:
    calls = []
    g, owner, r = make(lambda chain: calls.append(chain.head), serial=False, num=256)
    for _ in range(BUDGET_CHAINS + 10):
        g.add_chain([], [8])
    r.run()
    assert len(calls) == BUDGET_CHAINS
    assert r._scheduled  # noqa: SLF001 - the rest goes on the next turn
    r._scheduled_run()  # noqa: SLF001
    assert len(calls) == BUDGET_CHAINS + 10


def test_batch_end_runs_once_per_batch_before_the_driver_is_notified() -> None:
    """A device gathers work over a batch and ends it in batch_end: once per batch handled
    (budget-sized batches, a batch cut short by a pending chain), never for an empty run, and
    before the interrupt, so what it sends there is out before the driver sees the answers."""
    events: list[str] = []
    answers = iter([b"a"] * (BUDGET_CHAINS + 1) + [PENDING])

    def handler(chain):  # noqa: ANN001, ANN202
        events.append("chain")
        return next(answers)

    call = os.eventfd(0, os.EFD_NONBLOCK)

    def interrupted() -> bool:
        try:
            return os.eventfd_read(call) > 0
        except BlockingIOError:
            return False

    def run() -> None:
        r.run()
        if interrupted():
            events.append("notify")

    # at its batch's end the driver has not been interrupted yet
    g, owner, r = make(handler, serial=True, num=256,
                       batch_end=lambda: events.append("end, interrupted" if interrupted() else "end"))  # fmt: skip
    r.call_fd = call
    for _ in range(BUDGET_CHAINS + 3):
        g.add_chain([b"c"], [8])
    run()
    assert events == ["chain"] * BUDGET_CHAINS + ["end", "notify"]
    events.clear()
    run()  # one answered, then one pending: the batch ends there
    assert events == ["chain", "chain", "end", "notify"]
    events.clear()
    run()  # serial and pending: nothing popped, no batch
    assert events == [] and owner.broken == []
    os.close(call)


def test_a_failing_batch_end_is_a_device_bug() -> None:
    def end() -> None:
        raise KeyError("oops")

    g, owner, r = make(lambda chain: b"ok", serial=False, batch_end=end)
    g.add_chain([b"c"], [8])
    r.run()
    assert owner.broken and "internal error" in owner.broken[0]
