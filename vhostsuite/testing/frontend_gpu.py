"""The QEMU side of vhost-user-gpu, for tests and benchmarks.

* :class:`GpuDisplay` plays QEMU's display end of the vhost-user-gpu protocol
  (``hw/display/vhost-user-gpu.c``): a socketpair whose one end goes to the back-end with
  GPU_SET_SOCKET; a thread answers GET_PROTOCOL_FEATURES / GET_DISPLAY_INFO / GET_EDID as
  QEMU does, records SCANOUT / UPDATE / CURSOR_* messages and reassembles each scanout's
  image from the x8r8g8b8 UPDATEs. ``answer=False`` makes it a peer that never replies.
* :class:`GpuDriver` is the guest driver's side of the two virtqueues: it builds virtio-gpu
  commands, backs resources with scattered guest pages and reads the responses.

Usage::

    display = GpuDisplay(outputs=[(1024, 768)])
    fe.initialize(); display.attach(fe)          # QEMU sends SET_SOCKET at DRIVER_OK
    ctrl, cursor = fe.start([64, 16])
    drv = GpuDriver(fe, ctrl, cursor)
    drv.create_2d(1, 2, 64, 64)
"""

from __future__ import annotations

import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core import protocol as P
from ..devices.gpu import wire as W
from .frontend import DriverQueue, Frontend, FrontendError

PAGE = 4096


@dataclass
class DisplayMessage:
    request: int
    flags: int
    #: The payload; for UPDATE only its 20-byte head unless the display keeps pixels.
    payload: bytes


