"""vhost-user-gpu --virgl: 3D frames per second on virglrenderer (Mesa's llvmpipe here: no GPU),
beside our own 2D frames measured in the same run.

(a) clear + flush: SUBMIT_3D (fenced) clearing a 1920x1080 render target on the scanout, then
    RESOURCE_FLUSH of all of it: read back from the renderer and sent as one UPDATE, counted
    when the display side has it;
(b) clear + draw + flush: the same with a rectangle drawn with shaders (a GL frame's shape);
(c) clear + readback: SUBMIT_3D and TRANSFER_FROM_HOST_3D of the whole target into the guest's
    pages (what a guest's glReadPixels costs);
(d) for scale, our 2D frame: TRANSFER_TO_HOST_2D + RESOURCE_FLUSH of 1920x1080.

QEMU's C back-end can't serve 3D on a host without a render node (it initialises virglrenderer
without the surfaceless flag and exits when the driver acks VIRGL): the bench checks that and
records it instead of a ratio. Rounds run in the C front-end (cfrontend.c), as in bench_gpu.

Run: ``python -m pytest bench/bench_gpu3d.py -o python_files='bench_*.py' -s``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cfrontend import CRounds, GpuRig, available

from vhostsuite.core.virtio import bit
from vhostsuite.devices.gpu import renderer_works
from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing import virgl_stream as S
from vhostsuite.testing.frontend import Frontend, FrontendError, GuestRam
from vhostsuite.testing.frontend_gpu import Backing, GpuDriver, hdr, open_gpu, resp_type

ROOT = Path(__file__).resolve().parent.parent
C_GPU = "/usr/lib/qemu/vhost-user-gpu"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
W_, H_ = 1920, 1080
BGRX = W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
OK = W.VIRTIO_GPU_RESP_OK_NODATA
FENCE = W.VIRTIO_GPU_FLAG_FENCE
CTX = 1
TARGET, VBUF, FRAME2D = 1, 2, 3

pytestmark = pytest.mark.skipif(not renderer_works(), reason="virglrenderer does not initialise here")


def _submit(stream: bytes) -> bytes:
    return hdr(W.VIRTIO_GPU_CMD_SUBMIT_3D, FENCE, 1, CTX) + W.CMD_SUBMIT.pack(len(stream), 0) + stream


class Rig3D(GpuRig):
    """Our back-end with --virgl: a context, a 1920x1080 3D render target on the scanout with a
    backing, a vertex buffer, and a 2D frame resource for scale."""

    def __init__(self, tmp: str) -> None:
        argv = [sys.executable, str(ROOT / "bin/vhost-user-gpu"), "--virgl"]
        super().__init__(argv, os.path.join(tmp, "ours3d.sock"), ENV, 96 << 20, W_, H_)
        d = self.drv

        def ok(cmd: bytes) -> None:
            t = resp_type(d.cmd(cmd))
            if t != OK:
                raise FrontendError(f"set-up: {W.ctrl_type_name(t)}")

        ok(hdr(W.VIRTIO_GPU_CMD_CTX_CREATE, 0, 0, CTX) + W.CTX_CREATE.pack(5, 0, b"bench"))
        shown = S.BIND_RENDER_TARGET | S.BIND_SAMPLER_VIEW | S.BIND_SCANOUT
        made = ((TARGET, S.PIPE_TEXTURE_2D, BGRX, shown, W_, H_),
                (VBUF, S.PIPE_BUFFER, S.FORMAT_R8_UNORM, S.BIND_VERTEX_BUFFER, 64, 1))  # fmt: skip
        for rid, target, fmt, bind_, w, h in made:
            ok(hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_3D)
               + W.RESOURCE_CREATE_3D.pack(rid, target, fmt, bind_, w, h, 1, 1, 0, 0, 0, 0))  # fmt: skip
            ok(hdr(W.VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE, 0, 0, CTX) + W.CTX_RESOURCE.pack(rid, 0))
        self.backing = Backing(self.fe, W_ * H_ * 4, scatter=True)
        if d.attach_backing(TARGET, self.backing.entries()) != OK or d.set_scanout(0, TARGET, 0, 0, W_, H_) != OK:
            raise FrontendError("set-up: backing or scanout")
        d.make_resource(FRAME2D, BGRX, W_, H_, bytes(range(256)) * (W_ * H_ * 4 // 256))
        if d.set_scanout(1, FRAME2D, 0, 0, W_, H_) != OK:  # the 2D frame for scale, on a second output
            raise FrontendError("set-up: 2D scanout")
        rect = (W_ // 4, H_ // 4, 3 * W_ // 4, H_ // 2)
        clear = _submit(S.encode(S.create_surface(1, TARGET, BGRX), S.set_framebuffer(1), S.clear(1.0, 0.5, 0.0)))
        draw = _submit(S.clear_and_draw(TARGET, VBUF, W_, H_, (1.0, 0.5, 0.0), rect, (0.0, 0.0, 1.0)))
        flush = GpuDriver.flush_cmd(TARGET, 0, 0, W_, H_)
        readback = (hdr(W.VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D, FENCE, 2, CTX)
                    + W.TRANSFER_HOST_3D.pack(0, 0, 0, W_, H_, 1, 0, TARGET, 0, W_ * 4, 0))  # fmt: skip
        ctrl = d.ctrl
        self.rounds = {
            "clear_flush": (CRounds(ctrl, [(clear, 24, OK), (flush, 24, OK)]), 1),
            "draw_flush": (CRounds(ctrl, [(draw, 24, OK), (flush, 24, OK)]), 1),
            "clear_readback": (CRounds(ctrl, [(clear, 24, OK), (readback, 24, OK)]), 0),
            "frame_2d": (CRounds(ctrl, [(GpuDriver.transfer_cmd(FRAME2D, 0, 0, W_, H_, 0), 24, OK),
                                        (GpuDriver.flush_cmd(FRAME2D, 0, 0, W_, H_), 24, OK)]), 1),  # fmt: skip
        }
        self.warm_up()


@pytest.fixture(scope="module")
def rig():  # noqa: ANN201
    why = available()
    if why:
        pytest.skip(f"the C front-end can't be built: {why}")
    r = Rig3D(tempfile.mkdtemp(prefix="vhs-bench-gpu3d-"))
    yield r
    r.close()


def _measure(rig: Rig3D, op: str, rounds: int = 30, batches: int = 3) -> tuple[float, float]:
    """The best batch's rounds per second, and the back-end's CPU seconds per round."""
    best, cpu = 0.0, 0.0
    for _ in range(batches):
        c0, t0 = rig.cpu_seconds(), time.perf_counter()
        rig.run(op, rounds)
        best = max(best, rounds / (time.perf_counter() - t0))
        cpu += rig.cpu_seconds() - c0
    return best, cpu / (rounds * batches)


def c_backend_serves_3d(tmp: str) -> str:
    """What QEMU's C back-end does with --virgl when the driver acks VIRGL here."""
    if not os.access(C_GPU, os.X_OK):
        return f"{C_GPU} is not installed"
    path = os.path.join(tmp, "c3d.sock")
    proc = subprocess.Popen([C_GPU, "--virgl", f"--socket-path={path}"], stderr=subprocess.PIPE, text=True)
    try:
        fe = Frontend.connect(path, timeout=10, ram=GuestRam(16 << 20))
        offered = fe.get_features()
        if not offered & bit(W.VIRTIO_GPU_F_VIRGL):
            return "it does not offer VIRGL"
        try:
            open_gpu(fe, None, offered)
            fe.get_features()  # a round trip: it has handled SET_FEATURES by now
        except (FrontendError, OSError):
            pass
        proc.wait(5)
        err = proc.stderr.read().strip().splitlines()
        return f"it exits with status {proc.returncode} once VIRGL is acked: {err[-1] if err else '(nothing said)'}"
    except subprocess.TimeoutExpired:
        return "it kept running (it can: compare!)"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.benchmark(group="gpu-3d")
