"""Split virtqueue tests, run against the pure-Python reference and the Cython implementation."""

from __future__ import annotations

import gc
import mmap
import struct

import pytest

from vhostsuite.core import ring, virtio
from vhostsuite.core.errors import RingError
from vhostsuite.core.memory import GuestMemory, Region
from vhostsuite.core.virtio import (
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
)
from vhostsuite.testing.ringutil import IMPLS, GuestRing

NEXT, WRITE, INDIRECT = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT

_ring = None
if not ring.NO_EXTENSIONS:
    try:
        from vhostsuite.core import _ring
    except ImportError:  # pragma: no cover - not built
        pass

needs_ext = pytest.mark.skipif(
    _ring is None, reason="vhostsuite.core._ring is not built or VHOSTSUITE_NO_EXTENSIONS is set"
)


@pytest.fixture(params=sorted(IMPLS), ids=sorted(IMPLS))
def impl(request: pytest.FixtureRequest) -> type:
    """The Virtqueue class under test."""
    return IMPLS[request.param]


def chain_cls(impl: type) -> type:
    return ring.ChainPy if impl is ring.VirtqueuePy else _ring.Chain


def popped(vq) -> list:  # noqa: ANN001
    out = []
    while (c := vq.pop()) is not None:
        out.append(c)
    return out


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


# -- the switch and the constants ----------------------------------------------------------------


@pytest.mark.skipif(ring.NO_EXTENSIONS, reason="VHOSTSUITE_NO_EXTENSIONS is set")
def test_cython_loaded() -> None:
    assert _ring is not None, "vhostsuite.core._ring is not built"
    assert ring.Virtqueue is _ring.Virtqueue
    assert ring.Chain is _ring.Chain


def test_pure_python_when_disabled() -> None:
    if ring.NO_EXTENSIONS:
        assert ring.Virtqueue is ring.VirtqueuePy
        assert ring.Chain is ring.ChainPy


@needs_ext
def test_header_constants_match_virtio_py() -> None:
    assert set(_ring.HEADER_CONSTANTS) >= {
        "VRING_DESC_F_NEXT",
        "VRING_DESC_F_WRITE",
        "VRING_DESC_F_INDIRECT",
        "VRING_USED_F_NO_NOTIFY",
        "VRING_AVAIL_F_NO_INTERRUPT",
        "VIRTIO_RING_F_INDIRECT_DESC",
        "VIRTIO_RING_F_EVENT_IDX",
        "VRING_DESC_SIZE",
        "VRING_USED_ELEM_SIZE",
    }
    for name, value in _ring.HEADER_CONSTANTS.items():
        assert getattr(virtio, name) == value, name
        assert getattr(_ring, name) == value, name
    assert _ring.VIRTQUEUE_MAX_SIZE == virtio.VIRTQUEUE_MAX_SIZE


@pytest.mark.parametrize("num", [1, 2, 8, 256, 32768])
def test_ring_sizes_are_the_spec_layout(num: int) -> None:
    """virtio 1.x 2.7: 16-byte descriptors; flags, idx, ring[num], used_event; flags, idx,
    8-byte used elements, avail_event. The one layout both twins and the driver side use."""
    assert ring.ring_sizes(num) == (16 * num, 2 + 2 + 2 * num + 2, 2 + 2 + 8 * num + 2)
    assert virtio.used_event_word(num) * 2 == 4 + 2 * num
    assert virtio.avail_event_word(num) * 2 == 4 + 8 * num


@needs_ext
def test_vring_need_event_agrees() -> None:
    values = [0, 1, 2, 3, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF, 0x10000, 0x10001, -1, -0x10001, (1 << 80) + 5, -(1 << 80)]
    for e in values:
        for new in values:
            for old in values:
                assert _ring.vring_need_event(e, new, old) is ring.vring_need_event(e, new, old), (e, new, old)
    with pytest.raises(TypeError):
        ring.vring_need_event(1.5, 2, 3)
    with pytest.raises(TypeError):
        _ring.vring_need_event(1.5, 2, 3)


# -- construction --------------------------------------------------------------------------------


@pytest.mark.parametrize("num", [0, 3, 6, 100, 32769, 65536, -8])
def test_bad_queue_size(impl: type, num: int) -> None:
    g = GuestRing(8)
    with pytest.raises(RingError, match=rf"^queue size {num} is not a power of 2 in 1\.\.32768$"):
        impl(g.mem, num, *g.views())


@pytest.mark.parametrize("num", [1, 2, 256, 32768])
def test_good_queue_sizes(impl: type, num: int) -> None:
    g = GuestRing(num, regions=[(0x10000, 2 << 20)])
    vq = g.queue(impl)
    assert vq.num == num
    assert vq.pop() is None


@pytest.mark.parametrize("which", [0, 1, 2])
def test_ring_areas_too_small(impl: type, which: int) -> None:
    g = GuestRing(8)
    views = list(g.views())
    views[which] = views[which][:-1]
    with pytest.raises(RingError, match="^ring areas are smaller than the queue size needs$"):
        impl(g.mem, 8, *views)


def test_initial_indices(impl: type) -> None:
    g = GuestRing(8)
    g.set_used_idx(1234)
    vq = g.queue(impl, last_avail_idx=65536 + 1230)
    assert vq.used_idx == 1234  # re-read from guest memory
    assert vq.last_avail_idx == 1230
    assert vq.num == 8
    assert vq.event_idx is False or vq.event_idx == 0
    g.set_avail_idx(1231)
    assert vq.avail_idx() == 1231
    assert vq.pending() == 1
    vq.push_head(5, 6)
    assert g.used_idx() == 1235
    assert g.used_elem(1234 % 8) == (5, 6)


