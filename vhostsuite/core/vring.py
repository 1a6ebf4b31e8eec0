"""One virtqueue as the core drives it: the front-end's vring state, the ring, the queue's
run loop with its budget, and the chains in flight.

The way through: a kick (or SET_VRING_KICK, an enable, a restart) runs the queue: it pops
chains, hands each to the device's handler for the queue, writes and pushes what the
handler answered, calls the queue's ``batch_end`` (if any), and notifies once for the
batch. It pops at most :data:`BUDGET_CHAINS` chains or :data:`BUDGET_BYTES` bytes of chain
buffers per turn of the event loop, then yields (the loop serves the vhost-user socket,
other queues and timers) and goes on at the next turn. A driver that keeps its avail index
ahead of us therefore costs a bounded slice of every turn, never the whole process.

The rules for chains in flight are in :mod:`vhostsuite.core.device`: they are the newest
chains popped and are completed in pop order, so a stop (GET_VRING_BASE, new memory, new
features, a reset) rewinds the base past them and they are popped again, never answered
twice or lost.
"""

from __future__ import annotations

from collections import deque

from . import logger
from .device import PENDING, QueueSpec, Response
from .errors import GuestMemoryError, RingError
from .loop import Loop, signal_eventfd
from .memory import close_fds
from .ring import Chain, Virtqueue
from .virtio import ring_sizes

#: typing.TYPE_CHECKING without importing typing (every start pays for it otherwise).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from .device import Device
    from .memory import GuestMemory
    from .protocol import VringAddr

log = logger.get("vhostsuite.vring")

#: Chains popped per queue per turn of the loop. Chosen by measurement (a guest flooding rng's
#: 256-entry queue with 512-byte chains): 4 -> 173 k chains/s, slowest vhost-user answer 2 ms;
#: 16 -> 223 k/s, 4 ms; 64 -> 334 k/s, 5.5 ms; 256 -> 269 k/s, 19 ms. 64 also keeps a kick's
#: batch whole for the drivers we serve (GPU: 16-command kicks; input: 4..64 buffers).
BUDGET_CHAINS = 64
#: Bytes of chain buffers (readable + writable) handled per queue per turn (at least one chain).
BUDGET_BYTES = 1 << 20


