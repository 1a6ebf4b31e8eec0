"""vhost-user-gpu --virgl through the package's front-end: the real program on the real renderer
(virglrenderer on Mesa's llvmpipe here: no GPU), real sockets, real command streams.

Skipped where the renderer does not initialise (the binding not built, VHOSTSUITE_NO_EXTENSIONS,
no EGL): ``--print-capabilities`` then does not list virgl, which one test checks either way.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import child_env, program
from vhostsuite.core import protocol as P
from vhostsuite.core.guestlog import BURST
from vhostsuite.core.virtio import bit
from vhostsuite.devices.gpu import probe, renderer_works, virgl
from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing import virgl_stream as S
from vhostsuite.testing.frontend_gpu import Backing, GpuDisplay, GpuDriver, hdr, open_gpu, resp_type

OK = W.VIRTIO_GPU_RESP_OK_NODATA
ERR_UNSPEC = W.VIRTIO_GPU_RESP_ERR_UNSPEC
OOM = W.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
BAD_RES = W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
BAD_CTX = W.VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID
BAD_PARAM = W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
BGRX = W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
FENCE = W.VIRTIO_GPU_FLAG_FENCE

AVAILABLE = renderer_works()
needs_virgl = pytest.mark.skipif(not AVAILABLE, reason=f"virglrenderer does not initialise here: {virgl.available()}")


def caps(env: dict[str, str], *extra: str) -> list[str]:
    out = subprocess.run([*program("vhost-user-gpu"), "--print-capabilities", *extra], env=env,
                         capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    return json.loads(out.stdout)["features"]


def runtime_env(tmp_path, **extra: str) -> dict[str, str]:  # noqa: ANN001
    """The environment of a user whose runtime directory (where the probe's record goes) is new."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {**child_env(), "XDG_RUNTIME_DIR": str(runtime), **extra}


@pytest.mark.parametrize("extra", [[], ["--virgl"]])
def test_print_capabilities_lists_virgl_exactly_when_it_works(extra, tmp_path) -> None:  # noqa: ANN001
    env = runtime_env(tmp_path)
    # the first answer is the probe's, the second the record's, if it made one
    for _ in range(2):
        assert caps(env, *extra) == (["virgl"] if AVAILABLE else [])
    # these machines have no /dev/dri: never "render-node" (libvirt would fail the domain)


def record(tmp_path) -> Path:  # noqa: ANN001
    return tmp_path / "run" / "vhostsuite" / probe.RECORD_NAME


@needs_virgl
def test_a_success_is_recorded_privately_and_answers_while_nothing_changed(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    env = runtime_env(tmp_path)
    assert caps(env) == ["virgl"]
    rec = record(tmp_path)
    assert stat.S_IMODE(rec.stat().st_mode) == 0o600 and stat.S_IMODE(rec.parent.stat().st_mode) == 0o700
    text = rec.read_text()
    # what was loaded is in it: the binding, EGL (a driver of Mesa's), the loader's cache
    assert "/gpu/_virgl." in text and "libEGL" in text and "file\t/etc/ld.so.cache\t" in text
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])  # the rest of env is this process's
    assert probe.recorded_success()
    # a variable that steers EGL is part of the answer: glvnd with no vendor has no EGL at all
    monkeypatch.setenv("__EGL_VENDOR_LIBRARY_FILENAMES", str(tmp_path / "none.json"))
    assert not probe.recorded_success()
    assert caps({**env, "__EGL_VENDOR_LIBRARY_FILENAMES": str(tmp_path / "none.json")}) == []
    assert caps(env) == ["virgl"]


@needs_virgl
def test_a_changed_library_is_probed_again(tmp_path) -> None:  # noqa: ANN001
    """EGL from a directory of the test's own (LD_LIBRARY_PATH): recorded, then broken on disk,
    then restored; each answer is the truth of the moment, not the record's."""
    real = _libegl()
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(real, lib / "libEGL.so.1")
    env = runtime_env(tmp_path, LD_LIBRARY_PATH=str(lib))
    assert caps(env) == ["virgl"]
    assert f"file\t{lib}/libEGL.so.1\t" in record(tmp_path).read_text()
    (lib / "libEGL.so.1").unlink()
    (lib / "libEGL.so.1").write_bytes(b"not a library")
    assert caps(env) == []
    (lib / "libEGL.so.1").unlink()
    shutil.copy(real, lib / "libEGL.so.1")
    assert caps(env) == ["virgl"]


