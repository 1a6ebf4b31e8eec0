"""Virtio constants, named as in the Linux UAPI headers they come from.

This is the one place Python code takes them from, the split-ring layout included; ``_ring.pyx``
reads the constants and struct sizes straight from ``<linux/virtio_ring.h>`` and a unit test
checks both agree.
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

# The split virtqueue layout (virtio 1.x, 2.7; struct vring_avail and struct vring_used): the
# words both sides touch, as u16 word indices into each area (one load or store each).
AVAIL_FLAGS = 0  #: VRING_AVAIL_F_NO_INTERRUPT
AVAIL_IDX = 1  #: the driver's free-running index
AVAIL_RING = 2  #: ring[0]; ring[num] is used_event
USED_FLAGS = 0  #: VRING_USED_F_NO_NOTIFY
USED_IDX = 1  #: the device's free-running index
#: Byte offset of used ring[0] (struct vring_used_elem); avail_event follows ring[num - 1].
USED_RING_OFFSET = 4


def used_event_word(num: int) -> int:
    """The u16 word of the avail area that holds used_event (EVENT_IDX)."""
    return AVAIL_RING + num


def avail_event_word(num: int) -> int:
    """The u16 word of the used area that holds avail_event (EVENT_IDX)."""
    return (USED_RING_OFFSET + VRING_USED_ELEM_SIZE * num) // 2


def ring_sizes(num: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, avail ring and used ring of a queue of *num* entries
    (the avail/used sizes include the trailing used_event/avail_event word)."""
    return (
        VRING_DESC_SIZE * num,
        2 * (used_event_word(num) + 1),
        2 * (avail_event_word(num) + 1),
    )


def bit(n: int) -> int:
    """Feature mask of feature bit *n*."""
    return 1 << n
