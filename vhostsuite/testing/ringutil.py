"""The driver side of a split virtqueue, the one implementation for tests, benchmarks, fuzzers
and the front-end.

``DriverRing`` writes descriptors and avail entries and reads the used ring over the three areas
of a queue, as a virtio driver does, with the layout of :mod:`vhostsuite.core.virtio`; the
index and flag words are single u16 loads and stores. ``GuestRing`` puts one queue at the start
of a bytearray-backed GuestMemory with a bump allocator, for ring tests and benchmarks;
``vhostsuite.testing.frontend.DriverQueue`` puts one in memfd guest RAM shared with a back-end.
Everything is little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..core import ring
from ..core.memory import GuestMemory, Region
from ..core.virtio import (
    AVAIL_FLAGS,
    AVAIL_IDX,
    AVAIL_RING,
    USED_FLAGS,
    USED_IDX,
    USED_RING_OFFSET,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_DESC_SIZE,
    VRING_USED_ELEM_SIZE,
    avail_event_word,
    ring_sizes,
    used_event_word,
)
from ..core.virtio import VRING_DESC as DESC
from ..core.virtio import VRING_USED_ELEM as USED_ELEM

U16 = struct.Struct("<H")

#: The implementations under test, by id: the compiled one unless it is missing or
#: VHOSTSUITE_NO_EXTENSIONS is set.
IMPLS: dict[str, type] = {"py": ring.VirtqueuePy}
VirtqueueC = None
if not ring.NO_EXTENSIONS:
    try:
        from ..core._ring import Virtqueue as VirtqueueC
    except ImportError:  # pragma: no cover - not built
        pass
    else:
        IMPLS["cython"] = VirtqueueC


def align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class DriverRing:
    """The driver's side of one split virtqueue of *num* entries over its three areas."""

    def __init__(self, num: int, desc: memoryview, avail: memoryview, used: memoryview) -> None:
        _, asize, usize = ring_sizes(num)
        self.num = num
        self.desc = desc
        self.avail = avail
        self.used = used
        self._avail16 = avail[:asize].cast("H")
        self._used16 = used[:usize].cast("H")
        #: The driver's avail index (what publish() writes to the ring).
        self.avail_idx = self._avail16[AVAIL_IDX]

    def release(self) -> None:
        for v in (self._avail16, self._used16):
            v.release()

    # -- descriptors --------------------------------------------------------------------
    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        DESC.pack_into(self.desc, VRING_DESC_SIZE * i, addr, length, flags, nxt)

    def read_desc(self, i: int) -> tuple[int, int, int, int]:
        return DESC.unpack_from(self.desc, VRING_DESC_SIZE * i)

    # -- avail side ---------------------------------------------------------------------
    def publish(self, *heads: int) -> None:
        """Add *heads* to the avail ring, then advance its index (one store per entry, then the index)."""
        for head in heads:
            self._avail16[AVAIL_RING + self.avail_idx % self.num] = head
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self._avail16[AVAIL_IDX] = self.avail_idx

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx & 0xFFFF
        self._avail16[AVAIL_IDX] = self.avail_idx

    def set_avail_entry(self, slot: int, head: int) -> None:
        self._avail16[AVAIL_RING + slot] = head & 0xFFFF

    def set_avail_flags(self, flags: int) -> None:
        self._avail16[AVAIL_FLAGS] = flags & 0xFFFF

    def set_used_event(self, value: int) -> None:
        self._avail16[used_event_word(self.num)] = value & 0xFFFF

    # -- used side ----------------------------------------------------------------------
    def used_flags(self) -> int:
        return self._used16[USED_FLAGS]

    def used_idx(self) -> int:
        return self._used16[USED_IDX]

    def set_used_idx(self, value: int) -> None:
        self._used16[USED_IDX] = value & 0xFFFF

    def used_elem(self, slot: int) -> tuple[int, int]:
        return USED_ELEM.unpack_from(self.used, USED_RING_OFFSET + VRING_USED_ELEM_SIZE * slot)

    def avail_event(self) -> int:
        return self._used16[avail_event_word(self.num)]