class Vring:
    """Queue *index*: what the front-end set up, and the core's run loop for it.

    *owner* is the connection: it provides the guest memory, the negotiated EVENT_IDX bit,
    and the broken-device policy (:meth:`~vhostsuite.connection.Connection.mark_broken`).
    """

    def __init__(self, index: int, spec: QueueSpec, loop: Loop, owner: VringOwner) -> None:
        self.index = index
        self.spec = spec
        self.loop = loop
        self.owner = owner
        # -- what the front-end set
        self.num = 0
        self.addr: VringAddr | None = None
        self.base = 0
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.started = False
        self.enabled = False
        # -- the core's state
        self.broken = False
        self._held = False
        self.vq: Virtqueue | None = None
        #: Popped chains waiting for the device (PENDING), in pop order: always the newest popped.
        self.inflight: deque[Chain] = deque()
        self._scheduled = False
        self._notify_scheduled = False

    # -- state ---------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """A device asked for no pops (``ctx.hold``): a run in progress stops after its chain."""
        return self._held

    @held.setter
    def held(self, value: bool) -> None:
        self._held = value
        if self.vq is not None:
            self.vq.paused = value

    def _drop_ring(self) -> None:
        """Forget the ring; a run in progress stops without pushing its chain."""
        if self.vq is not None:
            self.vq.detached = True
            self.vq = None

    def live(self) -> Virtqueue | None:
        """The ring if it may be processed now (started, enabled, mapped, not broken)."""
        if not (self.started and self.enabled) or self.broken:
            return None
        if self.vq is None and not self._materialize():
            return None
        return self.vq

    def _materialize(self) -> bool:
        mem = self.owner.mem
        if self.addr is None or self.num == 0 or len(mem) == 0:
            return False
        dsize, asize, usize = ring_sizes(self.num)
        try:
            self.vq = Virtqueue(
                mem,
                self.num,
                mem.uva_view(self.addr.desc_user_addr, dsize),
                mem.uva_view(self.addr.avail_user_addr, asize),
                mem.uva_view(self.addr.used_user_addr, usize),
                self.base,
                self.owner.event_idx,
            )
            self.vq.paused = self._held
        except (GuestMemoryError, RingError) as e:
            self.owner.mark_broken(f"queue {self.index}: {e}", self.index)
            return False
        return True

    def detach(self) -> None:
        """Drop the ring (stop, new memory or features): the base no longer counts the chains in
        flight, so they are popped again from the next ring; the device forgets them."""
        if self.vq is not None:
            if self.inflight:
                before = len(self.inflight)
                self.owner.device.queue_stopping(self.index)
                if len(self.inflight) < before and self.vq is not None:
                    self.notify()  # now: the ring goes before a scheduled notify would run
            if self.vq is not None:
                self.base = (self.vq.last_avail_idx - len(self.inflight)) & 0xFFFF
            self._drop_ring()
        self._forget_inflight()

    def _forget_inflight(self) -> None:
        if self.inflight:
            self.inflight.clear()
            self.owner.device.queue_stopped(self.index)

    def stop(self) -> int:
        """GET_VRING_BASE: stop the ring; the base to report."""
        self.detach()
        self.started = False
        self.set_kick(None)
        return self.base

    def break_(self) -> None:
        """The guest broke this queue: nothing more is popped or pushed until a reset."""
        self.broken = True
        self._drop_ring()
        self._forget_inflight()
        if self.err_fd is not None:
            signal_eventfd(self.err_fd)
        if self.kick_fd is not None:
            self.loop.remove_reader(self.kick_fd)

    def close(self) -> None:
        """Reset or hang-up: drop everything, close the fds."""
        self._drop_ring()
        self._forget_inflight()
        self.set_kick(None)
        close_fds([fd for fd in (self.call_fd, self.err_fd) if fd is not None])
        self.call_fd = self.err_fd = None

    def set_kick(self, fd: int | None) -> None:
        if self.kick_fd is not None:
            self.loop.remove_reader(self.kick_fd)
            close_fds([self.kick_fd])
        self.kick_fd = fd
        if fd is not None:
            try:
                # Edge-triggered: each kick is an event, and the eventfd is never read (its
                # counter can't reach its 2**64 - 2 limit at any rate a guest can kick).
                self.loop.add_reader(fd, self._on_kick, edge=True)
            except OSError as e:  # e.g. a regular file, which epoll refuses (EPERM)
                self.kick_fd = None
                close_fds([fd])
                raise ValueError(f"queue {self.index}: the kick fd can't be waited on: {e.strerror}") from None

    # -- running -------------------------------------------------------------------------
    def _on_kick(self) -> None:
        self.started = True
        self.run()

    def schedule(self) -> None:
        """Run the queue at the end of this turn of the loop (once, however often asked)."""
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._scheduled_run)

    def _scheduled_run(self) -> None:
        self._scheduled = False
        self.run()

    def run(self) -> None:
        """One turn: pop up to the budget, hand each chain to the device, push, notify once.

        The compiled ring's ``serve`` does the per-chain work (pop, call the handler, write and
        push its answer); it hands back a PENDING chain, which waits in flight. A queue that
        is not serial goes on popping behind it, every chain after it pending too.
        """
        vq = self.vq
        if vq is None or not self.enabled or self.broken or not self.started:
            vq = self.live()  # the checks of live() above, in place for a live ring: every run passes here
            if vq is None:
                return
        if self._held or (self.spec.serial and self.inflight):
            return
        handled = 0
        pushed = False
        failed: str | None = None
        try:
            if not self.inflight:
                handled, pushed, chain, response = vq.serve(self.spec.handler, BUDGET_CHAINS, BUDGET_BYTES)
                if chain is not None:
                    if response is not PENDING:
                        raise TypeError(f"a handler answered with {type(response).__name__}")
                    self.inflight.append(chain)
                    if not self.spec.serial and not self._held and handled < BUDGET_CHAINS:
                        handled += self._run_pending(vq, BUDGET_CHAINS - handled)
                elif self.vq is vq and not self._held and vq.pending():
                    self.schedule()  # the budget is spent and more waits: the next turn, after everyone else's
            else:
                handled = self._run_pending(vq, BUDGET_CHAINS)
        except RingError as e:
            failed = f"queue {self.index}: {e}"
        except Exception as e:
            log.exception("device failed on queue %d (%s)", self.index, self.spec.name)
            failed = f"queue {self.index}: internal error {e!r}"
        if (handled or failed) and self.spec.batch_end is not None:
            try:
                self.spec.batch_end()
            except Exception as e:
                log.exception("device failed at the end of a batch on queue %d (%s)", self.index, self.spec.name)
                self.owner.mark_broken(f"queue {self.index}: internal error {e!r}", self.index)
        if failed is not None:
            self.owner.mark_broken(failed, self.index)
            return
        if pushed:
            vq = self.vq  # notify() in place (this run started the queue)
            if vq is not None and self.call_fd is not None and vq.need_notify():
                signal_eventfd(self.call_fd)

    def _run_pending(self, vq: Virtqueue, budget: int) -> int:
        """Chains popped behind a pending one on a queue that is not serial: each must be
        pending too (a stop rewinds past them all). How many were handed to the device."""
        handler = self.spec.handler
        batch = vq.pop_batch(budget, BUDGET_BYTES)
        for n, chain in enumerate(batch, 1):
            response = handler(chain)
            if self.vq is not vq:
                return n
            if response is not PENDING:
                # A stop would rewind past the pending chain and pop this one again.
                raise RuntimeError("a chain answered while an earlier one is pending (make the queue serial)")
            self.inflight.append(chain)
            if self._held:
                vq.unpop(len(batch) - n)
                return n
        if batch and vq.pending():
            self.schedule()
        return len(batch)

    def complete(self, chain: Chain, response: Response) -> bool:
        """Answer the oldest in-flight *chain*; False if the core no longer holds it."""
        inflight = self.inflight
        if not inflight or inflight[0] is not chain:
            if any(c is chain for c in inflight):
                raise RuntimeError(f"queue {self.index}: chain {chain.head} completed before older pending ones")
            return False  # its ring stopped or was reset meanwhile: it will be popped again
        if response is PENDING:
            raise RuntimeError(f"queue {self.index}: chain {chain.head} completed with PENDING")
        inflight.popleft()
        try:
            _answer(self.vq, chain, response)
        except RingError as e:
            self.owner.mark_broken(f"queue {self.index}: {e}", self.index)
            return True
        if not self._notify_scheduled:
            # One interrupt for everything completed during this turn.
            self._notify_scheduled = True
            self.loop.call_soon(self._scheduled_notify)
        if self.spec.serial and not inflight:
            self.schedule()
        return True

    def _scheduled_notify(self) -> None:
        self._notify_scheduled = False
        self.notify()

    def notify(self) -> None:
        """Interrupt the driver if the ring's suppression rules want it."""
        vq = self.vq
        if vq is None or not self.started or self.call_fd is None:
            return
        if vq.need_notify():
            signal_eventfd(self.call_fd)


def _answer(vq: Virtqueue, chain: Chain, response: Response) -> None:
    if response is not None:
        chain.write(response)
    vq.push(chain)


if TYPE_CHECKING:  # the contract, for type checkers; Connection provides it

    class VringOwner(Protocol):
        """What a :class:`Vring` needs from its connection."""

        mem: GuestMemory
        #: VIRTIO_RING_F_EVENT_IDX was negotiated.
        event_idx: bool
        device: Device

        def mark_broken(self, reason: str, index: int | None = None) -> None: ...