def _libegl() -> str:
    """The libEGL.so.1 this host's loader finds."""
    out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    return next(line.split(" => ")[1] for line in out.splitlines() if line.strip().startswith("libEGL.so.1 "))


@needs_virgl
@pytest.mark.parametrize("how", ["others can write it", "garbage", "another format", "a symlink"])
def test_a_record_that_is_not_trustworthy_is_not_read(tmp_path, monkeypatch, how: str) -> None:  # noqa: ANN001
    env = runtime_env(tmp_path)
    assert caps(env) == ["virgl"]
    rec = record(tmp_path)
    good = rec.read_text()
    if how == "others can write it":
        rec.chmod(0o622)
    elif how == "garbage":
        rec.write_text(good + "junk\n")
    elif how == "another format":
        rec.write_text(good.replace(probe.FORMAT, "vhostsuite virgl probe 0"))
    else:
        (tmp_path / "elsewhere").write_text(good)
        rec.unlink()
        rec.symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    assert not probe.recorded_success()
    assert caps(env) == ["virgl"]  # probed, and recorded anew
    assert not rec.is_symlink() and stat.S_IMODE(rec.stat().st_mode) == 0o600 and probe.recorded_success()


class G3D:
    """A --virgl back-end with a display, and the 3D commands as a driver sends them."""

    def __init__(self, spawn, *args: str, fd_mode: bool = False, reset_first: bool = False) -> None:  # noqa: ANN001
        self.display = GpuDisplay()
        self.be, self.fe = spawn("vhost-user-gpu", "--virgl", "--display-timeout=0.5", *args, fd_mode=fd_mode)
        if reset_first:  # as QEMU 10 does at boot, before the driver starts the device
            self.fe.initialize()
            self.fe.call(P.Request.RESET_DEVICE)
            self.display.attach(self.fe)
            self.drv = GpuDriver(self.fe, *self.fe.start([64, 16]))
        else:
            self.drv = open_gpu(self.fe, self.display)
        self.fence = 0

    def close(self) -> None:
        self.display.close()

    def cmd(self, ctype: int, body: bytes = b"", ctx: int = 0, fenced: bool = False, resp: int = 24,
            tail: bytes = b"") -> bytes:  # fmt: skip
        flags = FENCE if fenced else 0
        if fenced:
            self.fence += 1
        parts = [hdr(ctype, flags, self.fence if fenced else 0, ctx) + body] + ([tail] if tail else [])
        return self.drv.cmd(parts, resp)

    def type(self, *args: object, **kw: object) -> int:
        return resp_type(self.cmd(*args, **kw))

    def ctx_create(self, ctx: int, name: bytes = b"test", context_init: int = 0) -> int:
        return self.type(W.VIRTIO_GPU_CMD_CTX_CREATE, W.CTX_CREATE.pack(len(name), context_init, name), ctx)

    def ctx_destroy(self, ctx: int) -> int:
        return self.type(W.VIRTIO_GPU_CMD_CTX_DESTROY, b"", ctx)

    def attach(self, ctx: int, rid: int, detach: bool = False) -> int:
        ctype = W.VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE if detach else W.VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE
        return self.type(ctype, W.CTX_RESOURCE.pack(rid, 0), ctx)

    def create_3d(self, rid: int, w: int, h: int, fmt: int = BGRX, target: int = S.PIPE_TEXTURE_2D,
                  bind: int = S.BIND_RENDER_TARGET | S.BIND_SAMPLER_VIEW | S.BIND_SCANOUT, ctx: int = 0,
                  depth: int = 1, array_size: int = 1, last_level: int = 0) -> int:  # fmt: skip
        body = W.RESOURCE_CREATE_3D.pack(rid, target, fmt, bind, w, h, depth, array_size, last_level, 0, 0, 0)
        return self.type(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_3D, body, ctx)

    def submit(self, ctx: int, stream: bytes, fenced: bool = True, size: int | None = None) -> bytes:
        body = W.CMD_SUBMIT.pack(len(stream) if size is None else size, 0)
        return self.cmd(W.VIRTIO_GPU_CMD_SUBMIT_3D, body, ctx, fenced, tail=stream)

    def transfer(self, rid: int, w: int, h: int, ctx: int = 0, to_host: bool = False, stride: int | None = None,
                 fenced: bool = True, x: int = 0, y: int = 0, offset: int = 0) -> bytes:  # fmt: skip
        ctype = W.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D if to_host else W.VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D
        body = W.TRANSFER_HOST_3D.pack(x, y, 0, w, h, 1, offset, rid, 0, w * 4 if stride is None else stride, 0)
        return self.cmd(ctype, body, ctx, fenced)

    def target(self, ctx: int, rid: int, w: int, h: int) -> Backing:
        """A 2D render target of w x h BGRX in context *ctx*, with a backing in guest RAM."""
        assert self.create_3d(rid, w, h) == OK
        backing = Backing(self.fe, w * h * 4, seed=rid)
        assert self.drv.attach_backing(rid, backing.entries()) == OK
        assert self.attach(ctx, rid) == OK
        return backing

    def read_backing(self, backing: Backing, n: int) -> bytes:
        out = b"".join(self.fe.ram.read(gpa, ln) for gpa, ln in backing.pages)
        return out[:n]


