# cython: language_level=3, cdivision=True, embedsignature=True
"""Split virtqueues in Cython: the compiled twin of ``vhostsuite/core/_ring_py.py``.

Same public API, same behaviour, same RingError messages; ``tests/test_ring_props.py`` drives
both over random and hostile rings. Design:

* A Virtqueue takes the region table of its GuestMemory at construction into C arrays and holds
  the regions' buffers (through private memoryview slices, so ``Region.release()`` still works),
  together with the buffers of the three ring areas. Regions added to or removed from the
  GuestMemory afterwards are not seen by that Virtqueue: make a new one after SET_MEM_TABLE.
* The descriptor walk, bounds checks and address translation are C loops over C arrays and
  pointers (no Cython-checked indexing on the hot path); every guest-controlled index or address
  is checked explicitly before it is dereferenced.
* The twin's contract: the same results and the same RingError messages. Arguments a caller got
  wrong raise here in Cython's own words (TypeError, OverflowError), not the twin's.
* A Chain is an array of (pointer, length) segments plus a reference to the buffers' holder;
  read/read_into/write are memcpy loops.
* Ring memory is little-endian (VIRTIO_F_VERSION_1); used-ring stores are ordered with a release
  fence before the index store, avail-ring loads with an acquire fence after the index load.
"""

cimport cython
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS, PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_Check
from cpython.number cimport PyNumber_Index
from cpython.pyport cimport PY_SSIZE_T_MAX, PY_SSIZE_T_MIN
from libc.stdint cimport uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

import struct

