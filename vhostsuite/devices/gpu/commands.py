"""virtio-gpu commands as typed values: decoded once from the chain, answered with one
response type, encoded in one place.

``decode_control(chain)`` and ``decode_cursor(chain)`` read the command (the header and its
fixed-size body in one read; ATTACH_BACKING's entries after it) and return a
``(Header, command)`` pair, where the command is one of the NamedTuples below, or a
:class:`Reply` with the error the guest gets for a command that can't be decoded. Handlers
return a :class:`Reply`; :func:`encode` turns it into the bytes written to the chain (the
fence echoed, every byte set). No cairo and no I/O here.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from . import wire as W

if TYPE_CHECKING:
    from ...core.ring import Chain


class Header(NamedTuple):
    """struct virtio_gpu_ctrl_hdr (the padding dropped)."""

    type: int
    flags: int
    fence_id: int
    ctx_id: int
    ring_idx: int


class Reply(NamedTuple):
    """A response: its type (VIRTIO_GPU_RESP_*) and the body after the header."""

    type: int
    body: bytes = b""


class GetDisplayInfo(NamedTuple):
    pass


class GetEdid(NamedTuple):
    scanout: int


class ResourceCreate2D(NamedTuple):
    resource_id: int
    format: int
    width: int
    height: int


class ResourceUnref(NamedTuple):
    resource_id: int


class SetScanout(NamedTuple):
    x: int
    y: int
    width: int
    height: int
    scanout_id: int
    resource_id: int


class ResourceFlush(NamedTuple):
    x: int
    y: int
    width: int
    height: int
    resource_id: int


class TransferToHost2D(NamedTuple):
    x: int
    y: int
    width: int
    height: int
    offset: int
    resource_id: int


class AttachBacking(NamedTuple):
    resource_id: int
    #: (guest address, length) of every entry, in order.
    entries: list[tuple[int, int]]


class DetachBacking(NamedTuple):
    resource_id: int


class UpdateCursor(NamedTuple):
    """UPDATE_CURSOR and MOVE_CURSOR (``move`` tells which)."""

    move: bool
    scanout_id: int
    x: int
    y: int
    resource_id: int
    hot_x: int
    hot_y: int


class Unsupported(NamedTuple):
    """A command type this device does not implement (3D, blob, UUID ...)."""

    type: int


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
    | Unsupported
)

# -- replies without a body, made once ---------------------------------------------------
OK_NODATA = Reply(W.VIRTIO_GPU_RESP_OK_NODATA)
ERR_UNSPEC = Reply(W.VIRTIO_GPU_RESP_ERR_UNSPEC)
ERR_OUT_OF_MEMORY = Reply(W.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY)
ERR_INVALID_SCANOUT_ID = Reply(W.VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID)
ERR_INVALID_RESOURCE_ID = Reply(W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)
ERR_INVALID_PARAMETER = Reply(W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)

#: A header for what can't be decoded (no fence to echo).
NO_HEADER = Header(0, 0, 0, 0, 0)

#: Bytes read of every command: enough for the largest fixed-size one.
_READ_AHEAD = max(W.COMMAND_SIZES.values())
_HDR = W.CTRL_HDR.size
_MEM_ENTRY = W.MEM_ENTRY

#: command type -> (body layout, how the unpacked fields become the command)
_CONTROL: dict[int, tuple[struct.Struct, object]] = {
    W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO: (struct.Struct(""), lambda: GetDisplayInfo()),
    W.VIRTIO_GPU_CMD_GET_EDID: (W.CMD_GET_EDID, lambda scanout, _pad: GetEdid(scanout)),
    W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: (W.RESOURCE_CREATE_2D, ResourceCreate2D),
    W.VIRTIO_GPU_CMD_RESOURCE_UNREF: (W.RESOURCE_UNREF, lambda rid, _pad: ResourceUnref(rid)),
    W.VIRTIO_GPU_CMD_SET_SCANOUT: (W.SET_SCANOUT, SetScanout),
    W.VIRTIO_GPU_CMD_RESOURCE_FLUSH: (W.RESOURCE_FLUSH, lambda x, y, w, h, rid, _pad: ResourceFlush(x, y, w, h, rid)),
    W.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: (
        W.TRANSFER_TO_HOST_2D,
        lambda x, y, w, h, off, rid, _pad: TransferToHost2D(x, y, w, h, off, rid),
    ),
    W.VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: (W.RESOURCE_DETACH_BACKING, lambda rid, _pad: DetachBacking(rid)),
}


def _header(raw: bytes) -> Header | None:
    if len(raw) < _HDR:
        return None
    return Header._make(W.CTRL_HDR.unpack_from(raw))


def decode_control(chain: Chain) -> tuple[Header, Command | Reply]:
    """The control-queue command in *chain*, or the error Reply it gets."""
    raw = chain.read(_READ_AHEAD)  # the header and any fixed-size body in one read
    hdr = _header(raw)
    if hdr is None:
        return NO_HEADER, ERR_INVALID_PARAMETER
    ctype = hdr.type
    layout = _CONTROL.get(ctype)
    if layout is None and ctype != W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING:
        return hdr, Unsupported(ctype)
    if len(raw) < W.COMMAND_SIZES[ctype]:
        return hdr, ERR_INVALID_PARAMETER
    if layout is None:
        return hdr, _attach_backing(chain, raw)
    body, make = layout
    return hdr, make(*body.unpack_from(raw, _HDR))


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
    hdr = _header(raw)
    if hdr is None or len(raw) < _CURSOR_SIZE:
        return hdr or NO_HEADER, ERR_INVALID_PARAMETER
    if hdr.type not in (W.VIRTIO_GPU_CMD_UPDATE_CURSOR, W.VIRTIO_GPU_CMD_MOVE_CURSOR):
        return hdr, Unsupported(hdr.type)
    sid, x, y, _, rid, hot_x, hot_y, _ = W.UPDATE_CURSOR.unpack_from(raw, _HDR)
    return hdr, UpdateCursor(hdr.type == W.VIRTIO_GPU_CMD_MOVE_CURSOR, sid, x, y, rid, hot_x, hot_y)


_NODATA_BYTES = W.CTRL_HDR.pack(W.VIRTIO_GPU_RESP_OK_NODATA, 0, 0, 0, 0)


def encode(hdr: Header, reply: Reply) -> bytes:
    """The response bytes: header (fence and ring index echoed when fenced) and body."""
    flags = hdr.flags
    if flags & W.VIRTIO_GPU_FLAG_FENCE:
        ring = flags & W.VIRTIO_GPU_FLAG_INFO_RING_IDX
        head = W.CTRL_HDR.pack(
            reply.type, W.VIRTIO_GPU_FLAG_FENCE | ring, hdr.fence_id, hdr.ctx_id, hdr.ring_idx if ring else 0
        )
        return head + reply.body
    if reply is OK_NODATA:
        return _NODATA_BYTES
    return W.CTRL_HDR.pack(reply.type, 0, 0, 0, 0) + reply.body
