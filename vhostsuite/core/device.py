"""The contract between the vhost-user core and a device.

A device is plain Python. It says what it offers (features, config space) and names one
handler per queue; it never sees sockets, ring layout or ring loops. The core pops chains,
calls the queue's handler with each, and writes, pushes and notifies what the handler
returns:

* ``None``: done; the chain goes back with what the handler wrote into it (``chain.written``);
* bytes-like: the core writes it at the start of the writable part and returns the chain;
* :data:`PENDING`: the chain stays *in flight*; the device answers it later, once, with
  ``ctx.complete(queue, chain, response)`` (a GPU command waiting for QEMU's display, an
  input buffer waiting for events).

Errors: a handler raises :class:`~vhostsuite.errors.RingError` for a chain the guest got
wrong (the core marks the device broken: NEEDS_RESET, the err eventfd); any other exception
is a bug, logged by the core, which marks the device broken too. Devices contain no error
policy of their own for chains.

In-flight chains and ring stops: what is in flight is always the newest chains popped, so
GET_VRING_BASE (and new memory or features, a reset) can report a base that does not count
them (QEMU's virtqueue_rewind for in-flight requests): after the ring starts again they are
popped again and answered then, exactly once. That takes two rules, which the core enforces
(breaking one is a device bug: the queue is marked broken):

* on a queue that is not ``serial``, once a chain is pending every chain after it is pending
  too (input's event buffers); a serial queue pops nothing while one is pending (GPU control);
* pending chains are completed in the order they were popped.

A completion that comes for a chain the core no longer holds (its ring stopped or reset) is
ignored. Pending handlers therefore must not have done anything the guest can observe before
they complete, unless the device completes them when the queue stops
(:meth:`Device.queue_stopping`: a GPU's fenced 3D commands, which ran before their fence).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Sequence

from . import logger

#: typing.TYPE_CHECKING without importing typing: this module is on every program's start-up
#: path (``--print-capabilities`` included), and typing costs ~5 ms there.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from .loop import Loop
    from .memory import GuestMemory, Region
    from .ring import Chain


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


#: A handler's answer for a chain it will complete later with ``ctx.complete``.
PENDING = _Pending()

#: What a queue handler returns.
Response = bytes | bytearray | memoryview | _Pending | None
Handler = Callable[["Chain"], Response]


class QueueSpec(namedtuple("QueueSpec", "name handler serial batch_end", defaults=(False, None))):
    """One virtqueue of a device: its *name*, the *handler* (a :data:`Handler`) the core hands
    each chain to, and *serial*: True when a pending chain holds the queue (nothing more is
    popped until it completes), for queues whose commands must run in order; False (the
    default) when the core keeps popping meanwhile.

    *batch_end*, if given, is called without arguments after each batch of chains the core
    popped and handed to *handler* in one go, before the core notifies the driver of them:
    where a device sends what it gathered over the batch (the GPU's display messages, in one
    system call) and forgets what was true only for the chains of that batch (they were all
    available when the batch was popped). (A named tuple, not a dataclass: importing
    dataclasses costs every program ~8 ms at start-up.)"""

    __slots__ = ()


if TYPE_CHECKING:  # the contract, for type checkers; Connection provides it

    class DeviceContext(Protocol):
        """What the core offers a device."""

        loop: Loop
        #: Guest memory, for devices that keep guest addresses (e.g. a GPU resource's backing pages).
        mem: GuestMemory

        def complete(self, queue: int, chain: Chain, response: Response = None) -> bool:
            """Answer an in-flight *chain* of *queue*; False (and nothing written) if the core no
            longer holds it because its ring stopped or was reset meanwhile."""

        def hold(self, queue: int) -> None:
            """Pop nothing more from *queue* until :meth:`release` (chains stay in the ring)."""

        def release(self, queue: int) -> None:
            """Undo :meth:`hold`; what is available is handled on the next turn."""

        def config_changed(self) -> bool:
            """Tell the front-end the config space changed (needs BACKEND_REQ); False if it can't be sent."""


#: A device-specific vhost-user request: (payload, fds) -> None; it owns the fds it keeps
#: (it removes them from the list); raise ValueError to refuse the message.
RequestHandler = Callable[[bytes, list[int]], None]


class Device:
    """Base class of every device. Subclasses set the class attributes and ``queues``."""

    #: The vhost-user backend type of the capabilities JSON (vhost-user.json's VHostUserBackendType).
    backend_type: str = ""
    #: Virtio device id (virtio_ids.h).
    virtio_id: int = 0
    #: The largest queue size the device accepts in SET_VRING_NUM.
    max_queue_size: int = 1024
    #: Device-specific virtio feature bits (the core adds VERSION_1, INDIRECT_DESC, EVENT_IDX, bit 30).
    device_features: int = 0

    def __init__(self) -> None:
        self.log = logger.get(f"vhostsuite.{self.backend_type or 'device'}")
        self.ctx: DeviceContext | None = None
        self.acked_features = 0
        #: The device's queues, in virtqueue index order.
        self.queues: tuple[QueueSpec, ...] = ()
        #: Device-specific vhost-user requests (e.g. GPU_SET_SOCKET), by request id.
        self.requests: dict[int, RequestHandler] = {}

    # -- set-up -----------------------------------------------------------------
    def attach(self, ctx: DeviceContext) -> None:
        """Called once the front-end connected."""
        self.ctx = ctx

    def set_features(self, features: int) -> None:
        """The features the driver acked (device bits and transport bits)."""
        self.acked_features = features

    def get_config(self, offset: int, size: int) -> bytes:
        """*size* bytes of config space from *offset*. Raise ValueError to refuse."""
        raise ValueError("this device has no config space")

    def set_config(self, offset: int, data: bytes) -> None:
        raise ValueError("this device's config space is read-only")

    # -- running ----------------------------------------------------------------
    def memory_removed(self, regions: Sequence[Region]) -> None:
        """The front-end removed *regions* (REM_MEM_REG, a new SET_MEM_TABLE without them):
        drop every reference kept into them; ``ctx.mem`` is the memory that remains."""

    def queue_stopping(self, index: int) -> None:
        """Queue *index* is about to stop with chains in flight (GET_VRING_BASE, new memory or
        features): complete now, with ``ctx.complete``, those that must not run again; what is
        still in flight afterwards is rewound and popped again later."""

    def queue_stopped(self, index: int) -> None:
        """Queue *index* stopped (GET_VRING_BASE, reset, broken): the core dropped its in-flight
        chains; forget any the device kept for completing later."""

    def reset(self) -> None:
        """Return to the state right after start-up (RESET_DEVICE, status 0, RESET_OWNER)."""

    def close(self) -> None:
        """The process is ending: release host resources."""


DeviceFactory = Callable[[], Device]
