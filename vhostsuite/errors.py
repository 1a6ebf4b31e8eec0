"""Exceptions shared by the pure-Python and the Cython implementations."""


class GuestMemoryError(ValueError):
    """An address range that is not inside one mapped guest region."""


class RingError(Exception):
    """A malformed virtqueue: the guest broke the ring protocol.

    A device that sees one marks itself broken (virtio NEEDS_RESET) and stops
    processing that queue; the process keeps serving.
    """