def test_3d_frames(benchmark, rig) -> None:  # noqa: ANN001
    lines = ["\n[1920x1080 frames, --virgl on llvmpipe]"]
    rates = {}
    for op, what in (("clear_flush", "clear + flush (readback, UPDATE)"),
                     ("draw_flush", "clear + draw + flush"),
                     ("clear_readback", "clear + TRANSFER_FROM_HOST_3D into guest pages"),
                     ("frame_2d", "2D TRANSFER_TO_HOST_2D + flush, for scale")):  # fmt: skip
        rate, cpu = _measure(rig, op)
        rates[op] = rate
        benchmark.extra_info[f"{op}_frames_per_s"] = round(rate, 1)
        benchmark.extra_info[f"{op}_backend_cpu_ms"] = round(cpu * 1e3, 2)
        lines.append(f"  {what}: {rate:,.1f} frames/s; back-end CPU {cpu * 1e3:.2f} ms/frame (all its threads)")
    c = c_backend_serves_3d(tempfile.mkdtemp(prefix="vhs-bench-c3d-"))
    benchmark.extra_info["c_backend_3d"] = c
    lines.append(f"  QEMU's C back-end with --virgl here: {c}")
    print("\n".join(lines))
    benchmark.pedantic(rig.run, ("clear_flush", 1), rounds=10, iterations=1)