def test_attributes_settable(impl: type) -> None:
    g = GuestRing(8)
    vq = g.queue(impl)
    vq.last_avail_idx = 3
    vq.used_idx = 7
    vq.event_idx = True
    assert (vq.last_avail_idx, vq.used_idx, bool(vq.event_idx)) == (3, 7, True)
    g.set_avail_idx(3)
    assert vq.pending() == 0
    vq.push_head(1, 2)
    assert g.used_idx() == 8 and g.used_elem(7) == (1, 2)


# -- chains --------------------------------------------------------------------------------------


def test_empty_queue(impl: type) -> None:
    g = GuestRing(8)
    vq = g.queue(impl)
    assert vq.pending() == 0
    assert vq.pop() is None
    assert vq.need_notify() is False


def test_direct_chain(impl: type) -> None:
    g = GuestRing(8)
    spec = g.add_chain([b"hello", b"world!"], [16, 8])
    vq = g.queue(impl)
    assert vq.pending() == 1
    c = vq.pop()
    assert vq.pending() == 0 and vq.pop() is None
    assert c.head == spec.head == 0
    assert (c.read_size, c.write_size, c.written) == (11, 24, 0)
    assert c.read() == b"helloworld!"
    assert [bytes(v) for v in c.readable()] == [b"hello", b"world!"]
    assert [len(v) for v in c.writable()] == [16, 8]
    assert all(not v.readonly for v in c.writable())
    assert vq.last_avail_idx == 1


def test_indirect_chain(impl: type) -> None:
    g = GuestRing(8)
    g.add_chain([b"a" * 3], [4])  # head 0, 1
    spec = g.add_chain([b"req", b"payload"], [5, 7], indirect=True)
    vq = g.queue(impl)
    c0, c1 = popped(vq)
    assert (c0.head, c0.read(), c0.write_size) == (0, b"aaa", 4)
    assert c1.head == spec.head == 2
    assert c1.read() == b"reqpayload"
    assert [len(v) for v in c1.writable()] == [5, 7]
    assert c1.write(b"0123456789AB") == 12
    assert g.read(spec.writable[0][0], 5) == b"01234"
    assert g.read(spec.writable[1][0], 7) == b"56789AB"


def test_mixed_direct_then_indirect(impl: type) -> None:
    """A direct readable descriptor chained to an indirect one: the reference accepts it."""
    g = GuestRing(8)
    a = g.alloc(4)
    g.write(a, b"head")
    b = g.alloc(4)
    g.write(b, b"tail")
    w = g.alloc(8)
    table = g.alloc(32, 16)
    g.write_table(table, [(b, 4, 0), (w, 8, WRITE)])
    g.set_desc(0, a, 4, NEXT, 1)
    g.set_desc(1, table, 32, INDIRECT)
    g.publish(0)
    c = g.queue(impl).pop()
    assert c.read() == b"headtail"
    assert c.write_size == 8


def test_zero_length_descriptors(impl: type) -> None:
    g = GuestRing(8)
    a = g.alloc(4)
    g.write(a, b"data")
    g.set_desc(0, 0xDEAD_0000_0000, 0, NEXT, 1)  # zero length: the address is never checked
    g.set_desc(1, a, 4, NEXT, 2)
    g.set_desc(2, 0xBAD, 0, WRITE | NEXT, 3)  # zero-length writable: a readable may follow
    g.set_desc(3, a, 2)
    g.publish(0)
    c = g.queue(impl).pop()
    assert c.read() == b"datada"
    assert c.readable()[-1].tobytes() == b"da"
    assert c.write_size == 0 and c.writable() == []


def test_many_chains_and_index_wrap(impl: type) -> None:
    g = GuestRing(4)
    g.set_avail_idx(65534)
    g.set_used_idx(65534)
    vq = g.queue(impl, last_avail_idx=65534)
    seen = []
    for round_ in range(3):
        g._next_desc = 0
        g._brk = g.data_gpa
        specs = [g.add_chain([pattern(10, round_ * 2 + k)], [4]) for k in range(2)]
        for spec, c in zip(specs, popped(vq), strict=True):
            assert c.head == spec.head
            assert c.read() == pattern(10, len(seen))
            c.write(b"done")
            vq.push(c)
            seen.append(c.head)
    assert vq.last_avail_idx == (65534 + 6) & 0xFFFF == 4
    assert vq.used_idx == 4 == g.used_idx()
    assert g.used_elem(3) == (2, 4)


# -- gather / scatter ----------------------------------------------------------------------------


def three_piece_chain(impl: type):  # noqa: ANN201
    g = GuestRing(8)
    spec = g.add_chain([pattern(5, 1), pattern(7, 2), pattern(3, 3)], [4, 6, 5])
    return g, spec, g.queue(impl).pop()


@pytest.mark.parametrize(
    ("size", "offset"),
    [(-1, 0), (-1, 4), (-1, 5), (-1, 15), (-1, 20), (0, 3), (1, 4), (3, 4), (8, 4), (100, 2), (2, 14), (1 << 70, 3)],
)
def test_read_at_offsets(impl: type, size: int, offset: int) -> None:
    _, _, c = three_piece_chain(impl)
    whole = pattern(5, 1) + pattern(7, 2) + pattern(3, 3)
    expect = whole[offset:] if size < 0 else whole[offset : offset + size]
    assert c.read(size, offset) == expect
    assert c.read(size=size, offset=offset) == expect


