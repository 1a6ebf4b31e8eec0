"""vhost-user-gpu through the package's front-end: the real program, real sockets, QEMU's display side
played by :class:`vhostsuite.testing.frontend_gpu.GpuDisplay`."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.conftest import child_env, program
from vhostsuite.core import protocol as P
from vhostsuite.core.virtio import bit
from vhostsuite.devices.gpu import edid as E
from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing.frontend import FrontendError
from vhostsuite.testing.frontend_gpu import Backing, GpuDisplay, GpuDriver, hdr, open_gpu, resp_type, wait_until

OK = W.VIRTIO_GPU_RESP_OK_NODATA
ERR_UNSPEC = W.VIRTIO_GPU_RESP_ERR_UNSPEC
OOM = W.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
BAD_SCANOUT = W.VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID
BAD_RES = W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
BAD_PARAM = W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
BGRX = W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM

FORMAT_NAMES = {
    W.VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM: "BGRA",
    W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM: "BGRX",
    W.VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM: "ARGB",
    W.VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM: "XRGB",
    W.VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM: "RGBA",
    W.VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM: "XBGR",
    W.VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM: "ABGR",
    W.VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM: "RGBX",
}


class Gpu:
    def __init__(self, be, fe, drv: GpuDriver, display: GpuDisplay | None) -> None:  # noqa: ANN001
        self.be, self.fe, self.drv, self.display = be, fe, drv, display


@pytest.fixture
def gpu(spawn):  # noqa: ANN001, ANN201
    """``gpu(*args, display=GpuDisplay() | None, features=None, fd_mode=False)`` -> Gpu."""
    displays: list[GpuDisplay] = []

    def start(*args: str, display: GpuDisplay | None | bool = True, features: int | None = None, fd_mode=False):  # noqa: ANN001, ANN202
        if display is True:
            display = GpuDisplay()
        if display:
            displays.append(display)
        be, fe = spawn("vhost-user-gpu", "--display-timeout=0.5", *args, fd_mode=fd_mode)
        drv = open_gpu(fe, display or None, features)
        return Gpu(be, fe, drv, display or None)

    yield start
    for d in displays:
        d.close()


def pattern(w: int, h: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(w * h * 4)


def to_xrgb(fmt: int, data: bytes) -> bytes:
    """What UPDATE must carry: each pixel's bytes in B,G,R,A/X order, derived from the format's name."""
    order = FORMAT_NAMES[fmt]
    idx = [order.index("B"), order.index("G"), order.index("R"), order.index("A" if "A" in order else "X")]
    out = bytearray(len(data))
    for k in range(4):
        out[k::4] = data[idx[k] :: 4]
    return bytes(out)


def crop(data: bytes, stride_px: int, x: int, y: int, w: int, h: int) -> bytes:
    return b"".join(data[((y + r) * stride_px + x) * 4 : ((y + r) * stride_px + x + w) * 4] for r in range(h))


def updates(display: GpuDisplay) -> list[tuple[int, int, int, int, int]]:
    return [W.GPU_UPDATE_HEAD.unpack_from(m.payload) for m in display.of_type(W.VHOST_USER_GPU_UPDATE)]


# -- the program -------------------------------------------------------------------------------


def test_print_capabilities_does_not_import_cairo() -> None:
    code = (
        "import sys, io, contextlib\n"
        "from vhostsuite.devices.gpu import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): rc = main(['--print-capabilities'])\n"
        "assert rc == 0 and 'cairo' not in sys.modules, sorted(m for m in sys.modules if 'cairo' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), timeout=30)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--render-node=/dev/dri/renderD128"], "--render-node"),
        (["--render-node=/dev/null"], "not a DRM render node"),
    ],
)
def test_unsupported_options_fail_early(tmp_path, args, message) -> None:  # noqa: ANN001
    sock = tmp_path / "gpu.sock"
    t0 = time.monotonic()
    out = subprocess.run(
        [*program("vhost-user-gpu"), f"--socket-path={sock}", *args], capture_output=True, env=child_env(), timeout=30
    )
    assert out.returncode != 0
    assert message in out.stderr.decode()
    assert not sock.exists()
    assert time.monotonic() - t0 < 10


def test_bad_max_hostmem_is_a_usage_error(tmp_path) -> None:  # noqa: ANN001
    out = subprocess.run(
        [*program("vhost-user-gpu"), f"--socket-path={tmp_path / 's'}", "--max-hostmem=lots"],
        capture_output=True,
        env=child_env(),
        timeout=30,
    )
    assert out.returncode == 2 and "invalid size" in out.stderr.decode()


def test_features_and_config(gpu) -> None:  # noqa: ANN001
    g = gpu()
    feats = g.fe.get_features()
    assert feats & bit(W.VIRTIO_GPU_F_EDID)
    assert not feats & bit(W.VIRTIO_GPU_F_VIRGL)
    events_read, events_clear, num_scanouts, num_capsets = W.CONFIG.unpack(g.fe.get_config(0, 16))
    assert num_capsets == 0 and events_read == 0


@pytest.mark.parametrize("fd_mode", [False, True])
def test_draw_and_flush(gpu, fd_mode) -> None:  # noqa: ANN001
    g = gpu(fd_mode=fd_mode)
    pix = pattern(64, 48)
    g.drv.make_resource(1, BGRX, 64, 48, pix)
    assert g.drv.set_scanout(0, 1, 0, 0, 64, 48) == OK
    assert g.drv.flush(1, 0, 0, 64, 48) == OK
    g.display.wait_updates(1)
    assert g.display.image(0) == (64, 48, pix)
    msgs = [m.request for m in g.display.messages]
    assert msgs.index(W.VHOST_USER_GPU_SCANOUT) < msgs.index(W.VHOST_USER_GPU_UPDATE)
    assert not g.display.errors


# -- display info and EDID ---------------------------------------------------------------------


def test_display_info_forwarded_with_two_outputs(gpu) -> None:  # noqa: ANN001
    g = gpu(display=GpuDisplay(outputs=[(1024, 768), (800, 600)]))
    r = g.drv.display_info()
    assert len(r) == W.RESP_DISPLAY_INFO_SIZE
    assert W.CTRL_HDR.unpack_from(r) == (W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO, 0, 0, 0, 0)
    assert W.DISPLAY_ONE.unpack_from(r, 24) == (0, 0, 1024, 768, 1, 0)
    assert W.DISPLAY_ONE.unpack_from(r, 24 + 24) == (0, 0, 800, 600, 1, 0)
    assert r[24 + 48 :] == bytes(W.RESP_DISPLAY_INFO_SIZE - 24 - 48)


def test_display_info_before_display_socket_does_not_hang(gpu) -> None:  # noqa: ANN001
    g = gpu(display=None)
    t0 = time.monotonic()
    r = g.drv.display_info(timeout=3)
    assert time.monotonic() - t0 < 2
    assert resp_type(r) == W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO
    assert W.DISPLAY_ONE.unpack_from(r, 24) == (0, 0, 1280, 800, 1, 0)
    # other 2D commands work without a display too
    pix = pattern(16, 16)
    g.drv.make_resource(1, BGRX, 16, 16, pix)
    assert g.drv.set_scanout(0, 1, 0, 0, 16, 16) == OK
    assert g.drv.flush(1, 0, 0, 16, 16) == OK
    # the display arrives later: it gets SCANOUT then the whole scanout
    d = GpuDisplay()
    try:
        d.attach(g.fe)
        d.wait_updates(1)
        assert d.image(0) == (16, 16, pix)
    finally:
        d.close()


def test_display_info_one_question_per_batch_and_fresh_for_each(gpu) -> None:  # noqa: ANN001
    """The GET_DISPLAY_INFOs of one batch share one question to the display (they were all in
    the ring before it was asked); a later batch asks again and sees what changed."""
    display = GpuDisplay(outputs=[(1024, 768)])
    g = gpu(display=display)
    gdi = hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO)
    asked = len(display.of_type(W.VHOST_USER_GPU_GET_DISPLAY_INFO))
    answers = g.drv.batch([gdi] * 8, W.RESP_DISPLAY_INFO_SIZE)
    assert all(W.DISPLAY_ONE.unpack_from(r, 24) == (0, 0, 1024, 768, 1, 0) for r in answers)
    assert len(display.of_type(W.VHOST_USER_GPU_GET_DISPLAY_INFO)) == asked + 1
    display.outputs = [(640, 480)]  # the user resized the window
    r = g.drv.display_info()
    assert W.DISPLAY_ONE.unpack_from(r, 24) == (0, 0, 640, 480, 1, 0)
    assert len(display.of_type(W.VHOST_USER_GPU_GET_DISPLAY_INFO)) == asked + 2


def test_display_info_from_a_late_display_completes_in_order(gpu) -> None:  # noqa: ANN001
    """A display that does not answer at once: the command waits (PENDING) and the commands
    behind it run after it, in order; each later batch asks again."""
    display = GpuDisplay(outputs=[(800, 600)])
    g = gpu(display=display)
    g.drv.make_resource(1, BGRX, 8, 8, pattern(8, 8))
    display.hold_replies()
    asked = len(display.of_type(W.VHOST_USER_GPU_GET_DISPLAY_INFO))
    gdi = hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO)
    for cmd in (gdi, GpuDriver.flush_cmd(1, 0, 0, 8, 8), gdi):
        g.drv.submit(cmd, W.RESP_DISPLAY_INFO_SIZE)
    g.drv.ctrl.kick()
    assert wait_until(lambda: len(display.of_type(W.VHOST_USER_GPU_GET_DISPLAY_INFO)) > asked)
    time.sleep(0.05)
    assert g.drv.ctrl.poll_used() == []  # the first waits, so do the ones behind it
    display.release_replies()
    used = g.drv.ctrl.wait_used(3, 5)
    assert [resp_type(u.data) for u in used] == [W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO, OK,
                                                 W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO]  # fmt: skip
    assert all(W.DISPLAY_ONE.unpack_from(used[i].data, 24) == (0, 0, 800, 600, 1, 0) for i in (0, 2))


def test_display_messages_of_a_batch_keep_their_order(gpu) -> None:  # noqa: ANN001
    """SET_SCANOUT and the FLUSHes behind it in one kick: the display gets SCANOUT, then the
    UPDATEs in command order, all of them before the driver sees the answers."""
    display = GpuDisplay(outputs=[(64, 64)])
    g = gpu(display=display)
    pix = pattern(16, 16)
    g.drv.make_resource(1, BGRX, 16, 16, pix)
    cmds = [hdr(W.VIRTIO_GPU_CMD_SET_SCANOUT) + W.SET_SCANOUT.pack(0, 0, 16, 16, 0, 1)]
    cmds += [GpuDriver.flush_cmd(1, 0, y, 16, 1) for y in range(16)]
    assert [resp_type(r) for r in g.drv.batch(cmds)] == [OK] * 17
    display.wait_updates(16)
    kinds = [m.request for m in display.messages if m.request in (W.VHOST_USER_GPU_SCANOUT, W.VHOST_USER_GPU_UPDATE)]
    assert kinds == [W.VHOST_USER_GPU_SCANOUT] + [W.VHOST_USER_GPU_UPDATE] * 16
    assert [u[2] for u in updates(display)] == list(range(16))  # y of each UPDATE, in order
    assert display.image(0) == (16, 16, pix)


def test_edid_forwarded(gpu) -> None:  # noqa: ANN001
    g = gpu()
    r = g.drv.get_edid(0)
    assert len(r) == W.RESP_EDID_SIZE
    assert W.CTRL_HDR.unpack_from(r) == (W.VIRTIO_GPU_RESP_OK_EDID, 0, 0, 0, 0)
    size, pad = W.RESP_EDID_HEAD.unpack_from(r, 24)
    assert (size, pad) == (128, 0)
    assert r[32:42] == b"QEMU-EDID\x00"
    assert r[32 + 128 :] == bytes(W.EDID_MAX - 128)
    req = g.display.of_type(W.VHOST_USER_GPU_GET_EDID)
    assert [W.GPU_EDID_REQUEST.unpack(m.payload) for m in req] == [(0,)]


@pytest.mark.parametrize("proto", [0, 1 << W.VHOST_USER_GPU_PROTOCOL_F_DMABUF2])
def test_edid_generated_when_frontend_has_no_edid_protocol(gpu, proto) -> None:  # noqa: ANN001
    g = gpu(display=GpuDisplay(outputs=[(1600, 900)], protocol_features=proto))
    g.drv.display_info()
    r = g.drv.get_edid(0)
    assert resp_type(r) == W.VIRTIO_GPU_RESP_OK_EDID
    size = W.RESP_EDID_HEAD.unpack_from(r, 24)[0]
    blob = r[32 : 32 + size]
    assert size == 128 and blob[:8] == b"\x00\xff\xff\xff\xff\xff\xff\x00" and sum(blob) % 256 == 0
    # the preferred detailed timing is the display's mode
    dtd = blob[54:72]
    assert dtd[2] | (dtd[4] >> 4) << 8 == 1600 and dtd[5] | (dtd[7] >> 4) << 8 == 900
    assert not g.display.of_type(W.VHOST_USER_GPU_GET_EDID)
    (sp,) = g.display.of_type(W.VHOST_USER_GPU_SET_PROTOCOL_FEATURES)
    assert W.GPU_U64.unpack(sp.payload)[0] == 0


def test_edid_errors(gpu) -> None:  # noqa: ANN001
    g = gpu()
    assert resp_type(g.drv.get_edid(16)) == BAD_PARAM
    g2 = gpu(features=g.fe.get_features() & ~bit(W.VIRTIO_GPU_F_EDID))
    assert resp_type(g2.drv.get_edid(0)) == ERR_UNSPEC


def test_generated_edid_is_valid() -> None:
    for w, h in [(640, 480), (1920, 1080), (5000, 5000), (1, 1)]:
        b = E.generate(w, h)
        assert len(b) == 128 and sum(b) % 256 == 0


# -- resources and formats --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMAT_NAMES), ids=lambda f: FORMAT_NAMES[f])
def test_format_converted_to_xrgb(gpu, fmt) -> None:  # noqa: ANN001
    g = gpu()
    w, h = 37, 23  # odd sizes: no accidental alignment
    pix = pattern(w, h, seed=fmt)
    g.drv.make_resource(5, fmt, w, h, pix)
    assert g.drv.set_scanout(0, 5, 0, 0, w, h) == OK
    assert g.drv.flush(5, 0, 0, w, h) == OK
    g.display.wait_updates(1)
    assert g.display.image(0) == (w, h, to_xrgb(fmt, pix))
    # a partial flush converts just that rectangle
    assert g.drv.flush(5, 3, 4, 10, 7) == OK
    g.display.wait_updates(2)
    assert updates(g.display)[-1] == (0, 3, 4, 10, 7)
    assert g.display.image(0) == (w, h, to_xrgb(fmt, pix))


def test_create_2d_errors(gpu) -> None:  # noqa: ANN001
    g = gpu()
    d = g.drv
    assert d.create_2d(0, BGRX, 4, 4) == BAD_RES
    assert d.create_2d(1, BGRX, 4, 4) == OK
    assert d.create_2d(1, BGRX, 4, 4) == BAD_RES
    assert d.create_2d(2, 99, 4, 4) == BAD_PARAM
    assert d.create_2d(2, BGRX, 0, 4) == BAD_PARAM
    assert d.create_2d(2, BGRX, 4, 0) == BAD_PARAM
    assert d.create_2d(2, BGRX, 0xFFFFFFFF, 0xFFFFFFFF) == OOM
    short = hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D) + struct.pack("<II", 3, BGRX)
    assert d.cmd_type(short) == BAD_PARAM
    assert d.cmd_type(b"\x00" * 10) == BAD_PARAM
    assert d.create_2d(2, BGRX, 4, 4) == OK


def test_memory_cap(gpu) -> None:  # noqa: ANN001
    g = gpu("--max-hostmem=1M")
    d = g.drv
    assert d.create_2d(1, BGRX, 512, 256) == OK  # 512 KiB
    assert d.create_2d(2, BGRX, 512, 257) == OOM  # 512 KiB + 2 KiB > 1 MiB
    assert d.create_2d(3, BGRX, 1024, 1024) == OOM
    assert d.create_2d(4, BGRX, 16, 16) == OK  # a valid command still works
    assert d.unref(1) == OK
    assert d.create_2d(2, BGRX, 512, 257) == OK
    g.drv.make_resource(9, BGRX, 8, 8, pattern(8, 8))


def test_unref(gpu) -> None:  # noqa: ANN001
    g = gpu()
    g.drv.make_resource(1, BGRX, 32, 32, pattern(32, 32))
    assert g.drv.set_scanout(0, 1, 0, 0, 32, 32) == OK
    assert g.drv.unref(1) == OK  # while on a scanout: the scanout is disabled
    assert g.display.wait_for(
        lambda: any(W.GPU_SCANOUT.unpack(m.payload) == (0, 0, 0) for m in g.display.of_type(W.VHOST_USER_GPU_SCANOUT))
    )
    assert g.drv.unref(1) == BAD_RES
    assert g.drv.flush(1, 0, 0, 1, 1) == BAD_RES
    assert g.drv.set_scanout(0, 1, 0, 0, 32, 32) == BAD_RES
    assert g.drv.unref(0) == BAD_RES


# -- backing and transfers --------------------------------------------------------------------


def test_transfer_sub_rectangles_with_offset_scattered(gpu) -> None:  # noqa: ANN001
    g = gpu()
    w, h = 100, 60
    first = pattern(w, h, 1)
    backing = g.drv.make_resource(1, BGRX, w, h, first)
    assert len(backing.pages) > 5
    assert g.drv.set_scanout(0, 1, 0, 0, w, h) == OK
    second = pattern(w, h, 2)
    backing.write(0, second)
    want = bytearray(first)
    for x, y, rw, rh in [(0, 0, 1, 1), (99, 59, 1, 1), (13, 7, 50, 30), (0, 20, 100, 3), (41, 0, 17, 60)]:
        offset = (y * w + x) * 4
        assert g.drv.transfer(1, x, y, rw, rh, offset) == OK
        for r in range(rh):
            o = ((y + r) * w + x) * 4
            want[o : o + rw * 4] = second[o : o + rw * 4]
    assert g.drv.flush(1, 0, 0, w, h) == OK
    g.display.wait_updates(1)
    assert g.display.image(0)[2] == bytes(want)
    # an offset that is not the rectangle's own place: rows come from offset + k*stride
    assert g.drv.transfer(1, 0, 0, 10, 2, 4 * w * 10) == OK
    want[0:40] = second[4 * w * 10 : 4 * w * 10 + 40]
    want[4 * w : 4 * w + 40] = second[4 * w * 11 : 4 * w * 11 + 40]
    assert g.drv.flush(1, 0, 0, w, h) == OK
    g.display.wait_updates(2)
    assert g.display.image(0)[2] == bytes(want)


def test_transfer_errors(gpu) -> None:  # noqa: ANN001
    g = gpu()
    d = g.drv
    assert d.transfer(1, 0, 0, 1, 1, 0) == BAD_RES  # no resource
    assert d.create_2d(1, BGRX, 16, 16) == OK
    assert d.transfer(1, 0, 0, 1, 1, 0) == BAD_RES  # no backing
    b = Backing(g.fe, 16 * 16 * 4 - 64)  # one row short
    assert d.attach_backing(1, b.entries()[:3]) == OK  # 12 KiB, < 16*16*4? no: 1 KiB resource
    assert d.detach_backing(1) == OK
    small = [(b.pages[0][0], 16 * 4 * 15)]  # 15 rows
    assert d.attach_backing(1, small) == OK
    assert d.transfer(1, 0, 0, 16, 15, 0) == OK
    assert d.transfer(1, 0, 0, 16, 16, 0) == BAD_PARAM  # past the backing
    assert d.transfer(1, 0, 0, 1, 1, 16 * 4 * 15) == BAD_PARAM
    assert d.transfer(1, 0, 0, 17, 1, 0) == BAD_PARAM  # outside the resource
    assert d.transfer(1, 15, 15, 2, 1, 0) == BAD_PARAM
    assert d.transfer(1, 0xFFFFFFFF, 0, 2, 1, 0) == BAD_PARAM  # no wrap-around
    assert d.transfer(1, 0, 0, 1, 1, (1 << 64) - 1) == BAD_PARAM
    assert d.transfer(1, 0, 0, 0, 0, 0) == OK


def test_attach_detach_errors(gpu) -> None:  # noqa: ANN001
    g = gpu()
    d = g.drv
    b = Backing(g.fe, 4096 * 4)
    assert d.attach_backing(7, b.entries()) == BAD_RES
    assert d.create_2d(7, BGRX, 32, 32) == OK
    assert d.detach_backing(7) == BAD_RES  # nothing attached
    t0 = time.monotonic()
    assert d.attach_backing(7, b.entries(), nr=0xFFFFFFFF) == ERR_UNSPEC  # huge: refused before allocating
    assert d.attach_backing(7, b.entries(), nr=W.MAX_BACKING_ENTRIES + 1) == ERR_UNSPEC
    assert d.attach_backing(7, b.entries(), nr=len(b.entries()) + 1) == ERR_UNSPEC  # entries missing
    assert time.monotonic() - t0 < 3
    ram_end = g.fe.ram.gpa_base + g.fe.ram.size
    assert d.attach_backing(7, [(ram_end - 4096, 8192)]) == ERR_UNSPEC  # past guest RAM
    assert d.attach_backing(7, [((1 << 64) - 4096, 4096)]) == ERR_UNSPEC
    assert d.attach_backing(7, b.entries()) == OK
    assert d.attach_backing(7, b.entries()) == ERR_UNSPEC  # already attached
    assert d.detach_backing(7) == OK
    assert d.detach_backing(7) == BAD_RES
    assert d.transfer(7, 0, 0, 1, 1, 0) == BAD_RES
    # entries across two guest RAM regions are fine when contiguous in guest-physical space
    assert d.attach_backing(7, b.entries()) == OK
    assert d.cmd_type(hdr(W.VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING) + b"\x07\x00") == BAD_PARAM


# -- scanouts and flush ---------------------------------------------------------------------------


def test_set_scanout_errors_and_disable(gpu) -> None:  # noqa: ANN001
    g = gpu()
    d = g.drv
    g.drv.make_resource(1, BGRX, 64, 64, pattern(64, 64))
    assert d.set_scanout(16, 1, 0, 0, 64, 64) == BAD_SCANOUT
    assert d.set_scanout(0xFFFFFFFF, 1, 0, 0, 64, 64) == BAD_SCANOUT
    assert d.set_scanout(0, 2, 0, 0, 64, 64) == BAD_RES
    assert d.set_scanout(0, 1, 1, 0, 64, 64) == BAD_PARAM
    assert d.set_scanout(0, 1, 0, 0, 65, 1) == BAD_PARAM
    assert d.set_scanout(0, 1, 0xFFFFFFF0, 0, 32, 32) == BAD_PARAM
    assert d.set_scanout(0, 1, 0, 0, 0, 0) == BAD_PARAM
    assert d.set_scanout(0, 1, 8, 16, 32, 16) == OK
    assert d.set_scanout(0, 0, 0, 0, 0, 0) == OK  # disable

    def scanouts() -> list[tuple[int, int, int]]:
        return [W.GPU_SCANOUT.unpack(m.payload) for m in g.display.of_type(W.VHOST_USER_GPU_SCANOUT)]

    # the display thread records what arrives on its own schedule: wait for the second message
    g.display.wait_for(lambda: len(scanouts()) >= 2)
    assert scanouts() == [(0, 32, 16), (0, 0, 0)]
    assert d.flush(1, 0, 0, 64, 64) == OK  # no longer on a scanout: no UPDATE
    time.sleep(0.1)
    assert g.display.updates == 0


def test_flush_clips_to_scanout_and_errors(gpu) -> None:  # noqa: ANN001
    g = gpu()
    d = g.drv
    pix = pattern(64, 64)
    d.make_resource(1, BGRX, 64, 64, pix)
    assert d.set_scanout(0, 1, 8, 16, 32, 16) == OK
    assert d.flush(2, 0, 0, 1, 1) == BAD_RES
    assert d.flush(1, 0, 0, 65, 1) == BAD_PARAM
    assert d.flush(1, 0xFFFFFFFF, 0, 2, 2) == BAD_PARAM
    assert d.flush(1, 0, 0, 4, 4) == OK  # off the scanout: nothing sent
    assert d.flush(1, 0, 0, 64, 64) == OK
    g.display.wait_updates(1)
    assert updates(g.display) == [(0, 0, 0, 32, 16)]
    assert g.display.image(0) == (32, 16, crop(pix, 64, 8, 16, 32, 16))
    assert d.flush(1, 30, 20, 20, 2) == OK
    g.display.wait_updates(2)
    assert updates(g.display)[-1] == (0, 22, 4, 10, 2)


def test_two_scanouts(gpu) -> None:  # noqa: ANN001
    g = gpu(display=GpuDisplay(outputs=[(64, 32), (32, 64)]))
    a, b = pattern(64, 32, 1), pattern(32, 64, 2)
    g.drv.make_resource(1, BGRX, 64, 32, a)
    g.drv.make_resource(2, W.VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, 32, 64, b)
    assert g.drv.set_scanout(0, 1, 0, 0, 64, 32) == OK
    assert g.drv.set_scanout(1, 2, 0, 0, 32, 64) == OK
    assert g.drv.flush(1, 0, 0, 64, 32) == OK
    assert g.drv.flush(2, 0, 0, 32, 64) == OK
    g.display.wait_updates(2)
    assert g.display.image(0) == (64, 32, a)
    assert g.display.image(1) == (32, 64, to_xrgb(W.VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, b))
    # one resource on both scanouts: a flush updates both
    assert g.drv.set_scanout(1, 1, 32, 0, 32, 32) == OK
    assert g.drv.flush(1, 0, 0, 64, 32) == OK
    g.display.wait_updates(4)
    assert g.display.image(1) == (32, 32, crop(a, 64, 32, 0, 32, 32))
    assert not g.display.errors


def test_sixteen_scanouts(gpu) -> None:  # noqa: ANN001
    g = gpu(display=GpuDisplay(outputs=[(8, 8)] * 16))
    g.drv.make_resource(1, BGRX, 8, 8, pattern(8, 8))
    for sid in range(16):
        assert g.drv.set_scanout(sid, 1, 0, 0, 8, 8) == OK
    assert g.drv.flush(1, 0, 0, 8, 8) == OK
    g.display.wait_updates(16)
    assert sorted(u[0] for u in updates(g.display)) == list(range(16))


# -- cursor -------------------------------------------------------------------------------------


def test_cursor(gpu) -> None:  # noqa: ANN001
    g = gpu()
    d = g.drv
    img = pattern(64, 64, 3)
    d.make_resource(9, W.VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM, 64, 64, img)
    small = pattern(32, 16, 4)
    d.make_resource(10, BGRX, 32, 16, small)
    d.cursor_cmd(W.VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 100, 200, rid=9, hot_x=3, hot_y=4)
    d.cursor_cmd(W.VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 110, 210, rid=9)
    d.cursor_cmd(W.VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 0, 0, rid=0)
    d.cursor_cmd(W.VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 1, 2, rid=10)
    d.cursor_cmd(W.VIRTIO_GPU_CMD_UPDATE_CURSOR, 16, 1, 2, rid=10)  # bad scanout: ignored
    d.cursor_cmd(W.VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 1, 2, rid=77)  # unknown resource: ignored
    assert g.display.wait_for(lambda: len(g.display.of_type(W.VHOST_USER_GPU_CURSOR_UPDATE)) == 2)
    time.sleep(0.1)
    ups = g.display.of_type(W.VHOST_USER_GPU_CURSOR_UPDATE)
    assert len(ups) == 2
    p = ups[0].payload
    assert len(p) == W.GPU_CURSOR_UPDATE_SIZE
    assert W.GPU_CURSOR_UPDATE_HEAD.unpack_from(p) == (0, 100, 200, 3, 4)
    assert p[20:] == to_xrgb(W.VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM, img)
    # a 32x16 opaque cursor: padded with transparent pixels, alpha 0xff
    data = ups[1].payload[20:]
    want = bytearray(64 * 64 * 4)
    for r in range(16):
        row = bytearray(small[r * 128 : (r + 1) * 128])
        row[3::4] = b"\xff" * 32
        want[r * 256 : r * 256 + 128] = row
    assert data == bytes(want)
    pos = [(m.request, W.GPU_CURSOR_POS.unpack(m.payload)) for m in g.display.messages if m.request in (4, 5)]
    assert pos == [(W.VHOST_USER_GPU_CURSOR_POS, (0, 110, 210)), (W.VHOST_USER_GPU_CURSOR_POS_HIDE, (0, 0, 0))]


def test_cursor_queue_survives_short_and_wrong_commands(gpu) -> None:  # noqa: ANN001
    g = gpu()
    g.drv.cursor.add([b"\x00" * 8], [])
    g.drv.cursor.add([hdr(W.VIRTIO_GPU_CMD_RESOURCE_FLUSH) + bytes(32)], [])
    g.drv.cursor.kick()
    used = g.drv.cursor.wait_used(2)
    assert [u.length for u in used] == [0, 0]
    g.drv.cursor_cmd(W.VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 5, 5, rid=1)
    assert g.display.wait_for(lambda: g.display.of_type(W.VHOST_USER_GPU_CURSOR_POS))


# -- display socket life cycle --------------------------------------------------------------------


def test_second_set_socket_replaces_the_first(gpu) -> None:  # noqa: ANN001
    g = gpu()
    pix = pattern(40, 30)
    g.drv.make_resource(1, BGRX, 40, 30, pix)
    assert g.drv.set_scanout(0, 1, 0, 0, 40, 30) == OK
    first = g.display
    second = GpuDisplay(outputs=[(640, 480)])
    try:
        second.attach(g.fe)
        assert first.wait_for(lambda: first.closed)  # the old socket was closed
        second.wait_updates(1)  # SCANOUT and the whole scanout again on the new one
        assert second.image(0) == (40, 30, pix)
        r = g.drv.display_info()
        assert W.DISPLAY_ONE.unpack_from(r, 24) == (0, 0, 640, 480, 1, 0)
        assert g.drv.flush(1, 0, 0, 40, 30) == OK
        second.wait_updates(2)
    finally:
        second.close()


def test_display_peer_that_never_answers(gpu) -> None:  # noqa: ANN001
    g = gpu("--display-timeout=0.3", display=GpuDisplay(answer=False))
    t0 = time.monotonic()
    r = g.drv.display_info(timeout=5)
    assert time.monotonic() - t0 < 3
    assert resp_type(r) == W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO
    assert W.DISPLAY_ONE.unpack_from(r, 24) == (0, 0, 1280, 800, 1, 0)
    # while a command waits for the display, vhost-user messages are still served
    g.drv.submit(hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO), W.RESP_DISPLAY_INFO_SIZE)
    g.drv.ctrl.kick()
    assert g.fe.get_features()
    g.drv.ctrl.wait_used(1)
    # and the queue keeps going
    assert g.drv.create_2d(1, BGRX, 4, 4) == OK
    assert resp_type(g.drv.get_edid(0)) == W.VIRTIO_GPU_RESP_OK_EDID


def test_display_hangup_keeps_serving(gpu) -> None:  # noqa: ANN001
    g = gpu()
    g.drv.make_resource(1, BGRX, 8, 8, pattern(8, 8))
    assert g.drv.set_scanout(0, 1, 0, 0, 8, 8) == OK
    g.display.close()
    assert g.drv.flush(1, 0, 0, 8, 8) == OK
    r = g.drv.display_info()
    assert resp_type(r) == W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO
    assert g.be.proc.poll() is None


def test_set_socket_without_fd_is_refused(gpu) -> None:  # noqa: ANN001
    g = gpu()
    reply = g.fe.call(33, b"", [], need_reply=True)
    assert P.decode_u64(reply) != 0
    with socket.socket() as tcp:  # not a UNIX socket
        reply = g.fe.call(33, b"", [tcp.fileno()], need_reply=True)
        assert P.decode_u64(reply) != 0
    assert g.drv.create_2d(1, BGRX, 4, 4) == OK


# -- fences, 3D, response hygiene -------------------------------------------------------------


def test_fences_echoed(gpu) -> None:  # noqa: ANN001
    g = gpu()
    d = g.drv
    r = d.cmd(
        hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D, W.VIRTIO_GPU_FLAG_FENCE, 0x1122334455667788, 7, 3)
        + W.RESOURCE_CREATE_2D.pack(1, BGRX, 4, 4)
    )
    assert W.CTRL_HDR.unpack(r) == (OK, W.VIRTIO_GPU_FLAG_FENCE, 0x1122334455667788, 7, 0)
    flags = W.VIRTIO_GPU_FLAG_FENCE | W.VIRTIO_GPU_FLAG_INFO_RING_IDX
    r = d.cmd(hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D, flags, 42, 0, 5) + W.RESOURCE_CREATE_2D.pack(1, BGRX, 4, 4))
    assert W.CTRL_HDR.unpack(r) == (BAD_RES, flags, 42, 0, 5)  # errors carry the fence too
    r = d.cmd(hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO, W.VIRTIO_GPU_FLAG_FENCE, 9), W.RESP_DISPLAY_INFO_SIZE)
    assert W.CTRL_HDR.unpack_from(r) == (W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO, W.VIRTIO_GPU_FLAG_FENCE, 9, 0, 0)
    r = d.cmd(hdr(W.VIRTIO_GPU_CMD_RESOURCE_UNREF, 0, 99, 8, 2) + W.RESOURCE_UNREF.pack(1, 0))  # no FENCE flag
    assert W.CTRL_HDR.unpack(r) == (OK, 0, 0, 0, 0)


THREE_D = [
    W.VIRTIO_GPU_CMD_GET_CAPSET_INFO,
    W.VIRTIO_GPU_CMD_GET_CAPSET,
    W.VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID,
    W.VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
    W.VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
    *range(W.VIRTIO_GPU_CMD_CTX_CREATE, W.VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB + 1),
    W.VIRTIO_GPU_CMD_UPDATE_CURSOR,  # cursor commands belong on the cursor queue
    0,
    0xFFFFFFFF,
]


def test_3d_and_unknown_commands_answered_with_unspec(gpu) -> None:  # noqa: ANN001
    g = gpu()
    for ctype in THREE_D:
        r = g.drv.cmd(hdr(ctype, W.VIRTIO_GPU_FLAG_FENCE, ctype) + bytes(64), 64)
        assert W.CTRL_HDR.unpack_from(r) == (ERR_UNSPEC, W.VIRTIO_GPU_FLAG_FENCE, ctype, 0, 0), hex(ctype)
        assert len(r) == 24


def garbage_filled(drv: GpuDriver, cmd: bytes, size: int) -> bytes:
    """Submit *cmd* with a response buffer full of 0xAA; return what the device said it wrote."""
    head = drv.submit(cmd, size)
    _, bufs, _ = drv.ctrl.inflight[head]
    gpa, ln, _ = bufs[-1]
    drv.fe.ram.write(gpa, b"\xaa" * ln)
    drv.ctrl.kick()
    (u,) = drv.ctrl.wait_used(1)
    assert u.length == len(u.data)
    return u.data


def test_responses_fully_initialised(gpu) -> None:  # noqa: ANN001
    g = gpu()
    r = garbage_filled(g.drv, hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D) + W.RESOURCE_CREATE_2D.pack(1, BGRX, 4, 4), 24)
    assert r == W.CTRL_HDR.pack(OK, 0, 0, 0, 0)
    r = garbage_filled(g.drv, hdr(0x0203) + bytes(8), 24)
    assert r == W.CTRL_HDR.pack(ERR_UNSPEC, 0, 0, 0, 0)
    r = garbage_filled(g.drv, hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO), W.RESP_DISPLAY_INFO_SIZE)
    assert len(r) == W.RESP_DISPLAY_INFO_SIZE and b"\xaa" not in r[24:]
    r = garbage_filled(g.drv, hdr(W.VIRTIO_GPU_CMD_GET_EDID) + bytes(8), W.RESP_EDID_SIZE)
    assert len(r) == W.RESP_EDID_SIZE and b"\xaa" not in r[32 + 128 :]


def test_broken_ring_marks_device_broken_and_keeps_serving(gpu) -> None:  # noqa: ANN001
    g = gpu()
    q = g.drv.ctrl
    q.publish(q.num + 5)  # a head outside the queue
    q.kick()
    r, _, _ = __import__("select").select([q.err_fd], [], [], 5)
    assert r, "the err eventfd was not signalled"
    assert g.fe.get_status() & 0x40  # NEEDS_RESET
    assert g.be.proc.poll() is None


def test_reset_drops_resources(gpu) -> None:  # noqa: ANN001
    g = gpu()
    g.drv.make_resource(1, BGRX, 8, 8, pattern(8, 8))
    g.fe.stop()
    ctrl, cursor = g.fe.start([64, 16])
    drv = GpuDriver(g.fe, ctrl, cursor)
    assert drv.flush(1, 0, 0, 1, 1) == BAD_RES
    assert drv.create_2d(1, BGRX, 8, 8) == OK


def test_guest_hostile_batch_never_crashes(gpu) -> None:  # noqa: ANN001
    g = gpu()
    rnd = random.Random(7)
    g.drv.make_resource(1, BGRX, 16, 16, pattern(16, 16))
    assert g.drv.set_scanout(0, 1, 0, 0, 16, 16) == OK
    types = [*range(0x100, 0x10E), 0x300, 0x301]
    for _ in range(300):
        ctype = rnd.choice(types)
        body = bytes(rnd.choice([0, 1, 0xFF]) if rnd.random() < 0.5 else rnd.randrange(256) for _ in range(40))
        if rnd.random() < 0.3:
            body = struct.pack("<I", 1) + body[4:]
        size = rnd.choice([0, 24, 408, 1056])
        data = g.drv.cmd(hdr(ctype) + body[: rnd.randrange(41)], size) if size else None
        if data:
            assert resp_type(data) in range(0x1100, 0x1107) or resp_type(data) in range(0x1200, 0x1206)
    assert g.drv.create_2d(99, BGRX, 4, 4) == OK
    assert g.be.proc.poll() is None
    assert "Traceback" not in g.be.stderr()


def test_big_frame_rows_past_iov_max(gpu) -> None:  # noqa: ANN001
    g = gpu(display=GpuDisplay(outputs=[(1300, 1100)]))
    w, h = 1300, 1100
    pix = pattern(w, h, 5)
    g.drv.make_resource(1, BGRX, w, h, pix)
    assert g.drv.set_scanout(0, 1, 0, 0, w, h) == OK
    assert g.drv.flush(1, 1, 0, w - 2, h) == OK  # partial width: one iovec per row, > IOV_MAX rows
    g.display.wait_updates(1)
    _, _, img = g.display.image(0)
    assert crop(img, w, 1, 0, w - 2, h) == crop(pix, w, 1, 0, w - 2, h)


def test_no_unexpected_frontend_errors(gpu) -> None:  # noqa: ANN001
    g = gpu()
    with pytest.raises(FrontendError):
        g.drv.ctrl.wait_used(1, timeout=0.2)
    assert wait_until(lambda: g.be.proc.poll() is None, 0.1)
    assert os.path.exists(g.be.stderr_path)


# -- bounded resources and termination under load -----------------------------------------------


def _proc_usage(pid: int) -> tuple[int, int]:
    rss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))
    return len(os.listdir(f"/proc/{pid}/fd")), rss


def test_100k_hostile_commands_leave_rss_and_fds_flat(gpu) -> None:  # noqa: ANN001
    """100,000 failing commands (and create/attach/unref cycles between them) leave no trace."""
    g = gpu()
    page = g.fe.ram.alloc(4096, 4096)
    cmds = [
        hdr(W.VIRTIO_GPU_CMD_RESOURCE_UNREF) + W.RESOURCE_UNREF.pack(77, 0),  # no such resource
        hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D) + W.RESOURCE_CREATE_2D.pack(5, BGRX, 1 << 15, 1 << 15),  # OOM
        hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D) + W.RESOURCE_CREATE_2D.pack(6, 999, 4, 4),  # bad format
        hdr(W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING) + W.RESOURCE_ATTACH_BACKING.pack(1, 1 << 30),  # huge nr
        hdr(W.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D) + W.TRANSFER_TO_HOST_2D.pack(0, 0, 64, 64, 1 << 40, 1, 0),
        hdr(W.VIRTIO_GPU_CMD_SET_SCANOUT) + W.SET_SCANOUT.pack(0, 0, 8, 8, 99, 1),  # bad scanout
        hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D) + W.RESOURCE_CREATE_2D.pack(9, BGRX, 64, 64),  # ok ...
        hdr(W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING) + W.RESOURCE_ATTACH_BACKING.pack(9, 1)
        + W.MEM_ENTRY.pack(page, 4096, 0),  # ... backing too short for a transfer ...
        hdr(W.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D) + W.TRANSFER_TO_HOST_2D.pack(0, 0, 64, 64, 0, 9, 0),
        hdr(W.VIRTIO_GPU_CMD_RESOURCE_UNREF) + W.RESOURCE_UNREF.pack(9, 0),  # ... and gone again
        hdr(0x0207) + bytes(32),  # a 3D command
        hdr(W.VIRTIO_GPU_CMD_RESOURCE_FLUSH)[:10],  # short header
    ]  # fmt: skip
    assert g.drv.make_resource(1, BGRX, 64, 64, pattern(64, 64)) is not None

    def burst(n: int) -> None:
        for i in range(0, n, 32):
            g.drv.batch([cmds[(i + k) % len(cmds)] for k in range(32)])

    burst(3000)
    fds0, rss0 = _proc_usage(g.be.proc.pid)
    burst(100_000)
    fds1, rss1 = _proc_usage(g.be.proc.pid)
    print(f"\nafter 100k hostile gpu commands: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB")
    assert fds1 == fds0
    assert rss1 - rss0 < 4096, f"RSS grew by {rss1 - rss0} KiB"
    assert g.drv.create_2d(2, BGRX, 8, 8) == OK
    assert "Traceback" not in g.be.stderr()


def test_sigterm_under_full_load(gpu) -> None:  # noqa: ANN001
    """Full-frame transfers and flushes in flight: SIGTERM still ends the program within 500 ms."""
    g = gpu()
    w, h = 1920, 1080
    g.drv.make_resource(1, BGRX, w, h, pattern(w, h))
    assert g.drv.set_scanout(0, 1, 0, 0, w, h) == OK
    work = [g.drv.transfer_cmd(1, 0, 0, w, h, 0), g.drv.flush_cmd(1, 0, 0, w, h)] * 16
    for c in work:
        g.drv.submit(c)
    g.drv.ctrl.kick()
    time.sleep(0.05)
    t = time.monotonic()
    g.be.proc.send_signal(signal.SIGTERM)
    assert g.be.wait(5) == 0
    assert time.monotonic() - t < 0.5
    assert "Traceback" not in g.be.stderr()


def test_frontend_disconnect_in_the_middle_of_a_command(gpu) -> None:  # noqa: ANN001
    """A command parked on QEMU's answer when the front-end goes away: a clean exit, status 0."""
    g = gpu("-v", "--display-timeout=30", display=GpuDisplay(answer=False))
    g.drv.submit(hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO), W.RESP_DISPLAY_INFO_SIZE)
    g.drv.ctrl.kick()
    assert g.fe.get_features()  # the command is parked; messages are still served
    g.fe.sock.close()
    assert g.be.wait(5) == 0
    assert "hung up" in g.be.stderr() and "Traceback" not in g.be.stderr()
