"""The ring implementation in use: the compiled ``_ring`` unless it is missing or
``VHOSTSUITE_NO_EXTENSIONS`` is set, then the pure-Python reference."""

from .. import NO_EXTENSIONS
from ._ring_py import Chain as ChainPy
from ._ring_py import Virtqueue as VirtqueuePy
from ._ring_py import vring_need_event
from .virtio import ring_sizes

Chain = ChainPy
Virtqueue = VirtqueuePy
if not NO_EXTENSIONS:
    try:
        from ._ring import Chain as ChainC  # noqa: F401
        from ._ring import Virtqueue as VirtqueueC

        Chain = ChainC
        Virtqueue = VirtqueueC
    except ImportError:  # pragma: no cover - only without a compiler
        pass

__all__ = ["Chain", "ChainPy", "Virtqueue", "VirtqueuePy", "NO_EXTENSIONS", "ring_sizes", "vring_need_event"]
