"""vhost-user-gpu --virgl end to end: a real Linux guest draws a frame with the virtio-gpu 3D
ioctls (guest_src/gpu-3d.c: a context, a 3D render target, EXECBUFFER with a virgl command
stream that clears and draws with shaders, TRANSFER_FROM_HOST), checks its pixels, then shows
it with KMS; QMP screendump of a real QEMU (TCG, ``-display none``) must equal it. Our
renderer is virglrenderer on Mesa's llvmpipe: these hosts have no GPU."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import Backend, program
from tests.e2e.test_gpu_e2e import screen_matches
from vhostsuite.devices.gpu import renderer_works

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not renderer_works(), reason="virglrenderer does not initialise here (or is not built)"),
]

ORANGE, BLUE = (0xFF, 0x80, 0x00), (0x00, 0x00, 0xFF)


def frame(w: int, h: int) -> bytes:
    """RGB of gpu-3d's frame: orange, and a blue rectangle [w/4, 3w/4) x [h/4, h/2)."""
    x0, y0, x1, y1 = w // 4, h // 4, 3 * w // 4, h // 2
    row_out = bytes(ORANGE) * w
    row_in = bytes(ORANGE) * x0 + bytes(BLUE) * (x1 - x0) + bytes(ORANGE) * (w - x1)
    return b"".join(row_in if y0 <= y < y1 else row_out for y in range(h))


@pytest.mark.parametrize("mode", ["socket-path", "fd"])
def test_guest_draws_in_3d_on_our_gpu(vm_factory, tmp_path, mode) -> None:  # noqa: ANN001
    keep = None
    args = ["--virgl", "-vv"]
    if mode == "socket-path":
        path = tmp_path / "gpu.sock"
        be = Backend([*program("vhost-user-gpu"), f"--socket-path={path}", *args], tmp_path)
        be.wait_listening(path)
        chardev, pass_fds = f"socket,id=gpu0,path={path}", ()
    else:  # as libvirt does it: a connected socketpair, one end each
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        be = Backend([*program("vhost-user-gpu"), f"--fd={theirs.fileno()}", *args], tmp_path, (theirs.fileno(),))
        theirs.close()
        chardev, pass_fds, keep = f"socket,id=gpu0,fd={ours.fileno()}", (ours.fileno(),), ours
    try:
        serve_gpu3d_guest(vm_factory, be, chardev, pass_fds, tmp_path, keep)
    finally:
        be.terminate()
        be.stop()


def serve_gpu3d_guest(vm_factory, be: Backend, chardev: str, pass_fds: tuple[int, ...], tmp_path,  # noqa: ANN001
                      keep: socket.socket | None = None) -> None:  # fmt: skip
    """Boot the gpu-3d guest on the back-end *be* (at *chardev*): its 3D frame must read back
    right in the guest and equal QMP's screendump. *keep*: our end of an --fd socketpair,
    closed once QEMU holds it."""
    vm = vm_factory("gpu-3d", ["-chardev", chardev, "-device", "vhost-user-gpu-pci,chardev=gpu0"],
                    pass_fds=pass_fds)  # fmt: skip
    if keep is not None:
        keep.close()
    m = vm.wait_for(r"^GPU3D-(?:FEATURES (\d+)|ERROR.*)$", timeout=300)
    assert m[1] == "1", f"{vm.serial_text()}\n{be.stderr()[-3000:]}"
    m = vm.wait_for(r"^GPU3D-(?:PIXELS (\d+) (\d+) (\d+)|ERROR.*)$", timeout=120)
    assert m[1], f"{vm.serial_text()}\n{be.stderr()[-3000:]}"
    assert m[3] == "0", f"the guest read back wrong pixels:\n{vm.serial_text()}"
    w, h = int(m[1]), int(m[2])
    m = vm.wait_for(r"^GPU3D-(?:SCANOUT (\d+) (\d+)|ERROR.*)$", timeout=60)
    assert m[1], vm.serial_text()
    ok, note = screen_matches(vm, tmp_path, w, h, frame(w, h))
    assert ok, f"screendump: {note}\n{be.stderr()[-3000:]}"
    assert "Traceback" not in be.stderr()
    vm.close()
