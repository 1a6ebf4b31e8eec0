"""The vhost-user wire format (QEMU ``docs/interop/vhost-user.rst``): ids, flags, payload layouts.

Pure data: bytes in, values out, and back. No sockets here. All numbers are in the
host's native byte order, as the spec says.
"""

from __future__ import annotations

import struct
from collections import namedtuple


class Numbering:
    """One of the spec's tables of numbers: ``Request.GET_FEATURES`` is the int 1,
    ``Request.name(1)`` is ``"GET_FEATURES"`` and ``Request.names()`` maps every number to its
    name, in order.

    Not :class:`enum.IntEnum`: enum and its class machinery cost ~5 ms of every start of
    Debian 13's Python, and a number that comes off the wire is used as the int it is (an
    unknown one too), only named in a log line."""

    @classmethod
    def names(cls) -> dict[int, str]:
        names = cls.__dict__.get("_names")
        if names is None:
            names = {v: k for k, v in vars(cls).items() if k.isupper() and type(v) is int}
            cls._names = names
        return names

    @classmethod
    def name(cls, value: int) -> str:
        return cls.names().get(value) or f"UNKNOWN({value})"


class Request(Numbering):
    """Front-end to back-end message ids."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43


class BackendRequest(Numbering):
    """Back-end to front-end message ids (on the SET_BACKEND_REQ_FD socket)."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5