from .errors import RingError
from .virtio import ring_sizes  # noqa: F401 - also part of this module's API

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define VS_LE16(x) __builtin_bswap16(x)
    #define VS_LE32(x) __builtin_bswap32(x)
    #define VS_LE64(x) __builtin_bswap64(x)
    #else
    #define VS_LE16(x) (x)
    #define VS_LE32(x) (x)
    #define VS_LE64(x) (x)
    #endif

    static inline void vs_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    static inline void vs_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline void vs_fence_full(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

    /* Ring indices are shared with the driver: load/store them in one access when aligned. */
    static inline uint16_t vs_ld16(const char *p) {
        uint16_t v;
        if (((uintptr_t)p & 1) == 0)
            v = __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
        else
            memcpy(&v, p, 2);
        return VS_LE16(v);
    }
    static inline void vs_st16(char *p, uint16_t v) {
        v = VS_LE16(v);
        if (((uintptr_t)p & 1) == 0)
            __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELAXED);
        else
            memcpy(p, &v, 2);
    }
    static inline void vs_st_used_elem(char *p, uint32_t id, uint32_t len) {
        uint32_t w[2];
        w[0] = VS_LE32(id);
        w[1] = VS_LE32(len);
        memcpy(p, w, 8);
    }
    /* struct vring_desc: le64 addr, le32 len, le16 flags, le16 next (16 bytes, no padding). */
    typedef struct { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; } vs_desc;
    static inline void vs_ld_desc(const char *p, vs_desc *d) {
        memcpy(d, p, 16);
        d->addr = VS_LE64(d->addr);
        d->len = VS_LE32(d->len);
        d->flags = VS_LE16(d->flags);
        d->next = VS_LE16(d->next);
    }
    """
    ctypedef struct vs_desc:
        uint64_t addr
        uint32_t len
        uint16_t flags
        uint16_t next
    void vs_fence_acquire() noexcept nogil
    void vs_fence_release() noexcept nogil
    void vs_fence_full() noexcept nogil
    uint16_t vs_ld16(const char *p) noexcept nogil
    void vs_st16(char *p, uint16_t v) noexcept nogil
    void vs_st_used_elem(char *p, uint32_t id, uint32_t len) noexcept nogil
    void vs_ld_desc(const char *p, vs_desc *d) noexcept nogil


# -- SIGBUS from guest memory ----------------------------------------------------------------
#
# A front-end that shrinks a memory file under our mapping turns the next access into SIGBUS,
# which Python can't survive. The handler (async-signal-safe: write(2) and _exit(2) only) names
# the guest region the faulting address is in and exits with status 1. Regions are noted in a
# fixed table as memory.Region maps them and forgotten when it releases them.
cdef extern from *:
    """
    #include <signal.h>
    #include <unistd.h>
    #define VS_MAX_MAPS 64
    static struct { uintptr_t start, end; uint64_t gpa, size; } vs_maps[VS_MAX_MAPS];

    static char *vs_hex(char *p, uint64_t v) {
        char tmp[16]; int n = 0;
        do { tmp[n++] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v && n < 16);
        *p++ = '0'; *p++ = 'x';
        while (n) *p++ = tmp[--n];
        return p;
    }
    static char *vs_str(char *p, const char *s) { while (*s) *p++ = *s++; return p; }

    static void vs_on_sigbus(int sig, siginfo_t *si, void *uc) {
        char msg[256], *p = msg;
        uintptr_t a = (uintptr_t)si->si_addr;
        int i;
        (void)sig; (void)uc;
        p = vs_str(p, "vhostsuite: FATAL: guest memory vanished under the mapping (SIGBUS at ");
        p = vs_hex(p, a);
        for (i = 0; i < VS_MAX_MAPS; i++) {
            if (vs_maps[i].end && a >= vs_maps[i].start && a < vs_maps[i].end) {
                p = vs_str(p, ", region gpa=");
                p = vs_hex(p, vs_maps[i].gpa);
                p = vs_str(p, " size=");
                p = vs_hex(p, vs_maps[i].size);
                p = vs_hex(vs_str(p, ", at gpa "), vs_maps[i].gpa + (a - vs_maps[i].start));
                break;
            }
        }
        p = vs_str(p, "): the front-end shrank a memory file; exiting\\n");
        if (write(2, msg, p - msg) < 0) { /* nothing more to do */ }
        _exit(1);
    }
    static int vs_install_sigbus(void) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = vs_on_sigbus;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        return sigaction(SIGBUS, &sa, NULL);
    }
    static int vs_note_map(uintptr_t start, uint64_t len, uint64_t gpa) {
        int i;
        for (i = 0; i < VS_MAX_MAPS; i++)
            if (!vs_maps[i].end) {
                vs_maps[i].gpa = gpa; vs_maps[i].size = len; vs_maps[i].start = start;
                __atomic_store_n(&vs_maps[i].end, start + len, __ATOMIC_RELEASE);
                return 0;
            }
        return -1;
    }
    static void vs_forget_map(uintptr_t start) {
        int i;
        for (i = 0; i < VS_MAX_MAPS; i++)
            if (vs_maps[i].end && vs_maps[i].start == start)
                __atomic_store_n(&vs_maps[i].end, 0, __ATOMIC_RELEASE);
    }
    """
    int vs_install_sigbus() noexcept nogil
    int vs_note_map(uintptr_t start, uint64_t length, uint64_t gpa) noexcept nogil
    void vs_forget_map(uintptr_t start) noexcept nogil

cdef bint _sigbus_installed = False


def note_mapping(view, gpa, size):
    """Guest memory at *gpa* is mapped at *view*: a SIGBUS there names the region (and the
    handler is installed on the first call)."""
    global _sigbus_installed
    cdef Py_buffer b
    PyObject_GetBuffer(view, &b, PyBUF_SIMPLE)
    try:
        if not _sigbus_installed:
            if vs_install_sigbus() != 0:
                raise OSError("sigaction(SIGBUS) failed")
            _sigbus_installed = True
        vs_note_map(<uintptr_t>b.buf, <uint64_t>b.len, <uint64_t>gpa)  # a full table just names no region
    finally:
        PyBuffer_Release(&b)


def forget_mapping(view):
    """The region mapped at *view* is going away (a new table may map the same guest address
    elsewhere first: regions are told apart by where they are mapped)."""
    cdef Py_buffer b
    PyObject_GetBuffer(view, &b, PyBUF_SIMPLE)
    vs_forget_map(<uintptr_t>b.buf)
    PyBuffer_Release(&b)


cdef enum:
    _VIRTQUEUE_MAX_SIZE = 32768     # virtio spec 2.7 (no UAPI header defines it)
    _DESC_SIZE = sizeof(vring_desc)
    _USED_ELEM_SIZE = sizeof(vring_used_elem)

# Walk results.
cdef enum:
    _OK = 0
    _E_LOOP
    _E_NESTED
    _E_IND_NEXT
    _E_IND_LEN
    _E_IND_ENTRIES
    _E_IND_MEM
    _E_4G
    _E_BUF_MEM
    _E_RAW
    _E_NEXT
    _E_NOMEM

#: The constants as <linux/virtio_ring.h> defines them.
HEADER_CONSTANTS = {
    "VRING_DESC_F_NEXT": VRING_DESC_F_NEXT,
    "VRING_DESC_F_WRITE": VRING_DESC_F_WRITE,
    "VRING_DESC_F_INDIRECT": VRING_DESC_F_INDIRECT,
    "VRING_USED_F_NO_NOTIFY": VRING_USED_F_NO_NOTIFY,
    "VRING_AVAIL_F_NO_INTERRUPT": VRING_AVAIL_F_NO_INTERRUPT,
    "VIRTIO_RING_F_INDIRECT_DESC": VIRTIO_RING_F_INDIRECT_DESC,
    "VIRTIO_RING_F_EVENT_IDX": VIRTIO_RING_F_EVENT_IDX,
    "VRING_DESC_SIZE": sizeof(vring_desc),
    "VRING_USED_ELEM_SIZE": sizeof(vring_used_elem),
}
globals().update(HEADER_CONSTANTS)
VIRTQUEUE_MAX_SIZE = _VIRTQUEUE_MAX_SIZE

cdef object _U64_LIMIT = 1 << 64
cdef object _MASK16 = 0xFFFF
cdef object _MASK32 = 0xFFFFFFFF


cdef inline uint16_t _u16(object x) except? 0:
    """*x* modulo 2**16, for any int (what ``x & 0xFFFF`` gives in Python)."""
    cdef long long v
    if PyLong_Check(x):
        try:
            v = x
            return <uint16_t>v
        except OverflowError:
            pass
    return <uint16_t>(<long long>(x & _MASK16))


cdef inline uint32_t _u32(object x) except? 0:
    """*x* modulo 2**32, for any int (what ``x & 0xFFFFFFFF`` gives in Python)."""
    cdef long long v
    if PyLong_Check(x):
        try:
            v = x
            return <uint32_t>v
        except OverflowError:
            pass
    return <uint32_t>(<long long>(x & _MASK32))


cdef inline Py_ssize_t _ssize(object x) except? -1:
    """*x* as a Py_ssize_t, saturating huge ints (they compare and clip the same way)."""
    cdef Py_ssize_t v
    if not PyLong_Check(x):
        x = PyNumber_Index(x)
    try:
        v = x
    except OverflowError:
        return PY_SSIZE_T_MAX if x > 0 else PY_SSIZE_T_MIN
    return v


def vring_need_event(event_idx, new, old):
    """The virtio spec's vring_need_event() on free-running 16-bit indices."""
    cdef uint16_t e = _u16(event_idx), n = _u16(new), o = _u16(old)
    return <uint16_t>(n - e - 1) < <uint16_t>(n - o)