def test_read_negative_offset(impl: type) -> None:
    _, _, c = three_piece_chain(impl)
    with pytest.raises(ValueError, match="negative offset"):
        c.read(4, -1)


@pytest.mark.parametrize(("bufsize", "offset"), [(15, 0), (4, 0), (6, 4), (100, 3), (0, 0), (4, 15), (4, 99)])
def test_read_into_at_offsets(impl: type, bufsize: int, offset: int) -> None:
    _, _, c = three_piece_chain(impl)
    whole = pattern(5, 1) + pattern(7, 2) + pattern(3, 3)
    buf = bytearray(b"\xee" * bufsize)
    n = c.read_into(buf, offset)
    got = whole[offset:][:bufsize]
    assert n == len(got)
    assert buf[:n] == got and buf[n:] == b"\xee" * (bufsize - n)


def test_read_into_negative_offset(impl: type) -> None:
    _, _, c = three_piece_chain(impl)
    with pytest.raises(ValueError, match="negative offset"):
        c.read_into(bytearray(5), -3)


def test_read_into_other_buffers(impl: type) -> None:
    _, _, c = three_piece_chain(impl)
    whole = pattern(5, 1) + pattern(7, 2) + pattern(3, 3)
    arr = memoryview(bytearray(16)).cast("H")  # 8 items, 16 bytes: cast to bytes by the copy
    assert c.read_into(arr) == 15
    assert arr.tobytes()[:15] == whole
    with pytest.raises(TypeError):
        c.read_into(b"x" * 4)  # read-only
    assert c.read_into(b"") == 0
    with pytest.raises(TypeError):
        c.read_into(12)


@pytest.mark.parametrize(
    ("offset", "length"), [(0, 15), (0, 4), (2, 5), (4, 6), (9, 6), (10, 10), (14, 3), (15, 2), (40, 2)]
)
def test_write_at_offsets(impl: type, offset: int, length: int) -> None:
    g, spec, c = three_piece_chain(impl)
    data = pattern(length, 9)
    n = c.write(data, offset)
    expect = max(0, min(length, 15 - offset))
    assert n == expect
    assert c.written == (offset + n if n else 0)
    area = bytearray(15)
    area[offset : offset + n] = data[:n]
    got = b"".join(g.read(gpa, ln) for gpa, ln in spec.writable)
    assert got == bytes(area)
    assert b"".join(bytes(v) for v in c.writable()) == bytes(area)


def test_written_high_water_and_push_default(impl: type) -> None:
    g, spec, c = three_piece_chain(impl)
    vq = g.queue(impl, last_avail_idx=1)
    assert c.write(b"xy", 8) == 2 and c.written == 10
    assert c.write(b"ab", 0) == 2 and c.written == 10
    assert c.write(b"") == 0 and c.written == 10
    vq.push(c)
    assert g.used_elem(0) == (spec.head, 10)
    vq.push(c, 3)
    assert g.used_elem(1) == (spec.head, 3)
    assert g.used_idx() == 2


def test_write_other_buffers(impl: type) -> None:
    g, spec, c = three_piece_chain(impl)
    assert c.write(memoryview(b"abcdefgh").cast("H")) == 8
    assert c.write(bytearray(b"Z"), 8) == 1
    assert g.read(spec.writable[0][0], 4) == b"abcd"
    assert g.read(spec.writable[1][0], 6) == b"efghZ\0"
    with pytest.raises(ValueError, match="negative offset"):
        c.write(b"x", -1)
    with pytest.raises(TypeError):
        c.write("text")
    with pytest.raises(TypeError):
        c.write(memoryview(bytearray(8))[::2])


def test_chain_spanning_adjacent_regions(impl: type) -> None:
    g = GuestRing(8, regions=[(0x10000, 0x10000), (0x20000, 0x1000), (0x21000, 0x1000)])
    g.write(0x1FFF0, pattern(0x1020, 5))
    g.set_desc(0, 0x1FFF0, 0x1020, NEXT, 1)
    g.set_desc(1, 0x20FF0, 0x20, WRITE)
    g.publish(0)
    c = g.queue(impl).pop()
    assert [len(v) for v in c.readable()] == [0x10, 0x1000, 0x10]
    assert c.read() == pattern(0x1020, 5)
    assert c.read(0x20, 0xFF8) == pattern(0x1020, 5)[0xFF8:0x1018]
    assert [len(v) for v in c.writable()] == [0x10, 0x10]
    assert c.write(pattern(0x20, 1)) == 0x20
    assert g.read(0x20FF0, 0x20) == pattern(0x20, 1)


