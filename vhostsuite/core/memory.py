"""Guest memory: the regions the front-end shares with us, mapped and bounds-checked.

Every address the guest or the front-end gives us goes through :meth:`GuestMemory.gpa_view`
or :meth:`GuestMemory.uva_view`, which return a view only when the whole range lies inside one
mapped region. Nothing else indexes the mappings.
"""

from __future__ import annotations

import bisect
import mmap
import os
import stat

from .. import NO_EXTENSIONS
from .errors import GuestMemoryError
from .protocol import MemRegion

_PAGE = mmap.PAGESIZE


class Region:
    """One mapped region: guest-physical and front-end-virtual ranges over one mapping.

    Compared by identity: two mappings of the same range are two regions."""

    __slots__ = ("gpa", "size", "uva", "mm", "view", "source")

    def __init__(
        self,
        gpa: int,
        size: int,
        uva: int,
        mm: mmap.mmap | None,
        view: memoryview,
        source: tuple[int, int, int] | None = None,
    ) -> None:
        self.gpa = gpa
        self.size = size
        self.uva = uva
        self.mm = mm
        self.view = view
        #: What the region maps: (st_dev, st_ino, mmap_offset) of its file; None for our own memory.
        self.source = source

    def __repr__(self) -> str:
        return f"Region(gpa={self.gpa:#x}, size={self.size:#x}, uva={self.uva:#x}, source={self.source})"

    @property
    def gpa_end(self) -> int:
        return self.gpa + self.size

    @property
    def uva_end(self) -> int:
        return self.uva + self.size

    @classmethod
    def map(cls, desc: MemRegion, fd: int) -> Region:
        """Map *desc* from *fd* (shared, read-write). The caller keeps ownership of *fd*."""
        if desc.memory_size == 0:
            raise GuestMemoryError("memory region of size 0")
        if desc.guest_phys_addr + desc.memory_size > 1 << 64 or desc.userspace_addr + desc.memory_size > 1 << 64:
            raise GuestMemoryError("memory region wraps around the address space")
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise GuestMemoryError(f"region gpa={desc.guest_phys_addr:#x}: {e.strerror}") from e
        end = desc.mmap_offset + desc.memory_size
        if stat.S_ISREG(st.st_mode) and st.st_size < end:
            # Touching the part past the file's end would kill us with SIGBUS.
            raise GuestMemoryError(
                f"region gpa={desc.guest_phys_addr:#x} size={desc.memory_size:#x} needs {end} bytes of its "
                f"memory file, which has {st.st_size}"
            )
        file_off = desc.mmap_offset - desc.mmap_offset % _PAGE
        skip = desc.mmap_offset - file_off
        try:
            mm = mmap.mmap(
                fd, desc.memory_size + skip, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=file_off
            )
        except (OSError, ValueError, OverflowError) as e:
            raise GuestMemoryError(
                f"cannot map region gpa={desc.guest_phys_addr:#x} size={desc.memory_size:#x}: {e}"
            ) from e
        view = memoryview(mm)[skip : skip + desc.memory_size]
        source = (st.st_dev, st.st_ino, desc.mmap_offset)
        region = cls(desc.guest_phys_addr, desc.memory_size, desc.userspace_addr, mm, view, source)
        _note_mapping(view, desc.guest_phys_addr, desc.memory_size)
        return region

    @classmethod
    def from_buffer(cls, gpa: int, uva: int, buf: bytearray | mmap.mmap) -> Region:
        """A region over memory we own (the test front-end, tests)."""
        view = memoryview(buf).cast("B")
        return cls(gpa, len(view), uva, buf if isinstance(buf, mmap.mmap) else None, view)

    def release(self) -> None:
        """Drop our references; the mapping goes away when no view of it is left anywhere."""
        if self.mm is not None:
            _forget_mapping(self.view)
        self.view.release()
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:
                pass  # a chain still holds a view; the mapping is freed with it
        self.mm = None

    def same_range(self, desc: MemRegion) -> bool:
        return self.gpa == desc.guest_phys_addr and self.size == desc.memory_size and self.uva == desc.userspace_addr

    def maps(self, desc: MemRegion, fd: int) -> bool:
        """Whether *desc* over *fd* is exactly this region: same ranges, same file, same offset."""
        if self.source is None or not self.same_range(desc):
            return False
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        return self.source == (st.st_dev, st.st_ino, desc.mmap_offset)


