"""2D resources and what they cost: creation, backing pages in guest memory, transfers.

Resources keep their pixels in the guest's format (raw bytes, stride ``width*4``), as QEMU
does. Every resource is charged against ``--max-hostmem`` what it costs: its pixels, its
objects (:data:`RESOURCE_COST`) and its backing entries.
Guest pages are copied by :mod:`vhostsuite.devices.gpu.pixels` (Cython). Every command is checked before
it touches anything: ids, formats, rectangles (Python integers, so no overflow), backing
entries and addresses.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence

from ...core import logger
from ...core.errors import GuestMemoryError
from ...core.guestlog import GuestLog
from . import commands as K
from . import pixels
from . import wire as W

#: typing.TYPE_CHECKING without importing typing (every start pays for it otherwise).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...core.memory import GuestMemory, Region

log = logger.get("vhostsuite.gpu")
guest_log = GuestLog(log)

#: What a backing entry costs against --max-hostmem (its views and bookkeeping).
BACKING_ENTRY_COST = 256
#: What a resource costs against --max-hostmem besides its pixels: its objects (measured with
#: tracemalloc: 809 bytes for a 1x1 resource, dict entry included), rounded up.
RESOURCE_COST = 1024
#: Resources this large keep their pixels in a mapping of their own (``Resource.shared``); a
#: guest can make at most ``--max-hostmem`` / SHARED_MIN of them (each one mapping).
SHARED_MIN = 256 * 1024
_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)
#: Private: shared anonymous memory is shmem, which gets no transparent huge pages by default.
_PRIVATE = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


class Resource:
    """A 2D resource: its pixels here, its backing pages in guest memory."""

    #: A 3D resource (:class:`.virgl.Resource3D`): the renderer holds its contents.
    three_d = False

    __slots__ = (
        "id",
        "format",
        "width",
        "height",
        "stride",
        "data",
        "view",
        "swizzle",
        "alpha",
        "shared",
        "backing",
        "backing_runs",
        "backing_regions",
        "backing_cost",
        "scanouts",
    )

    def __init__(self, rid: int, fmt: int, width: int, height: int) -> None:
        self.id = rid
        self.format = fmt
        self.width = width
        self.height = height
        self.stride = width * W.BYTES_PER_PIXEL
        self.swizzle, self.alpha = W.FORMATS[fmt]
        size = self.stride * height
        self.set_pixels(size)
        self.backing: pixels.PageList | None = None
        #: The backing's guest-physical (address, length) runs, and the regions they lie in.
        self.backing_runs: list[tuple[int, int]] = []
        self.backing_regions: frozenset[Region] = frozenset()
        self.backing_cost = 0
        #: The scanouts showing this resource.
        self.scanouts: set[int] = set()

    def set_pixels(self, size: int) -> None:
        """Pixel memory of *size* bytes (``data``, ``view``, ``shared``)."""
        #: The pixels are an anonymous mapping of their own (large resources), not heap memory:
        #: the display channel may hand their pages to the kernel by reference, since pages the
        #: kernel holds stay valid (and are never another object's) after the resource is gone.
        self.shared = size >= SHARED_MIN
        self.data = mmap.mmap(-1, size, flags=_PRIVATE) if self.shared else bytearray(size)
        if self.shared and _HUGEPAGE is not None:
            # Transparent huge pages where the host allows them (madvise mode is the default):
            # a 1080p transfer touches 4 pages of the resource instead of 2048, and TLB misses
            # under nested paging are dear (measured: frames +8-10%, back-end CPU -7%).
            try:
                self.data.madvise(_HUGEPAGE)
            except OSError:  # THP disabled: small pages
                pass
        self.view = memoryview(self.data)

    @property
    def size(self) -> int:
        """What it is charged against --max-hostmem (its backing aside)."""
        return len(self.data) + RESOURCE_COST

    def contains(self, x: int, y: int, w: int, h: int) -> bool:
        return x + w <= self.width and y + h <= self.height

    def drop_backing(self) -> None:
        if self.backing is not None:
            self.backing.release()
            self.backing = None
        self.backing_runs = []
        self.backing_regions = frozenset()
        self.backing_cost = 0

    def close(self) -> None:
        """The resource is gone: release what it holds besides its pixels (nothing, in 2D)."""

    def map_backing(self, runs: list[tuple[int, int]], mem: GuestMemory) -> None:
        """Point the backing at *runs* of *mem*; GuestMemoryError if one is not mapped."""
        pieces = [piece for addr, length in runs for piece in mem.gpa_pieces(addr, length)]
        backing = pixels.PageList([view for _, view in pieces])
        if self.backing is not None:
            self.backing.release()
        self.backing = backing
        self.backing_runs = runs
        self.backing_regions = frozenset(region for region, _ in pieces)


class Resources:
    """The guest's resources by id, and the host memory they are charged."""

    def __init__(self, max_hostmem: int, on_destroy: Callable[[Resource], None]) -> None:
        self.max_hostmem = max_hostmem
        self.hostmem = 0
        #: Part of the cap set aside for buffers the device itself keeps (the scanouts' staging).
        self.reserved = 0
        self.by_id: dict[int, Resource] = {}
        #: Called before a resource goes (its scanouts are disabled there).
        self._on_destroy = on_destroy
        #: TRANSFER_TO_HOST_2D of a 3D resource (set when the device serves 3D).
        self.transfer_3d: Callable[[int, int, int, int, int, Resource], K.Reply] | None = None

    def fits(self, size: int) -> bool:
        return self.hostmem + self.reserved + size <= self.max_hostmem

    def charge(self, size: int) -> bool:
        """Charge *size* bytes (negative: give them back); False, and nothing charged, if over the cap."""
        if size > 0 and not self.fits(size):
            return False
        self.hostmem += size
        return True

    def add(self, res: Resource) -> None:
        """A resource made elsewhere (3D), charged what it costs (checked with :meth:`fits`)."""
        self.by_id[res.id] = res
        self.hostmem += res.size

    def get(self, rid: int) -> Resource | None:
        return self.by_id.get(rid)

    def create_2d(self, rid: int, format: int, width: int, height: int) -> K.Reply:
        if rid == 0 or rid in self.by_id:
            return K.ERR_INVALID_RESOURCE_ID
        if format not in W.FORMATS or width == 0 or height == 0:
            return K.ERR_INVALID_PARAMETER
        size = width * height * W.BYTES_PER_PIXEL + RESOURCE_COST
        if not self.fits(size):
            guest_log.warn("max-hostmem", "resource %d of %d bytes: over --max-hostmem (%d of %d in use)", rid, size,
                           self.hostmem + self.reserved, self.max_hostmem)
            return K.ERR_OUT_OF_MEMORY
        try:
            res = Resource(rid, format, width, height)
        except (MemoryError, OSError) as e:  # OSError: mmap's ENOMEM (memory, or vm.max_map_count)
            guest_log.warn("max-hostmem", "resource %d of %d bytes: the host has no memory for it (%s)", rid, size, e)
            return K.ERR_OUT_OF_MEMORY
        self.by_id[rid] = res
        self.hostmem += size
        return K.OK_NODATA

    def unref(self, rid: int, padding: int = 0) -> K.Reply:
        res = self.by_id.get(rid)
        if res is None:
            return K.ERR_INVALID_RESOURCE_ID
        self.destroy(res)
        return K.OK_NODATA

    def destroy(self, res: Resource) -> None:
        self._on_destroy(res)
        self.hostmem -= res.size + res.backing_cost
        res.drop_backing()
        res.close()
        del self.by_id[res.id]

    def clear(self) -> None:
        for res in list(self.by_id.values()):
            res.scanouts.clear()
            self.destroy(res)
        self.hostmem = 0

    def attach_backing(self, rid: int, entries: list[tuple[int, int]], mem: GuestMemory | None) -> K.Reply:
        """*entries*: (guest address, length) of each backing entry, in order."""
        res = self.by_id.get(rid)
        if res is None:
            return K.ERR_INVALID_RESOURCE_ID
        if res.backing is not None or mem is None:
            return K.ERR_UNSPEC
        cost = len(entries) * BACKING_ENTRY_COST
        if not self.fits(cost):
            return K.ERR_OUT_OF_MEMORY
        # merge physically contiguous entries: fewer pieces to walk on every transfer
        runs: list[tuple[int, int]] = []
        for addr, length in entries:
            if not length:
                continue
            if runs and runs[-1][0] + runs[-1][1] == addr:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((addr, length))
        try:
            res.map_backing(runs, mem)
        except GuestMemoryError as e:
            guest_log.warn("backing", "resource %d: backing refused: %s", res.id, e)
            return K.ERR_UNSPEC
        res.backing_cost = cost
        self.hostmem += cost
        return K.OK_NODATA

    def detach_backing(self, rid: int, padding: int = 0) -> K.Reply:
        res = self.by_id.get(rid)
        if res is None or res.backing is None:
            return K.ERR_INVALID_RESOURCE_ID
        self.hostmem -= res.backing_cost
        res.drop_backing()
        return K.OK_NODATA

    def memory_removed(self, regions: Sequence[Region], mem: GuestMemory) -> None:
        """The front-end removed *regions*: a backing with pages there is looked up again in
        what is left (*mem*), and detached if that fails, so later transfers get
        ERR_INVALID_RESOURCE_ID and nothing keeps the old mapping."""
        gone = frozenset(regions)
        detached = []
        for res in self.by_id.values():
            if res.backing is None or res.backing_regions.isdisjoint(gone):
                continue
            try:
                res.map_backing(res.backing_runs, mem)
            except GuestMemoryError:
                detached.append(res.id)
                self.hostmem -= res.backing_cost
                res.drop_backing()
        if detached:  # one line, however many
            log.info("%d resource backings were in memory the front-end removed and are detached (first: %s)",
                     len(detached), detached[:8])  # fmt: skip

    def transfer_to_host_2d(self, x: int, y: int, w: int, h: int, offset: int, rid: int, padding: int = 0) -> K.Reply:
        res = self.by_id.get(rid)
        if res is None or res.backing is None:
            return K.ERR_INVALID_RESOURCE_ID
        if not res.contains(x, y, w, h):
            return K.ERR_INVALID_PARAMETER
        if res.three_d:
            if self.transfer_3d is None:
                return K.ERR_INVALID_RESOURCE_ID
            return self.transfer_3d(x, y, w, h, offset, res)
        if w == 0 or h == 0:
            return K.OK_NODATA
        stride = res.stride
        try:
            pixels.copy_rect(res.backing, offset, stride, res.data, y * stride + x * 4, stride, w * 4, h)
        except ValueError as e:
            guest_log.warn("transfer", "resource %d: transfer refused: %s", res.id, e)
            return K.ERR_INVALID_PARAMETER
        return K.OK_NODATA
