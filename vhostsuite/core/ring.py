"""The ring implementation in use: the compiled ``_ring`` unless it is missing or
``VHOSTSUITE_NO_EXTENSIONS`` is set, then the pure-Python reference."""

from .. import NO_EXTENSIONS
from ._ring_py import Chain as ChainPy
from ._ring_py import Virtqueue as VirtqueuePy
from ._ring_py import vring_need_event
from .virtio import ring_sizes

Chain = ChainPy
Virtqueue = VirtqueuePy
#: Why the compiled ring could not be used (None: it is in use, or NO_EXTENSIONS asked not to).
IMPORT_ERROR: str | None = None
if not NO_EXTENSIONS:
    try:
        from ._ring import Chain as ChainC  # noqa: F401
        from ._ring import Virtqueue as VirtqueueC

        Chain = ChainC
        Virtqueue = VirtqueueC
    except ImportError as e:  # not built, or built for another interpreter
        IMPORT_ERROR = str(e)

__all__ = [
    "Chain",
    "ChainPy",
    "IMPORT_ERROR",
    "Virtqueue",
    "VirtqueuePy",
    "NO_EXTENSIONS",
    "ring_sizes",
    "vring_need_event",
]
