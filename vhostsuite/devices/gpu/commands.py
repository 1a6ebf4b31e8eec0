"""virtio-gpu commands as typed values: decoded once from the chain, answered with one
response type, encoded in one place.

The command types mirror the wire structs after the header, padding included, so each is
made from one ``struct.unpack_from`` in one C call (``tuple.__new__``); the header stays the
plain tuple ``struct`` gives. Decoding a small command costs two unpacks and one typed tuple.

``decode_control(chain)`` and ``decode_cursor(chain)`` read the command (the header and its
fixed-size body in one read; ATTACH_BACKING's entries after it) and return a
``(header, command)`` pair, where the command is one of the NamedTuples below, or a
:class:`Reply` with the error the guest gets for a command that can't be decoded. Handlers
return a :class:`Reply`; :func:`encode` turns it into the bytes written to the chain (the
fence echoed, every byte set). No cairo and no I/O here.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable

from ... import NO_EXTENSIONS
from . import wire as W

#: typing.TYPE_CHECKING without importing typing (every start pays for it otherwise).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...core.ring import Chain


#: struct virtio_gpu_ctrl_hdr as ``struct`` unpacks it, padding dropped: (type, flags,
#: fence_id, ctx_id, ring_idx). A plain tuple on purpose: it is made for every command, and a
#: tuple subclass costs five times as much to create.
Header = tuple[int, int, int, int, int]
HDR_TYPE, HDR_FLAGS, HDR_FENCE_ID, HDR_CTX_ID, HDR_RING_IDX = range(5)


# Named tuples made with collections.namedtuple, not typing.NamedTuple: the typing module costs
# every start ~2 ms. Field names follow the structs in <linux/virtio_gpu.h>.


class Reply(namedtuple("Reply", "type body", defaults=(b"",))):
    """A response: its type (VIRTIO_GPU_RESP_*) and the body after the header."""

    __slots__ = ()


class GetDisplayInfo(namedtuple("GetDisplayInfo", "")):
    __slots__ = ()


class GetEdid(namedtuple("GetEdid", "scanout padding", defaults=(0,))):
    __slots__ = ()


class ResourceCreate2D(namedtuple("ResourceCreate2D", "resource_id format width height")):
    __slots__ = ()


class ResourceUnref(namedtuple("ResourceUnref", "resource_id padding", defaults=(0,))):
    __slots__ = ()


class SetScanout(namedtuple("SetScanout", "x y width height scanout_id resource_id")):
    __slots__ = ()


class ResourceFlush(namedtuple("ResourceFlush", "x y width height resource_id padding", defaults=(0,))):
    __slots__ = ()


class TransferToHost2D(namedtuple("TransferToHost2D", "x y width height offset resource_id padding", defaults=(0,))):
    __slots__ = ()


class AttachBacking(namedtuple("AttachBacking", "resource_id entries")):
    """*entries*: (guest address, length) of every entry, in order."""

    __slots__ = ()


class DetachBacking(namedtuple("DetachBacking", "resource_id padding", defaults=(0,))):
    __slots__ = ()


class UpdateCursor(namedtuple("UpdateCursor", "move scanout_id x y resource_id hot_x hot_y")):
    """UPDATE_CURSOR and MOVE_CURSOR (``move`` tells which)."""

    __slots__ = ()


# -- 3D (VIRTIO_GPU_F_VIRGL); decoded only when the device serves 3D -------------------------
class GetCapsetInfo(namedtuple("GetCapsetInfo", "capset_index padding")):
    __slots__ = ()


class GetCapset(namedtuple("GetCapset", "capset_id capset_version")):
    __slots__ = ()


class CtxCreate(namedtuple("CtxCreate", "nlen context_init debug_name")):
    __slots__ = ()


class CtxDestroy(namedtuple("CtxDestroy", "")):
    __slots__ = ()


class CtxAttachResource(namedtuple("CtxAttachResource", "resource_id padding")):
    __slots__ = ()


class CtxDetachResource(namedtuple("CtxDetachResource", "resource_id padding")):
    __slots__ = ()


class ResourceCreate3D(
    namedtuple(
        "ResourceCreate3D",
        "resource_id target format bind width height depth array_size last_level nr_samples flags padding",
    )
):
    __slots__ = ()


_TRANSFER_3D = "x y z w h d offset resource_id level stride layer_stride"


class TransferToHost3D(namedtuple("TransferToHost3D", _TRANSFER_3D)):
    __slots__ = ()


class TransferFromHost3D(namedtuple("TransferFromHost3D", _TRANSFER_3D)):
    __slots__ = ()


class Submit3D(namedtuple("Submit3D", "data")):
    """*data*: the command stream, copied out of the chain (the guest can't change it under
    the renderer)."""

    __slots__ = ()


class Unsupported(namedtuple("Unsupported", "type")):
    """A command type this device does not implement (3D, blob, UUID ...)."""

    __slots__ = ()


Command = (
    GetDisplayInfo
    | GetEdid
    | ResourceCreate2D
    | ResourceUnref
    | SetScanout
    | ResourceFlush
    | TransferToHost2D
    | AttachBacking
    | DetachBacking
    | UpdateCursor
    | GetCapsetInfo
    | GetCapset
    | CtxCreate
    | CtxDestroy
    | CtxAttachResource
    | CtxDetachResource
    | ResourceCreate3D
    | TransferToHost3D
    | TransferFromHost3D
    | Submit3D
    | Unsupported
)

# -- replies without a body, made once ---------------------------------------------------
OK_NODATA = Reply(W.VIRTIO_GPU_RESP_OK_NODATA)
ERR_UNSPEC = Reply(W.VIRTIO_GPU_RESP_ERR_UNSPEC)
ERR_OUT_OF_MEMORY = Reply(W.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY)
ERR_INVALID_SCANOUT_ID = Reply(W.VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID)
ERR_INVALID_RESOURCE_ID = Reply(W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)
ERR_INVALID_PARAMETER = Reply(W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)
ERR_INVALID_CONTEXT_ID = Reply(W.VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID)

#: A header for what can't be decoded (no fence to echo).
NO_HEADER: Header = (0, 0, 0, 0, 0)

#: Bytes read of every command: enough for the largest fixed-size one.
READ_AHEAD = max(W.COMMAND_SIZES.values())
_HDR = W.CTRL_HDR.size
_MEM_ENTRY = W.MEM_ENTRY

_new = tuple.__new__
_unpack_header = W.CTRL_HDR.unpack_from

#: The fixed-size 2D commands: command type -> (its body's layout, its type). The compiled
#: decoder (_commands.pyx) reads its table from here too.
CONTROL_LAYOUTS: dict[int, tuple[object, type]] = {
    W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO: (W.NO_BODY, GetDisplayInfo),
    W.VIRTIO_GPU_CMD_GET_EDID: (W.CMD_GET_EDID, GetEdid),
    W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: (W.RESOURCE_CREATE_2D, ResourceCreate2D),
    W.VIRTIO_GPU_CMD_RESOURCE_UNREF: (W.RESOURCE_UNREF, ResourceUnref),
    W.VIRTIO_GPU_CMD_SET_SCANOUT: (W.SET_SCANOUT, SetScanout),
    W.VIRTIO_GPU_CMD_RESOURCE_FLUSH: (W.RESOURCE_FLUSH, ResourceFlush),
    W.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: (W.TRANSFER_TO_HOST_2D, TransferToHost2D),
    W.VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: (W.RESOURCE_DETACH_BACKING, DetachBacking),
}
#: command type -> (bytes it needs, its body's unpack_from, its type)
_CONTROL: dict[int, tuple[int, object, type]] = {
    ctype: (W.COMMAND_SIZES[ctype], layout.unpack_from, cls) for ctype, (layout, cls) in CONTROL_LAYOUTS.items()
}
_ATTACH_SIZE = W.COMMAND_SIZES[W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING]

#: The 3D commands, decoded like the 2D ones (SUBMIT_3D reads its stream after the body).
CONTROL_3D: dict[int, tuple[int, object, type]] = {
    ctype: (W.COMMAND_SIZES[ctype], layout.unpack_from, cls)
    for ctype, layout, cls in (
        (W.VIRTIO_GPU_CMD_GET_CAPSET_INFO, W.GET_CAPSET_INFO, GetCapsetInfo),
        (W.VIRTIO_GPU_CMD_GET_CAPSET, W.GET_CAPSET, GetCapset),
        (W.VIRTIO_GPU_CMD_CTX_CREATE, W.CTX_CREATE, CtxCreate),
        (W.VIRTIO_GPU_CMD_CTX_DESTROY, W.CTX_DESTROY, CtxDestroy),
        (W.VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE, W.CTX_RESOURCE, CtxAttachResource),
        (W.VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE, W.CTX_RESOURCE, CtxDetachResource),
        (W.VIRTIO_GPU_CMD_RESOURCE_CREATE_3D, W.RESOURCE_CREATE_3D, ResourceCreate3D),
        (W.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, W.TRANSFER_HOST_3D, TransferToHost3D),
        (W.VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D, W.TRANSFER_HOST_3D, TransferFromHost3D),
    )
}
_SUBMIT_SIZE = W.COMMAND_SIZES[W.VIRTIO_GPU_CMD_SUBMIT_3D]


def decode_3d(hdr: Header, chain: Chain) -> Command | Reply:
    """The 3D command of *chain* (whose header is *hdr*), or the error Reply it gets; an
    Unsupported for a type that is not a 3D command."""
    ctype = hdr[HDR_TYPE]
    entry = CONTROL_3D.get(ctype)
    if entry is not None:
        size, unpack, cls = entry
        raw = chain.read(size)
        if len(raw) < size:
            return ERR_INVALID_PARAMETER
        return _new(cls, unpack(raw, _HDR))
    if ctype == W.VIRTIO_GPU_CMD_SUBMIT_3D:
        raw = chain.read(_SUBMIT_SIZE)
        if len(raw) < _SUBMIT_SIZE:
            return ERR_INVALID_PARAMETER
        size, _ = W.CMD_SUBMIT.unpack_from(raw, _HDR)
        if size > W.MAX_SUBMIT:
            return ERR_INVALID_PARAMETER
        data = chain.read(size, _SUBMIT_SIZE)
        if len(data) < size:
            return ERR_INVALID_PARAMETER
        return Submit3D(data)
    return Unsupported(ctype)


def decode_control(chain: Chain) -> tuple[Header, Command | Reply]:
    """The control-queue command in *chain*, or the error Reply it gets."""
    raw = chain.read(READ_AHEAD)  # the header and any fixed-size body in one read
    if len(raw) < _HDR:
        return NO_HEADER, ERR_INVALID_PARAMETER
    hdr = _unpack_header(raw)
    ctype = hdr[0]  # HDR_TYPE
    entry = _CONTROL.get(ctype)
    if entry is not None:
        size, unpack, cls = entry
        if len(raw) < size:
            return hdr, ERR_INVALID_PARAMETER
        return hdr, _new(cls, unpack(raw, _HDR))
    return hdr, decode_other(chain, raw, hdr)


def decode_other(chain: Chain, raw: bytes, hdr: Header) -> Command | Reply:
    """A control command that is not in CONTROL_LAYOUTS (*raw*: what decode_control read)."""
    ctype = hdr[0]  # HDR_TYPE
    if ctype == W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING:
        if len(raw) < _ATTACH_SIZE:
            return ERR_INVALID_PARAMETER
        return _attach_backing(chain, raw)
    return Unsupported(ctype)


def _attach_backing(chain: Chain, raw: bytes) -> AttachBacking | Reply:
    rid, nr = W.RESOURCE_ATTACH_BACKING.unpack_from(raw, _HDR)
    if nr > W.MAX_BACKING_ENTRIES:
        return ERR_UNSPEC
    start = W.COMMAND_SIZES[W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING]
    entries = chain.read(nr * _MEM_ENTRY.size, start)
    if len(entries) < nr * _MEM_ENTRY.size:
        return ERR_UNSPEC
    return AttachBacking(rid, [(addr, length) for addr, length, _ in _MEM_ENTRY.iter_unpack(entries)])


_CURSOR_SIZE = W.COMMAND_SIZES[W.VIRTIO_GPU_CMD_UPDATE_CURSOR]


def decode_cursor(chain: Chain) -> tuple[Header, Command | Reply]:
    """The cursor-queue command in *chain* (UPDATE_CURSOR or MOVE_CURSOR), or an error Reply."""
    raw = chain.read(_CURSOR_SIZE)
    if len(raw) < _HDR:
        return NO_HEADER, ERR_INVALID_PARAMETER
    hdr = _unpack_header(raw)
    ctype = hdr[HDR_TYPE]
    if len(raw) < _CURSOR_SIZE:
        return hdr, ERR_INVALID_PARAMETER
    if ctype not in (W.VIRTIO_GPU_CMD_UPDATE_CURSOR, W.VIRTIO_GPU_CMD_MOVE_CURSOR):
        return hdr, Unsupported(ctype)
    sid, x, y, _, rid, hot_x, hot_y, _ = W.UPDATE_CURSOR.unpack_from(raw, _HDR)
    return hdr, UpdateCursor(ctype == W.VIRTIO_GPU_CMD_MOVE_CURSOR, sid, x, y, rid, hot_x, hot_y)


#: OK_NODATA's response to a command without a fence: the commonest answer, made once.
NODATA_BYTES = W.CTRL_HDR.pack(W.VIRTIO_GPU_RESP_OK_NODATA, 0, 0, 0, 0)


_FENCE = W.VIRTIO_GPU_FLAG_FENCE


def encode(hdr: Header, reply: Reply) -> bytes:
    """The response bytes: header (fence and ring index echoed when fenced) and body."""
    flags = hdr[1]  # HDR_FLAGS
    if not flags & _FENCE:
        if reply is OK_NODATA:
            return NODATA_BYTES
        return W.CTRL_HDR.pack(reply[0], 0, 0, 0, 0) + reply[1]
    _, _, fence_id, ctx_id, ring_idx = hdr
    ring = flags & W.VIRTIO_GPU_FLAG_INFO_RING_IDX
    head = W.CTRL_HDR.pack(reply[0], W.VIRTIO_GPU_FLAG_FENCE | ring, fence_id, ctx_id, ring_idx if ring else 0)
    return head + reply[1]


class ControlHandler:
    """The control queue's handler: the core calls :meth:`handle` with each chain.

    The command is decoded once and handed to the handler its type has in *handlers*, which
    takes the command's fields as its parameters (``handler(*command) -> Reply``: no object per
    command to unpack again), else in *asking* (``handler(command, header, chain)``, for
    the commands that need their header or chain: a Reply to encode, or what the core takes
    as it is: PENDING, or bytes the 3D path encoded); what can't be decoded gets its error
    Reply. *begin* is called before the first command of a batch; whoever ends the batch sets
    :attr:`in_batch` back to False. The tables are not to change once the handler is made (the
    compiled twin indexes *handlers* by command type then). A type in neither table is a bug
    (KeyError: the core marks the device broken).
    """

    def __init__(self, handlers: dict[type, Callable[..., Reply]], asking: dict[type, Callable[..., object]],
                 begin: Callable[[], None]) -> None:  # fmt: skip
        #: A batch has begun and not yet ended.
        self.in_batch = False
        self._begin = begin
        self._handlers = handlers
        self._asking = asking

    def handle(self, chain: Chain) -> object:
        """The response to the command in *chain* (a method, not ``__call__``: a compiled
        class's ``__call__`` is called through a tuple of arguments, a method is not)."""
        if not self.in_batch:
            self.in_batch = True
            self._begin()
        hdr, cmd = decode_control_py(chain)
        handler = self._handlers.get(cmd.__class__)
        if handler is not None:
            return encode_py(hdr, handler(*cmd))
        if cmd.__class__ is Reply:  # what could not be decoded
            return encode_py(hdr, cmd)
        reply = self._asking[cmd.__class__](cmd, hdr, chain)
        return encode_py(hdr, reply) if reply.__class__ is Reply else reply


# The compiled twins of ControlHandler, decode_control and encode (_commands.pyx), unless they
# are missing or VHOSTSUITE_NO_EXTENSIONS is set; the pure ones stay as ControlHandler_py,
# decode_control_py and encode_py (the tests compare).
decode_control_py = decode_control
encode_py = encode
ControlHandler_py = ControlHandler
#: Why the compiled decoder could not be used (None: it is in use, or NO_EXTENSIONS asked not to).
IMPORT_ERROR: str | None = None
if not NO_EXTENSIONS:
    try:
        from ._commands import ControlHandler, decode_control, encode  # noqa: F811
    except ImportError as e:  # not built, or built for another interpreter
        IMPORT_ERROR = str(e)
