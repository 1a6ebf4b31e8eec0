"""The contract between the vhost-user core and a device.

A device is plain Python: it says what it offers (features, config space, queues) and
handles the chains of a queue when the core tells it to. It never sees sockets or ring
layout; it talks to the core through the :class:`DeviceContext` the core hands it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .loop import Loop
    from .memory import GuestMemory
    from .ring import Virtqueue


class DeviceContext(Protocol):
    """What the core offers a device."""

    loop: Loop
    #: Guest memory, for devices that keep guest addresses (e.g. a GPU resource's backing pages).
    mem: GuestMemory

    def queue(self, index: int) -> Virtqueue | None:
        """The ring of queue *index* if it is started, enabled and mapped; else None."""

    def notify(self, index: int) -> None:
        """Interrupt the driver for queue *index* if the ring's suppression rules want it."""

    def mark_broken(self, reason: str, index: int | None = None) -> None:
        """The guest broke the device: set NEEDS_RESET, stop its queues, report on the err fds."""

    def config_changed(self) -> bool:
        """Tell the front-end the config space changed (needs BACKEND_REQ); False if it can't be sent."""


class Device:
    """Base class of every device. Subclasses set the class attributes and override the hooks."""

    #: The vhost-user backend type of the capabilities JSON (vhost-user.json's VHostUserBackendType).
    backend_type: str = ""
    #: Virtio device id (virtio_ids.h).
    virtio_id: int = 0
    num_queues: int = 1
    #: The largest queue size the device accepts in SET_VRING_NUM.
    max_queue_size: int = 1024
    #: Device-specific virtio feature bits (the core adds VERSION_1, INDIRECT_DESC, EVENT_IDX, bit 30).
    device_features: int = 0

    def __init__(self) -> None:
        self.log = logging.getLogger(f"vhostsuite.{self.backend_type or 'device'}")
        self.ctx: DeviceContext | None = None
        self.acked_features = 0

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
    def queue_ready(self, index: int) -> None:
        """Queue *index* can be processed (kick, enable, or restart): handle what is available.

        Pop chains with ``self.ctx.queue(index).pop()``, answer, push; the core notifies after.
        A :class:`~vhostsuite.errors.RingError` raised here marks the device broken.
        """

    def queue_stopped(self, index: int) -> None:
        """Queue *index* was stopped (GET_VRING_BASE): drop references to its chains."""

    def reset(self) -> None:
        """Return to the state right after start-up (RESET_DEVICE, status 0, RESET_OWNER)."""

    def vhost_request(self, request: int, payload: bytes, fds: list[int]) -> bool:
        """A device-specific vhost-user message (e.g. GPU_SET_SOCKET).

        Return True if handled; the device then owns *fds*. Raise ValueError to fail it.
        """
        return False

    def close(self) -> None:
        """The process is ending: release host resources."""


DeviceFactory = Callable[[], Device]