class ProtocolFeature(Numbering):
    """``VHOST_USER_PROTOCOL_F_*`` bit numbers."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


#: Virtio feature bit 30: the front-end may use GET/SET_PROTOCOL_FEATURES.
VHOST_USER_F_PROTOCOL_FEATURES = 30

VERSION = 0x1
VERSION_MASK = 0x3
REPLY_FLAG = 0x4
NEED_REPLY_FLAG = 0x8
#: The flags of every reply the back-end sends; QEMU refuses anything else.
REPLY_FLAGS = VERSION | REPLY_FLAG

VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 0x100

#: Memory regions in SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS).
MAX_MEM_TABLE_REGIONS = 8
#: Slots answered to GET_MAX_MEM_SLOTS.
MAX_MEM_SLOTS = 32
#: Most fds a single message may carry.
MAX_FDS = 8
VHOST_USER_MAX_CONFIG_SIZE = 256
#: The largest payload any message we accept may have (SET_MEM_TABLE with 8 regions is 264;
#: config messages are 12 + 256). Anything bigger is refused before it is read into memory.
MAX_PAYLOAD_SIZE = 4096

HEADER = struct.Struct("=III")
U64 = struct.Struct("=Q")
VRING_STATE = struct.Struct("=II")
VRING_ADDR = struct.Struct("=IIQQQQ")
MEM_REGION = struct.Struct("=QQQQ")
MEM_TABLE_HEAD = struct.Struct("=II")
SINGLE_REGION_PAD = struct.Struct("=Q")
CONFIG_HEAD = struct.Struct("=III")

#: Messages that have a reply of their own (never answered with a REPLY_ACK status).
HAS_REPLY = frozenset(
    {
        Request.GET_FEATURES,
        Request.GET_VRING_BASE,
        Request.GET_PROTOCOL_FEATURES,
        Request.GET_QUEUE_NUM,
        Request.GET_CONFIG,
        Request.GET_MAX_MEM_SLOTS,
        Request.GET_STATUS,
        Request.IOTLB_MSG,
        Request.POSTCOPY_ADVISE,
        Request.POSTCOPY_END,
        Request.GET_INFLIGHT_FD,
        Request.GET_SHARED_OBJECT,
        Request.SET_DEVICE_STATE_FD,
        Request.CHECK_DEVICE_STATE,
    }
)


#: Messages that may carry fds; any other message that comes with fds is refused.
CARRIES_FDS = frozenset(
    {
        Request.SET_MEM_TABLE,
        Request.SET_LOG_BASE,
        Request.SET_LOG_FD,
        Request.SET_VRING_KICK,
        Request.SET_VRING_CALL,
        Request.SET_VRING_ERR,
        Request.SET_BACKEND_REQ_FD,
        Request.SET_INFLIGHT_FD,
        Request.GPU_SET_SOCKET,
        Request.ADD_MEM_REG,
        Request.REM_MEM_REG,
        Request.SET_DEVICE_STATE_FD,
    }
)


class ProtocolError(Exception):
    """A message that violates the protocol (bad size, missing fd, ...)."""


# The decoded records are named tuples: as immutable as frozen dataclasses, and without the
# import of dataclasses (and inspect) at every start.


class Message(namedtuple("Message", "request flags payload fds", defaults=((),))):
    """One decoded header (request, flags) plus its raw payload and the fds that came with it."""

    __slots__ = ()

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & NEED_REPLY_FLAG)

    @property
    def name(self) -> str:
        return Request.name(self.request)


#: ``VhostUserMemoryRegion``.
MemRegion = namedtuple("MemRegion", "guest_phys_addr memory_size userspace_addr mmap_offset")
#: ``struct vhost_vring_addr``; the addresses are front-end virtual addresses.
VringAddr = namedtuple(
    "VringAddr", "index flags desc_user_addr used_user_addr avail_user_addr log_guest_addr"
)


def encode(request: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    """Header + payload of one message."""
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_reply(request: int, payload: bytes = b"") -> bytes:
    return encode(request, payload, REPLY_FLAGS)


def _expect(payload: bytes, size: int, what: str) -> None:
    if len(payload) < size:
        raise ProtocolError(f"{what}: payload of {len(payload)} bytes, need {size}")


def decode_u64(payload: bytes) -> int:
    _expect(payload, U64.size, "u64")
    return U64.unpack_from(payload)[0]


def decode_vring_state(payload: bytes) -> tuple[int, int]:
    _expect(payload, VRING_STATE.size, "vring state")
    return VRING_STATE.unpack_from(payload)


def decode_vring_addr(payload: bytes) -> VringAddr:
    _expect(payload, VRING_ADDR.size, "vring address")
    return VringAddr(*VRING_ADDR.unpack_from(payload))


def decode_mem_table(payload: bytes) -> list[MemRegion]:
    _expect(payload, MEM_TABLE_HEAD.size, "memory table")
    nregions, _ = MEM_TABLE_HEAD.unpack_from(payload)
    if not 1 <= nregions <= MAX_MEM_TABLE_REGIONS:
        raise ProtocolError(f"memory table with {nregions} regions (1..{MAX_MEM_TABLE_REGIONS} allowed)")
    _expect(payload, MEM_TABLE_HEAD.size + nregions * MEM_REGION.size, "memory table")
    return [
        MemRegion(*MEM_REGION.unpack_from(payload, MEM_TABLE_HEAD.size + i * MEM_REGION.size)) for i in range(nregions)
    ]


def encode_mem_table(regions: list[MemRegion]) -> bytes:
    out = MEM_TABLE_HEAD.pack(len(regions), 0)
    for r in regions:
        out += MEM_REGION.pack(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset)
    return out


def decode_single_region(payload: bytes) -> MemRegion:
    _expect(payload, SINGLE_REGION_PAD.size + MEM_REGION.size, "single memory region")
    return MemRegion(*MEM_REGION.unpack_from(payload, SINGLE_REGION_PAD.size))


def encode_single_region(r: MemRegion) -> bytes:
    return SINGLE_REGION_PAD.pack(0) + MEM_REGION.pack(
        r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset
    )


def decode_config(payload: bytes) -> tuple[int, int, int, bytes]:
    """offset, size, flags, data of a GET/SET_CONFIG payload."""
    _expect(payload, CONFIG_HEAD.size, "config")
    offset, size, flags = CONFIG_HEAD.unpack_from(payload)
    if size > VHOST_USER_MAX_CONFIG_SIZE:
        raise ProtocolError(f"config size {size} > {VHOST_USER_MAX_CONFIG_SIZE}")
    _expect(payload, CONFIG_HEAD.size + size, "config")
    return offset, size, flags, bytes(payload[CONFIG_HEAD.size : CONFIG_HEAD.size + size])


def encode_config(offset: int, data: bytes, flags: int = 0) -> bytes:
    return CONFIG_HEAD.pack(offset, len(data), flags) + data


def vring_fd_index(payload: bytes) -> tuple[int, bool]:
    """(queue index, has fd) of a SET_VRING_KICK/CALL/ERR payload."""
    value = decode_u64(payload)
    return value & VRING_IDX_MASK, not (value & VRING_NOFD_MASK)
