"""The wire codec and guest memory: layouts, bounds, refusals."""

from __future__ import annotations

import mmap
import os

import pytest

from vhostsuite.core import protocol as P
from vhostsuite.core.errors import GuestMemoryError
from vhostsuite.core.memory import GuestMemory, Region


def test_header_and_reply_flags():
    assert P.HEADER.size == 12
    assert P.encode_reply(P.Request.GET_FEATURES, P.U64.pack(7))[:12] == P.HEADER.pack(1, 0x5, 8)
    assert P.REPLY_FLAGS == 0x5


def test_layout_sizes_match_the_spec():
    assert P.VRING_ADDR.size == 40
    assert P.MEM_REGION.size == 32
    assert len(P.encode_single_region(P.MemRegion(0, 4096, 0, 0))) == 40
    assert P.CONFIG_HEAD.size == 12


def test_mem_table_round_trip_and_limits():
    regions = [P.MemRegion(i << 20, 1 << 20, 0x7F00_0000_0000 + (i << 21), 0) for i in range(3)]
    assert P.decode_mem_table(P.encode_mem_table(regions)) == regions
    with pytest.raises(P.ProtocolError, match="0 regions"):
        P.decode_mem_table(P.MEM_TABLE_HEAD.pack(0, 0))
    with pytest.raises(P.ProtocolError, match="9 regions"):
        P.decode_mem_table(P.encode_mem_table(regions * 3))
    with pytest.raises(P.ProtocolError, match="need"):
        P.decode_mem_table(P.encode_mem_table(regions)[:-1])


@pytest.mark.parametrize(
    "decoder,payload",
    [
        (P.decode_u64, b"\0" * 7),
        (P.decode_vring_state, b"\0" * 4),
        (P.decode_vring_addr, b"\0" * 39),
        (P.decode_single_region, b"\0" * 39),
        (P.decode_config, b"\0" * 11),
    ],
)
def test_short_payloads_are_refused(decoder, payload):
    with pytest.raises(P.ProtocolError):
        decoder(payload)


def test_config_size_limits():
    with pytest.raises(P.ProtocolError, match="> 256"):
        P.decode_config(P.CONFIG_HEAD.pack(0, 257, 0) + bytes(257))
    with pytest.raises(P.ProtocolError):
        P.decode_config(P.CONFIG_HEAD.pack(0, 8, 0) + bytes(4))  # size field lies
    assert P.decode_config(P.encode_config(4, b"abcd")) == (4, 4, 0, b"abcd")


def test_vring_fd_index():
    assert P.vring_fd_index(P.U64.pack(3)) == (3, True)
    assert P.vring_fd_index(P.U64.pack(0x100 | 2)) == (2, False)


def _memfd(size: int) -> int:
    fd = os.memfd_create("t")
    os.ftruncate(fd, size)
    return fd


def test_guest_memory_bounds_and_translation():
    fd = _memfd(3 * mmap.PAGESIZE)
    try:
        lo = Region.map(P.MemRegion(0x1000, 0x1000, 0x50000, 0), fd)
        hi = Region.map(P.MemRegion(0x2000, 0x2000, 0x90000, 0x1000), fd)  # mmap offset honoured
    finally:
        os.close(fd)
    mem = GuestMemory([hi, lo])
    mem.write(0x1FFE, b"abcd")  # spans the two adjacent regions
    assert mem.read(0x1FFE, 4) == b"abcd"
    assert bytes(mem.uva_view(0x90000, 2)) == b"cd"
    assert mem.uva_to_gpa(0x50010) == 0x1010
    for gpa, n in [(0xFFF, 2), (0x4000, 1), (0x3FFF, 2), (1 << 63, 1)]:
        with pytest.raises(GuestMemoryError):
            mem.read(gpa, n)
    with pytest.raises(GuestMemoryError):
        mem.gpa_view(0x1FFE, 4)  # one view must stay inside one region
    with pytest.raises(GuestMemoryError):
        mem.uva_view(0x50FFF, 2)
    with pytest.raises(GuestMemoryError, match="overlaps"):
        mem.add(Region.from_buffer(0x1800, 0x10_0000, bytearray(0x1000)))
    with pytest.raises(GuestMemoryError, match="overlaps"):
        mem.add(Region.from_buffer(0x10_0000, 0x50800, bytearray(0x1000)))
    removed = mem.pop(P.MemRegion(0x1000, 0x1000, 0x50000, 0))
    assert removed is not None and removed.gpa == 0x1000
    removed.release()
    assert mem.pop(P.MemRegion(0x1000, 0x1000, 0x50000, 0)) is None
    with pytest.raises(GuestMemoryError):
        mem.read(0x1000, 1)
    mem.clear()


def test_region_refuses_bad_sizes():
    fd = _memfd(mmap.PAGESIZE)
    try:
        with pytest.raises(GuestMemoryError):
            Region.map(P.MemRegion(0, 0, 0, 0), fd)
        with pytest.raises(GuestMemoryError):
            Region.map(P.MemRegion((1 << 64) - 4096, 8192, 0, 0), fd)
        with pytest.raises(GuestMemoryError):
            Region.map(P.MemRegion(0, 1 << 62, 0, 0), fd)  # can't be mapped
    finally:
        os.close(fd)