@dataclass
class ChainSpec:
    """What a driver put in a chain: (gpa, length) of each readable and writable buffer."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)
    writable: list[tuple[int, int]] = field(default_factory=list)


class GuestRing:
    """Guest memory holding one split queue of *num* entries, and a driver writing into it.

    *regions* is a list of (gpa, size) of the memory; the rings go at the start of the first
    one, the allocator hands out the rest of it. uvas are gpa + *uva_offset*.
    """

    def __init__(
        self,
        num: int = 8,
        regions: list[tuple[int, int]] | None = None,
        uva_offset: int = 0x7F00_0000_0000,
        buffers: list[bytearray] | None = None,
    ) -> None:
        self.num = num
        self.region_specs = list(regions or [(0x10000, 1 << 20)])
        self.uva_offset = uva_offset
        self.buffers = buffers if buffers is not None else [bytearray(size) for _, size in self.region_specs]
        self.mem = GuestMemory(
            [
                Region.from_buffer(gpa, gpa + uva_offset, buf)
                for (gpa, _), buf in zip(self.region_specs, self.buffers, strict=True)
            ]
        )
        base = self.region_specs[0][0]
        dsize, asize, usize = ring_sizes(num)
        self.desc_gpa = base
        self.avail_gpa = base + dsize
        self.used_gpa = align(self.avail_gpa + asize, 4)
        self.data_gpa = align(self.used_gpa + usize, 64)
        self.data_end = base + self.region_specs[0][1]
        self._brk = self.data_gpa
        self._next_desc = 0
        self.driver = DriverRing(num, *self.views())
        # the driver's operations on the ring, by their names
        self.publish = self.driver.publish
        self.set_avail_idx = self.driver.set_avail_idx
        self.set_avail_entry = self.driver.set_avail_entry
        self.set_avail_flags = self.driver.set_avail_flags
        self.set_used_event = self.driver.set_used_event
        self.used_flags = self.driver.used_flags
        self.used_idx = self.driver.used_idx
        self.set_used_idx = self.driver.set_used_idx
        self.used_elem = self.driver.used_elem
        self.avail_event = self.driver.avail_event

    @property
    def avail_shadow(self) -> int:
        """The driver's avail index (written to the ring by publish())."""
        return self.driver.avail_idx

    @avail_shadow.setter
    def avail_shadow(self, value: int) -> None:
        self.driver.avail_idx = value & 0xFFFF

    # -- memory -------------------------------------------------------------------------------
    def clone(self) -> GuestRing:
        """An identical, independent copy (same layout, allocator state and contents)."""
        other = GuestRing(self.num, self.region_specs, self.uva_offset, [bytearray(b) for b in self.buffers])
        other._brk = self._brk
        other._next_desc = self._next_desc
        other.avail_shadow = self.avail_shadow
        return other

    def snapshot(self) -> list[bytes]:
        return [bytes(b) for b in self.buffers]

    def alloc(self, size: int, alignment: int = 8) -> int:
        gpa = align(self._brk, alignment)
        if gpa + size > self.data_end:
            raise MemoryError(f"test guest memory exhausted ({size} bytes wanted)")
        self._brk = gpa + size
        return gpa

    def write(self, gpa: int, data: bytes) -> None:
        self.mem.write(gpa, data)

    def read(self, gpa: int, length: int) -> bytes:
        return self.mem.read(gpa, length)

    def read_u16(self, gpa: int) -> int:
        return U16.unpack(self.read(gpa, 2))[0]

    def write_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, U16.pack(value & 0xFFFF))

    # -- rings --------------------------------------------------------------------------------
    def views(self) -> tuple[memoryview, memoryview, memoryview]:
        dsize, asize, usize = ring_sizes(self.num)
        return (
            self.mem.gpa_view(self.desc_gpa, dsize),
            self.mem.gpa_view(self.avail_gpa, asize),
            self.mem.gpa_view(self.used_gpa, usize),
        )

    def queue(self, cls: type, **kwargs: object) -> ring.VirtqueuePy:
        """A device-side queue of implementation *cls* over this ring."""
        return cls(self.mem, self.num, *self.views(), **kwargs)

    def set_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, table: int | None = None) -> None:
        """Write descriptor *i* of the main table, or of the table at gpa *table*."""
        if table is None:
            self.driver.write_desc(i, addr, length, flags, nxt)
        else:
            self.write(table + VRING_DESC_SIZE * i, DESC.pack(addr, length, flags, nxt))

    def get_desc(self, i: int, table: int | None = None) -> tuple[int, int, int, int]:
        if table is None:
            return self.driver.read_desc(i)
        return DESC.unpack(self.read(table + VRING_DESC_SIZE * i, VRING_DESC_SIZE))

    def alloc_descs(self, n: int) -> list[int]:
        if self._next_desc + n > self.num:
            raise MemoryError("descriptor table exhausted")
        out = list(range(self._next_desc, self._next_desc + n))
        self._next_desc += n
        return out

    def add_chain(
        self, readable: list[bytes] = (), writable: list[int] = (), indirect: bool = False, publish: bool = True
    ) -> ChainSpec:
        """Put the buffers in memory, describe them (directly or through one indirect table) and
        make the chain available. *readable* are contents, *writable* are sizes."""
        bufs: list[tuple[int, int, int]] = []  # gpa, length, flags
        spec = ChainSpec(-1)
        for data in readable:
            gpa = self.alloc(len(data))
            self.write(gpa, data)
            bufs.append((gpa, len(data), 0))
            spec.readable.append((gpa, len(data)))
        for size in writable:
            gpa = self.alloc(size)
            bufs.append((gpa, size, VRING_DESC_F_WRITE))
            spec.writable.append((gpa, size))
        if indirect:
            table = self.alloc(16 * len(bufs), 16)
            self.write_table(table, bufs)
            (head,) = self.alloc_descs(1)
            self.set_desc(head, table, 16 * len(bufs), VRING_DESC_F_INDIRECT)
        else:
            idx = self.alloc_descs(len(bufs))
            for k, (gpa, length, flags) in enumerate(bufs):
                last = k == len(bufs) - 1
                self.set_desc(
                    idx[k], gpa, length, flags | (0 if last else VRING_DESC_F_NEXT), 0 if last else idx[k + 1]
                )
            head = idx[0]
        spec.head = head
        if publish:
            self.publish(head)
        return spec

    def write_table(self, table: int, bufs: list[tuple[int, int, int]]) -> None:
        """Write an indirect table of chained descriptors (gpa, length, flags) at *table*."""
        for k, (gpa, length, flags) in enumerate(bufs):
            last = k == len(bufs) - 1
            self.set_desc(k, gpa, length, flags | (0 if last else VRING_DESC_F_NEXT), 0 if last else k + 1, table=table)