@pytest.fixture
def g3d(spawn):  # noqa: ANN001, ANN201
    made: list[G3D] = []

    def start(*args: str, fd_mode: bool = False, reset_first: bool = False) -> G3D:
        g = G3D(spawn, *args, fd_mode=fd_mode, reset_first=reset_first)
        made.append(g)
        return g

    yield start
    for g in made:
        g.close()


def bgrx(r: int, g: int, b: int) -> bytes:
    return bytes((b, g, r, 0xFF))


#: clear(1.0, 0.5, 0.0): llvmpipe rounds 0.5 to 0x80.
ORANGE = bgrx(0xFF, 0x80, 0x00)


def clear_and_dot(rid: int, surface: int = 1) -> bytes:
    """Clear the whole target orange, then write one red texel at (1, 2)."""
    return S.encode(
        S.create_surface(surface, rid, BGRX),
        S.set_framebuffer(surface),
        S.clear(1.0, 0.5, 0.0),
        S.inline_write(rid, 1, 2, 1, 1, bgrx(0xFF, 0, 0)),
    )


def expected_image(w: int, h: int) -> bytes:
    img = bytearray(ORANGE * (w * h))
    img[(2 * w + 1) * 4 : (2 * w + 2) * 4] = bgrx(0xFF, 0, 0)
    return bytes(img)


@needs_virgl
def test_features_config_and_capsets(g3d) -> None:  # noqa: ANN001
    g = g3d()
    assert g.fe.get_features() & bit(W.VIRTIO_GPU_F_VIRGL)
    num_capsets = W.CONFIG.unpack(g.fe.get_config(0, 16))[3]
    assert num_capsets == 2
    infos = []
    for index in range(num_capsets):
        resp = g.cmd(W.VIRTIO_GPU_CMD_GET_CAPSET_INFO, W.GET_CAPSET_INFO.pack(index, 0), resp=40)
        assert resp_type(resp) == W.VIRTIO_GPU_RESP_OK_CAPSET_INFO
        infos.append(W.RESP_CAPSET_INFO.unpack_from(resp, 24)[:3])
    assert [cid for cid, _, _ in infos] == [W.VIRTIO_GPU_CAPSET_VIRGL, W.VIRTIO_GPU_CAPSET_VIRGL2]
    resp = g.cmd(W.VIRTIO_GPU_CMD_GET_CAPSET_INFO, W.GET_CAPSET_INFO.pack(2, 0), resp=40)
    assert resp_type(resp) == BAD_PARAM
    cid, version, size = infos[1]
    resp = g.cmd(W.VIRTIO_GPU_CMD_GET_CAPSET, W.GET_CAPSET.pack(cid, version), resp=24 + size)
    assert resp_type(resp) == W.VIRTIO_GPU_RESP_OK_CAPSET
    # struct virgl_caps_v2 starts with v1's max_version (a u32), then glsl_level among others
    assert len(resp) == 24 + size and struct.unpack_from("<I", resp, 24)[0] >= 1
    assert resp_type(g.cmd(W.VIRTIO_GPU_CMD_GET_CAPSET, W.GET_CAPSET.pack(cid, version + 1), resp=24)) == BAD_PARAM
    assert resp_type(g.cmd(W.VIRTIO_GPU_CMD_GET_CAPSET, W.GET_CAPSET.pack(77, 0), resp=24)) == BAD_PARAM