def test_large_region_beyond_2gib(impl: type) -> None:
    """Offsets above 2**31 (and regions above 4 GiB of guest address) use 64-bit arithmetic."""
    big = mmap.mmap(-1, 3 << 30)  # lazily backed: only the touched pages cost memory
    small = bytearray(1 << 16)
    gpa_big = 0x1_0000_0000
    mem = GuestMemory([Region.from_buffer(0x10000, 0x10000, small), Region.from_buffer(gpa_big, 1 << 40, big)])
    g = GuestRing(8, regions=[(0x10000, 1 << 16)], buffers=[small])
    g.mem = mem
    addr = gpa_big + (5 << 29) - 8  # 2.5 GiB into the region, 8 bytes before the boundary
    mem.write(addr, b"ABCDEFGHIJKLMNOP")
    g.set_desc(0, addr, 16, NEXT, 1)
    g.set_desc(1, gpa_big + (3 << 30) - 4, 4, WRITE)
    g.publish(0)
    vq = impl(mem, 8, *g.views())
    c = vq.pop()
    assert c.read() == b"ABCDEFGHIJKLMNOP"
    assert c.write(b"wxyz") == 4
    assert big[(3 << 30) - 4 :] == b"wxyz"
    del c, vq
    gc.collect()
    mem.clear()


def test_readonly_memory(impl: type) -> None:
    """A read-only region: readable buffers work, writes fail like a read-only memoryview."""
    rw = bytearray(1 << 16)
    ro = bytes(range(256)) * 16
    mem = GuestMemory(
        [Region.from_buffer(0x10000, 0x10000, rw), Region(0x40000, len(ro), 0x40000, None, memoryview(ro))]
    )
    g = GuestRing(8, regions=[(0x10000, 1 << 16)], buffers=[rw])
    g.set_desc(0, 0x40010, 16, NEXT, 1)
    g.set_desc(1, 0x40020, 8, WRITE)
    g.publish(0)
    c = impl(mem, 8, *g.views()).pop()
    assert c.read() == bytes(range(16, 32))
    assert c.writable()[0].readonly
    with pytest.raises(TypeError, match="cannot modify read-only memory"):
        c.write(b"x")
    assert c.written == 0 and c.write(b"") == 0


def test_chain_outlives_queue_and_memory(impl: type) -> None:
    g = GuestRing(8)
    g.add_chain([b"still here"], [4])
    vq = g.queue(impl)
    c = vq.pop()
    del vq
    gc.collect()
    g.mem.clear()  # releases the regions' own views; the chain's memory stays valid
    assert c.read() == b"still here"
    assert c.write(b"ok") == 2


def test_memory_clear_while_queue_alive(impl: type) -> None:
    g = GuestRing(8)
    vq = g.queue(impl)
    g.mem.clear()  # must not raise BufferError although the queue holds the buffers
    assert vq.pending() == 0


def test_chain_constructor(impl: type) -> None:
    cls = chain_cls(impl)
    r1, r2 = bytearray(b"abc"), bytearray(b"defg")
    w1, w2 = bytearray(2), bytearray(3)
    c = cls(7, [memoryview(r1), memoryview(r2)], [memoryview(w1), memoryview(w2)])
    assert (c.head, c.read_size, c.write_size, c.written) == (7, 7, 5, 0)
    assert c.read() == b"abcdefg" and c.read(3, 2) == b"cde"
    assert [bytes(v) for v in c.readable()] == [b"abc", b"defg"]
    assert c.write(b"12345") == 5 and (w1, w2) == (bytearray(b"12"), bytearray(b"345"))
    assert c.written == 5
    c.head = 3
    c.written = 2
    g = GuestRing(8)
    vq = g.queue(impl)
    vq.push(c)
    assert g.used_elem(0) == (3, 2)


@needs_ext
def test_push_foreign_chain() -> None:
    """The Cython queue accepts any object with head and written, as the reference does."""
    g = GuestRing(8)
    vq = g.queue(_ring.Virtqueue)
    vq.push(ring.ChainPy(5, [], [memoryview(bytearray(4))]), 3)
    vq.push(ring.ChainPy(6, [], []))
    assert [g.used_elem(i) for i in range(2)] == [(5, 3), (6, 0)]


# -- used ring -----------------------------------------------------------------------------------


def test_push_head_and_used_ring(impl: type) -> None:
    g = GuestRing(4)
    vq = g.queue(impl)
    for k in range(6):
        vq.push_head(k, 100 + k)
        assert vq.used_idx == k + 1 == g.used_idx()
    assert [g.used_elem(i) for i in range(4)] == [(4, 104), (5, 105), (2, 102), (3, 103)]


@pytest.mark.parametrize(("length", "stored"), [(-1, 0xFFFFFFFF), ((1 << 32) + 5, 5), (1 << 80, 0), (True, 1)])
def test_push_length_masked(impl: type, length: int, stored: int) -> None:
    g = GuestRing(4)
    vq = g.queue(impl)
    vq.push_head(1, length)
    assert g.used_elem(0) == (1, stored)


@pytest.mark.parametrize("head", [-1, 1 << 32, 1.0, "1"])
def test_push_bad_head(impl: type, head: object) -> None:
    g = GuestRing(4)
    vq = g.queue(impl)
    # A caller's bug, not the guest's: each twin raises in its own words, neither writes.
    with pytest.raises((struct.error, OverflowError, TypeError)):
        vq.push_head(head, 0)
    assert vq.used_idx == 0 == g.used_idx()


def test_used_idx_wraps(impl: type) -> None:
    g = GuestRing(8)
    g.set_used_idx(0xFFFF)
    vq = g.queue(impl)
    vq.push_head(2, 9)
    assert vq.used_idx == 0 == g.used_idx()
    assert g.used_elem(7) == (2, 9)


# -- notifications -------------------------------------------------------------------------------


