# cython: language_level=3
"""The compiled twins of :class:`.commands.ControlHandler`, :func:`.commands.decode_control`
and :func:`.commands.encode`: the header and the body of a fixed-size control command read
straight from the chain into the same typed values, with no ``struct`` call and no lookup but
one table index; the response header written straight into the response. Every control
command comes this way: the handler gathers the command into a buffer on the stack and builds
the header tuple only for the handlers that take it.

The layouts are not written here: at import, the ``struct`` formats of ``wire.CTRL_HDR`` and of
``commands.CONTROL_LAYOUTS`` (their one home) are turned into a table of field widths and
offsets. Commands outside the table (ATTACH_BACKING, the rest) go on to
:func:`.commands.decode_other`, as in the pure-Python twin.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

from vhostsuite.core._ring cimport Chain
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
    /* f(*t) for a tuple (or an instance of a tuple type) t, without a tuple of arguments. */
    static inline PyObject *vhs_call_items(PyObject *f, PyObject *t) {
        return PyObject_Vectorcall(f, ((PyTupleObject *) t)->ob_item, (size_t) PyTuple_GET_SIZE(t), NULL);
    }
    /* f(*args) for args[0:n], new references, which it releases. */
    static inline PyObject *vhs_call_stolen(PyObject *f, PyObject **args, Py_ssize_t n) {
        PyObject *r = PyObject_Vectorcall(f, args, (size_t) n, NULL);
        for (Py_ssize_t i = 0; i < n; i++)
            Py_DECREF(args[i]);
        return r;
    }
    """
    uint32_t vhs_le32(const unsigned char *p) nogil
    uint64_t vhs_le64(const unsigned char *p) nogil
    void vhs_put32(unsigned char *p, uint32_t v) nogil
    void vhs_put64(unsigned char *p, uint64_t v) nogil
    object vhs_tuple_of(object cls, Py_ssize_t n)
    object vhs_call_items(object f, object t)
    object vhs_call_stolen(object f, PyObject **args, Py_ssize_t n)

DEF MAX_FIELDS = 16
#: Control command types are 0x01nn (2D) and 0x02nn (3D); the table covers nn < TYPES of both.
DEF TYPES = 32
#: The stack buffer a command is gathered into: at least commands.READ_AHEAD (checked at import).
DEF READ_MAX = 256

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
cdef object _Reply = K.Reply
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


cdef inline object _field(const Layout *lay, int i, const unsigned char *p):
    if lay.width[i] == 4:
        return vhs_le32(p + lay.offset[i])
    if lay.width[i] == 8:
        return vhs_le64(p + lay.offset[i])
    return p[lay.offset[i]]


cdef object _fields(const Layout *lay, const unsigned char *p, object cls=None):
    """The fields at *p*, as a tuple, or as an instance of the tuple type *cls*."""
    cdef object t = PyTuple_New(lay.nfields) if cls is None else vhs_tuple_of(cls, lay.nfields)
    cdef object v
    cdef int i
    for i in range(lay.nfields):
        v = _field(lay, i, p)
        Py_INCREF(v)  # PyTuple_SET_ITEM steals a reference
        PyTuple_SET_ITEM(t, i, v)
    return t


cdef object _call_with_fields(object handler, const Layout *lay, const unsigned char *p):
    """``handler(*fields at p)``, the fields passed as they are made: no tuple."""
    cdef PyObject *args[MAX_FIELDS]
    cdef object v
    cdef int i
    for i in range(lay.nfields):
        v = _field(lay, i, p)
        Py_INCREF(v)  # a reference args owns; vhs_call_stolen releases it
        args[i] = <PyObject *> v
    return vhs_call_stolen(handler, args, lay.nfields)


def _build() -> None:
    _compile(&_header, W.CTRL_HDR.format, 0)
    if _header.size != _hdr_size:
        raise ValueError("the header layout and its size disagree")
    if not 0 < _read_ahead <= READ_MAX:
        raise ValueError(f"commands.READ_AHEAD ({_read_ahead}) does not fit the {READ_MAX}-byte buffer")
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


cdef bytes _encode(const unsigned char *h, object reply):
    """The response to the command whose header is at *h* (its wire bytes)."""
    cdef uint32_t flags = vhs_le32(h + _header.offset[1])  # HDR_FLAGS
    if not flags & _FENCE:
        if reply is _ok_nodata:
            return _nodata_bytes
        return _response(reply, 0, 0, 0, 0)
    return _response(reply, flags, vhs_le64(h + _header.offset[2]), vhs_le32(h + _header.offset[3]),
                     h[_header.offset[4]])