class GuestMemory:
    """The set of mapped regions, sorted by guest-physical address, never overlapping."""

    def __init__(self, regions: list[Region] | None = None, max_regions: int = 512) -> None:
        self.max_regions = max_regions
        self._regions: list[Region] = []
        self._starts: list[int] = []
        for r in regions or ():
            self.add(r)

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(self._regions)

    def __len__(self) -> int:
        return len(self._regions)

    def add(self, region: Region) -> None:
        """Add *region*; refuses one that overlaps an existing region in either address space."""
        if len(self._regions) >= self.max_regions:
            raise GuestMemoryError(f"more than {self.max_regions} memory regions")
        for r in self._regions:
            if region.gpa < r.gpa_end and r.gpa < region.gpa_end:
                raise GuestMemoryError(f"region at gpa {region.gpa:#x} overlaps region at {r.gpa:#x}")
            if region.uva < r.uva_end and r.uva < region.uva_end:
                raise GuestMemoryError(f"region at uva {region.uva:#x} overlaps region at {r.uva:#x}")
        i = bisect.bisect(self._starts, region.gpa)
        self._regions.insert(i, region)
        self._starts.insert(i, region.gpa)

    def pop(self, desc: MemRegion) -> Region | None:
        """Take out the region matching *desc* (gpa, size, uva), still mapped; None if none does.
        The caller releases it once the device has dropped its references into it."""
        for i, r in enumerate(self._regions):
            if r.same_range(desc):
                del self._regions[i]
                del self._starts[i]
                return r
        return None

    def clear(self) -> None:
        for r in self._regions:
            r.release()
        self._regions.clear()
        self._starts.clear()

    def _find_gpa(self, gpa: int) -> Region | None:
        i = bisect.bisect(self._starts, gpa) - 1
        if i >= 0:
            r = self._regions[i]
            if gpa < r.gpa_end:
                return r
        return None

    def gpa_view(self, gpa: int, length: int) -> memoryview:
        """A view of guest-physical ``[gpa, gpa+length)``, which must lie in one region."""
        r = self._find_gpa(gpa)
        if r is None or length < 0 or gpa + length > r.gpa_end:
            raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is not in mapped memory")
        off = gpa - r.gpa
        return r.view[off : off + length]

    def gpa_views(self, gpa: int, length: int) -> list[memoryview]:
        """Views of ``[gpa, gpa+length)`` that may span adjacent regions."""
        return [view for _, view in self.gpa_pieces(gpa, length)]

    def gpa_pieces(self, gpa: int, length: int) -> list[tuple[Region, memoryview]]:
        """Like :meth:`gpa_views`, each view with the region it lies in."""
        out = []
        while length > 0:
            r = self._find_gpa(gpa)
            if r is None:
                raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is not in mapped memory")
            off = gpa - r.gpa
            n = min(length, r.size - off)
            out.append((r, r.view[off : off + n]))
            gpa += n
            length -= n
        return out

    def uva_to_gpa(self, uva: int) -> int:
        for r in self._regions:
            if r.uva <= uva < r.uva_end:
                return uva - r.uva + r.gpa
        raise GuestMemoryError(f"front-end address {uva:#x} is not in mapped memory")

    def uva_view(self, uva: int, length: int) -> memoryview:
        """A view of front-end-virtual ``[uva, uva+length)`` (ring addresses use these)."""
        for r in self._regions:
            if r.uva <= uva < r.uva_end and length >= 0 and uva + length <= r.uva_end:
                off = uva - r.uva
                return r.view[off : off + length]
        raise GuestMemoryError(f"front-end range {uva:#x}+{length:#x} is not in mapped memory")

    def read(self, gpa: int, length: int) -> bytes:
        return b"".join(bytes(v) for v in self.gpa_views(gpa, length))

    def write(self, gpa: int, data: bytes) -> None:
        pos = 0
        for v in self.gpa_views(gpa, len(data)):
            v[:] = data[pos : pos + len(v)]
            pos += len(v)


def close_fds(fds: tuple[int, ...] | list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _no_sigbus_report(*args: object) -> None:
    pass


# A front-end that shrinks a memory file under our mapping makes the next access a SIGBUS. The
# compiled core reports it naming the region (and exits 1); the pure twins leave it to
# faulthandler (enabled by the programs), which says "Bus error" and where.
_note_mapping = _forget_mapping = _no_sigbus_report
if not NO_EXTENSIONS:
    try:
        from ._ring import forget_mapping as _forget_mapping  # noqa: F811
        from ._ring import note_mapping as _note_mapping  # noqa: F811
    except ImportError:
        pass