def test_notify_without_event_idx(impl: type) -> None:
    g = GuestRing(8)
    vq = g.queue(impl)
    assert vq.need_notify() is False  # nothing pushed
    vq.push_head(0, 1)
    assert vq.need_notify() is True
    assert vq.need_notify() is False  # nothing new since
    g.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT)
    vq.push_head(0, 1)
    assert vq.need_notify() is False
    g.set_avail_flags(0)
    vq.push_head(0, 1)
    vq.push_head(0, 1)
    assert vq.need_notify() is True


def test_notify_with_event_idx(impl: type) -> None:
    g = GuestRing(8)
    g.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT)  # ignored with EVENT_IDX
    g.set_used_event(100)
    vq = g.queue(impl, event_idx=True)
    vq.push_head(0, 1)
    assert vq.need_notify() is True  # first signal: always
    vq.push_head(0, 1)  # used 2; driver asked for an interrupt after entry 100
    assert vq.need_notify() is False
    g.set_used_event(2)
    vq.push_head(0, 1)  # old 2, new 3: crossed used_event 2
    assert vq.need_notify() is True
    g.set_used_event(3)
    vq.push_head(0, 1)
    vq.push_head(0, 1)  # old 3, new 5: crossed 3
    assert vq.need_notify() is True
    g.set_used_event(4)  # already behind
    vq.push_head(0, 1)
    assert vq.need_notify() is False
    assert vq.need_notify() is False


def test_event_idx_wraps(impl: type) -> None:
    g = GuestRing(8)
    g.set_used_idx(0xFFFE)
    vq = g.queue(impl, event_idx=True)
    assert vq.need_notify() is False
    g.set_used_event(0xFFFF)
    vq.push_head(0, 1)
    vq.push_head(0, 1)  # 0xFFFE -> 0: crossed 0xFFFF
    assert vq.need_notify() is True


def test_request_kick_with_buffers_still_available(impl: type) -> None:
    """A device pausing with buffers left asks for a kick at the driver's next addition."""
    g = GuestRing(8)
    g.write_u16(g.used_gpa + 2 * virtio.avail_event_word(8), 0x5555)
    vq = g.queue(impl, event_idx=True)
    g.add_chain([b"a"])
    g.add_chain([b"b"])
    assert vq.pop().read() == b"a"  # one chain left available
    vq.request_kick()
    assert g.avail_event() == 2  # the driver's current index: its next addition crosses it
    plain = GuestRing(8)
    plain.write_u16(plain.used_gpa + 2 * virtio.avail_event_word(8), 0x5555)
    plain.queue(impl, event_idx=False).request_kick()  # without EVENT_IDX the driver always kicks
    assert plain.avail_event() == 0x5555


def test_avail_event_written_when_empty(impl: type) -> None:
    g = GuestRing(8)
    g.write_u16(g.used_gpa + 2 * virtio.avail_event_word(8), 0x5555)
    vq = g.queue(impl, event_idx=True, last_avail_idx=300)
    g.set_avail_idx(300)
    assert vq.pop() is None
    assert g.avail_event() == 300
    g._next_desc = 0
    g.add_chain([b"x"])
    assert vq.pop().read() == b"x"
    assert g.avail_event() == 300  # only written when the queue looks empty
    assert vq.pop() is None
    assert g.avail_event() == 301


def test_avail_event_untouched_without_event_idx(impl: type) -> None:
    g = GuestRing(8)
    g.write_u16(g.used_gpa + 2 * virtio.avail_event_word(8), 0x5555)
    vq = g.queue(impl)
    assert vq.pop() is None
    assert g.avail_event() == 0x5555


# -- malformed rings -----------------------------------------------------------------------------


def expect_ring_error(g: GuestRing, impl: type, message: str, **kwargs: object) -> None:
    vq = g.queue(impl, **kwargs)
    before = vq.last_avail_idx
    with pytest.raises(RingError) as ei:
        vq.pop()
    assert str(ei.value) == message
    assert vq.last_avail_idx == before  # nothing consumed


def test_loop(impl: type) -> None:
    g = GuestRing(8)
    a = g.alloc(8)
    g.set_desc(0, a, 8, NEXT, 1)
    g.set_desc(1, a, 8, NEXT, 0)
    g.publish(0)
    expect_ring_error(g, impl, "descriptor chain from 0 is longer than its table (8): a loop?")


def test_self_loop_at_head(impl: type) -> None:
    g = GuestRing(4)
    g.set_desc(3, 0, 0, NEXT, 3)
    g.publish(3)
    expect_ring_error(g, impl, "descriptor chain from 3 is longer than its table (4): a loop?")


def test_chain_longer_than_queue(impl: type) -> None:
    """Every descriptor of the table chained, the last back into the middle."""
    g = GuestRing(8)
    a = g.alloc(1)
    for i in range(8):
        g.set_desc(i, a, 1, NEXT, (i + 1) if i < 7 else 4)
    g.publish(0)
    expect_ring_error(g, impl, "descriptor chain from 0 is longer than its table (8): a loop?")


def test_full_table_chain_is_fine(impl: type) -> None:
    g = GuestRing(8)
    a = g.alloc(8)
    g.write(a, b"01234567")
    for i in range(8):
        g.set_desc(i, a + i, 1, NEXT if i < 7 else 0, i + 1 if i < 7 else 0)
    g.publish(0)
    assert g.queue(impl).pop().read() == b"01234567"