cdef bytes _response(object reply, uint32_t flags, uint64_t fence_id, uint32_t ctx_id, uint32_t ring_idx):
    """The response bytes for *reply*, echoing the fence fields when *flags* has FENCE."""
    # A Reply is a tuple type's instance: its items read as a tuple's (indexing a tuple type's
    # instance goes through its __getitem__ method, ~700 instructions an item).
    if not isinstance(reply, tuple) or len(<tuple> reply) != 2:
        raise TypeError(f"a reply is (type, body), not {reply!r}")
    rtype = (<tuple> reply)[0]
    body = (<tuple> reply)[1]
    if type(body) is not bytes:
        body = bytes(body)
    cdef Py_ssize_t n = len(<bytes> body)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _hdr_size + n)
    cdef unsigned char *p = <unsigned char *> PyBytes_AS_STRING(out)
    memset(p, 0, _hdr_size)
    _put(&_header, 0, p, <uint32_t> rtype)
    cdef uint32_t ring
    if flags & _FENCE:
        ring = flags & _RING_IDX
        _put(&_header, 1, p, _FENCE | ring)
        _put(&_header, 2, p, fence_id)
        _put(&_header, 3, p, ctx_id)
        _put(&_header, 4, p, ring_idx if ring else 0)
    memcpy(p + _hdr_size, PyBytes_AS_STRING(<bytes> body), n)
    return out


def encode(hdr, reply) -> bytes:
    """The response bytes: header (fence and ring index echoed when fenced) and body (as the pure twin)."""
    cdef uint32_t flags = hdr[1]  # HDR_FLAGS
    if not flags & _FENCE:
        if reply is _ok_nodata:
            return _nodata_bytes
        return _response(reply, 0, 0, 0, 0)
    return _response(reply, flags, <uint64_t> hdr[2], <uint32_t> hdr[3], <unsigned char> hdr[4])


cdef class ControlHandler:
    """The control queue's handler (the core calls :meth:`handle` with each chain): the
    command decoded once, handed to the handler its type has, and the reply encoded; as the
    pure twin :class:`.commands.ControlHandler`, whose docstring says what it takes."""

    cdef public bint in_batch
    cdef object _begin
    cdef list _by_index     # [2 * TYPES]: the handler of each command type in the table, or None
    cdef dict _handlers     # command type (class) -> handler(*command)
    cdef dict _asking       # command type (class) -> handler(command, header, chain)

    def __init__(self, dict handlers, dict asking, begin):
        self.in_batch = False
        self._begin = begin
        self._handlers = handlers
        self._asking = asking
        self._by_index = [None if cls is None else handlers.get(cls) for cls in _classes]

    def handle(self, chain):
        cdef unsigned char buf[READ_MAX]
        cdef Py_ssize_t n
        cdef Chain c
        if not self.in_batch:
            self.in_batch = True
            self._begin()
        if type(chain) is Chain:  # the compiled ring's: gathered straight into buf
            c = <Chain> chain
            n = c.read_size if c.read_size < c._rtotal else c._rtotal
            n = c._gather(<char *> buf, n if n < _read_ahead else _read_ahead, 0) if n > 0 else 0
        else:
            raw = chain.read(_read_ahead)
            n = len(raw)
            if n > _read_ahead:
                raise ValueError(f"the chain gave {n} bytes for a read of {_read_ahead}")
            memcpy(buf, <const char *> raw, n)
        if n < _hdr_size:
            return _response(_bad, 0, 0, 0, 0)
        cdef uint32_t ctype = vhs_le32(buf)
        cdef Layout *lay = _lookup(ctype)
        cdef Py_ssize_t index
        if lay != NULL:
            if n < lay.size:
                return _encode(buf, _bad)
            index = ((ctype >> 8) - 1) * TYPES + (ctype & 0xFF)
            handler = self._by_index[index]
            if handler is not None:
                return _encode(buf, _call_with_fields(handler, lay, buf + _hdr_size))
            cmd = _fields(lay, buf + _hdr_size, _classes[index])
            hdr = _fields(&_header, buf)
        else:
            hdr = _fields(&_header, buf)
            cmd = _decode_other(chain, PyBytes_FromStringAndSize(<char *> buf, n), hdr)
            if type(cmd) is _Reply:  # what could not be decoded
                return _encode(buf, cmd)
            handler = self._handlers.get(type(cmd))
            if handler is not None:
                return _encode(buf, vhs_call_items(handler, cmd))
        # a Reply to encode, or what the core takes (PENDING, or bytes the 3D path encoded)
        reply = self._asking[type(cmd)](cmd, hdr, chain)
        return _encode(buf, reply) if type(reply) is _Reply else reply
