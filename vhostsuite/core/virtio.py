"""Virtio constants, named as in the Linux UAPI headers they come from.

This is the one place Python code takes them from; ``_ring.pyx`` reads the same
values straight from ``<linux/virtio_ring.h>`` and a unit test checks both agree.
"""

import struct

# <linux/virtio_ids.h>
VIRTIO_ID_RNG = 4
VIRTIO_ID_GPU = 16
VIRTIO_ID_INPUT = 18

# <linux/virtio_config.h>: device status bits
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

# <linux/virtio_config.h>: transport feature bits
VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35
VIRTIO_F_RING_RESET = 40

# <linux/virtio_ring.h>
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_USED_F_NO_NOTIFY = 1
VRING_AVAIL_F_NO_INTERRUPT = 1
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29

#: struct vring_desc (addr, len, flags, next) and struct vring_used_elem (id, len), little-endian.
VRING_DESC = struct.Struct("<QIHH")
VRING_USED_ELEM = struct.Struct("<II")
VRING_DESC_SIZE = VRING_DESC.size
VRING_USED_ELEM_SIZE = VRING_USED_ELEM.size

#: The largest split virtqueue the virtio spec allows.
VIRTQUEUE_MAX_SIZE = 32768


def bit(n: int) -> int:
    """Feature mask of feature bit *n*."""
    return 1 << n