def test_loop_in_indirect_table(impl: type) -> None:
    g = GuestRing(8)
    a = g.alloc(8)
    table = g.alloc(48, 16)
    g.set_desc(0, a, 8, NEXT, 1, table=table)
    g.set_desc(1, a, 8, NEXT, 2, table=table)
    g.set_desc(2, a, 8, NEXT, 1, table=table)
    g.set_desc(5, table, 48, INDIRECT)
    g.publish(5)
    expect_ring_error(g, impl, "descriptor chain from 5 is longer than its table (3): a loop?")


def test_next_out_of_table(impl: type) -> None:
    g = GuestRing(8)
    g.set_desc(0, g.alloc(8), 8, NEXT, 8)
    g.publish(0)
    expect_ring_error(g, impl, "next index 8 outside the table (8) in chain 0")


def test_next_out_of_indirect_table(impl: type) -> None:
    g = GuestRing(8)
    table = g.alloc(32, 16)
    g.set_desc(0, g.alloc(8), 8, NEXT, 2, table=table)
    g.set_desc(1, table, 32, INDIRECT)
    g.publish(1)
    expect_ring_error(g, impl, "next index 2 outside the table (2) in chain 1")


@pytest.mark.parametrize("head", [8, 9, 0xFFFF])
def test_head_out_of_range(impl: type, head: int) -> None:
    g = GuestRing(8)
    g.publish(head)
    expect_ring_error(g, impl, f"avail ring entry {head} is outside the queue (size 8)")


@pytest.mark.parametrize(
    ("addr", "length"),
    [
        (0x0, 8),  # below memory
        (0x10000 + (1 << 20) - 4, 8),  # runs off the end
        (0x10000 + (1 << 20), 1),  # just past the end
        (0xFFFF_FFFF_FFFF_FFF0, 0x20),  # wraps the 64-bit space
        (0xFFFF_FFFF_FFFF_FFFF, 1),
    ],
)
def test_buffer_outside_memory(impl: type, addr: int, length: int) -> None:
    g = GuestRing(8)
    g.set_desc(0, g.alloc(8), 8, NEXT, 1)
    g.set_desc(1, addr, length, WRITE)
    g.publish(0)
    expect_ring_error(g, impl, f"buffer {addr:#x}+{length:#x} outside guest memory in chain 0")


def test_buffer_across_a_gap(impl: type) -> None:
    g = GuestRing(8, regions=[(0x10000, 0x10000), (0x30000, 0x1000)])
    g.set_desc(0, 0x1FF00, 0x200)
    g.publish(0)
    expect_ring_error(g, impl, "buffer 0x1ff00+0x200 outside guest memory in chain 0")


def test_memory_at_top_of_address_space(impl: type) -> None:
    top = (1 << 64) - 0x2000
    g = GuestRing(8, regions=[(0x10000, 0x10000), (top, 0x2000)])
    g.write((1 << 64) - 4, b"last")
    g.set_desc(0, (1 << 64) - 4, 4)
    g.set_desc(1, (1 << 64) - 2, 4)
    g.publish(0, 1)
    vq = g.queue(impl)
    assert vq.pop().read() == b"last"
    with pytest.raises(RingError, match="^buffer 0xfffffffffffffffe\\+0x4 outside guest memory in chain 1$"):
        vq.pop()


def test_chain_longer_than_4gib(impl: type) -> None:
    """Lengths add up over the whole chain; the check comes before the address check."""
    g = GuestRing(8, regions=[(0x10000, 1 << 20)])
    n = 4097
    table = g.alloc(16 * n, 16)
    g.write_table(table, [(0x10000, 1 << 20, 0)] * 4096 + [(0xBAD, 1 << 20, 0)])
    g.set_desc(0, table, 16 * n, INDIRECT)
    g.publish(0)
    expect_ring_error(g, impl, "chain 0 is longer than 4 GiB")


def test_chain_of_4gib_minus_one_is_fine(impl: type) -> None:
    g = GuestRing(8, regions=[(0x10000, 1 << 20)])
    n = 4096
    table = g.alloc(16 * n, 16)
    base = 0x10000
    g.write_table(table, [(base, 1 << 20, 0)] * (n - 1) + [(base, (1 << 20) - 1, 0)])
    g.set_desc(0, table, 16 * n, INDIRECT)
    g.publish(0)
    c = g.queue(impl).pop()
    assert c.read_size == (1 << 32) - 1
    assert len(c.readable()) == n
    assert c.read(4, (1 << 32) - 5) == g.read(base + (1 << 20) - 5, 4)


@pytest.mark.parametrize("length", [0, 8, 24, 17])
def test_indirect_bad_size(impl: type, length: int) -> None:
    g = GuestRing(8)
    g.set_desc(0, g.alloc(64, 16), length, INDIRECT)
    g.publish(0)
    expect_ring_error(g, impl, f"indirect table of {length} bytes in chain 0")


def test_indirect_too_many_entries(impl: type) -> None:
    g = GuestRing(8)
    g.set_desc(0, g.alloc(64, 16), 16 * 32769, INDIRECT)
    g.publish(0)
    expect_ring_error(g, impl, "indirect table of 32769 entries in chain 0")


def test_indirect_nested(impl: type) -> None:
    g = GuestRing(8)
    inner = g.alloc(16, 16)
    outer = g.alloc(32, 16)
    g.set_desc(0, g.alloc(8), 8, NEXT, 1, table=outer)
    g.set_desc(1, inner, 16, INDIRECT, table=outer)
    g.set_desc(0, outer, 32, INDIRECT)
    g.publish(0)
    expect_ring_error(g, impl, "nested indirect table in chain 0")


