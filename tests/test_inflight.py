"""Commands in flight across a ring stop: answered exactly once, fences signalled.

GET_DISPLAY_INFO and GET_EDID wait for QEMU's display. Here the display keeps its replies
back while the front-end stops the rings (GET_VRING_BASE, SET_STATUS 0: a VM stop as QEMU
10 sends it) and starts them again from the bases it got (a VM resume), or resets the device
and starts afresh (a guest reboot). The back-end must report a base that does not count the
waiting command, pop it again after the restart and answer it then: exactly one response,
fence echoed, with what the display finally said. A reply that comes for the command as it
was before the stop is dropped.
"""

from __future__ import annotations

import time

import pytest

from vhostsuite.core import protocol as P
from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing.frontend_gpu import GpuDisplay, hdr, open_gpu

FENCE = W.VIRTIO_GPU_FLAG_FENCE
#: The display's mode, distinct from the back-end's 1280x800 default, so its answer is recognisable.
MODE = (1024, 768)


def _edid(sid: int) -> bytes:
    return b"LATE-EDID" + bytes([sid]) + bytes(118)


COMMANDS = {
    "display_info": (
        hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO, FENCE, fence_id=77),
        W.RESP_DISPLAY_INFO_SIZE,
        W.VHOST_USER_GPU_GET_DISPLAY_INFO,
        W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
    ),
    "edid": (
        hdr(W.VIRTIO_GPU_CMD_GET_EDID, FENCE, fence_id=77) + W.CMD_GET_EDID.pack(0, 0),
        W.RESP_EDID_SIZE,
        W.VHOST_USER_GPU_GET_EDID,
        W.VIRTIO_GPU_RESP_OK_EDID,
    ),
}


def _check_answer(data: bytes, which: str, rtype: int, fence_id: int) -> None:
    t, flags, fid, _, _ = W.CTRL_HDR.unpack_from(data)
    assert (t, flags & FENCE, fid) == (rtype, FENCE, fence_id)
    if which == "display_info":
        _, _, w, h, enabled, _ = W.DISPLAY_ONE.unpack_from(data, W.CTRL_HDR.size)
        assert (w, h, enabled) == (*MODE, 1), "the display's late answer, not the default"
    else:
        size = W.RESP_EDID_HEAD.unpack_from(data, W.CTRL_HDR.size)[0]
        start = W.CTRL_HDR.size + W.RESP_EDID_HEAD.size
        assert data[start : start + size] == _edid(0), "the display's late EDID, not a generated one"


def _asked(display: GpuDisplay, request: int, n: int, before: int) -> None:
    """Wait until the display has been asked *n* times since it began holding replies, when it
    had been asked *before* times: earlier asks (the driver's own GET_DISPLAY_INFO at set-up)
    must not count, or the wait ends before the ask it is for."""
    ok = display.wait_for(lambda: len(display.of_type(request)) >= before + n)
    assert ok, f"display was not asked {n} times after holding its replies"


@pytest.mark.parametrize("which", sorted(COMMANDS))
def test_waiting_command_survives_ring_stop_and_restart(spawn, which: str) -> None:
    cmd, size, request, rtype = COMMANDS[which]
    be, fe = spawn("vhost-user-gpu", "--display-timeout=60")
    with GpuDisplay(outputs=[MODE], edid=_edid) as display:
        drv = open_gpu(fe, display)
        ctrl = drv.ctrl
        assert W.CTRL_HDR.unpack_from(drv.display_info())[0] == W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO
        display.hold_replies()
        before = len(display.of_type(request))
        head = ctrl.add([cmd], [size])
        ctrl.kick()
        _asked(display, request, 1, before)
        assert ctrl.poll_used() == []

        bases = fe.stop()  # VM stop: disable, GET_VRING_BASE, SET_STATUS 0
        assert bases[0] == 1, "the base counts the answered command, not the one waiting for the display"
        time.sleep(0.1)
        assert ctrl.poll_used() == [], "nothing is written into a stopped ring"

        fe.resume(bases)  # VM resume: the same rings from the reported bases
        _asked(display, request, 2, before)  # popped again, asked again
        assert display.release_replies() == 2
        (used,) = ctrl.wait_used(1)
        assert used.head == head
        _check_answer(used.data, which, rtype, 77)

        # The queue goes on behind it, and the stale reply produced nothing more.
        assert drv.create_2d(1, W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4) == W.VIRTIO_GPU_RESP_OK_NODATA
        time.sleep(0.1)
        assert ctrl.poll_used() == []
        assert ctrl.used_idx() == 3


@pytest.mark.parametrize("which", sorted(COMMANDS))
def test_waiting_command_across_device_reset(spawn, which: str) -> None:
    cmd, size, request, rtype = COMMANDS[which]
    be, fe = spawn("vhost-user-gpu", "--display-timeout=60")
    with GpuDisplay(outputs=[MODE], edid=_edid) as display:
        drv = open_gpu(fe, display)
        old = drv.ctrl
        old_used = (old.used_gpa, 4)
        display.hold_replies()
        before = len(display.of_type(request))
        old.add([cmd], [size])
        old.kick()
        _asked(display, request, 1, before)

        fe.stop()  # the guest resets the device: rings stopped, SET_STATUS 0
        fe.call(P.Request.RESET_DEVICE)
        ctrl, _ = fe.start([64, 16])  # the driver starts again with new rings
        head = ctrl.add([_refence(cmd, 78)], [size])
        ctrl.kick()
        _asked(display, request, 2, before)
        assert display.release_replies() == 2  # the old command's reply first: it must go nowhere
        (used,) = ctrl.wait_used(1)
        assert used.head == head
        _check_answer(used.data, which, rtype, 78)
        time.sleep(0.1)
        assert ctrl.poll_used() == []
        # the old ring's used index never moved
        assert fe.ram.read(*old_used)[2:4] == b"\0\0"


def _refence(cmd: bytes, fence_id: int) -> bytes:
    t, flags, _, ctx, ring = W.CTRL_HDR.unpack_from(cmd)
    return W.CTRL_HDR.pack(t, flags, fence_id, ctx, ring) + cmd[W.CTRL_HDR.size :]


def test_display_socket_replaced_while_command_waits(spawn) -> None:
    """QEMU gives a new display socket at every DRIVER_OK: the waiting command is answered by
    the old one's failure (defaults) exactly once, and the queue moves on."""
    be, fe = spawn("vhost-user-gpu", "--display-timeout=60")
    with GpuDisplay(outputs=[MODE]) as first, GpuDisplay(outputs=[MODE]) as second:
        drv = open_gpu(fe, first)
        first.hold_replies()
        before = len(first.of_type(W.VHOST_USER_GPU_GET_DISPLAY_INFO))
        head = drv.ctrl.add([hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO, FENCE, fence_id=5)], [W.RESP_DISPLAY_INFO_SIZE])
        drv.ctrl.kick()
        _asked(first, W.VHOST_USER_GPU_GET_DISPLAY_INFO, 1, before)
        second.attach(fe)
        (used,) = drv.ctrl.wait_used(1)
        assert used.head == head
        t, flags, fid, _, _ = W.CTRL_HDR.unpack_from(used.data)
        assert (t, flags & FENCE, fid) == (W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO, FENCE, 5)
        assert W.CTRL_HDR.unpack_from(drv.display_info())[0] == W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO
        time.sleep(0.1)
        assert drv.ctrl.poll_used() == []
