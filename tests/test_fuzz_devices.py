"""Bounded property-based fuzzing of the devices' guest-facing parsers, through the real programs:
virtio-gpu control and cursor commands (2D, and with --virgl the 3D ones against a real context
and 3D resource), virtio-input config selects and status events.
Every example must get its defined answer and leave the back-end serving."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Backend, program
from vhostsuite.devices.gpu import renderer_works
from vhostsuite.devices.gpu import wire as W
from vhostsuite.devices.input import config as C
from vhostsuite.testing.frontend import Frontend
from vhostsuite.testing.frontend_gpu import Backing, GpuDisplay, hdr, open_gpu, resp_type

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
GPU_COMMANDS = [*range(0x0100, 0x010E), *range(0x0200, 0x020C), 0x0300, 0x0301, 0, 0xFFFF_FFFF]


@pytest.fixture(scope="module", params=["2d", pytest.param("virgl", marks=pytest.mark.skipif(
    not renderer_works(), reason="virglrenderer does not initialise here"))])  # fmt: skip
def gpu_target(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("fuzz-gpu")
    path = tmp / "gpu.sock"
    extra = ["--virgl"] if request.param == "virgl" else []
    be = Backend([*program("vhost-user-gpu"), f"--socket-path={path}", "-q", "--display-timeout=0.5", *extra], tmp)
    fe = Frontend.connect(str(path))
    display = GpuDisplay()
    drv = open_gpu(fe, display)
    if extra:  # something for the 3D commands to find: context 1, and 3D resource 5 with a backing in it
        for cmd in (hdr(W.VIRTIO_GPU_CMD_CTX_CREATE, ctx_id=1) + W.CTX_CREATE.pack(4, 0, b"fuzz"),
                    hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_3D) + W.RESOURCE_CREATE_3D.pack(5, 2, 2, 2, 64, 64, 1, 1, 0,
                                                                                       0, 0, 0)):  # fmt: skip
            assert resp_type(drv.cmd(cmd)) == W.VIRTIO_GPU_RESP_OK_NODATA
        assert drv.attach_backing(5, Backing(fe, 64 * 64 * 4).entries()) == W.VIRTIO_GPU_RESP_OK_NODATA
    yield be, drv
    display.close()
    fe.close()
    be.stop()


@SETTINGS
@given(
    ctype=st.sampled_from(GPU_COMMANDS),
    flags=st.sampled_from([0, 1, 3]),
    body=st.binary(max_size=120) | st.builds(lambda ids: b"".join(struct.pack("<I", i) for i in ids),
                                              st.lists(st.sampled_from([0, 1, 2, 16, 0xFFFF_FFFF, 1 << 20]),
                                                       max_size=8)),
    cut=st.integers(0, 24),
    resp=st.sampled_from([0, 8, 24, 408, 1056]),
    ctx=st.sampled_from([0, 1, 2]),
)  # fmt: skip
def test_gpu_control_commands(gpu_target, ctype, flags, body, cut, resp, ctx):
    be, drv = gpu_target
    cmd = hdr(ctype, flags=flags, fence_id=7, ctx_id=ctx)
    cmd = cmd[: len(cmd) - cut] if cut and not body else cmd + body
    data = drv.cmd(cmd, resp) if resp else None
    if data and len(data) >= 24:
        assert resp_type(data) in range(0x1100, 0x1107) or resp_type(data) in range(0x1200, 0x1206)
    assert be.proc.poll() is None, be.stderr()[-2000:]


@SETTINGS
@given(
    ctype=st.sampled_from([W.VIRTIO_GPU_CMD_UPDATE_CURSOR, W.VIRTIO_GPU_CMD_MOVE_CURSOR, 0x0100, 7]),
    body=st.binary(max_size=64),
)
def test_gpu_cursor_commands(gpu_target, ctype, body):
    be, drv = gpu_target
    drv.cursor.add([hdr(ctype) + body], [])
    drv.cursor.kick()
    drv.cursor.wait_used(1)
    assert be.proc.poll() is None, be.stderr()[-2000:]
    assert drv.create_2d(1000, W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4) in (
        W.VIRTIO_GPU_RESP_OK_NODATA,
        W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,  # already made by an earlier example
    )


@pytest.fixture(scope="module")
def input_target(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-input")
    path = tmp / "in.sock"
    be = Backend([*program("vhost-user-input"), f"--socket-path={path}", "--virtual=tablet", "-q"], tmp)
    fe = Frontend.connect(str(path))
    fe.initialize()
    evq, stq = fe.start([64, 64])
    yield be, fe, stq
    fe.close()
    be.stop()


@SETTINGS
@given(
    select=st.sampled_from([0, 1, 2, 3, 0x10, 0x11, 0x12, 0x13, 0xFF]),
    subsel=st.integers(0, 255),
    offset=st.integers(0, 140),
    size=st.integers(0, 140),
)
def test_input_config_selects(input_target, select, subsel, offset, size):
    be, fe, _ = input_target
    fe.set_config(0, bytes([select, subsel]))
    reply = fe.call(24, struct.pack("=III", offset, size, 0) + bytes(size))  # GET_CONFIG
    if offset + size <= C.CONFIG_SIZE and size:
        assert len(reply) == 12 + size
        if offset <= 2 < offset + size:  # the size byte of the union
            assert reply[12 + 2 - offset] <= 128
    assert be.proc.poll() is None, be.stderr()[-2000:]


@SETTINGS
@given(events=st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(-(2**31), 2**31 - 1)),
                       max_size=6),
       junk=st.binary(max_size=11))  # fmt: skip
def test_input_status_events(input_target, events, junk):
    be, fe, stq = input_target
    for t, c, v in events:
        stq.add([struct.pack("<HHi", t, c, v)], [])
    stq.add([junk or b"\0"], [])
    stq.kick()
    stq.wait_used(len(events) + 1)
    assert be.proc.poll() is None, be.stderr()[-2000:]
    assert len(fe.get_config(0, 8)) == 8