def test_indirect_with_next(impl: type) -> None:
    g = GuestRing(8)
    table = g.alloc(16, 16)
    g.set_desc(0, g.alloc(8), 8, 0, table=table)
    g.set_desc(0, table, 16, INDIRECT | NEXT, 1)
    g.publish(0)
    expect_ring_error(g, impl, "indirect descriptor with NEXT in chain 0")


@pytest.mark.parametrize("addr", [0x0, 0x10000 + (1 << 20) - 16, 0xFFFF_FFFF_FFFF_FFF0])
def test_indirect_outside_memory(impl: type, addr: int) -> None:
    g = GuestRing(8)
    g.set_desc(0, addr, 32, INDIRECT)
    g.publish(0)
    expect_ring_error(g, impl, f"indirect table {addr:#x}+0x20 outside guest memory in chain 0")


def test_indirect_across_regions(impl: type) -> None:
    """Unlike buffers, an indirect table must lie inside one region."""
    g = GuestRing(8, regions=[(0x10000, 0x10000), (0x20000, 0x1000)])
    g.set_desc(0, 0x1FFF0, 32, INDIRECT)
    g.publish(0)
    expect_ring_error(g, impl, "indirect table 0x1fff0+0x20 outside guest memory in chain 0")


def test_readable_after_writable(impl: type) -> None:
    g = GuestRing(8)
    g.set_desc(0, g.alloc(8), 8, WRITE | NEXT, 1)
    g.set_desc(1, g.alloc(8), 8)
    g.publish(0)
    expect_ring_error(g, impl, "readable descriptor after a writable one in chain 0")


def test_zero_length_readable_after_writable(impl: type) -> None:
    g = GuestRing(8)
    g.set_desc(0, g.alloc(8), 8, WRITE | NEXT, 1)
    g.set_desc(1, 0xBAD, 0)
    g.publish(0)
    expect_ring_error(g, impl, "readable descriptor after a writable one in chain 0")


def test_readable_after_writable_in_indirect(impl: type) -> None:
    g = GuestRing(8)
    table = g.alloc(32, 16)
    g.write_table(table, [(g.alloc(8), 8, WRITE), (g.alloc(8), 8, 0)])
    g.set_desc(0, table, 32, INDIRECT)
    g.publish(0)
    expect_ring_error(g, impl, "readable descriptor after a writable one in chain 0")


def test_address_checked_before_order(impl: type) -> None:
    g = GuestRing(8)
    g.set_desc(0, g.alloc(8), 8, WRITE | NEXT, 1)
    g.set_desc(1, 0x1, 8)
    g.publish(0)
    expect_ring_error(g, impl, "buffer 0x1+0x8 outside guest memory in chain 0")


@pytest.mark.parametrize(("last", "idx"), [(0, 9), (0, 0x8000), (65530, 3), (10, 9)])
def test_avail_index_too_far_ahead(impl: type, last: int, idx: int) -> None:
    g = GuestRing(8)
    g.set_avail_idx(idx)
    vq = g.queue(impl, last_avail_idx=last)
    ahead = (idx - last) & 0xFFFF
    msg = f"avail index {idx} is {ahead} ahead of {last} (queue size 8)"
    with pytest.raises(RingError) as ei:
        vq.pending()
    assert str(ei.value) == msg
    with pytest.raises(RingError) as ei:
        vq.pop()
    assert str(ei.value) == msg


def test_avail_index_exactly_full(impl: type) -> None:
    g = GuestRing(4)
    heads = [g.add_chain([bytes([k])], publish=False).head for k in range(4)]
    g.publish(*heads)
    vq = g.queue(impl)
    assert vq.pending() == 4
    assert [c.read() for c in popped(vq)] == [b"\0", b"\1", b"\2", b"\3"]


def test_queue_usable_after_error(impl: type) -> None:
    """A RingError leaves the queue as it was: the same pop fails again, the same way."""
    g = GuestRing(8)
    g.set_desc(0, 0x1, 8)
    g.publish(0)
    vq = g.queue(impl)
    for _ in range(2):
        with pytest.raises(RingError, match="outside guest memory"):
            vq.pop()
    g.set_desc(0, g.alloc(2), 2)
    assert vq.pop().read() == b"\0\0"


def test_pop_batch_is_repeated_pop(impl: type) -> None:
    """pop_batch gives what pop() repeated would, up to the chain and byte budgets."""
    g = GuestRing(32)
    specs = [g.add_chain([bytes([i]) * (10 + i)], [100]) for i in range(12)]
    vq = g.queue(impl)
    first = vq.pop_batch(5, 1 << 20)
    assert [c.head for c in first] == [s.head for s in specs[:5]]
    assert [c.read() for c in first] == [bytes([i]) * (10 + i) for i in range(5)]
    # the byte budget: chains until their buffers add up to it (the one that crosses it included)
    by_bytes = vq.pop_batch(100, 115 + 116 + 1)  # chains 5 and 6 leave 1 byte: 7 crosses it
    assert [c.head for c in by_bytes] == [s.head for s in specs[5:8]]
    assert [c.head for c in vq.pop_batch(100, 0)] == [specs[8].head], "at least one chain when any waits"
    rest = vq.pop_batch(100, 1 << 20)
    assert [c.head for c in rest] == [s.head for s in specs[9:]]
    assert vq.pop_batch(100, 1 << 20) == []
    assert vq.last_avail_idx == 12


