"""Pixel copies in pure Python: the reference the Cython ``_pixels`` module is checked against.

* :class:`PageList` is a resource's backing: guest pages scattered over guest memory, seen
  as one linear byte range.
* :func:`copy_rect` copies a rectangle of rows from a PageList into a resource's pixels.
* :func:`swizzle_rect` copies a rectangle of 32-bit pixels applying one of the four byte
  permutations (``vhostsuite.devices.gpu.wire.SWIZZLE_*``) that turn the eight virtio-gpu
  formats into B,G,R,A/X bytes (x8r8g8b8 on a little-endian host).

Both modules expose the same API and raise the same errors for out-of-range arguments.
"""

from __future__ import annotations

import bisect
import os

from .wire import SWIZZLE_BSWAP, SWIZZLE_NONE, SWIZZLE_ROTATE, SWIZZLE_SWAP02


def check_rect(total: int, offset: int, stride: int, row_bytes: int, rows: int, what: str) -> None:
    """Raise ValueError unless ``rows`` rows of ``row_bytes`` at ``offset + k*stride`` fit in ``total``."""
    if offset < 0 or stride < 0 or row_bytes < 0 or rows < 0:
        raise ValueError(f"{what}: negative offset, stride or size")
    if rows == 0 or row_bytes == 0:
        return
    if row_bytes > stride and rows > 1:
        raise ValueError(f"{what}: rows of {row_bytes} bytes overlap with stride {stride}")
    if offset + stride * (rows - 1) + row_bytes > total:
        raise ValueError(f"{what}: rectangle ends past the buffer ({total} bytes)")


class PageList:
    """A list of byte buffers (guest pages) seen as one contiguous range of ``total`` bytes."""

    def __init__(self, views) -> None:  # noqa: ANN001 - any buffers
        self._views = [memoryview(v).cast("B") for v in views]
        self._starts = []
        pos = 0
        for v in self._views:
            self._starts.append(pos)
            pos += len(v)
        self.total = pos

    def __len__(self) -> int:
        return len(self._views)

    def gather(self, offset: int, dst: memoryview) -> None:
        """Fill *dst* from ``[offset, offset+len(dst))`` of the range (caller checked bounds)."""
        n = len(dst)
        i = bisect.bisect_right(self._starts, offset) - 1
        done = 0
        while done < n:
            v = self._views[i]
            start = offset + done - self._starts[i]
            take = min(len(v) - start, n - done)
            dst[done : done + take] = v[start : start + take]
            done += take
            i += 1

    def release(self) -> None:
        for v in self._views:
            v.release()
        self._views = []
        self._starts = []
        self.total = 0


def copy_rect(
    pages: PageList,
    src_offset: int,
    src_stride: int,
    dst,  # noqa: ANN001 - writable buffer
    dst_offset: int,
    dst_stride: int,
    row_bytes: int,
    rows: int,
) -> None:
    """Copy *rows* rows of *row_bytes* from the page list into *dst* (both strided)."""
    d = memoryview(dst).cast("B")
    check_rect(pages.total, src_offset, src_stride, row_bytes, rows, "source")
    check_rect(len(d), dst_offset, dst_stride, row_bytes, rows, "destination")
    if rows == 0 or row_bytes == 0:
        return
    if row_bytes == src_stride == dst_stride:
        pages.gather(src_offset, d[dst_offset : dst_offset + row_bytes * rows])
        return
    for r in range(rows):
        o = dst_offset + r * dst_stride
        pages.gather(src_offset + r * src_stride, d[o : o + row_bytes])


def swizzle_rect(
    kind: int,
    src,  # noqa: ANN001 - buffer
    src_offset: int,
    src_stride: int,
    dst,  # noqa: ANN001 - writable buffer
    dst_offset: int,
    dst_stride: int,
    width: int,
    rows: int,
) -> None:
    """Copy *width* x *rows* 32-bit pixels from *src* to *dst*, permuting each pixel's bytes."""
    if kind not in (SWIZZLE_NONE, SWIZZLE_BSWAP, SWIZZLE_SWAP02, SWIZZLE_ROTATE):
        raise ValueError(f"unknown swizzle {kind}")
    s = memoryview(src).cast("B")
    d = memoryview(dst).cast("B")
    if width < 0:
        raise ValueError("negative width")
    n = width * 4
    check_rect(len(s), src_offset, src_stride, n, rows, "source")
    check_rect(len(d), dst_offset, dst_stride, n, rows, "destination")
    if rows == 0 or n == 0:
        return
    if kind == SWIZZLE_NONE:
        perm = (0, 1, 2, 3)
    elif kind == SWIZZLE_BSWAP:
        perm = (3, 2, 1, 0)
    elif kind == SWIZZLE_SWAP02:
        perm = (2, 1, 0, 3)
    else:
        perm = (1, 2, 3, 0)
    for r in range(rows):
        so = src_offset + r * src_stride
        do = dst_offset + r * dst_stride
        srow = s[so : so + n]
        drow = d[do : do + n]
        if kind == SWIZZLE_NONE:
            drow[:] = srow
            continue
        tmp = bytearray(n)
        for k in range(4):
            tmp[k::4] = srow[perm[k] :: 4]
        drow[:] = tmp


def vmsplice(fd: int, data) -> int:  # noqa: ANN001 - any bytes-like object
    """Put *data* into the pipe *fd* without blocking; the bytes moved. The reference copies
    them (os.write); the compiled module hands the pages over by reference (vmsplice(2))."""
    return os.write(fd, data)
