"""The 2D virtio-gpu device (virtio id 16): control and cursor queues, resources, scanouts.

Resources keep their pixels in the guest's format (raw bytes, stride ``width*4``), as QEMU
does; a flush converts only the flushed rectangle to x8r8g8b8 for the display's UPDATE
message, or sends the resource's own rows when the format already is (B8G8R8A8/X8). Guest
pages are copied by :mod:`vhostsuite.pixels` (Cython); the cursor image is composed with cairo.

Every command is checked before it touches anything: sizes, ids, rectangles (Python integers,
so no overflow), backing entries and addresses. A bad command gets an error response; the
device keeps serving. Commands that need QEMU's answer (GET_DISPLAY_INFO, GET_EDID) park the
control queue until the reply or a timeout, while the event loop keeps serving everything else.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

import cairo

from ... import pixels
from ...device import Device
from ...errors import GuestMemoryError
from ...protocol import Request
from ...virtio import VIRTIO_ID_GPU, bit
from . import edid
from . import wire as W
from .display import DisplayChannel

if TYPE_CHECKING:
    from ...memory import GuestMemory

log = logging.getLogger("vhostsuite.gpu")

DEFAULT_MAX_HOSTMEM = 256 << 20
DEFAULT_DISPLAY_TIMEOUT = 5.0
#: What a backing entry costs against --max-hostmem (its views and bookkeeping).
BACKING_ENTRY_COST = 256

_PARKED = object()
_NODATA = W.CTRL_HDR.pack(W.VIRTIO_GPU_RESP_OK_NODATA, 0, 0, 0, 0)
_MEM_ENTRIES = struct.Struct("<QII")
#: Bytes read of every command: enough for the largest fixed-size one.
_READ_AHEAD = max(W.COMMAND_SIZES.values())


class Resource:
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
        "backing",
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
        self.data = bytearray(self.stride * height)
        self.view = memoryview(self.data)
        self.backing: pixels.PageList | None = None
        self.backing_cost = 0
        self.scanouts: set[int] = set()

    @property
    def size(self) -> int:
        return len(self.data)

    def contains(self, x: int, y: int, w: int, h: int) -> bool:
        return x + w <= self.width and y + h <= self.height

    def drop_backing(self) -> None:
        if self.backing is not None:
            self.backing.release()
            self.backing = None
        self.backing_cost = 0


class Scanout:
    __slots__ = ("resource_id", "x", "y", "width", "height", "announced")

    def __init__(self) -> None:
        self.resource_id = 0
        self.x = self.y = self.width = self.height = 0
        #: The display channel this scanout's SCANOUT message went to (None: not yet).
        self.announced: DisplayChannel | None = None


class GpuDevice(Device):
    backend_type = "gpu"
    virtio_id = VIRTIO_ID_GPU
    num_queues = 2
    max_queue_size = 1024
    device_features = bit(W.VIRTIO_GPU_F_EDID)

    def __init__(self, max_hostmem: int = DEFAULT_MAX_HOSTMEM, display_timeout: float = DEFAULT_DISPLAY_TIMEOUT):
        super().__init__()
        self.max_hostmem = max_hostmem
        self.display_timeout = display_timeout
        self.hostmem = 0
        self.resources: dict[int, Resource] = {}
        self.scanouts = [Scanout() for _ in range(W.VIRTIO_GPU_MAX_SCANOUTS)]
        self.display: DisplayChannel | None = None
        self.events_read = 0
        #: The chain of the command waiting for the display (the control queue is parked meanwhile).
        self._parked: object | None = None
        self._negotiating = False
        #: The display modes body (16 x display_one) QEMU last told us.
        self._display_body: bytes | None = None
        self._staging = bytearray()
        self._handlers = {
            W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO: self._get_display_info,
            W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: self._resource_create_2d,
            W.VIRTIO_GPU_CMD_RESOURCE_UNREF: self._resource_unref,
            W.VIRTIO_GPU_CMD_SET_SCANOUT: self._set_scanout,
            W.VIRTIO_GPU_CMD_RESOURCE_FLUSH: self._resource_flush,
            W.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: self._transfer_to_host_2d,
            W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING: self._attach_backing,
            W.VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: self._detach_backing,
            W.VIRTIO_GPU_CMD_GET_EDID: self._get_edid,
        }

    # -- config space ---------------------------------------------------------------------
    def get_config(self, offset: int, size: int) -> bytes:
        # QEMU overrides events_*/num_scanouts with its own; num_capsets = 0 (no virgl).
        data = W.CONFIG.pack(self.events_read, 0, 1, 0)
        if offset < 0 or size < 0 or offset + size > len(data):
            raise ValueError(f"config read of {size} bytes at {offset} is outside the {len(data)}-byte config")
        return data[offset : offset + size]

    def set_config(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > W.CONFIG.size:
            raise ValueError(f"config write of {len(data)} bytes at {offset} is outside the config")
        if offset <= 4 and offset + len(data) >= 8:  # events_clear
            clear = int.from_bytes(data[4 - offset : 8 - offset], "little")
            self.events_read &= ~clear

    # -- display socket -------------------------------------------------------------------
    def vhost_request(self, request: int, payload: bytes, fds: list[int]) -> bool:
        if request != Request.GPU_SET_SOCKET:
            return False
        if len(fds) != 1:
            raise ValueError(f"GPU_SET_SOCKET needs exactly one fd, got {len(fds)}")
        channel = DisplayChannel.from_fd(fds[0], self.ctx.loop, self.display_timeout, self._display_lost)
        old = self.display
        self.display = channel
        self._negotiating = True  # commands wait (bounded) for the protocol features
        if old is not None:
            log.info("a new display socket replaces the old one")
            old.close()
        log.info("display socket set")
        channel.negotiate(1 << W.VHOST_USER_GPU_PROTOCOL_F_EDID, lambda: self._negotiated(channel))
        return True

    def _negotiated(self, channel: DisplayChannel) -> None:
        if channel is not self.display:
            return
        self._negotiating = False
        # Show what the scanouts showed on the previous display (e.g. after a reconnect).
        for sid, sc in enumerate(self.scanouts):
            res = self.resources.get(sc.resource_id) if sc.resource_id else None
            if res is not None and sc.announced is not channel:
                self._update(sid, sc, res, sc.x, sc.y, sc.width, sc.height)
        self._resume_ctrl()

    def _display_lost(self) -> None:
        self.display = None
        self._negotiating = False
        self._resume_ctrl()

    # -- queues ---------------------------------------------------------------------------
    def queue_ready(self, index: int) -> None:
        if index == 0:
            self._run_ctrl()
        elif index == 1:
            self._run_cursor()

    def queue_stopped(self, index: int) -> None:
        if index == 0:
            self._parked = None

    def _run_ctrl(self) -> None:
        if self._parked is not None or self._negotiating:
            return
        vq = self.ctx.queue(0)
        if vq is None:
            return
        pop, push, command = vq.pop, vq.push, self._ctrl_command
        while self._parked is None:
            chain = pop()
            if chain is None:
                break
            resp = command(chain)
            if resp is _PARKED:
                break
            chain.write(resp)
            push(chain)

    def _resume_ctrl(self) -> None:
        """Process the control queue from outside the core's queue_ready (a reply or a timer)."""
        if self.ctx is None:
            return
        try:
            self._run_ctrl()
        except Exception as e:  # noqa: BLE001 - RingError, or a bug: the device is broken
            log.exception("control queue failed")
            self.ctx.mark_broken(f"queue 0: {e}", 0)
            return
        self.ctx.notify(0)

    def _finish_parked(self, chain: object, resp: bytes) -> None:
        if self._parked is not chain:
            return  # the queue was stopped or the device reset meanwhile
        self._parked = None
        vq = self.ctx.queue(0) if self.ctx is not None else None
        if vq is not None:
            chain.write(resp)
            vq.push(chain)
        self._resume_ctrl()

    def _ask_display(self, chain: object, hdr: tuple, request: int, payload: bytes, size: int, answer) -> object:  # noqa: ANN001
        """Send *request* to the display and answer the command with ``answer(reply or None)``."""
        sync: list[bytes | None] = []
        waiting = False

        def got(reply: bytes | None) -> None:
            if not waiting:
                sync.append(reply)
                return
            try:
                rtype, body = answer(reply)
            except Exception:  # noqa: BLE001
                log.exception("answering a display reply failed")
                rtype, body = W.VIRTIO_GPU_RESP_ERR_UNSPEC, b""
            self._finish_parked(chain, self._resp(hdr, rtype, body))

        self._parked = chain
        self.display.request(request, payload, size, got)
        if sync or self.display is None:
            self._parked = None
            return answer(sync[0] if sync else None)
        waiting = True
        return _PARKED

    @staticmethod
    def _resp(hdr: tuple | None, rtype: int, body: bytes = b"") -> bytes:
        """A complete response: header (fence echoed) and body; every byte is set."""
        if hdr is not None and hdr[0] & W.VIRTIO_GPU_FLAG_FENCE:
            flags, fence_id, ctx_id, ring_idx = hdr
            ring = flags & W.VIRTIO_GPU_FLAG_INFO_RING_IDX
            head = W.CTRL_HDR.pack(rtype, W.VIRTIO_GPU_FLAG_FENCE | ring, fence_id, ctx_id, ring_idx if ring else 0)
            return head + body
        if rtype == W.VIRTIO_GPU_RESP_OK_NODATA and not body:
            return _NODATA
        return W.CTRL_HDR.pack(rtype, 0, 0, 0, 0) + body

    def _ctrl_command(self, chain) -> object:  # noqa: ANN001
        raw = chain.read(_READ_AHEAD)  # the header and any fixed-size body in one read
        if len(raw) < W.CTRL_HDR.size:
            log.warning("control command of %d bytes: no header", len(raw))
            return self._resp(None, W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)
        ctype, flags, fence_id, ctx_id, ring_idx = W.CTRL_HDR.unpack_from(raw)
        hdr = (flags, fence_id, ctx_id, ring_idx)
        handler = self._handlers.get(ctype)
        if handler is None:
            log.info("unsupported command %s", W.ctrl_type_name(ctype))
            return self._resp(hdr, W.VIRTIO_GPU_RESP_ERR_UNSPEC)
        if len(raw) < W.COMMAND_SIZES[ctype]:
            log.warning("%s: %d bytes, needs %d", W.ctrl_type_name(ctype), len(raw), W.COMMAND_SIZES[ctype])
            return self._resp(hdr, W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)
        try:
            out = handler(chain, hdr, raw)
        except Exception:  # noqa: BLE001 - a hostile command must not take the device down
            log.exception("%s failed", W.ctrl_type_name(ctype))
            self._parked = None
            return self._resp(hdr, W.VIRTIO_GPU_RESP_ERR_UNSPEC)
        if out is _PARKED:
            return out
        if out.__class__ is int:
            if out == W.VIRTIO_GPU_RESP_OK_NODATA and not flags & W.VIRTIO_GPU_FLAG_FENCE:
                return _NODATA
            if out != W.VIRTIO_GPU_RESP_OK_NODATA:
                log.info("%s -> %s", W.ctrl_type_name(ctype), W.ctrl_type_name(out))
            return self._resp(hdr, out)
        rtype, rbody = out
        return self._resp(hdr, rtype, rbody)

    # -- display info and EDID ------------------------------------------------------------------
    def _default_display_body(self) -> bytes:
        if self._display_body is not None:
            return self._display_body
        body = W.DISPLAY_ONE.pack(0, 0, W.DEFAULT_WIDTH, W.DEFAULT_HEIGHT, 1, 0)
        return body + bytes(W.RESP_DISPLAY_INFO_SIZE - W.CTRL_HDR.size - len(body))

    def _mode(self, scanout: int) -> tuple[int, int]:
        if self._display_body is not None:
            _, _, w, h, enabled, _ = W.DISPLAY_ONE.unpack_from(self._display_body, scanout * W.DISPLAY_ONE.size)
            if enabled and w and h:
                return w, h
        return W.DEFAULT_WIDTH, W.DEFAULT_HEIGHT

    def _get_display_info(self, chain, hdr: tuple, body: bytes) -> object:  # noqa: ANN001
        def answer(reply: bytes | None) -> tuple[int, bytes]:
            if reply is not None:
                self._display_body = reply[W.CTRL_HDR.size : W.RESP_DISPLAY_INFO_SIZE]
            return W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO, self._default_display_body()

        if self.display is None:
            return answer(None)
        return self._ask_display(chain, hdr, W.VHOST_USER_GPU_GET_DISPLAY_INFO, b"", W.RESP_DISPLAY_INFO_SIZE, answer)

    def _get_edid(self, chain, hdr: tuple, body: bytes) -> object:  # noqa: ANN001
        if not self.acked_features & bit(W.VIRTIO_GPU_F_EDID):
            return W.VIRTIO_GPU_RESP_ERR_UNSPEC
        scanout, _ = W.CMD_GET_EDID.unpack_from(body, W.CTRL_HDR.size)
        if scanout >= W.VIRTIO_GPU_MAX_SCANOUTS:
            return W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER

        def answer(reply: bytes | None) -> tuple[int, bytes]:
            if reply is not None:
                size = W.RESP_EDID_HEAD.unpack_from(reply, W.CTRL_HDR.size)[0]
                if 0 < size <= W.EDID_MAX:
                    start = W.CTRL_HDR.size + W.RESP_EDID_HEAD.size
                    blob = reply[start : start + size]
                    return W.VIRTIO_GPU_RESP_OK_EDID, self._edid_body(blob)
                log.warning("display: EDID of %d bytes ignored", size)
            w, h = self._mode(scanout)
            return W.VIRTIO_GPU_RESP_OK_EDID, self._edid_body(edid.generate(w, h, serial=scanout))

        d = self.display
        if d is None or not d.has_feature(W.VHOST_USER_GPU_PROTOCOL_F_EDID):
            return answer(None)
        return self._ask_display(
            chain, hdr, W.VHOST_USER_GPU_GET_EDID, W.GPU_EDID_REQUEST.pack(scanout), W.RESP_EDID_SIZE, answer
        )

    @staticmethod
    def _edid_body(blob: bytes) -> bytes:
        return W.RESP_EDID_HEAD.pack(len(blob), 0) + blob + bytes(W.EDID_MAX - len(blob))

    # -- resources ------------------------------------------------------------------------------
    def _resource_create_2d(self, chain, hdr: tuple, body: bytes) -> int:  # noqa: ANN001
        rid, fmt, width, height = W.RESOURCE_CREATE_2D.unpack_from(body, W.CTRL_HDR.size)
        if rid == 0 or rid in self.resources:
            return W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
        if fmt not in W.FORMATS or width == 0 or height == 0:
            return W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
        size = width * height * W.BYTES_PER_PIXEL
        if self.hostmem + size > self.max_hostmem:
            log.warning(
                "resource %d of %d bytes: over --max-hostmem (%d of %d in use)",
                rid,
                size,
                self.hostmem,
                self.max_hostmem,
            )
            return W.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
        try:
            res = Resource(rid, fmt, width, height)
        except MemoryError:
            return W.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
        self.resources[rid] = res
        self.hostmem += size
        return W.VIRTIO_GPU_RESP_OK_NODATA

    def _destroy(self, res: Resource) -> None:
        for sid in sorted(res.scanouts):
            self._disable_scanout(sid)
        self.hostmem -= res.size + res.backing_cost
        res.drop_backing()
        del self.resources[res.id]

    def _resource_unref(self, chain, hdr: tuple, body: bytes) -> int:  # noqa: ANN001
        rid, _ = W.RESOURCE_UNREF.unpack_from(body, W.CTRL_HDR.size)
        res = self.resources.get(rid)
        if res is None:
            return W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
        self._destroy(res)
        return W.VIRTIO_GPU_RESP_OK_NODATA

    def _attach_backing(self, chain, hdr: tuple, body: bytes) -> int:  # noqa: ANN001
        rid, nr = W.RESOURCE_ATTACH_BACKING.unpack_from(body, W.CTRL_HDR.size)
        res = self.resources.get(rid)
        if res is None:
            return W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
        if res.backing is not None:
            return W.VIRTIO_GPU_RESP_ERR_UNSPEC
        if nr > W.MAX_BACKING_ENTRIES:
            log.warning("resource %d: %d backing entries refused (max %d)", rid, nr, W.MAX_BACKING_ENTRIES)
            return W.VIRTIO_GPU_RESP_ERR_UNSPEC
        cost = nr * BACKING_ENTRY_COST
        if self.hostmem + cost > self.max_hostmem:
            return W.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
        start = W.COMMAND_SIZES[W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING]
        raw = chain.read(nr * W.MEM_ENTRY.size, start)
        if len(raw) < nr * W.MEM_ENTRY.size:
            log.warning("resource %d: %d backing entries announced, %d bytes of them sent", rid, nr, len(raw))
            return W.VIRTIO_GPU_RESP_ERR_UNSPEC
        mem: GuestMemory | None = self.ctx.mem if self.ctx is not None else None
        if mem is None:
            return W.VIRTIO_GPU_RESP_ERR_UNSPEC
        # merge physically contiguous entries: fewer pieces to walk on every transfer
        runs: list[list[int]] = []
        for addr, length, _ in _MEM_ENTRIES.iter_unpack(raw):
            if not length:
                continue
            if runs and runs[-1][0] + runs[-1][1] == addr:
                runs[-1][1] += length
            else:
                runs.append([addr, length])
        views = []
        try:
            for addr, length in runs:
                views.extend(mem.gpa_views(addr, length))
        except GuestMemoryError as e:
            log.warning("resource %d: backing refused: %s", rid, e)
            return W.VIRTIO_GPU_RESP_ERR_UNSPEC
        res.backing = pixels.PageList(views)
        res.backing_cost = cost
        self.hostmem += cost
        return W.VIRTIO_GPU_RESP_OK_NODATA

    def _detach_backing(self, chain, hdr: tuple, body: bytes) -> int:  # noqa: ANN001
        rid, _ = W.RESOURCE_DETACH_BACKING.unpack_from(body, W.CTRL_HDR.size)
        res = self.resources.get(rid)
        if res is None or res.backing is None:
            return W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
        self.hostmem -= res.backing_cost
        res.drop_backing()
        return W.VIRTIO_GPU_RESP_OK_NODATA

    def _transfer_to_host_2d(self, chain, hdr: tuple, body: bytes) -> int:  # noqa: ANN001
        x, y, w, h, offset, rid, _ = W.TRANSFER_TO_HOST_2D.unpack_from(body, W.CTRL_HDR.size)
        res = self.resources.get(rid)
        if res is None or res.backing is None:
            return W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
        if not res.contains(x, y, w, h):
            return W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
        if w == 0 or h == 0:
            return W.VIRTIO_GPU_RESP_OK_NODATA
        stride = res.stride
        try:
            pixels.copy_rect(res.backing, offset, stride, res.data, y * stride + x * 4, stride, w * 4, h)
        except ValueError as e:
            log.warning("resource %d: transfer refused: %s", rid, e)
            return W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
        return W.VIRTIO_GPU_RESP_OK_NODATA

    # -- scanouts -----------------------------------------------------------------------------
    def _disable_scanout(self, sid: int) -> None:
        sc = self.scanouts[sid]
        res = self.resources.get(sc.resource_id)
        if res is not None:
            res.scanouts.discard(sid)
        was_on = sc.resource_id != 0
        self.scanouts[sid] = Scanout()
        if was_on and self.display is not None:
            self.display.send(W.VHOST_USER_GPU_SCANOUT, W.GPU_SCANOUT.pack(sid, 0, 0))

    def _set_scanout(self, chain, hdr: tuple, body: bytes) -> int:  # noqa: ANN001
        x, y, w, h, sid, rid = W.SET_SCANOUT.unpack_from(body, W.CTRL_HDR.size)
        if sid >= W.VIRTIO_GPU_MAX_SCANOUTS:
            return W.VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID
        if rid == 0:
            self._disable_scanout(sid)
            return W.VIRTIO_GPU_RESP_OK_NODATA
        res = self.resources.get(rid)
        if res is None:
            return W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
        if w == 0 or h == 0 or not res.contains(x, y, w, h):
            return W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
        old = self.resources.get(self.scanouts[sid].resource_id)
        if old is not None:
            old.scanouts.discard(sid)
        sc = self.scanouts[sid]
        sc.resource_id, sc.x, sc.y, sc.width, sc.height = rid, x, y, w, h
        res.scanouts.add(sid)
        sc.announced = None
        self._announce(sid, sc)
        return W.VIRTIO_GPU_RESP_OK_NODATA

    def _announce(self, sid: int, sc: Scanout) -> bool:
        d = self.display
        if d is None or d.closed:
            return False
        if sc.announced is not d:
            if not d.send(W.VHOST_USER_GPU_SCANOUT, W.GPU_SCANOUT.pack(sid, sc.width, sc.height)):
                return False
            sc.announced = d
        return True

    def _resource_flush(self, chain, hdr: tuple, body: bytes) -> int:  # noqa: ANN001
        x, y, w, h, rid, _ = W.RESOURCE_FLUSH.unpack_from(body, W.CTRL_HDR.size)
        res = self.resources.get(rid)
        if res is None:
            return W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
        if not res.contains(x, y, w, h):
            return W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
        if res.scanouts and self.display is not None:
            for sid in sorted(res.scanouts):
                sc = self.scanouts[sid]
                x0, y0 = max(x, sc.x), max(y, sc.y)
                x1, y1 = min(x + w, sc.x + sc.width), min(y + h, sc.y + sc.height)
                if x1 > x0 and y1 > y0:
                    self._update(sid, sc, res, x0, y0, x1 - x0, y1 - y0)
        return W.VIRTIO_GPU_RESP_OK_NODATA

    def _update(self, sid: int, sc: Scanout, res: Resource, x: int, y: int, w: int, h: int) -> None:
        """Send UPDATE for the resource rectangle (x, y, w, h), which lies inside the scanout."""
        if not self._announce(sid, sc):
            return
        head = W.GPU_UPDATE_HEAD.pack(sid, x - sc.x, y - sc.y, w, h)
        stride = res.stride
        start = y * stride + x * 4
        if res.swizzle == W.SWIZZLE_NONE:
            # already x8r8g8b8: the resource's own rows, scatter-gather, no copy
            if w == res.width:
                parts = [res.view[start : start + stride * h]]
            else:
                n = w * 4
                parts = [res.view[o : o + n] for o in range(start, start + stride * h, stride)]
        else:
            n = w * h * 4
            if len(self._staging) < n:
                self._staging = bytearray(n)
            pixels.swizzle_rect(res.swizzle, res.view, start, stride, self._staging, 0, w * 4, w, h)
            parts = [memoryview(self._staging)[:n]]
        self.display.send(W.VHOST_USER_GPU_UPDATE, head, *parts)

    # -- cursor -----------------------------------------------------------------------------
    def _run_cursor(self) -> None:
        vq = self.ctx.queue(1)
        while vq is not None and (chain := vq.pop()) is not None:
            try:
                self._cursor_command(chain)
            except Exception:  # noqa: BLE001 - a hostile command must not take the device down
                log.exception("cursor command failed")
            vq.push(chain, 0)

    def _cursor_command(self, chain) -> None:  # noqa: ANN001
        raw = chain.read(W.COMMAND_SIZES[W.VIRTIO_GPU_CMD_UPDATE_CURSOR])
        if len(raw) < W.COMMAND_SIZES[W.VIRTIO_GPU_CMD_UPDATE_CURSOR]:
            log.warning("cursor command of %d bytes ignored", len(raw))
            return
        ctype = W.CTRL_HDR.unpack_from(raw)[0]
        sid, x, y, _, rid, hot_x, hot_y, _ = W.UPDATE_CURSOR.unpack_from(raw, W.CTRL_HDR.size)
        if sid >= W.VIRTIO_GPU_MAX_SCANOUTS:
            log.warning("cursor command for scanout %d ignored", sid)
            return
        d = self.display
        if ctype == W.VIRTIO_GPU_CMD_MOVE_CURSOR or (ctype == W.VIRTIO_GPU_CMD_UPDATE_CURSOR and rid == 0):
            if d is not None:
                req = W.VHOST_USER_GPU_CURSOR_POS if rid else W.VHOST_USER_GPU_CURSOR_POS_HIDE
                d.send(req, W.GPU_CURSOR_POS.pack(sid, x, y))
        elif ctype == W.VIRTIO_GPU_CMD_UPDATE_CURSOR:
            res = self.resources.get(rid)
            if res is None:
                log.warning("cursor update with unknown resource %d ignored", rid)
                return
            if d is not None:
                d.send(
                    W.VHOST_USER_GPU_CURSOR_UPDATE,
                    W.GPU_CURSOR_UPDATE_HEAD.pack(sid, x, y, hot_x, hot_y),
                    cursor_image(res),
                )
        else:
            log.warning("command %s on the cursor queue ignored", W.ctrl_type_name(ctype))

    # -- life cycle ---------------------------------------------------------------------------
    def reset(self) -> None:
        self._parked = None
        for res in list(self.resources.values()):
            res.scanouts.clear()
            self._destroy(res)
        self.scanouts = [Scanout() for _ in range(W.VIRTIO_GPU_MAX_SCANOUTS)]
        self.hostmem = 0
        self.events_read = 0

    def close(self) -> None:
        self.reset()
        if self.display is not None:
            self.display.close()
            self.display = None


def cursor_image(res: Resource) -> bytes:
    """The 64x64 a8r8g8b8 cursor image of *res*: converted, then cropped or padded with cairo."""
    size = W.CURSOR_SIZE
    w, h = min(res.width, size), min(res.height, size)
    src = bytearray(w * h * 4)
    pixels.swizzle_rect(res.swizzle, res.view, 0, res.stride, src, 0, w * 4, w, h)
    if not res.alpha:
        src[3::4] = b"\xff" * (w * h)
    cursor = cairo.ImageSurface(cairo.FORMAT_ARGB32, size, size)  # transparent
    image = cairo.ImageSurface.create_for_data(src, cairo.FORMAT_ARGB32, w, h, w * 4)
    try:
        cr = cairo.Context(cursor)
        cr.set_operator(cairo.OPERATOR_SOURCE)
        cr.set_source_surface(image, 0, 0)
        cr.rectangle(0, 0, w, h)
        cr.fill()
        cursor.flush()
        data = bytes(cursor.get_data())
    finally:
        image.finish()
        cursor.finish()
    return data