class GpuDisplay:
    """QEMU's display end of one vhost-user-gpu socket, served by a thread."""

    def __init__(
        self,
        outputs: list[tuple[int, int]] | tuple[tuple[int, int], ...] = ((1280, 800),),
        max_outputs: int | None = None,
        protocol_features: int = (1 << W.VHOST_USER_GPU_PROTOCOL_F_EDID) | (1 << W.VHOST_USER_GPU_PROTOCOL_F_DMABUF2),
        answer: bool = True,
        keep_images: bool = True,
        keep_pixels: bool = False,
        edid: Callable[[int], bytes] | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.outputs = list(outputs)
        self.max_outputs = max_outputs if max_outputs is not None else max(1, len(self.outputs))
        self.protocol_features = protocol_features
        self.answer = answer
        self.keep_images = keep_images
        self.keep_pixels = keep_pixels
        self.edid = edid or (lambda sid: b"QEMU-EDID" + bytes([sid]) + bytes(118))
        if sock is None:
            self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        else:  # our end of a socketpair whose peer end someone else hands over
            self.sock, self.peer = sock, None
        self.messages: list[DisplayMessage] = []
        #: scanout id -> [width, height, x8r8g8b8 pixels (stride width*4)]
        self.images: dict[int, list] = {}
        self.updates = 0
        self.update_bytes = 0
        self.errors: list[str] = []
        self.closed = False
        self.cond = threading.Condition()
        #: Replies to GET_DISPLAY_INFO / GET_EDID kept back while holding (a display that answers late).
        self._held: list[bytes] | None = None
        self._send_lock = threading.Lock()
        self._buf = bytearray(1 << 16)
        self._thread = threading.Thread(target=self._run, name="gpu-display", daemon=True)
        self._thread.start()

    # -- set-up --------------------------------------------------------------------------
    def attach(self, fe: Frontend) -> None:
        """Hand our peer end to the back-end (GPU_SET_SOCKET), then a round trip so it was handled."""
        set_socket(fe, self.peer)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()
        if self.peer is not None and not self.peer._closed:  # noqa: SLF001 - never attached
            self.peer.close()

    def __enter__(self) -> GpuDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- waiting -------------------------------------------------------------------------
    def wait_for(self, pred: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def wait_updates(self, count: int, timeout: float = 5.0) -> None:
        if not self.wait_for(lambda: self.updates >= count, timeout):
            raise FrontendError(f"display: {self.updates} of {count} UPDATE messages after {timeout}s")

    def of_type(self, request: int) -> list[DisplayMessage]:
        with self.cond:
            return [m for m in self.messages if m.request == request]

    def image(self, scanout: int = 0) -> tuple[int, int, bytes]:
        with self.cond:
            w, h, data = self.images[scanout]
            return w, h, bytes(data)

    # -- the thread ----------------------------------------------------------------------
    def _recv_exact(self, n: int) -> memoryview | None:
        if len(self._buf) < n:
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                return None
            got += k
        return view

    def hold_replies(self) -> None:
        """Keep the replies to GET_DISPLAY_INFO and GET_EDID until :meth:`release_replies`."""
        with self._send_lock:
            if self._held is None:
                self._held = []

    def release_replies(self) -> int:
        """Send the replies kept back, in order; how many there were."""
        with self._send_lock:
            held, self._held = self._held or [], None
            for msg in held:
                self.sock.sendall(msg)
        return len(held)

    def _reply(self, request: int, payload: bytes) -> None:
        """Send or hold a reply; the caller holds ``_send_lock``."""
        if not self.answer:
            return
        msg = W.GPU_HEADER.pack(request, W.VHOST_USER_GPU_MSG_FLAG_REPLY, len(payload)) + payload
        if self._held is not None and request in (W.VHOST_USER_GPU_GET_DISPLAY_INFO, W.VHOST_USER_GPU_GET_EDID):
            self._held.append(msg)
        else:
            self.sock.sendall(msg)

    def _run(self) -> None:
        try:
            while True:
                head = self._recv_exact(W.GPU_HEADER.size)
                if head is None:
                    break
                request, flags, size = W.GPU_HEADER.unpack(head)
                payload = self._recv_exact(size) if size else memoryview(b"")
                if payload is None:
                    break
                self._handle(request, flags, payload)
        except OSError as e:
            if not self.closed:
                self.errors.append(f"display thread: {e}")
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def _display_info(self) -> bytes:
        body = bytearray()
        for i in range(W.VIRTIO_GPU_MAX_SCANOUTS):
            if i < min(len(self.outputs), self.max_outputs) and self.outputs[i]:
                w, h = self.outputs[i]
                body += W.DISPLAY_ONE.pack(0, 0, w, h, 1, 0)
            else:
                body += W.DISPLAY_ONE.pack(0, 0, 0, 0, 0, 0)
        return W.CTRL_HDR.pack(W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO, 0, 0, 0, 0) + bytes(body)

    def _handle(self, request: int, flags: int, payload: memoryview) -> None:
        if request == W.VHOST_USER_GPU_UPDATE:
            if len(payload) < W.GPU_UPDATE_HEAD.size:
                self.errors.append(f"UPDATE of {len(payload)} bytes")
                return
            sid, x, y, w, h = W.GPU_UPDATE_HEAD.unpack_from(payload)
            data = payload[W.GPU_UPDATE_HEAD.size :]
            with self.cond:
                if len(data) != w * h * 4:
                    self.errors.append(f"UPDATE {w}x{h} with {len(data)} bytes of pixels")
                elif self.keep_images:
                    self._compose(sid, x, y, w, h, data)
                keep = bytes(payload) if self.keep_pixels else bytes(payload[: W.GPU_UPDATE_HEAD.size])
                self.messages.append(DisplayMessage(request, flags, keep))
                self.updates += 1
                self.update_bytes += len(data)
                self.cond.notify_all()
            return
        body = bytes(payload)
        # Recording a request and holding (or sending) its reply is one step under the send
        # lock: a test that saw the request and then calls release_replies() finds its reply.
        with self._send_lock:
            self._record_and_reply(request, flags, body)

    def _record_and_reply(self, request: int, flags: int, body: bytes) -> None:
        with self.cond:
            self.messages.append(DisplayMessage(request, flags, body))
            if request == W.VHOST_USER_GPU_SCANOUT and len(body) >= W.GPU_SCANOUT.size:
                sid, w, h = W.GPU_SCANOUT.unpack_from(body)
                if w and h:
                    self.images[sid] = [w, h, bytearray(w * h * 4)]
                else:
                    self.images.pop(sid, None)
            self.cond.notify_all()
        if request == W.VHOST_USER_GPU_GET_PROTOCOL_FEATURES:
            self._reply(request, W.GPU_U64.pack(self.protocol_features))
        elif request == W.VHOST_USER_GPU_GET_DISPLAY_INFO:
            self._reply(request, self._display_info())
        elif request == W.VHOST_USER_GPU_GET_EDID:
            (sid,) = W.GPU_EDID_REQUEST.unpack_from(body)
            if sid >= self.max_outputs:
                return  # QEMU logs "invalid scanout" and does not answer
            blob = self.edid(sid)
            resp = W.CTRL_HDR.pack(W.VIRTIO_GPU_RESP_OK_EDID, 0, 0, 0, 0) + W.RESP_EDID_HEAD.pack(len(blob), 0)
            self._reply(request, resp + blob + bytes(W.EDID_MAX - len(blob)))

    def _compose(self, sid: int, x: int, y: int, w: int, h: int, data: memoryview) -> None:
        img = self.images.get(sid)
        if img is None:
            self.errors.append(f"UPDATE for scanout {sid} before its SCANOUT")
            return
        iw, ih, pix = img
        if x + w > iw or y + h > ih:
            self.errors.append(f"UPDATE {w}x{h}+{x}+{y} outside scanout {sid} of {iw}x{ih}")
            return
        if x == 0 and w == iw:
            pix[y * iw * 4 : (y + h) * iw * 4] = data
            return
        for r in range(h):
            o = ((y + r) * iw + x) * 4
            pix[o : o + w * 4] = data[r * w * 4 : (r + 1) * w * 4]


# -- the guest driver's side ------------------------------------------------------------------


def hdr(ctype: int, flags: int = 0, fence_id: int = 0, ctx_id: int = 0, ring_idx: int = 0) -> bytes:
    return W.CTRL_HDR.pack(ctype, flags, fence_id, ctx_id, ring_idx)


def resp_type(data: bytes) -> int:
    if len(data) < 4:
        raise FrontendError(f"response of {len(data)} bytes")
    return struct.unpack_from("<I", data)[0]


class Backing:
    """Guest pages backing a resource, scattered over guest RAM in a shuffled order."""

    def __init__(
        self, fe: Frontend, size: int, scatter: bool = True, seed: int = 0, page: int = PAGE, top: bool = False
    ) -> None:
        self.ram = fe.ram
        self.size = size
        n = (size + page - 1) // page
        if scatter:
            slots = [self.ram.alloc(2 * page, page, top) for _ in range(n)]  # a hole after every page
            random.Random(seed).shuffle(slots)
            self.pages = [(gpa, page) for gpa in slots]
        else:
            base = self.ram.alloc(n * page, page, top)
            self.pages = [(base + i * page, page) for i in range(n)]

    def entries(self) -> list[tuple[int, int]]:
        return list(self.pages)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        data = memoryview(data).cast("B")
        pos = 0
        for gpa, ln in self.pages:
            if pos + ln <= offset:
                pos += ln
                continue
            start = max(0, offset - pos)
            take = min(ln - start, len(data))
            self.ram.write(gpa + start, data[:take])
            data = data[take:]
            pos += ln
            if not len(data):
                return


class GpuDriver:
    """Commands on the control queue (0) and cursor queue (1), one chain each."""

    def __init__(self, fe: Frontend, ctrl: DriverQueue, cursor: DriverQueue, timeout: float = 5.0) -> None:
        self.fe = fe
        self.ctrl = ctrl
        self.cursor = cursor
        self.timeout = timeout

    def submit(self, cmd: bytes | list[bytes], resp_size: int = 24) -> int:
        return self.ctrl.add(cmd if isinstance(cmd, list) else [cmd], [resp_size] if resp_size else [])

    def cmd(self, cmd: bytes | list[bytes], resp_size: int = 24, timeout: float | None = None) -> bytes:
        """Send one control command and wait for its response bytes."""
        self.submit(cmd, resp_size)
        self.ctrl.kick()
        (used,) = self.ctrl.wait_used(1, self.timeout if timeout is None else timeout)
        return used.data

    def cmd_type(self, cmd: bytes | list[bytes], resp_size: int = 24) -> int:
        return resp_type(self.cmd(cmd, resp_size))

    def batch(self, cmds: list[bytes], resp_size: int = 24) -> list[bytes]:
        """*cmds* made available at once (one avail index store), one kick, their responses. At
        once: a back-end still in its turn for an earlier command may pop what is published."""
        heads = [self.ctrl.add(c if isinstance(c, list) else [c], [resp_size] if resp_size else [], publish=False)
                 for c in cmds]
        self.ctrl.publish(*heads)
        self.ctrl.kick()
        used = self.ctrl.wait_used(len(cmds), self.timeout)
        return [u.data for u in used]

    # typed commands
    def create_2d(self, rid: int, fmt: int, w: int, h: int, **kw: int) -> int:
        body = W.RESOURCE_CREATE_2D.pack(rid, fmt, w, h)
        return self.cmd_type(hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D, **kw) + body)

    def unref(self, rid: int) -> int:
        return self.cmd_type(hdr(W.VIRTIO_GPU_CMD_RESOURCE_UNREF) + W.RESOURCE_UNREF.pack(rid, 0))

    def attach_backing(self, rid: int, entries: list[tuple[int, int]], nr: int | None = None) -> int:
        body = W.RESOURCE_ATTACH_BACKING.pack(rid, len(entries) if nr is None else nr)
        ents = b"".join(W.MEM_ENTRY.pack(a, ln, 0) for a, ln in entries)
        return self.cmd_type(
            [hdr(W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING) + body, ents]
            if ents
            else hdr(W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING) + body
        )

    def detach_backing(self, rid: int) -> int:
        return self.cmd_type(hdr(W.VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING) + W.RESOURCE_DETACH_BACKING.pack(rid, 0))

    def set_scanout(self, sid: int, rid: int, x: int, y: int, w: int, h: int) -> int:
        return self.cmd_type(hdr(W.VIRTIO_GPU_CMD_SET_SCANOUT) + W.SET_SCANOUT.pack(x, y, w, h, sid, rid))

    @staticmethod
    def flush_cmd(rid: int, x: int, y: int, w: int, h: int) -> bytes:
        return hdr(W.VIRTIO_GPU_CMD_RESOURCE_FLUSH) + W.RESOURCE_FLUSH.pack(x, y, w, h, rid, 0)

    def flush(self, rid: int, x: int, y: int, w: int, h: int) -> int:
        return self.cmd_type(self.flush_cmd(rid, x, y, w, h))

    @staticmethod
    def transfer_cmd(rid: int, x: int, y: int, w: int, h: int, offset: int) -> bytes:
        return hdr(W.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D) + W.TRANSFER_TO_HOST_2D.pack(x, y, w, h, offset, rid, 0)

    def transfer(self, rid: int, x: int, y: int, w: int, h: int, offset: int) -> int:
        return self.cmd_type(self.transfer_cmd(rid, x, y, w, h, offset))

    def display_info(self, timeout: float | None = None) -> bytes:
        return self.cmd(hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO), W.RESP_DISPLAY_INFO_SIZE, timeout)

    def get_edid(self, sid: int, timeout: float | None = None) -> bytes:
        return self.cmd(hdr(W.VIRTIO_GPU_CMD_GET_EDID) + W.CMD_GET_EDID.pack(sid, 0), W.RESP_EDID_SIZE, timeout)

    def cursor_cmd(self, ctype: int, sid: int, x: int, y: int, rid: int = 0, hot_x: int = 0, hot_y: int = 0) -> None:
        self.cursor.add([hdr(ctype) + W.UPDATE_CURSOR.pack(sid, x, y, 0, rid, hot_x, hot_y, 0)], [])
        self.cursor.kick()
        self.cursor.wait_used(1, self.timeout)

    # a whole resource in one go
    def make_resource(
        self, rid: int, fmt: int, w: int, h: int, pixels: bytes | None = None, scatter: bool = True
    ) -> Backing:
        """Create, back with scattered pages, fill with *pixels* (guest format) and transfer it all."""
        for t in (
            self.create_2d(rid, fmt, w, h),
            self.attach_backing(rid, (backing := Backing(self.fe, w * h * 4, scatter, seed=rid)).entries()),
        ):
            if t != W.VIRTIO_GPU_RESP_OK_NODATA:
                raise FrontendError(f"resource {rid}: {W.ctrl_type_name(t)}")
        if pixels is not None:
            backing.write(0, pixels)
            t = self.transfer(rid, 0, 0, w, h, 0)
            if t != W.VIRTIO_GPU_RESP_OK_NODATA:
                raise FrontendError(f"transfer {rid}: {W.ctrl_type_name(t)}")
        return backing