# -- guest memory ------------------------------------------------------------------------------

cdef inline Py_ssize_t _find(const _Region *rg, Py_ssize_t nr, uint64_t a) noexcept nogil:
    """Index of the region holding guest address *a*, or -1 (bisect on the sorted starts, as
    GuestMemory._find_gpa does)."""
    cdef Py_ssize_t lo = 0, hi = nr, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if rg[mid].start <= a:
            lo = mid + 1
        else:
            hi = mid
    lo -= 1
    if lo >= 0 and a - rg[lo].start < rg[lo].size:
        return lo
    return -1


cdef int _grow(_SegVec *v) noexcept nogil:
    cdef Py_ssize_t cap = v.cap * 2
    cdef _Seg *p
    if cap > (PY_SSIZE_T_MAX // <Py_ssize_t>sizeof(_Seg)):
        return -1
    if v.segs == v.inl:
        p = <_Seg *>malloc(cap * sizeof(_Seg))
        if p == NULL:
            return -1
        memcpy(p, v.segs, v.n * sizeof(_Seg))
    else:
        p = <_Seg *>realloc(v.segs, cap * sizeof(_Seg))
        if p == NULL:
            return -1
    v.segs = p
    v.cap = cap
    return 0


cdef int _map_range(const _Region *rg, Py_ssize_t nr, uint64_t addr, uint64_t length, _SegVec *v) noexcept nogil:
    """Append the segments of guest ``[addr, addr+length)`` to *v* (GuestMemory.gpa_views)."""
    cdef Py_ssize_t r
    cdef uint64_t off, n
    while length:
        r = _find(rg, nr, addr)
        if r < 0:
            return _E_BUF_MEM
        off = addr - rg[r].start
        n = rg[r].size - off
        if n > length:
            n = length
        if v.n == v.cap and _grow(v) < 0:
            return _E_NOMEM
        v.segs[v.n].ptr = rg[r].base + off
        v.segs[v.n].len = <Py_ssize_t>n
        v.segs[v.n].region = r
        v.n += 1
        length -= n
        addr += n
        if length and addr == 0:
            return _E_BUF_MEM       # ran off the top of the 64-bit address space
    return _OK


cdef int _walk(const char *desc, uint64_t num, const _Region *rg, Py_ssize_t nr, uint64_t head,
               _SegVec *v, uint64_t *rtotal, uint64_t *wtotal, _WalkErr *err) noexcept nogil:
    """Collect the chain starting at *head* (< num) into *v*; the checks and their order are
    those of _ring_py.Virtqueue._walk."""
    cdef const char *table = desc
    cdef uint64_t limit = num, count = 0, total = 0, i = head, off
    cdef bint indirect = False
    cdef vs_desc d
    cdef Py_ssize_t r
    cdef int rc
    cdef bint had_writable
    rtotal[0] = 0
    wtotal[0] = 0
    while True:
        if count >= limit:
            err.limit = limit
            return _E_LOOP
        count += 1
        vs_ld_desc(table + i * _DESC_SIZE, &d)      # i < limit: table holds limit descriptors
        if d.flags & VRING_DESC_F_INDIRECT:
            if indirect:
                return _E_NESTED
            if d.flags & VRING_DESC_F_NEXT:
                return _E_IND_NEXT
            if d.len == 0 or d.len % _DESC_SIZE:
                err.length = d.len
                return _E_IND_LEN
            if d.len // _DESC_SIZE > _VIRTQUEUE_MAX_SIZE:
                err.length = d.len // _DESC_SIZE
                return _E_IND_ENTRIES
            r = _find(rg, nr, d.addr)
            if r < 0 or d.len > rg[r].size - (d.addr - rg[r].start):
                err.addr = d.addr
                err.length = d.len
                return _E_IND_MEM
            table = rg[r].base + (d.addr - rg[r].start)
            limit = d.len // _DESC_SIZE
            indirect = True
            count = 0
            i = 0
            continue
        total += d.len
        if total > 0xFFFFFFFFU:
            return _E_4G
        had_writable = v.n > v.nread
        if d.len:
            rc = _map_range(rg, nr, d.addr, d.len, v)
            if rc:
                err.addr = d.addr
                err.length = d.len
                return rc
        if d.flags & VRING_DESC_F_WRITE:
            wtotal[0] += d.len
        elif had_writable:
            return _E_RAW
        else:
            v.nread = v.n
            rtotal[0] += d.len
        if not d.flags & VRING_DESC_F_NEXT:
            return _OK
        if d.next >= limit:
            err.index = d.next
            err.limit = limit
            return _E_NEXT
        i = d.next


cdef int _acquire(object obj, Py_buffer *hold, int flags, char **ptr, Py_ssize_t *length) except -1:
    """Get *obj*'s memory as (*ptr*, *length*), raising as PyObject_GetBuffer(obj, flags) does,
    and keep it valid with *hold* until PyBuffer_Release(hold).

    For a memoryview, *hold* is a buffer of the object it views (a bytearray, an mmap) when that
    covers the same memory: an export of the memoryview itself would make the garbage collector's
    tp_clear of that memoryview fail (BufferError) when a queue and its views die in a cycle.
    """
    cdef Py_buffer tmp
    PyObject_GetBuffer(obj, &tmp, flags)
    ptr[0] = <char *>tmp.buf
    length[0] = tmp.len
    if type(obj) is memoryview:
        base = obj.obj
        if base is not None and type(base) is not memoryview:
            try:
                PyObject_GetBuffer(base, hold, PyBUF_SIMPLE)
            except Exception:
                pass
            else:
                if <char *>hold.buf <= ptr[0] and ptr[0] + tmp.len <= <char *>hold.buf + hold.len:
                    PyBuffer_Release(&tmp)
                    return 0
                PyBuffer_Release(hold)
    hold[0] = tmp
    return 0


cdef class _Mem:
    def __cinit__(self):
        self.regions = NULL
        self.bufs = NULL
        self.n = 0
        self.nbufs = 0
        self.views = []

    def __dealloc__(self):
        cdef Py_ssize_t k
        if self.bufs != NULL:
            for k in range(self.nbufs):
                PyBuffer_Release(&self.bufs[k])
            free(self.bufs)
        free(self.regions)

    cdef int _alloc(self, Py_ssize_t n) except -1:
        self.regions = <_Region *>malloc((n if n else 1) * sizeof(_Region))
        self.bufs = <Py_buffer *>malloc((n if n else 1) * sizeof(Py_buffer))
        if self.regions == NULL or self.bufs == NULL:
            raise MemoryError()
        return 0

    cdef int _hold(self, object view, uint64_t start) except -1:
        """Hold *view*'s memory (writable if the view is) as region ``self.n``."""
        cdef char *ptr
        cdef Py_ssize_t length
        cdef bint ro = False
        try:
            _acquire(view, &self.bufs[self.nbufs], PyBUF_WRITABLE, &ptr, &length)
        except (BufferError, TypeError):
            _acquire(view, &self.bufs[self.nbufs], PyBUF_SIMPLE, &ptr, &length)
            ro = True
        self.nbufs += 1
        self.views.append(view)
        self.regions[self.n].start = start
        self.regions[self.n].size = <uint64_t>length
        self.regions[self.n].base = ptr
        self.regions[self.n].readonly = ro
        self.n += 1
        return 0


cdef _Mem _mem_from_regions(object regions):
    """Snapshot of GuestMemory.regions: (gpa, size, view) clipped to [0, 2**64) and to the view."""
    cdef list rs = list(regions)
    cdef _Mem m = _Mem.__new__(_Mem)
    m._alloc(len(rs))
    for r in rs:
        gpa = r.gpa
        mv = memoryview(r.view)
        if mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B")
        start = max(gpa, 0)
        end = min(gpa + r.size, _U64_LIMIT, gpa + len(mv))
        if end < start or start >= _U64_LIMIT:
            continue        # wholly outside the 64-bit guest address space: no address reaches it
        m._hold(mv[start - gpa : end - gpa], <uint64_t>start)
    return m


cdef _Mem _mem_from_views(list views):
    """A holder whose regions are the given views (for Chain(head, readable, writable))."""
    cdef _Mem m = _Mem.__new__(_Mem)
    m._alloc(len(views))
    for v in views:
        m._hold(v, 0)
    return m


# -- chains ------------------------------------------------------------------------------------

@cython.freelist(64)
cdef class Chain:
    """One descriptor chain: the device-readable buffers, then the device-writable ones.

    The buffers are ranges of guest memory; ``read`` gathers and ``write`` scatters without
    intermediate copies.
    """

    def __cinit__(self):
        self._v.segs = self._inl
        self._v.inl = self._inl
        self._v.n = 0
        self._v.cap = 8
        self._v.nread = 0

    def __dealloc__(self):
        if self._v.segs != self._v.inl:
            free(self._v.segs)

    def __init__(self, head, readable, writable):
        cdef Py_ssize_t k, n
        if self._mem is not None:
            # Its segments may be in use by a copy running without the GIL.
            raise RuntimeError("Chain is already initialised")
        if self._v.segs != self._v.inl:
            free(self._v.segs)
        self._v.segs = self._inl
        self._v.cap = 8
        self._v.n = self._v.nread = 0
        views = list(readable) + list(writable)
        self._mem = _mem_from_views(views)
        for k in range(len(views)):
            if self._v.n == self._v.cap and _grow(&self._v) < 0:
                raise MemoryError()
            self._v.segs[k].ptr = self._mem.regions[k].base
            self._v.segs[k].len = <Py_ssize_t>self._mem.regions[k].size
            self._v.segs[k].region = k
            self._v.n += 1
        self._v.nread = len(readable)
        self._rviews = readable
        self._wviews = writable
        self.head = head
        self.read_size = sum([len(v) for v in readable])
        self.write_size = sum([len(v) for v in writable])
        n = 0
        for k in range(self._v.nread):
            n += self._v.segs[k].len
        self._rtotal = n
        self.written = 0

    cdef list _views(self, Py_ssize_t a, Py_ssize_t b):
        cdef list out = []
        cdef list views
        cdef _Seg *s
        cdef Py_ssize_t k, off
        if a >= b:
            return out
        views = self._mem.views
        for k in range(a, b):
            s = &self._v.segs[k]
            off = s.ptr - self._mem.regions[s.region].base
            out.append(views[s.region][off : off + s.len])
        return out

    def readable(self):
        if self._rviews is not None:
            return list(self._rviews)
        return self._views(0, self._v.nread)

    def writable(self):
        if self._wviews is not None:
            return list(self._wviews)
        return self._views(self._v.nread, self._v.n)

    cdef Py_ssize_t _gather(self, char *dst, Py_ssize_t want, Py_ssize_t offset) noexcept nogil:
        """Copy up to *want* bytes of the readable part from *offset* (>= 0) to *dst*."""
        cdef Py_ssize_t k, n, pos = 0, done = 0, start, take
        cdef _Seg *s
        for k in range(self._v.nread):
            s = &self._v.segs[k]
            n = s.len
            if n > offset - pos and done < want:
                start = offset - pos if offset > pos else 0
                take = n - start
                if take > want - done:
                    take = want - done
                memcpy(dst + done, s.ptr + start, take)
                done += take
            pos += n
            if done >= want:
                break
        return done

    cdef Py_ssize_t _scatter(self, const char *src, Py_ssize_t total, Py_ssize_t offset,
                             Py_ssize_t *done_out) noexcept nogil:
        """Copy *total* bytes to the writable part at *offset* (>= 0); returns the index of a
        read-only segment it stopped at, or -1."""
        cdef Py_ssize_t k, n, pos = 0, done = 0, start, take
        cdef _Seg *s
        cdef Py_ssize_t rc = -1
        for k in range(self._v.nread, self._v.n):
            s = &self._v.segs[k]
            n = s.len
            if n > offset - pos + done and done < total:
                start = offset - pos + done
                take = n - start
                if take > total - done:
                    take = total - done
                if self._mem.regions[s.region].readonly:
                    rc = k
                    break
                memcpy(s.ptr + start, src + done, take)
                done += take
            pos += n
            if done >= total:
                break
        done_out[0] = done
        return rc

    def read(self, size=-1, offset=0):
        """Up to *size* bytes (all with -1) of the readable part, from *offset*."""
        cdef Py_ssize_t off = _ssize(offset), sz = _ssize(size), end, n
        if off < 0:
            raise ValueError("negative offset")
        if sz < 0:
            end = self.read_size
        else:
            end = off + sz if sz <= PY_SSIZE_T_MAX - off else PY_SSIZE_T_MAX
            if end > self.read_size:
                end = self.read_size
        if end > self._rtotal:
            end = self._rtotal
        n = end - off
        if n <= 0:
            return b""
        out = PyBytes_FromStringAndSize(NULL, n)
        cdef char *dst = PyBytes_AS_STRING(out)
        if n >= NOGIL_COPY:
            with nogil:
                self._gather(dst, n, off)
        else:
            self._gather(dst, n, off)
        return out

    def read_into(self, buf, offset=0):
        """Gather into *buf* from *offset* of the readable part; returns bytes copied."""
        cdef Py_buffer b
        cdef Py_ssize_t off = _ssize(offset), done
        if off < 0:
            raise ValueError("negative offset")
        try:
            PyObject_GetBuffer(buf, &b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
        except (BufferError, TypeError):
            # What the reference does, for its exceptions (not a buffer, not contiguous) ...
            dst = memoryview(buf).cast("B")
            # ... or, for a read-only buffer, a failed store unless there is nothing to copy.
            if len(dst) and off < self._rtotal:
                raise TypeError("cannot modify read-only memory") from None
            return 0
        try:
            if b.len >= NOGIL_COPY:
                with nogil:
                    done = self._gather(<char *>b.buf, b.len, off)
            else:
                done = self._gather(<char *>b.buf, b.len, off)
        finally:
            PyBuffer_Release(&b)
        return done

    def write(self, data, offset=0):
        """Scatter *data* into the writable part at *offset*; returns bytes written (clipped)."""
        cdef Py_buffer b
        cdef Py_ssize_t off = _ssize(offset), done = 0, bad
        if off < 0:
            raise ValueError("negative offset")
        try:
            PyObject_GetBuffer(data, &b, PyBUF_C_CONTIGUOUS)
        except (BufferError, TypeError):
            data = memoryview(data).cast("B").tobytes()     # the reference's exception, if any
            PyObject_GetBuffer(data, &b, PyBUF_SIMPLE)
        try:
            if b.len >= NOGIL_COPY:
                with nogil:
                    bad = self._scatter(<const char *>b.buf, b.len, off, &done)
            else:
                bad = self._scatter(<const char *>b.buf, b.len, off, &done)
        finally:
            PyBuffer_Release(&b)
        if bad >= 0:
            raise TypeError("cannot modify read-only memory")
        if done:
            if off > PY_SSIZE_T_MAX - done:
                self.written = PY_SSIZE_T_MAX
            elif off + done > self.written:
                self.written = off + done
        return done


# -- queues ------------------------------------------------------------------------------------

cdef inline int _check_init(Virtqueue vq) except -1:
    if vq._rings is None:
        raise ValueError("Virtqueue.__init__ was not called")
    return 0


cdef class Virtqueue:
    """A split virtqueue in guest memory, as seen by the device."""

    def __init__(self, mem, num, desc, avail, used, last_avail_idx=0, event_idx=False):
        if not 1 <= num <= _VIRTQUEUE_MAX_SIZE or num & (num - 1):
            raise RingError(f"queue size {num} is not a power of 2 in 1..{_VIRTQUEUE_MAX_SIZE}")
        dsize, asize, usize = ring_sizes(num)
        if len(desc) < dsize or len(avail) < asize or len(used) < usize:
            raise RingError("ring areas are smaller than the queue size needs")
        cdef _Mem rings = _mem_from_views([desc, avail, used])
        if (<Py_ssize_t>rings.regions[0].size < dsize or <Py_ssize_t>rings.regions[1].size < asize
                or <Py_ssize_t>rings.regions[2].size < usize):
            raise RingError("ring areas are smaller than the queue size needs")
        self._rings = rings
        self._desc = rings.regions[0].base
        self._avail = rings.regions[1].base
        self._used = rings.regions[2].base
        self._used_ro = rings.regions[2].readonly
        self._used_obj = used
        self._m = _mem_from_regions(mem.regions)
        self.mem = mem
        self.num = num
        self.event_idx = event_idx
        self._last_avail = _u16(last_avail_idx)
        #: Re-read from guest memory: it is what the driver saw last (e.g. across a reboot).
        self._used_idx = vs_ld16(self._used + 2)
        self._signalled_used = self._used_idx
        self._signalled_valid = False

    @property
    def last_avail_idx(self):
        return self._last_avail

    @last_avail_idx.setter
    def last_avail_idx(self, value):
        self._last_avail = _u16(value)

    @property
    def used_idx(self):
        return self._used_idx

    @used_idx.setter
    def used_idx(self, value):
        self._used_idx = _u16(value)

    cdef int _check_used_writable(self) except -1:
        if self._used_ro:
            raise TypeError("used ring is read-only")
        return 0

    # -- avail side -------------------------------------------------------------------------

    def avail_idx(self):
        _check_init(self)
        return vs_ld16(self._avail + 2)

    cdef Py_ssize_t _pending(self) except -1:
        _check_init(self)
        cdef uint16_t idx = vs_ld16(self._avail + 2)
        cdef uint16_t n = <uint16_t>(idx - self._last_avail)
        vs_fence_acquire()      # ring entries are read after the index that published them
        if n > self.num:
            idx = vs_ld16(self._avail + 2)
            raise RingError(f"avail index {idx} is {n} ahead of {self._last_avail} (queue size {self.num})")
        return n

    def pending(self):
        """Chains the driver has made available that we have not popped."""
        return self._pending()

    def pop(self):
        """The next available chain, or None. Raises RingError for a malformed ring."""
        return self._pop()

    def pop_batch(self, Py_ssize_t max_chains, Py_ssize_t max_bytes):
        """What pop() repeated gives, up to *max_chains* chains or until their buffers add up
        to *max_bytes* (at least one chain if any is available), as a list. Stopped by the
        budget with nothing left, it asks for the next kick as pop() does on an empty ring."""
        cdef list out = []
        cdef Py_ssize_t nbytes = 0
        cdef Chain c
        while len(out) < max_chains and (nbytes < max_bytes or not out):
            chain = self._pop()
            if chain is None:
                return out
            c = <Chain>chain
            out.append(c)
            nbytes += c.read_size + c.write_size
        if self.event_idx and self._pending() == 0:
            self._check_used_writable()
            vs_st16(self._used + 4 + _USED_ELEM_SIZE * self.num, self._last_avail)
            vs_fence_full()
        return out

    def serve(self, handler, Py_ssize_t max_chains, Py_ssize_t max_bytes):
        """Pop chains and answer them with *handler*, within the budget of :meth:`pop_batch`.

        Each chain goes to ``handler(chain)``; a bytes-like answer is written at the start of
        its writable part, then the chain is pushed (None: pushed with what the handler wrote).
        It stops at an empty ring, at the budget, when :attr:`paused` is set (after pushing the
        chain whose handler set it), when :attr:`detached` is set (that chain is not pushed),
        or at an answer that is neither None nor bytes-like, which is returned with its chain,
        unpushed (the core's PENDING). Returns ``(chains handled, whether any was pushed, that
        chain or None, its answer or None)``. An exception from *handler* propagates; its chain
        was popped and not pushed.
        """
        cdef Py_ssize_t handled = 0, nbytes = 0, done, n
        cdef bint pushed = False
        cdef Chain c
        _check_init(self)
        while handled < max_chains and (nbytes < max_bytes or handled == 0):
            if self.paused or self.detached:
                return handled, pushed, None, None
            chain = self._pop()
            if chain is None:
                return handled, pushed, None, None
            c = <Chain>chain
            handled += 1
            nbytes += c.read_size + c.write_size
            response = handler(c)
            if self.detached:  # the ring went while the handler ran: nothing goes to it
                return handled, pushed, None, None
            if response is not None:
                if PyBytes_CheckExact(response) and PyBytes_GET_SIZE(response) < NOGIL_COPY:
                    # the common answer (a GPU response, a small read): one scatter, no buffer export
                    n = PyBytes_GET_SIZE(response)
                    if c._scatter(PyBytes_AS_STRING(response), n, 0, &done) >= 0:
                        raise TypeError("cannot modify read-only memory")
                    if done > c.written:
                        c.written = done
                elif PyObject_CheckBuffer(response):
                    c.write(response)
                else:
                    return handled, pushed, c, response
            self._push_c(<uint32_t>c.head, <uint32_t>c.written)
            pushed = True
        if self.event_idx and self._pending() == 0:
            self._check_used_writable()
            vs_st16(self._used + 4 + _USED_ELEM_SIZE * self.num, self._last_avail)
            vs_fence_full()
        return handled, pushed, None, None

    def unpop(self, Py_ssize_t n):
        """Give back the *n* chains popped last (none of them pushed): they are popped again."""
        _check_init(self)
        if n < 0 or n > 0xFFFF:
            raise ValueError(f"can't give back {n} chains")
        self._last_avail = <uint16_t>(self._last_avail - n)

    cdef object _pop(self):
        cdef uint16_t head
        cdef Chain chain
        cdef int rc
        cdef uint64_t rtotal, wtotal
        if self._pending() == 0:
            if self.event_idx:
                # Ask for a kick at the next buffer, then look again to close the race.
                self._check_used_writable()
                vs_st16(self._used + 4 + _USED_ELEM_SIZE * self.num, self._last_avail)
                vs_fence_full()
                if self._pending() == 0:
                    return None
            else:
                return None
        head = vs_ld16(self._avail + 4 + 2 * (self._last_avail % self.num))
        if head >= self.num:
            raise RingError(f"avail ring entry {head} is outside the queue (size {self.num})")
        chain = Chain.__new__(Chain)
        chain._mem = self._m
        rc = _walk(self._desc, self.num, self._m.regions, self._m.n, head, &chain._v, &rtotal, &wtotal, &self._err)
        if rc != _OK:
            self._raise(rc, head)
        chain.head = head
        chain.read_size = <Py_ssize_t>rtotal
        chain._rtotal = <Py_ssize_t>rtotal
        chain.write_size = <Py_ssize_t>wtotal
        chain.written = 0
        self._last_avail += 1
        return chain

    cdef int _raise(self, int rc, uint16_t head) except -1:
        cdef _WalkErr *e = &self._err
        if rc == _E_LOOP:
            msg = f"descriptor chain from {head} is longer than its table ({e.limit}): a loop?"
        elif rc == _E_NESTED:
            msg = f"nested indirect table in chain {head}"
        elif rc == _E_IND_NEXT:
            msg = f"indirect descriptor with NEXT in chain {head}"
        elif rc == _E_IND_LEN:
            msg = f"indirect table of {e.length} bytes in chain {head}"
        elif rc == _E_IND_ENTRIES:
            msg = f"indirect table of {e.length} entries in chain {head}"
        elif rc == _E_IND_MEM:
            msg = f"indirect table {e.addr:#x}+{e.length:#x} outside guest memory in chain {head}"
        elif rc == _E_4G:
            msg = f"chain {head} is longer than 4 GiB"
        elif rc == _E_BUF_MEM:
            msg = f"buffer {e.addr:#x}+{e.length:#x} outside guest memory in chain {head}"
        elif rc == _E_RAW:
            msg = f"readable descriptor after a writable one in chain {head}"
        elif rc == _E_NEXT:
            msg = f"next index {e.index} outside the table ({e.limit}) in chain {head}"
        else:
            raise MemoryError()
        raise RingError(msg)

    # -- used side --------------------------------------------------------------------------

    def push(self, chain, length=None):
        """Return *chain* to the driver with *length* bytes written (default: ``chain.written``)."""
        cdef Chain c
        if type(chain) is Chain:
            c = <Chain>chain
            self._push(c.head, c.written if length is None else length)
        else:
            self._push(chain.head, chain.written if length is None else length)

    def push_head(self, head, length):
        self._push(head, length)

    cdef int _push(self, object head, object length) except -1:
        _check_init(self)
        cdef uint32_t ln = _u32(length)
        cdef long long h
        self._check_used_writable()
        h = -1
        if PyLong_Check(head):
            try:
                h = head
            except OverflowError:
                pass
        if h < 0 or h > 0xFFFFFFFF:
            raise OverflowError(f"used element id {head!r} out of range")
        return self._push_c(<uint32_t>h, ln)

    cdef int _push_c(self, uint32_t head, uint32_t length) except -1:
        cdef uint32_t slot = self._used_idx % self.num
        self._check_used_writable()
        vs_st_used_elem(self._used + 4 + _USED_ELEM_SIZE * slot, head, length)
        self._used_idx += 1
        vs_fence_release()      # the element is visible before the index that publishes it
        vs_st16(self._used + 2, self._used_idx)
        return 0

    def request_kick(self):
        """Ask for a kick when the driver next makes buffers available, even if some already are.

        With EVENT_IDX this sets avail_event to the current avail index (re-read until it is
        stable, at most 8 times, so a driver that added buffers meanwhile is not missed); without
        it the driver kicks on every addition anyway.
        """
        cdef uint16_t idx
        cdef int tries
        _check_init(self)
        if not self.event_idx:
            return
        for tries in range(8):  # bounded: a guest that keeps moving its index must not spin us
            idx = vs_ld16(self._avail + 2)
            vs_st16(self._used + 4 + _USED_ELEM_SIZE * self.num, idx)
            vs_fence_full()     # the store is seen before we look at the driver's index again
            if vs_ld16(self._avail + 2) == idx:
                return

    def need_notify(self):
        """Whether the driver wants an interrupt for what was pushed since the last call."""
        cdef uint16_t new = self._used_idx, old = self._signalled_used, used_event
        cdef bint valid = self._signalled_valid
        _check_init(self)
        self._signalled_used = new
        self._signalled_valid = True
        if new == old:
            return False
        vs_fence_full()     # our used-index store is ordered before the loads of the driver's flags
        if self.event_idx:
            used_event = vs_ld16(self._avail + 4 + 2 * self.num)
            return not valid or <uint16_t>(new - used_event - 1) < <uint16_t>(new - old)
        return not (vs_ld16(self._avail) & VRING_AVAIL_F_NO_INTERRUPT)