def test_unpop_gives_back_the_newest_chains(impl: type) -> None:
    g = GuestRing(8)
    specs = [g.add_chain([b"x"], [8]) for _ in range(4)]
    vq = g.queue(impl)
    batch = vq.pop_batch(4, 1 << 20)
    vq.push(batch[0])
    vq.unpop(3)  # batch[1:] were not handled: they are popped again
    assert vq.last_avail_idx == 1
    assert [c.head for c in vq.pop_batch(8, 1 << 20)] == [s.head for s in specs[1:]]
    assert vq.used_idx == 1 == g.used_idx()
    with pytest.raises(ValueError):
        vq.unpop(-1)


def test_pop_batch_raises_for_a_bad_chain(impl: type) -> None:
    g = GuestRing(8)
    g.add_chain([b"ok"], [8])  # descriptors 0 and 1
    g.set_desc(5, g.alloc(8), 8, VRING_DESC_F_NEXT, 5)  # a self-loop
    g.publish(5)
    vq = g.queue(impl)
    with pytest.raises(RingError, match="a loop"):
        vq.pop_batch(8, 1 << 20)


def test_pop_batch_that_empties_the_ring_asks_for_the_next_kick(impl: type) -> None:
    """A budget that takes exactly what was there: with EVENT_IDX the driver must still be
    asked to kick for its next buffer, as an empty pop() asks (else it never kicks again)."""
    g = GuestRing(8)
    for _ in range(4):
        g.add_chain([], [8])
    vq = g.queue(impl, event_idx=True)
    g.write_u16(g.used_gpa + 2 * virtio.avail_event_word(8), 0)
    assert len(vq.pop_batch(4, 1 << 20)) == 4
    assert g.avail_event() == 4
    g.add_chain([], [8])
    assert len(vq.pop_batch(1, 1 << 20)) == 1  # stopped by the budget, emptied: asked again
    assert g.avail_event() == 5


def test_serve_answers_within_the_budget(impl: type) -> None:
    """serve: each chain to the handler, its bytes-like answer written and the chain pushed (None:
    pushed with what the handler wrote), within the chain and byte budgets of pop_batch."""
    g = GuestRing(32)
    specs = [g.add_chain([bytes([i]) * (10 + i)], [100]) for i in range(12)]
    vq = g.queue(impl, event_idx=True)
    seen = []

    def handler(chain):  # noqa: ANN001, ANN202
        seen.append(chain.head)
        data = chain.read()
        if data[0] % 3 == 0:
            return data.upper()  # bytes
        if data[0] % 3 == 1:
            chain.write(b"by hand", 2)
            return None
        return bytearray(b"ba")  # any bytes-like object

    assert vq.serve(handler, 5, 1 << 20) == (5, True, None, None)
    assert vq.serve(handler, 100, 115 + 116 + 1) == (3, True, None, None)  # the byte budget, as pop_batch's
    assert vq.serve(handler, 100, 0) == (1, True, None, None), "at least one chain when any waits"
    assert vq.serve(handler, 100, 1 << 20) == (3, True, None, None)
    assert vq.serve(handler, 100, 1 << 20) == (0, False, None, None)
    assert seen == [s.head for s in specs]
    assert [g.used_elem(i) for i in range(12)] == [
        (s.head, (10 + i) if i % 3 == 0 else 9 if i % 3 == 1 else 2) for i, s in enumerate(specs)
    ]
    assert g.used_idx() == 12 and g.avail_event() == 12, "emptied: the next kick is asked for"


def test_serve_stops_at_pending_paused_and_detached(impl: type) -> None:
    """An answer that is not bytes-like (the core's PENDING) comes back with its chain, unpushed;
    paused stops after pushing the chain whose handler set it, detached without pushing it."""
    g = GuestRing(16)
    specs = [g.add_chain([b"c"], [8]) for _ in range(6)]
    vq = g.queue(impl)
    marker = object()
    actions = iter(["answer", marker, "pause", "detach", "answer"])

    def handler(chain):  # noqa: ANN001, ANN202
        what = next(actions)
        if what is marker:
            return marker
        if what == "pause":
            vq.paused = True
        if what == "detach":
            vq.detached = True
        return b"ok"

    handled, pushed, chain, answer = vq.serve(handler, 64, 1 << 20)
    assert (handled, pushed, answer) == (2, True, marker) and chain.head == specs[1].head
    assert vq.serve(handler, 64, 1 << 20) == (1, True, None, None)  # paused after pushing it
    assert g.used_idx() == 2 and vq.serve(handler, 64, 1 << 20) == (0, False, None, None)
    vq.paused = False
    assert vq.serve(handler, 64, 1 << 20) == (1, False, None, None)  # detached: not pushed
    assert g.used_idx() == 2 and vq.last_avail_idx == 4


def test_serve_lets_a_handler_error_through_with_its_chain_unpushed(impl: type) -> None:
    g = GuestRing(8)
    g.add_chain([b"a"], [8])
    g.add_chain([b"b"], [8])
    vq = g.queue(impl)

    def handler(chain):  # noqa: ANN001, ANN202
        if chain.read() == b"b":
            raise KeyError("device bug")
        return b"fine"

    with pytest.raises(KeyError):
        vq.serve(handler, 8, 1 << 20)
    assert g.used_idx() == 1 and vq.last_avail_idx == 2