def open_gpu(
    fe: Frontend, display: GpuDisplay | None = None, features: int | None = None, sizes: tuple[int, int] = (64, 16)
) -> GpuDriver:
    """QEMU's order: realize (initialize), then at DRIVER_OK SET_SOCKET and the rings."""
    fe.initialize()
    if display is not None:
        display.attach(fe)
    ctrl, cursor = fe.start(list(sizes), features)
    return GpuDriver(fe, ctrl, cursor)


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def set_socket(fe: Frontend, peer: socket.socket) -> None:
    """GPU_SET_SOCKET with *peer* (closed here, as QEMU closes its copy), then a round trip so
    the back-end has handled it."""
    try:
        fe.call(P.Request.GPU_SET_SOCKET, b"", [peer.fileno()])
    finally:
        peer.close()
    fe.get_features()


class DisplayProcess:
    """A :class:`GpuDisplay` in a process of its own, as QEMU's display is: for tests whose own
    process is too busy (e.g. flooding a ring) for a display thread to keep up fairly."""

    def __init__(self) -> None:
        ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vhostsuite.testing.frontend_gpu", f"--display-fd={ours.fileno()}"],
            pass_fds=(ours.fileno(),),
            env=env,
        )
        ours.close()

    def attach(self, fe: Frontend) -> None:
        """GPU_SET_SOCKET with the display's end, then a round trip so it was handled."""
        set_socket(fe, self.peer)

    def close(self) -> None:
        if not self.peer._closed:  # noqa: SLF001 - never attached
            self.peer.close()
        self.proc.kill()
        self.proc.wait(5)

    def __enter__(self) -> DisplayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m vhostsuite.testing.frontend_gpu --display-fd=N``: serve a display on fd N until it closes."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vhostsuite.testing.frontend_gpu")
    parser.add_argument("--display-fd", type=int, required=True, help="our end of the display socketpair")
    args = parser.parse_args(argv)
    display = GpuDisplay(keep_images=False, sock=socket.socket(fileno=args.display_fd))
    display._thread.join()  # noqa: SLF001 - until the back-end closes its end
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
