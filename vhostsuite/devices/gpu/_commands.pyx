# cython: language_level=3
"""The compiled twins of :func:`.commands.decode_control` and :func:`.commands.encode`: the
header and the body of a fixed-size control command read straight from the bytes the chain
gave, into the same typed values, with no ``struct`` call and no lookup but one table index;
the response header written straight into the response. Every control command comes this way.

The layouts are not written here: at import, the ``struct`` formats of ``wire.CTRL_HDR`` and of
``commands.CONTROL_LAYOUTS`` (their one home) are turned into a table of field widths and
offsets. Commands outside the table (ATTACH_BACKING, the rest) go on to
:func:`.commands.decode_other`, as in the pure-Python twin.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

from . import commands as K
from . import wire as W

cdef extern from *:
    """
    #include <endian.h>
    #include <string.h>
    static inline uint32_t vhs_le32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
    static inline uint64_t vhs_le64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }
    static inline void vhs_put32(unsigned char *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
    static inline void vhs_put64(unsigned char *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }
    /* An empty instance of the tuple type cls with n items, as tuple.__new__(cls, ...) makes
       one but without the tuple of values it would copy from. */
    static inline PyObject *vhs_tuple_of(PyObject *cls, Py_ssize_t n) {
        return ((PyTypeObject *) cls)->tp_alloc((PyTypeObject *) cls, n);
    }
    """
    uint32_t vhs_le32(const unsigned char *p) nogil
    uint64_t vhs_le64(const unsigned char *p) nogil
    void vhs_put32(unsigned char *p, uint32_t v) nogil
    void vhs_put64(unsigned char *p, uint64_t v) nogil
    object vhs_tuple_of(object cls, Py_ssize_t n)

DEF MAX_FIELDS = 16
#: Control command types are 0x01nn (2D) and 0x02nn (3D); the table covers nn < TYPES of both.
DEF TYPES = 32

cdef struct Layout:
    int size                            # bytes the command needs, header included (0: not in the table)
    int nfields
    unsigned char width[MAX_FIELDS]     # 1, 4 or 8 bytes, little-endian
    unsigned char offset[MAX_FIELDS]    # from the start of what it describes


cdef Layout _header
cdef Layout _table[2][TYPES]
#: The command types, where _table has a layout: [2][TYPES] in one list (None elsewhere).
cdef list _classes = [None] * (2 * TYPES)
cdef int _hdr_size = W.CTRL_HDR.size
cdef Py_ssize_t _read_ahead = K.READ_AHEAD
cdef object _decode_other = K.decode_other
cdef tuple _no_header = K.NO_HEADER
cdef object _bad = K.ERR_INVALID_PARAMETER
cdef object _ok_nodata = K.OK_NODATA
cdef bytes _nodata_bytes = K.NODATA_BYTES
cdef uint32_t _FENCE = W.VIRTIO_GPU_FLAG_FENCE
cdef uint32_t _RING_IDX = W.VIRTIO_GPU_FLAG_INFO_RING_IDX


cdef int _compile(Layout *lay, str fmt, int base) except -1:
    """Fill *lay* from a little-endian ``struct`` format of I, Q, B and x (a count may precede each),
    its fields starting at byte *base*."""
    if not fmt.startswith("<"):
        raise ValueError(f"{fmt!r}: not a little-endian layout")
    cdef int pos = base, count, width
    lay.nfields = 0
    digits = ""
    for ch in fmt[1:]:
        if ch.isdigit():
            digits += ch
            continue
        count = int(digits) if digits else 1
        digits = ""
        if ch == "x":
            pos += count
            continue
        width = {"I": 4, "Q": 8, "B": 1}.get(ch, 0)
        if width == 0:
            raise ValueError(f"{fmt!r}: field {ch!r} is not decoded here")
        for _ in range(count):
            if lay.nfields == MAX_FIELDS:
                raise ValueError(f"{fmt!r}: more than {MAX_FIELDS} fields")
            lay.width[lay.nfields] = width
            lay.offset[lay.nfields] = pos - base
            lay.nfields += 1
            pos += width
    lay.size = pos
    return 0


cdef Layout *_lookup(uint32_t ctype) noexcept:
    cdef uint32_t kind = (ctype >> 8) - 1, index = ctype & 0xFF
    if ctype > 0xFFFF or kind > 1 or index >= TYPES:
        return NULL
    cdef Layout *lay = &_table[kind][index]
    return lay if lay.size else NULL


cdef object _fields(const Layout *lay, const unsigned char *p, object cls=None):
    """The fields at *p*, as a tuple, or as an instance of the tuple type *cls*."""
    cdef object t = PyTuple_New(lay.nfields) if cls is None else vhs_tuple_of(cls, lay.nfields)
    cdef object v
    cdef int i
    for i in range(lay.nfields):
        if lay.width[i] == 4:
            v = vhs_le32(p + lay.offset[i])
        elif lay.width[i] == 8:
            v = vhs_le64(p + lay.offset[i])
        else:
            v = p[lay.offset[i]]
        Py_INCREF(v)  # PyTuple_SET_ITEM steals a reference
        PyTuple_SET_ITEM(t, i, v)
    return t


def _build() -> None:
    _compile(&_header, W.CTRL_HDR.format, 0)
    if _header.size != _hdr_size:
        raise ValueError("the header layout and its size disagree")
    cdef Layout *lay
    for ctype, (layout, cls) in K.CONTROL_LAYOUTS.items():
        kind, index = (ctype >> 8) - 1, ctype & 0xFF
        if not (0 <= kind <= 1 and index < TYPES):
            raise ValueError(f"command type {ctype:#x} is outside the table")
        lay = &_table[kind][index]
        if not issubclass(cls, tuple):
            raise TypeError(f"command type {ctype:#x}: {cls.__name__} is not a tuple type")
        _compile(lay, layout.format, _hdr_size)
        if lay.size != W.COMMAND_SIZES[ctype]:
            raise ValueError(f"command type {ctype:#x}: the layout and COMMAND_SIZES disagree")
        _classes[kind * TYPES + index] = cls


_build()


def decode_control(chain) -> tuple:
    """The control-queue command in *chain*, or the error Reply it gets (as the pure twin)."""
    cdef bytes raw = chain.read(_read_ahead)  # the header and any fixed-size body in one read
    cdef Py_ssize_t n = len(raw)
    if n < _hdr_size:
        return _no_header, _bad
    cdef const unsigned char *p = <const unsigned char *> <char *> raw
    cdef tuple hdr = <tuple> _fields(&_header, p)
    cdef uint32_t ctype = vhs_le32(p)
    cdef Layout *lay = _lookup(ctype)
    if lay == NULL:
        return hdr, _decode_other(chain, raw, hdr)
    if n < lay.size:
        return hdr, _bad
    cls = _classes[((ctype >> 8) - 1) * TYPES + (ctype & 0xFF)]
    return hdr, _fields(lay, p + _hdr_size, cls)


cdef inline void _put(const Layout *lay, int i, unsigned char *p, uint64_t v) noexcept nogil:
    if lay.width[i] == 4:
        vhs_put32(p + lay.offset[i], <uint32_t> v)
    elif lay.width[i] == 8:
        vhs_put64(p + lay.offset[i], v)
    else:
        p[lay.offset[i]] = <unsigned char> v


def encode(hdr, reply) -> bytes:
    """The response bytes: header (fence and ring index echoed when fenced) and body (as the pure twin)."""
    cdef uint32_t flags = hdr[1]  # HDR_FLAGS
    if not flags & _FENCE and reply is _ok_nodata:
        return _nodata_bytes
    body = reply[1]
    if type(body) is not bytes:
        body = bytes(body)
    cdef Py_ssize_t n = len(<bytes> body)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _hdr_size + n)
    cdef unsigned char *p = <unsigned char *> PyBytes_AS_STRING(out)
    memset(p, 0, _hdr_size)
    _put(&_header, 0, p, <uint32_t> reply[0])
    cdef uint32_t ring
    if flags & _FENCE:
        ring = flags & _RING_IDX
        _put(&_header, 1, p, _FENCE | ring)
        _put(&_header, 2, p, <uint64_t> hdr[2])
        _put(&_header, 3, p, <uint32_t> hdr[3])
        _put(&_header, 4, p, <unsigned char> hdr[4] if ring else 0)
    memcpy(p + _hdr_size, PyBytes_AS_STRING(<bytes> body), n)
    return out
