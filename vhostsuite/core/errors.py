"""Exceptions shared by the pure-Python and the Cython implementations, and how a program ends."""

#: Exit statuses of every program (QEMU's back-end program conventions).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class StartupError(Exception):
    """Something the program needs can't be had: exit early with status 1 and this message."""


class GuestMemoryError(ValueError):
    """An address range that is not inside one mapped guest region."""


class RingError(Exception):
    """A malformed virtqueue: the guest broke the ring protocol.

    A device that sees one marks itself broken (virtio NEEDS_RESET) and stops
    processing that queue; the process keeps serving.
    """
