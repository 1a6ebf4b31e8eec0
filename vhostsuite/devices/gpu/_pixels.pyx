# cython: language_level=3, cdivision=True
"""Pixel copies in Cython: same API and errors as ``_pixels_py`` (the pure-Python reference).

The checks are done on Python integers (no overflow) before any pointer is touched; the
copies then run under the GIL rule of ``vhostsuite/core/_ring.pxd``.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from cpython.exc cimport PyErr_SetFromErrno

from vhostsuite.core._ring cimport NOGIL_COPY

# The swizzle numbers and the argument checks are the reference's own: one place for both.
from ._pixels_py import check_rect
from .wire import SWIZZLE_BSWAP, SWIZZLE_NONE, SWIZZLE_ROTATE, SWIZZLE_SWAP02

# The permutation numbers, from wire.py, as C values for the copy loops.
cdef int _NONE = SWIZZLE_NONE, _BSWAP = SWIZZLE_BSWAP, _SWAP02 = SWIZZLE_SWAP02, _ROTATE = SWIZZLE_ROTATE


cdef class PageList:
    """A list of byte buffers (guest pages) seen as one contiguous range of ``total`` bytes."""

    cdef Py_buffer* _bufs
    cdef Py_ssize_t* _starts
    cdef Py_ssize_t _n
    cdef public object total

    def __cinit__(self, views):
        views = list(views)
        cdef Py_ssize_t n = len(views)
        cdef Py_ssize_t i
        cdef Py_ssize_t pos = 0
        self._n = 0
        self._bufs = <Py_buffer*>malloc(max(n, 1) * sizeof(Py_buffer))
        self._starts = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        if self._bufs == NULL or self._starts == NULL:
            raise MemoryError()
        for i in range(n):
            PyObject_GetBuffer(views[i], &self._bufs[i], PyBUF_SIMPLE)
            self._n = i + 1
            self._starts[i] = pos
            pos += self._bufs[i].len
        self._starts[n] = pos
        self.total = pos

    def __dealloc__(self):
        self._release()

    cdef void _release(self):
        cdef Py_ssize_t i
        if self._bufs != NULL:
            for i in range(self._n):
                PyBuffer_Release(&self._bufs[i])
            free(self._bufs)
            self._bufs = NULL
        if self._starts != NULL:
            free(self._starts)
            self._starts = NULL
        self._n = 0

    def __len__(self):
        return self._n

    def release(self):
        self._release()
        self.total = 0

    cdef void _gather(self, Py_ssize_t offset, uint8_t* dst, Py_ssize_t n) noexcept nogil:
        # binary search for the last page starting at or before offset
        cdef Py_ssize_t lo = 0, hi = self._n - 1, mid, i, start, take
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if self._starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        i = lo
        while n > 0 and i < self._n:
            start = offset - self._starts[i]
            take = self._bufs[i].len - start
            if take > n:
                take = n
            if take > 0:
                memcpy(dst, <uint8_t*>self._bufs[i].buf + start, take)
                dst += take
                offset += take
                n -= take
            i += 1

    def gather(self, offset, dst):
        cdef Py_buffer d
        check_rect(self.total, offset, 0, len(memoryview(dst).cast("B")), 1, "gather")
        PyObject_GetBuffer(dst, &d, PyBUF_WRITABLE)
        try:
            self._gather(offset, <uint8_t*>d.buf, d.len)
        finally:
            PyBuffer_Release(&d)


def copy_rect(PageList pages, src_offset, src_stride, dst, dst_offset, dst_stride, row_bytes, rows):
    """Copy *rows* rows of *row_bytes* from the page list into *dst* (both strided)."""
    cdef Py_buffer d
    PyObject_GetBuffer(dst, &d, PyBUF_WRITABLE)
    try:
        check_rect(pages.total, src_offset, src_stride, row_bytes, rows, "source")
        check_rect(d.len, dst_offset, dst_stride, row_bytes, rows, "destination")
        _copy_rect(pages, src_offset, src_stride, <uint8_t*>d.buf, dst_offset, dst_stride, row_bytes, rows)
    finally:
        PyBuffer_Release(&d)


cdef void _copy_rect(PageList pages, Py_ssize_t so, Py_ssize_t ss, uint8_t* d, Py_ssize_t do, Py_ssize_t ds,
                     Py_ssize_t rb, Py_ssize_t rows) noexcept:
    if rows == 0 or rb == 0:
        return
    if rb * rows >= NOGIL_COPY:
        with nogil:
            _copy_rows(pages, so, ss, d, do, ds, rb, rows)
    else:
        _copy_rows(pages, so, ss, d, do, ds, rb, rows)


cdef void _copy_rows(PageList pages, Py_ssize_t so, Py_ssize_t ss, uint8_t* d, Py_ssize_t do, Py_ssize_t ds,
                     Py_ssize_t rb, Py_ssize_t rows) noexcept nogil:
    cdef Py_ssize_t r
    if rb == ss and rb == ds:
        pages._gather(so, d + do, rb * rows)
    else:
        for r in range(rows):
            pages._gather(so + r * ss, d + do + r * ds, rb)


def swizzle_rect(int kind, src, src_offset, src_stride, dst, dst_offset, dst_stride, width, rows):
    """Copy *width* x *rows* 32-bit pixels from *src* to *dst*, permuting each pixel's bytes."""
    cdef Py_buffer s, d
    if kind != _NONE and kind != _BSWAP and kind != _SWAP02 and kind != _ROTATE:
        raise ValueError(f"unknown swizzle {kind}")
    if width < 0:
        raise ValueError("negative width")
    PyObject_GetBuffer(src, &s, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(dst, &d, PyBUF_WRITABLE)
        try:
            check_rect(s.len, src_offset, src_stride, width * 4, rows, "source")
            check_rect(d.len, dst_offset, dst_stride, width * 4, rows, "destination")
            _swizzle(kind, <const uint8_t*>s.buf + <Py_ssize_t>src_offset, src_stride,
                     <uint8_t*>d.buf + <Py_ssize_t>dst_offset, dst_stride, width, rows)
        finally:
            PyBuffer_Release(&d)
    finally:
        PyBuffer_Release(&s)


cdef inline uint32_t _perm(int kind, uint32_t v) noexcept nogil:
    cdef uint32_t b0 = v & 0xFFU, b1 = (v >> 8) & 0xFFU, b2 = (v >> 16) & 0xFFU, b3 = v >> 24
    if kind == _BSWAP:  # A R G B -> B G R A
        return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
    elif kind == _SWAP02:  # R G B A -> B G R A
        return (b3 << 24) | (b0 << 16) | (b1 << 8) | b2
    else:  # A B G R -> B G R A  (bytes 1,2,3,0)
        return (b0 << 24) | (b3 << 16) | (b2 << 8) | b1


cdef void _swizzle(int kind, const uint8_t* s, Py_ssize_t ss, uint8_t* d, Py_ssize_t ds,
                   Py_ssize_t width, Py_ssize_t rows) noexcept:
    if rows == 0 or width == 0:
        return
    if width * 4 * rows >= NOGIL_COPY:
        with nogil:
            _swizzle_rows(kind, s, ss, d, ds, width, rows)
    else:
        _swizzle_rows(kind, s, ss, d, ds, width, rows)


cdef void _swizzle_rows(int kind, const uint8_t* s, Py_ssize_t ss, uint8_t* d, Py_ssize_t ds,
                        Py_ssize_t width, Py_ssize_t rows) noexcept nogil:
    cdef Py_ssize_t r, x
    cdef uint32_t v
    cdef const uint8_t* sp
    cdef uint8_t* dp
    if kind == _NONE:
        if ss == ds and ss == width * 4:
            memcpy(d, s, width * 4 * rows)
        else:
            for r in range(rows):
                memcpy(d + r * ds, s + r * ss, width * 4)
        return
    for r in range(rows):
        sp = s + r * ss
        dp = d + r * ds
        for x in range(width):
            memcpy(&v, sp + 4 * x, 4)
            v = _perm(kind, v)
            memcpy(dp + 4 * x, &v, 4)


cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<fcntl.h>" nogil:
    # vmsplice(2) (_GNU_SOURCE, which Cython's generated C defines)
    ssize_t c_vmsplice "vmsplice" (int fd, const iovec *iov, size_t nr_segs, unsigned int flags)
    enum:
        SPLICE_F_NONBLOCK

def vmsplice(int fd, data):
    """Hand the pages of *data* (a bytes-like view of memory that stays mapped) to the pipe *fd*
    by reference, without blocking; the bytes moved. The kernel keeps the pages: what the pipe
    holds is what they hold when the pipe's reader takes it (never freed memory)."""
    cdef Py_buffer b
    cdef iovec v
    cdef ssize_t n
    PyObject_GetBuffer(data, &b, PyBUF_SIMPLE)
    try:
        if b.len == 0:
            return 0
        v.iov_base = b.buf
        v.iov_len = <size_t>b.len
        n = c_vmsplice(fd, &v, 1, SPLICE_F_NONBLOCK)
        if n < 0:
            PyErr_SetFromErrno(OSError)
        return n
    finally:
        PyBuffer_Release(&b)
