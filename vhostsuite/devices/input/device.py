"""The virtio-input device: config space, the event queue (0) and the status queue (1).

Event delivery
--------------
Events from the source are collected until an EV_SYN/SYN_REPORT closes their batch; the
complete batch then joins the *ready* queue, which goes to the guest one event per
event-queue buffer (``struct virtio_input_event``: le16 type, le16 code, le32 value).
The guest's empty event buffers are commands in flight: the core hands each one over as it
pops it, the device keeps it (PENDING) and completes it with the next ready event. When the
guest has fewer buffers than the ready events need (QEMU >= 9.0 gives the event queue only 4
entries), what fits is delivered and the rest follows, in order, as the guest returns buffers.
Nothing is dropped while the guest keeps reading. Buffers kept across a ring stop are popped
again afterwards (the core rewinds the base past them).

One batch per interrupt: after a batch's SYN_REPORT the device waits for the guest to hand
buffers back (its kick, after reading) before starting the next batch, even with buffers
left, as QEMU's own virtio-input and USB HID (one report per interrupt) do; and while a
backlog drains, batches go at most one per :data:`BACKLOG_GAP` (1 ms, USB HID's 1 kHz polling). Filling every
free buffer across batches instead let a burst outrun a Linux guest's reader under TCG: its
64-event evdev client buffer overflowed (measured: 866 of 2,000 events read, against 2,000 now).

Overflow
--------
What waits for the guest (ready events plus the open batch) is bounded by ``max_pending``
events (default :data:`MAX_PENDING`). When one more event would exceed it, the device
behaves like the kernel's evdev client buffer: every queued, undelivered event is
discarded, a single EV_SYN/SYN_DROPPED is queued in their place, and the events that follow
are discarded up to and including the next SYN_REPORT; delivery then resumes with the next
full batch. An EV_SYN/SYN_DROPPED from the host device itself (the host kernel's buffer
overflowed) is handled the same way, except that complete batches already queued are kept.
A guest reset (status 0, RESET_DEVICE) discards what is queued; a mere queue stop (GET_VRING_BASE)
keeps it. Linux guests' input core ignores SYN_DROPPED; the events after it are consistent
batches.

Status queue
------------
Each buffer the guest sends holds whole ``virtio_input_event``s (Linux sends one per buffer);
at most :data:`MAX_STATUS_EVENTS` are read from one buffer, the rest is ignored (with a warning).
EV_SYN and the EV_LED, EV_SND, EV_REP and EV_FF events of types the device declared go to the
source: the host evdev device gets EV_LED, EV_SND and EV_SYN written to it; the control socket
reports them all. Linux guests also echo every EV_MSC they receive back to the status queue;
such echoes of the device's own event types are ignored silently (writing MSC_SCAN back to a
grabbed device would read back and loop). Other types are logged once and ignored. Buffers
are returned with length 0.

Malformed guest input: an event buffer with fewer than 8 writable bytes, or a status buffer
that is device-writable, is a RingError: the core marks the device broken (NEEDS_RESET); a
status buffer whose length is not a multiple of 8 has its tail ignored (with a warning).
"""

from __future__ import annotations

import struct
import time
from collections import deque

from ...core import logger
from ...core.device import PENDING, Device, QueueSpec, Response
from ...core.errors import RingError
from ...core.guestlog import GuestLog
from ...core.virtio import VIRTIO_ID_INPUT
from . import config as C
from .sources import Event

#: typing.TYPE_CHECKING without importing typing (every start pays for it otherwise).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ...core.ring import Chain
    from .sources import EventSource

log = logger.get("vhostsuite.input")
guest_log = GuestLog(log)

EVENT_QUEUE = 0
STATUS_QUEUE = 1
#: Status event types passed to the source (besides EV_SYN), if the device declares them.
STATUS_TYPES = frozenset({C.EV_LED, C.EV_SND, C.EV_REP, C.EV_FF})
#: Events read from one status-queue buffer (Linux sends one per buffer); the rest is ignored,
#: so what a buffer costs does not depend on the length the guest claims.
MAX_STATUS_EVENTS = 64
#: Default bound on events waiting for the guest.
MAX_PENDING = 8192
#: After a batch the device waits for the guest to return buffers; a driver that returns none
#: (it had buffers left) still gets the next batch after this many seconds.
RESUME_AFTER = 0.02
#: While a backlog drains, batches go out at most this often (a USB HID device polled at 1 kHz
#: sends no more): a guest whose evdev reader is starved on a slow host still keeps up. Measured
#: here under TCG on a loaded host: without it a 2,000-event burst lost 2 to 8 events to the
#: guest's 64-event evdev buffer, old and new core alike. A batch with no backlog goes at once.
BACKLOG_GAP = 0.001

