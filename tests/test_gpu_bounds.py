"""What a guest can make vhost-user-gpu spend: each resource is charged what it costs, and a
flush costs O(1) Python objects whatever the rectangle's shape."""

from __future__ import annotations

import socket
import time

import pytest

from vhostsuite.devices.gpu import wire as W
from vhostsuite.devices.gpu.resources import RESOURCE_COST
from vhostsuite.devices.gpu.scanouts import staging_limit
from vhostsuite.testing.frontend_gpu import GpuDisplay, GpuDriver, hdr, open_gpu, set_socket

BGRX = W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
OK = W.VIRTIO_GPU_RESP_OK_NODATA
OOM = W.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def test_tiny_resources_are_charged_what_they_cost(spawn) -> None:
    """1x1 resources under --max-hostmem=1M: about 1M / (4 + RESOURCE_COST) of them (less the
    staging reservation), not 1M / 4."""
    be, fe = spawn("vhost-user-gpu", "--max-hostmem=1M")
    with GpuDisplay() as display:
        drv = open_gpu(fe, display)
        rss0 = _status(be.proc.pid, "VmRSS:")
        cmds = [hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D) + W.RESOURCE_CREATE_2D.pack(rid, BGRX, 1, 1)
                for rid in range(1, 2001)]  # fmt: skip
        answers = [W.CTRL_HDR.unpack_from(r)[0] for i in range(0, len(cmds), 30) for r in drv.batch(cmds[i : i + 30])]
        made = answers.count(OK)
        assert made == ((1 << 20) - staging_limit(1 << 20)) // (4 + RESOURCE_COST)
        assert set(answers[made:]) == {OOM}
        assert _status(be.proc.pid, "VmRSS:") - rss0 < 4 << 10  # KiB: bounded by the cap plus slack
        # unref gives the charge back: as many fit again
        for rid in range(1, made + 1):
            assert drv.unref(rid) == OK
        assert drv.create_2d(5000, BGRX, 1, 1) == OK


def test_tall_narrow_flush_costs_no_object_per_row(spawn) -> None:
    """A 1-pixel-wide flush of a 262,144-row resource on a scanout: one staging copy (1 MiB),
    not a view per row (~50 MiB of Python objects for a moment)."""
    rows = 1 << 18
    be, fe = spawn("vhost-user-gpu")
    with GpuDisplay(outputs=[(2, rows)], keep_images=False) as display:
        drv = open_gpu(fe, display)
        drv.make_resource(1, BGRX, 2, rows, bytes(2 * rows * 4))  # already x8r8g8b8: no conversion
        assert drv.set_scanout(0, 1, 0, 0, 2, rows) == OK
        peak0 = _status(be.proc.pid, "VmHWM:")
        before = display.updates
        assert drv.flush(1, 1, 0, 1, rows) == OK
        display.wait_updates(before + 1, 10)
        assert _status(be.proc.pid, "VmHWM:") - peak0 < 8 << 10  # KiB
        assert not display.errors


@pytest.mark.parametrize(("w", "h"), [(512, 256), (40000, 1)])
def test_a_flush_larger_than_the_staging_buffer_goes_in_bands(spawn, w: int, h: int) -> None:
    """Under --max-hostmem=1M the staging buffer is 128 KiB (reserved in the cap): a 512x256
    RGBA flush (512 KiB to convert) arrives as UPDATEs of at most that many pixel bytes, which
    together are the whole converted image; so does a single row longer than the buffer."""
    limit = staging_limit(1 << 20)
    be, fe = spawn("vhost-user-gpu", "--max-hostmem=1M")
    with GpuDisplay(outputs=[(w, h)]) as display:
        drv = open_gpu(fe, display)
        pix = bytes((i * 7) & 0xFF for i in range(w * h * 4))
        drv.make_resource(1, W.VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, w, h, pix)
        assert drv.set_scanout(0, 1, 0, 0, w, h) == OK
        before = display.updates
        assert drv.flush(1, 0, 0, w, h) == OK
        display.wait_updates(before + (w * h * 4 + limit - 1) // limit, 10)
        heads = [W.GPU_UPDATE_HEAD.unpack_from(m.payload) for m in display.of_type(W.VHOST_USER_GPU_UPDATE)]
        assert len(heads[before:]) > 1 and all(bw * bh * 4 <= limit for _, _, _, bw, bh in heads[before:])
        shown = display.image(0)[2]
        # R,G,B,A in guest memory arrive as B,G,R,X
        assert (shown[0::4], shown[1::4], shown[2::4]) == (pix[2::4], pix[1::4], pix[0::4])
        assert not display.errors


def test_a_display_that_reads_nothing_is_dropped_and_the_guest_still_served(spawn) -> None:
    """Full frames to a display socket nobody reads: sends never block the loop, the output
    waiting is bounded, and after --display-timeout without progress the display is dropped
    (logged); vhost-user requests and GPU commands are answered all along."""
    be, fe = spawn("vhost-user-gpu", "--display-timeout=1")
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        fe.initialize()
        set_socket(fe, peer)  # QEMU's end (ours) is never read
        ctrl, cursor = fe.start([64, 16])
        drv = GpuDriver(fe, ctrl, cursor, timeout=10)
        w, h = 1920, 1080
        drv.make_resource(1, BGRX, w, h, bytes(w * h * 4))
        assert drv.set_scanout(0, 1, 0, 0, w, h) == OK
        worst = 0.0
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            assert drv.flush(1, 0, 0, w, h) == OK  # 8 MiB UPDATEs that nobody takes
            t0 = time.perf_counter()
            fe.get_features()
            worst = max(worst, time.perf_counter() - t0)
        assert worst < 0.1, f"a vhost-user answer took {worst * 1000:.0f} ms"
        assert "closing the display socket" in be.stderr()
        assert _status(be.proc.pid, "VmRSS:") < 200 << 10  # KiB: the output waiting was bounded
        assert be.proc.poll() is None
    finally:
        ours.close()


def test_a_display_that_stops_reading_in_the_middle_of_a_flush(spawn) -> None:
    """QEMU's end of the display socket shuts down reading: the next UPDATE fails (EPIPE) and
    the channel closes while the flush is being handled. The flush still gets OK, the device
    is not broken, and the guest is served on."""
    be, fe = spawn("vhost-user-gpu", "--display-timeout=0.5")  # our end never answers: don't wait long
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    w, h = 2048, 1100  # converted into a staging buffer larger than the one kept between flushes
    try:
        fe.initialize()
        set_socket(fe, peer)
        ctrl, cursor = fe.start([64, 16])
        drv = GpuDriver(fe, ctrl, cursor, timeout=10)
        drv.make_resource(1, W.VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM, w, h, bytes(w * h * 4))
        assert drv.set_scanout(0, 1, 0, 0, w, h) == OK
        ours.shutdown(socket.SHUT_RD)
        assert drv.flush(1, 0, 0, w, h) == OK
        assert drv.flush(1, 0, 0, w, h) == OK
        assert fe.get_status() & 0x40 == 0, be.stderr()  # not NEEDS_RESET
        assert "closing the display socket" in be.stderr()
        assert "Traceback" not in be.stderr()
    finally:
        ours.close()
