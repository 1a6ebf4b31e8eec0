# Declarations of the compiled split-virtqueue core (vhostsuite/core/_ring.pyx), and the rules
# every compiled module of vhostsuite follows.
#
# Other Cython modules ``cimport`` from here (vhostsuite/devices/gpu/_pixels.pyx takes the GIL
# rule); Python code uses the public API (Chain, Virtqueue, ring_sizes, vring_need_event),
# whose results and RingError messages match vhostsuite/core/_ring_py.py exactly.

from libc.stdint cimport uint16_t, uint32_t, uint64_t


# The GIL rule: a copy of guest memory (gather, scatter, a pixel rectangle) runs without the
# GIL when it moves at least NOGIL_COPY bytes, and keeps it below that, where releasing and
# taking it back costs more than the copy. Code without the GIL touches only C memory whose
# buffers are held (a Py_buffer or a holder object) for the whole copy; every check of a
# guest-controlled value is done before, with the GIL.
cdef enum:
    NOGIL_COPY = 256 * 1024


cdef extern from "linux/virtio_ring.h":
    # The one source of truth for the ring constants and layouts (a unit test checks that
    # vhostsuite/virtio.py agrees).
    enum:
        VRING_DESC_F_NEXT
        VRING_DESC_F_WRITE
        VRING_DESC_F_INDIRECT
        VRING_USED_F_NO_NOTIFY
        VRING_AVAIL_F_NO_INTERRUPT
        VIRTIO_RING_F_INDIRECT_DESC
        VIRTIO_RING_F_EVENT_IDX

    struct vring_desc:
        pass

    struct vring_used_elem:
        pass


# One mapped guest region, clipped to [0, 2**64) and to the length of its buffer.
cdef struct _Region:
    uint64_t start      # guest-physical address of base[0]
    uint64_t size       # bytes readable at base
    char *base
    bint readonly


# One piece of a descriptor chain: a contiguous range inside one region.
cdef struct _Seg:
    char *ptr
    Py_ssize_t len
    Py_ssize_t region   # index into the owning _Mem's tables


# A growable array of segments; starts in storage inline in the Chain.
cdef struct _SegVec:
    _Seg *segs
    _Seg *inl
    Py_ssize_t n
    Py_ssize_t cap
    Py_ssize_t nread    # segs[:nread] are device-readable, segs[nread:n] device-writable


# Details of a malformed ring, turned into the RingError message with the GIL held.
cdef struct _WalkErr:
    uint64_t addr
    uint64_t length
    uint64_t index
    uint64_t limit


cdef class _Mem:
    """Holds the buffers of guest memory regions (or of a Chain's own views) for as long as
    any Virtqueue or Chain points into them."""
    cdef _Region *regions
    cdef Py_buffer *bufs
    cdef Py_ssize_t n           # entries of regions (and views)
    cdef Py_ssize_t nbufs       # acquired entries of bufs
    cdef list views             # memoryviews whose buffers we hold; sliced by Chain.readable()

    cdef int _alloc(self, Py_ssize_t n) except -1
    cdef int _hold(self, object view, uint64_t start) except -1


cdef class Chain:
    cdef public Py_ssize_t head
    cdef public Py_ssize_t read_size
    cdef public Py_ssize_t write_size
    cdef public Py_ssize_t written
    cdef _Mem _mem
    cdef _SegVec _v
    cdef Py_ssize_t _rtotal     # actual bytes of the readable part
    cdef object _rviews         # the lists given to Chain(...), else None
    cdef object _wviews
    cdef _Seg _inl[8]

    cdef list _views(self, Py_ssize_t a, Py_ssize_t b)
    cdef Py_ssize_t _gather(self, char *dst, Py_ssize_t want, Py_ssize_t offset) noexcept nogil
    cdef Py_ssize_t _scatter(self, const char *src, Py_ssize_t total, Py_ssize_t offset,
                             Py_ssize_t *done) noexcept nogil


cdef class Virtqueue:
    cdef readonly object mem
    cdef readonly unsigned int num
    cdef public bint event_idx
    # serve() stops: after the chain whose handler set paused (it is pushed), or detached (not pushed)
    cdef public bint paused
    cdef public bint detached
    cdef uint16_t _last_avail
    cdef uint16_t _used_idx
    cdef uint16_t _signalled_used
    cdef bint _signalled_valid
    cdef _Mem _m               # the guest memory regions
    cdef _Mem _rings           # desc, avail, used (a Py_buffer in a cdef class field would be
                               # cleared by Cython's tp_clear before __dealloc__ could release it)
    cdef bint _used_ro
    cdef const char *_desc
    cdef const char *_avail
    cdef char *_used
    cdef object _used_obj
    cdef _WalkErr _err

    cdef int _check_used_writable(self) except -1
    cdef int _raise(self, int rc, uint16_t head) except -1
    cdef Py_ssize_t _pending(self) except -1
    cdef object _pop(self)
    cdef int _push(self, object head, object length) except -1
    cdef int _push_c(self, uint32_t head, uint32_t length) except -1
