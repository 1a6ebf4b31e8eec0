"""The driver side of a split virtqueue over test guest memory, for ring tests and benchmarks.

``GuestRing`` lays out one queue (descriptor table, avail ring, used ring) at the start of a
bytearray-backed GuestMemory, hands out buffer space with a bump allocator, and writes
descriptors and avail entries the way a virtio driver does. Everything is little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..core import ring
from ..core.memory import GuestMemory, Region
from ..core.virtio import VRING_DESC as DESC
from ..core.virtio import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
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
        dsize, asize, usize = ring.ring_sizes(num)
        self.desc_gpa = base
        self.avail_gpa = base + dsize
        self.used_gpa = align(self.avail_gpa + asize, 4)
        self.data_gpa = align(self.used_gpa + usize, 64)
        self.data_end = base + self.region_specs[0][1]
        self._brk = self.data_gpa
        self._next_desc = 0
        #: The driver's avail index (written to the ring by publish()).
        self.avail_shadow = self.read_u16(self.avail_gpa + 2)

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
        dsize, asize, usize = ring.ring_sizes(self.num)
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
        base = self.desc_gpa if table is None else table
        self.write(base + 16 * i, DESC.pack(addr, length, flags, nxt))

    def get_desc(self, i: int, table: int | None = None) -> tuple[int, int, int, int]:
        base = self.desc_gpa if table is None else table
        return DESC.unpack(self.read(base + 16 * i, 16))

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

    def publish(self, *heads: int) -> None:
        """Add *heads* to the avail ring and advance its index (one store per entry, then the index)."""
        for head in heads:
            self.write_u16(self.avail_gpa + 4 + 2 * (self.avail_shadow % self.num), head)
            self.avail_shadow = (self.avail_shadow + 1) & 0xFFFF
        self.write_u16(self.avail_gpa + 2, self.avail_shadow)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_shadow = idx & 0xFFFF
        self.write_u16(self.avail_gpa + 2, idx)

    def set_avail_entry(self, slot: int, head: int) -> None:
        self.write_u16(self.avail_gpa + 4 + 2 * slot, head)

    def set_avail_flags(self, flags: int) -> None:
        self.write_u16(self.avail_gpa, flags)

    def set_used_event(self, value: int) -> None:
        self.write_u16(self.avail_gpa + 4 + 2 * self.num, value)

    def used_flags(self) -> int:
        return self.read_u16(self.used_gpa)

    def used_idx(self) -> int:
        return self.read_u16(self.used_gpa + 2)

    def set_used_idx(self, value: int) -> None:
        self.write_u16(self.used_gpa + 2, value)

    def used_elem(self, slot: int) -> tuple[int, int]:
        return USED_ELEM.unpack(self.read(self.used_gpa + 4 + 8 * slot, 8))

    def avail_event(self) -> int:
        return self.read_u16(self.used_gpa + 4 + 8 * self.num)