_EVENT = struct.Struct("<HHi")
_SYN_DROPPED: Event = (C.EV_SYN, C.SYN_DROPPED, 0)


class InputDevice(Device):
    backend_type = "input"
    virtio_id = VIRTIO_ID_INPUT
    max_queue_size = 1024

    def __init__(self, source: EventSource, max_pending: int = MAX_PENDING) -> None:
        super().__init__()
        self.queues = (
            QueueSpec("event", self._event_buffer),
            QueueSpec("status", self._status_buffer),
        )
        if max_pending < 2:
            raise ValueError("max_pending must be at least 2")
        self.source = source
        self.desc = source.description
        self.config = ConfigView(self.desc)
        self.max_pending = max_pending
        #: Complete batches waiting for event-queue buffers.
        self.ready: deque[Event] = deque()
        #: The batch being collected (no SYN_REPORT yet).
        self.partial: list[Event] = []
        #: Discarding up to the next SYN_REPORT after an overflow.
        self.skipping = False
        self.delivered = 0
        self.dropped = 0
        self.overflows = 0
        self.status_events = 0
        self._started = False
        #: The guest's empty event buffers, in flight, oldest first.
        self._buffers: deque[Chain] = deque()
        #: Paused after a batch, waiting for the guest's kick (or the fallback timer).
        self._paused = False
        #: When the last batch went out with more waiting behind it (time.monotonic()).
        self._batch_at = 0.0
        self._deliver_scheduled = False
        self._resume_timer: int | None = None
        self._warned: set[str] = set()
        if hasattr(source, "state"):
            source.state = self.state

    # -- Device hooks ---------------------------------------------------------------
    def attach(self, ctx: Any) -> None:
        super().attach(ctx)
        if not self._started:
            self._started = True
            self.source.start(ctx.loop, self.on_events)

    def get_config(self, offset: int, size: int) -> bytes:
        return self.config.read(offset, size)

    def set_config(self, offset: int, data: bytes) -> None:
        self.config.write(offset, data)

    def queue_stopped(self, index: int) -> None:
        if index == EVENT_QUEUE:
            self._buffers.clear()

    def reset(self) -> None:
        if self.ready or self.partial:
            log.info("guest reset: discarding %d queued events", len(self.ready) + len(self.partial))
        self.dropped += len(self.ready) + len(self.partial)
        self.ready.clear()
        self.partial.clear()
        self._buffers.clear()
        self.skipping = False
        self._unpause()
        self.config.write(0, b"\0\0")

    def close(self) -> None:
        self.source.close()

    def state(self) -> dict[str, int]:
        return {
            "pending": len(self.ready) + len(self.partial),
            "delivered": self.delivered,
            "dropped": self.dropped,
            "overflows": self.overflows,
            "status_events": self.status_events,
        }

    # -- events from the source -------------------------------------------------------
    def on_events(self, events: list[Event]) -> None:
        """Queue *events* (in order) and deliver what the guest has room for."""
        ready = self.ready
        partial = self.partial
        limit = self.max_pending
        queued = len(ready) + len(partial)
        for ev in events:
            t, c = ev[0], ev[1]
            if self.skipping:
                self.dropped += 1
                if t == C.EV_SYN and c == C.SYN_REPORT:
                    self.skipping = False
                continue
            if t == C.EV_SYN and c == C.SYN_DROPPED:
                # the host kernel lost events: the open batch is incomplete
                self._drop(keep_ready=True)
                queued = len(ready)
                continue
            if queued >= limit:
                self._drop(keep_ready=False)
                queued = len(ready)
                # resume after the batch this event belongs to
                self.skipping = not (t == C.EV_SYN and c == C.SYN_REPORT)
                self.dropped += 1
                continue
            partial.append(ev)
            queued += 1
            if t == C.EV_SYN and c == C.SYN_REPORT:
                ready.extend(partial)
                partial.clear()
        self._deliver()

    def _drop(self, keep_ready: bool) -> None:
        n = len(self.partial) + (0 if keep_ready else len(self.ready))
        self.dropped += n
        self.overflows += 1
        self.partial.clear()
        if not keep_ready:
            self.ready.clear()
        self.ready.append(_SYN_DROPPED)
        self.skipping = True
        if "overflow" not in self._warned:
            self._warned.add("overflow")
            log.warning(
                "input events overflowed (%d waiting for the guest): %d dropped, SYN_DROPPED sent",
                self.max_pending,
                n,
            )

    # -- the event queue -----------------------------------------------------------------
    def _event_buffer(self, chain: Chain) -> Response:
        """An empty event buffer from the guest: kept until an event is ready for it."""
        if chain.write_size < _EVENT.size:
            raise RingError(f"event queue buffer of {chain.write_size} writable bytes (needs {_EVENT.size})")
        self._buffers.append(chain)
        if self._paused:
            # The guest handed buffers back: its kick after taking the last batch.
            wait = self._batch_at + BACKLOG_GAP - time.monotonic()
            if wait > 0:
                self._resume_in(wait)
                return PENDING
            self._unpause()
        if self.ready and not self._deliver_scheduled:
            # Completed once the core holds it in flight: at the end of this turn.
            self._deliver_scheduled = True
            self.ctx.loop.call_soon(self._scheduled_deliver)
        return PENDING

    def _scheduled_deliver(self) -> None:
        self._deliver_scheduled = False
        self._deliver()

    def _deliver(self) -> None:
        """Fill the buffers in flight with ready events, up to the end of one batch."""
        ready = self.ready
        buffers = self._buffers
        if self._paused or self.ctx is None:
            return
        pack = _EVENT.pack
        complete = self.ctx.complete
        while ready and buffers:
            event = ready.popleft()
            complete(EVENT_QUEUE, buffers.popleft(), pack(*event))
            self.delivered += 1
            if event[0] == C.EV_SYN and event[1] == C.SYN_REPORT and ready:
                # One report per interrupt: the next batch goes out when the guest has taken
                # this one and hands buffers back, even if some are left.
                self._paused = True
                self._batch_at = time.monotonic()
                self._resume_in(RESUME_AFTER)
                break

    def _resume_in(self, delay: float) -> None:
        if self._resume_timer is not None:
            self.ctx.loop.cancel(self._resume_timer)
        self._resume_timer = self.ctx.loop.call_later(delay, self._resume)

    def _unpause(self) -> None:
        self._paused = False
        if self._resume_timer is not None and self.ctx is not None:
            self.ctx.loop.cancel(self._resume_timer)
        self._resume_timer = None

    def _resume(self) -> None:
        """The guest kicked before BACKLOG_GAP was over, or not at all (RESUME_AFTER): the next batch."""
        self._resume_timer = None
        if self._paused:
            self._paused = False
            self._deliver()

    # -- the status queue ---------------------------------------------------------------
    def _status_buffer(self, chain: Chain) -> None:
        """Events the guest writes to the device (LEDs, sounds, ...); returned with length 0."""
        if chain.write_size:
            raise RingError(f"status queue buffer with {chain.write_size} device-writable bytes")
        # Linux sends one event per buffer; more than a batch's worth is a guest making us work.
        data = chain.read(MAX_STATUS_EVENTS * _EVENT.size)
        if chain.read_size > len(data):
            guest_log.warn("status size", "status buffer of %d bytes: only the first %d events read",
                           chain.read_size, MAX_STATUS_EVENTS)  # fmt: skip
        elif len(data) % _EVENT.size:
            guest_log.warn("status size", "status buffer of %d bytes: trailing bytes ignored", len(data))
        out: list[Event] = []
        for i in range(0, len(data) - _EVENT.size + 1, _EVENT.size):
            t, c, v = _EVENT.unpack_from(data, i)
            if t == C.EV_SYN or (t in STATUS_TYPES and t in self.desc.events):
                out.append((t, c, v))
            elif t in self.desc.events and t not in STATUS_TYPES:
                # Linux echoes every EV_MSC (and other pass-to-device events) it receives back
                # on the status queue; passing them on would make a loop with a grabbed device.
                pass
            else:
                guest_log.warn("status type", "guest sent a status event of type %#x the device lacks", t)
        if out:
            self.status_events += len(out)
            self.source.write_status(out)
        return None



class ConfigView(C.ConfigSpace):
    """The config space (kept as a separate name so tests can build one without a device)."""
