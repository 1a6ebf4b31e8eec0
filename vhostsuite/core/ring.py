"""The ring implementation in use: the compiled ``_ring`` unless it is missing or
``VHOSTSUITE_NO_EXTENSIONS`` is set, then the pure-Python reference.

The reference (``ChainPy``, ``VirtqueuePy``, ``vring_need_event``) is imported only when it is
used: a program on the compiled ring does not pay for loading its twin at every start."""

from __future__ import annotations

from .. import NO_EXTENSIONS
from .virtio import ring_sizes

#: Why the compiled ring could not be used (None: it is in use, or NO_EXTENSIONS asked not to).
IMPORT_ERROR: str | None = None
_compiled = False
if not NO_EXTENSIONS:
    try:
        from ._ring import Chain, Virtqueue

        _compiled = True
    except ImportError as e:  # not built, or built for another interpreter
        IMPORT_ERROR = str(e)
if not _compiled:
    from ._ring_py import Chain, Virtqueue

_REFERENCE = {"ChainPy": "Chain", "VirtqueuePy": "Virtqueue", "vring_need_event": "vring_need_event"}


def __getattr__(name: str) -> object:
    if name in _REFERENCE:
        from . import _ring_py

        value = getattr(_ring_py, _REFERENCE[name])
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ChainPy, VirtqueuePy and vring_need_event are attributes too (above), loaded when asked for.
__all__ = ["Chain", "IMPORT_ERROR", "Virtqueue", "NO_EXTENSIONS", "ring_sizes"]