WH = (1280, 800)


def drawn_image(w: int, h: int, rect: tuple[int, int, int, int]) -> bytes:
    x0, y0, x1, y1 = rect
    return b"".join(bgrx(0, 0, 0xFF) if x0 <= x < x1 and y0 <= y < y1 else ORANGE for y in range(h) for x in range(w))


@needs_virgl
@pytest.mark.parametrize("fd_mode", [False, True])
def test_clear_draw_and_read_back_through_guest_memory(g3d, fd_mode) -> None:  # noqa: ANN001
    """A frame as a GL program makes it: clear, then a rectangle drawn with shaders from a
    vertex buffer; read back through the guest's pages, every pixel as expected."""
    g = g3d(fd_mode=fd_mode)
    w, h = WH
    rect = (WH[0] // 4, WH[1] // 4, 3 * WH[0] // 4, WH[1] // 2)
    assert g.ctx_create(1) == OK
    backing = g.target(1, 7, w, h)
    assert g.create_3d(8, 64, 1, fmt=S.FORMAT_R8_UNORM, target=S.PIPE_BUFFER, bind=S.BIND_VERTEX_BUFFER) == OK
    assert g.attach(1, 8) == OK
    resp = g.submit(1, S.clear_and_draw(7, 8, w, h, (1.0, 0.5, 0.0), rect, (0.0, 0.0, 1.0)))
    assert resp_type(resp) == OK
    _, flags, fence_id, ctx_id, _ = W.CTRL_HDR.unpack_from(resp)
    assert flags & FENCE and fence_id == g.fence and ctx_id == 1  # answered when its fence signalled
    assert resp_type(g.transfer(7, w, h, ctx=1)) == OK
    assert g.read_backing(backing, w * h * 4) == drawn_image(w, h, rect)


@needs_virgl
@pytest.mark.parametrize("reset_first", [False, True])
def test_fenced_commands_of_one_kick_complete_in_order(g3d, reset_first) -> None:  # noqa: ANN001
    """Each waits for its fence; after a device reset too (the renderer's own reset would have
    ended the thread that signals fences: nothing would complete)."""
    g = g3d(reset_first=reset_first)
    w, h = 256, 256  # big enough that llvmpipe is still drawing when the fence is created
    assert g.ctx_create(1) == OK
    backing = g.target(1, 7, w, h)
    cmds = []
    for i in range(12):
        stream = S.encode(S.create_surface(10 + i, 7, BGRX), S.set_framebuffer(10 + i), S.clear(i / 11, 0.5, 0.0))
        g.fence += 1
        cmds.append([hdr(W.VIRTIO_GPU_CMD_SUBMIT_3D, FENCE, g.fence, 1) + W.CMD_SUBMIT.pack(len(stream), 0), stream])
    for parts in cmds:
        g.drv.ctrl.add(parts, [24])
    g.drv.ctrl.kick()
    used = g.drv.ctrl.wait_used(len(cmds), 10)
    fences = [W.CTRL_HDR.unpack_from(u.data)[2] for u in used]
    assert fences == list(range(1, 13)) and all(resp_type(u.data) == OK for u in used)
    assert resp_type(g.transfer(7, w, h, ctx=1)) == OK
    assert g.read_backing(backing, 4) == bgrx(0xFF, 0x80, 0)  # the last clear (1.0, 0.5, 0.0)


@needs_virgl
def test_transfer_to_host_3d_then_back(g3d) -> None:  # noqa: ANN001
    g = g3d()
    w, h = 8, 4
    assert g.ctx_create(1) == OK
    backing = g.target(1, 3, w, h)
    pix = bytes(random.Random(3).randrange(256) for _ in range(w * h * 4))
    backing.write(0, pix)
    assert resp_type(g.transfer(3, w, h, ctx=1, to_host=True)) == OK
    backing.write(0, bytes(len(pix)))
    assert resp_type(g.transfer(3, w, h, ctx=1)) == OK
    # BGRX: the X byte reads back as what was written or 0xff, depending on the driver
    got = g.read_backing(backing, len(pix))
    assert [got[i : i + 3] for i in range(0, len(got), 4)] == [pix[i : i + 3] for i in range(0, len(pix), 4)]


@needs_virgl
@pytest.mark.parametrize("w, h", [(32, 16), (320, 240)])  # the large one's copy is a mapping: by reference
def test_3d_resource_on_a_scanout_reaches_the_display(g3d, w, h) -> None:  # noqa: ANN001
    g = g3d()
    assert g.ctx_create(1) == OK
    g.target(1, 5, w, h)
    assert resp_type(g.submit(1, clear_and_dot(5))) == OK
    assert g.drv.set_scanout(0, 5, 0, 0, w, h) == OK
    assert g.drv.flush(5, 0, 0, w, h) == OK
    g.display.wait_updates(1)
    assert g.display.image(0) == (w, h, expected_image(w, h))
    # a later frame: a flush of part of it reads that part back again
    assert resp_type(g.submit(1, S.encode(S.inline_write(5, 4, 4, 1, 1, bgrx(0, 0, 0xFF))))) == OK
    assert g.drv.flush(5, 4, 4, 1, 1) == OK
    g.display.wait_updates(2)
    img = bytearray(expected_image(w, h))
    img[(4 * w + 4) * 4 : (4 * w + 5) * 4] = bgrx(0, 0, 0xFF)
    assert g.display.image(0) == (w, h, bytes(img))
    assert not g.display.errors


@needs_virgl
def test_2d_keeps_working_beside_3d(g3d) -> None:  # noqa: ANN001
    g = g3d()
    pix = bytes(random.Random(1).randrange(256) for _ in range(8 * 8 * 4))
    g.drv.make_resource(1, BGRX, 8, 8, pix)
    assert g.create_3d(1, 8, 8) == BAD_RES  # one id space
    assert g.ctx_create(1) == OK
    assert g.attach(1, 1) == OK  # the guest kernel attaches its dumb buffers too: accepted, a no-op
    assert g.drv.set_scanout(0, 1, 0, 0, 8, 8) == OK
    assert g.drv.flush(1, 0, 0, 8, 8) == OK
    g.display.wait_updates(1)
    assert g.display.image(0) == (8, 8, pix)
    assert g.drv.unref(1) == OK


@needs_virgl
def test_context_errors(g3d) -> None:  # noqa: ANN001
    g = g3d()
    assert g.ctx_create(0) == BAD_CTX
    assert g.ctx_create(1) == OK
    assert g.ctx_create(1) == BAD_CTX
    assert g.ctx_create(2, context_init=4) == BAD_PARAM  # venus: not offered
    assert g.ctx_destroy(9) == BAD_CTX
    assert g.attach(9, 1) == BAD_CTX
    assert g.attach(1, 9) == BAD_RES
    assert resp_type(g.submit(9, S.encode(S.clear(0, 0, 0)))) == BAD_CTX
    assert g.ctx_destroy(1) == OK
    assert resp_type(g.submit(1, S.encode(S.clear(0, 0, 0)))) == BAD_CTX
    assert g.ctx_create(1) == OK  # the id is free again


@needs_virgl
def test_resource_and_transfer_errors(g3d) -> None:  # noqa: ANN001
    g = g3d("--max-hostmem=64M")
    assert g.create_3d(0, 8, 8) == BAD_RES
    assert g.create_3d(1, 8, 8, target=99) == BAD_PARAM
    assert g.create_3d(1, 0, 8) == BAD_PARAM
    assert g.create_3d(1, 8, 8, fmt=0xFFFF) == BAD_PARAM  # the renderer refuses it
    assert g.create_3d(2, 8192, 8192) == OOM  # 256 MiB against a 64 MiB cap
    assert g.create_3d(1, 8, 8) == OK
    assert g.create_3d(1, 8, 8) == BAD_RES
    assert resp_type(g.transfer(1, 8, 8)) == BAD_RES  # no backing yet
    assert resp_type(g.transfer(99, 8, 8)) == BAD_RES
    backing = Backing(g.fe, 8 * 8 * 4, seed=1)
    assert g.drv.attach_backing(1, backing.entries()) == OK
    assert resp_type(g.transfer(1, 8, 8, ctx=5)) == BAD_CTX
    assert resp_type(g.transfer(1, 16, 8)) == BAD_PARAM  # outside the texture
    assert resp_type(g.transfer(1, 8, 8, stride=4096)) == BAD_PARAM  # past the end of the backing
    assert resp_type(g.transfer(1, 8, 8)) == OK
    assert g.drv.detach_backing(1) == OK
    assert resp_type(g.transfer(1, 8, 8)) == BAD_RES
    assert g.drv.unref(1) == OK
    assert g.drv.unref(1) == BAD_RES
    buf = g.create_3d(3, 4096, 1, fmt=64, target=S.PIPE_BUFFER, bind=1 << 4)  # a vertex buffer (R8_UNORM)
    assert buf == OK
    assert g.drv.set_scanout(0, 3, 0, 0, 16, 1) == BAD_PARAM  # not something a scanout shows


@needs_virgl
def test_bad_command_streams_fail_their_submit_not_the_process(g3d) -> None:  # noqa: ANN001
    g = g3d()
    w, h = 8, 8
    assert g.ctx_create(1) == OK
    backing = g.target(1, 7, w, h)
    assert resp_type(g.submit(1, b"\xff" * 64)) == BAD_PARAM
    assert resp_type(g.submit(1, S.encode(S.create_surface(1, 999, BGRX)))) == BAD_PARAM  # unknown resource
    assert resp_type(g.submit(1, b"", size=W.MAX_SUBMIT + 4)) == BAD_PARAM  # over the limit
    assert resp_type(g.submit(1, b"\0" * 8, size=64)) == BAD_PARAM  # shorter than it says
    rng = random.Random(13)
    for _ in range(200):
        n = rng.randrange(1, 64)
        words = [rng.getrandbits(32) for _ in range(n)]
        if rng.random() < 0.5:  # a plausible header: a real command with a wrong length or arguments
            words[0] = rng.randrange(1, 60) | rng.randrange(0, 12) << 8 | rng.randrange(0, n) << 16
        assert resp_type(g.submit(1, struct.pack(f"<{n}I", *words))) in (OK, BAD_PARAM)
    # the back-end still serves, and a well-formed stream in a new context still renders
    assert g.ctx_create(2) == OK
    assert g.attach(2, 7) == OK
    assert resp_type(g.submit(2, clear_and_dot(7, surface=3))) == OK
    assert resp_type(g.transfer(7, w, h, ctx=2)) == OK
    assert g.read_backing(backing, w * h * 4) == expected_image(w, h)
    assert g.be.proc.poll() is None


def test_without_virgl_3d_commands_are_unsupported(spawn) -> None:  # noqa: ANN001
    be, fe = spawn("vhost-user-gpu", "--display-timeout=0.5")
    drv = open_gpu(fe, None)
    assert not fe.get_features() & bit(W.VIRTIO_GPU_F_VIRGL)
    for ctype, body in (
        (W.VIRTIO_GPU_CMD_GET_CAPSET_INFO, W.GET_CAPSET_INFO.pack(0, 0)),
        (W.VIRTIO_GPU_CMD_CTX_CREATE, W.CTX_CREATE.pack(4, 0, b"test")),
        (W.VIRTIO_GPU_CMD_SUBMIT_3D, W.CMD_SUBMIT.pack(0, 0)),
    ):
        assert resp_type(drv.cmd(hdr(ctype, ctx_id=1) + body, 40)) == ERR_UNSPEC


@pytest.mark.parametrize(
    "args, message",
    [
        (["--render-node=/dev/null"], "not a DRM render node"),
        (["--virgl", "--render-node=/dev/null"], "not a DRM render node"),
        (["--virgl", "--render-node=/nonexistent"], "no such device"),
    ],
)
def test_render_node_errors_fail_early(tmp_path, args, message) -> None:  # noqa: ANN001
    out = subprocess.run([*program("vhost-user-gpu"), f"--socket-path={tmp_path}/s", *args], env=child_env(),
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode != 0 and message in out.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
@pytest.mark.parametrize("extra, message", [([], "only used for 3D"), (["--virgl"], "can't be opened")])
def test_a_render_node_without_its_driver(tmp_path, extra, message) -> None:  # noqa: ANN001
    """A DRM render node's device file (major 226) with no driver behind it, as in a container."""
    node = tmp_path / "renderD128"
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(226, 128))
    out = subprocess.run([*program("vhost-user-gpu"), f"--socket-path={tmp_path}/s", f"--render-node={node}", *extra],
                         env=child_env(), capture_output=True, text=True, timeout=30)  # fmt: skip
    built = virgl.available() is None  # the node is opened before the renderer starts
    want = message if extra == [] or built else "3D is not available"
    assert out.returncode != 0 and want in out.stderr, out.stderr
    assert not (tmp_path / "s").exists()


def test_virgl_without_the_renderer_fails_early(tmp_path) -> None:  # noqa: ANN001
    env = child_env()
    env["VHOSTSUITE_NO_EXTENSIONS"] = "1"
    out = subprocess.run([*program("vhost-user-gpu"), f"--socket-path={tmp_path}/s", "--virgl"], env=env,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode != 0 and "3D is not available" in out.stderr
    assert not (tmp_path / "s").exists()


@needs_virgl
def test_what_the_renderer_writes_to_stderr_is_rate_limited(g3d) -> None:  # noqa: ANN001
    """virglrenderer prints some faults of a stream with fprintf(stderr), past its log callback:
    a SEND_STRING_MARKER whose string is longer than the command, 300 times, must not make 300
    lines. They go through the guest-message rate limit, under our prefix."""
    g = g3d("-v")
    assert g.ctx_create(1) == OK
    marker = S.encode([S.header(S.CCMD_SEND_STRING_MARKER, 0, 4), 0xF0000000, 0, 0, 0])
    for _ in range(300):
        assert resp_type(g.submit(1, marker)) in (OK, BAD_PARAM)
    assert resp_type(g.submit(1, S.encode(S.clear(0, 0, 0)))) == OK  # still serving
    err = g.be.stderr()
    raw = [line for line in err.splitlines() if "String len" in line]
    assert raw, err[-2000:]  # the renderer did complain, here and in the check below
    assert len(raw) <= BURST + 2, "\n".join(raw[:20])
    assert all(line.startswith("vhost-user-gpu: INFO: virglrenderer: ") for line in raw), raw[:3]
    assert "more 'virglrenderer-stderr' messages are counted" in err


def test_a_gl_library_the_loader_cannot_find_is_told_without_starting_anything(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The loader's cache and directories as the probe reads them: a library is missing only
    when none of its names is in either (a longer name is another library)."""
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    cache, lib = tmp_path / "ld.so.cache", tmp_path / "lib"
    lib.mkdir()

    def missing(*entries: str) -> tuple[str, str] | None:
        table = b"".join(f"{n}\0/usr/lib/{n}\0".encode() for n in entries)
        cache.write_bytes(b"glibc-ld.so.cache1.1" + bytes(32) + table)
        return probe.unfindable(probe.GL_LIBRARIES, str(cache), (str(lib),))

    assert missing("libEGL.so.1", "libOpenGL.so.0") is None
    assert missing("libEGL.so.1", "libGL.so.1") is None, "either name will do"
    assert missing("libEGL.so.1") == ("libOpenGL.so.0", "libopengl0")
    assert missing("libEGL.so.10", "libOpenGL.so.0") == ("libEGL.so.1", "libegl1")
    (lib / "libEGL.so.1").write_bytes(b"")
    assert missing("libOpenGL.so.0") is None, "in a default directory, not in the cache"
    (lib / "libEGL.so.1").unlink()
    assert missing() == ("libEGL.so.1", "libegl1")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(lib))
    assert missing() is None, "another directory is searched: only loading can tell"
    monkeypatch.delenv("LD_LIBRARY_PATH")
    cache.unlink()
    assert probe.unfindable(probe.GL_LIBRARIES, str(cache), (str(lib),)) is None, "no cache: only loading can tell"


@needs_virgl
def test_where_virgl_works_its_gl_libraries_are_found_in_the_loaders_cache() -> None:
    assert probe.unfindable(probe.GL_LIBRARIES) is None
