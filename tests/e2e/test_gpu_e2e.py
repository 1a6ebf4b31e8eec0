"""vhost-user-gpu end to end: a real Linux guest draws with KMS (guest_src/gpu-draw.c) on our
back-end, served to a real QEMU (TCG, ``-display none``); QMP screendump must show the exact pattern,
and after a DIRTYFB of one rectangle exactly that rectangle must change."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.conftest import Backend, program
from vhostsuite.testing.screen import differing_pixels, expected, load_rgb

pytestmark = pytest.mark.e2e

DELAY = 10  # seconds the guest waits between its two frames (time for our screendumps)


def screen_matches(vm, tmp: Path, w: int, h: int, want: bytes, timeout: float = 30) -> tuple[bool, str]:  # noqa: ANN001
    """Screendump until it shows *want* (the UPDATE may still be on its way)."""
    deadline = time.monotonic() + timeout
    note = ""
    n = 0
    while True:
        n += 1
        path = tmp / f"shot{n}"
        fmt = vm.screendump(path)
        sw, sh, rgb = load_rgb(path, fmt)
        if (sw, sh) == (w, h) and rgb == want:
            return True, ""
        if (sw, sh) != (w, h):
            note = f"screen is {sw}x{sh}, guest mode {w}x{h}"
        else:
            diff = differing_pixels(w, rgb, want)
            note = f"{len(diff)} pixels differ, first at {diff[0]}"
        if time.monotonic() > deadline:
            return False, note
        time.sleep(0.5)


@pytest.mark.parametrize("mode", ["socket-path", "fd"])
def test_guest_draws_on_our_gpu(vm_factory, tmp_path, mode) -> None:  # noqa: ANN001
    keep = None
    if mode == "socket-path":
        path = tmp_path / "gpu.sock"
        be = Backend([*program("vhost-user-gpu"), f"--socket-path={path}", "-v"], tmp_path)
        be.wait_listening(path)
        chardev, pass_fds = f"socket,id=gpu0,path={path}", ()
    else:  # as libvirt does it: a connected socketpair, one end each
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        be = Backend([*program("vhost-user-gpu"), f"--fd={theirs.fileno()}", "-v"], tmp_path, (theirs.fileno(),))
        theirs.close()
        chardev, pass_fds, keep = f"socket,id=gpu0,fd={ours.fileno()}", (ours.fileno(),), ours
    try:
        vm = vm_factory(
            "gpu-draw",
            ["-chardev", chardev, "-device", "vhost-user-gpu-pci,chardev=gpu0"],
            cmdline_extra=f"vhs.gpu_delay={DELAY}",
            pass_fds=pass_fds,
        )
        if keep is not None:
            keep.close()
        m = vm.wait_for(r"^GPU-(?:FRAME1 (\d+) (\d+)|ERROR.*)$", timeout=300)
        assert m[1], vm.serial_text()
        w, h = int(m[1]), int(m[2])
        ok, note = screen_matches(vm, tmp_path, w, h, expected(w, h), timeout=DELAY - 2)
        assert ok, f"frame 1: {note}\n{be.stderr()[-3000:]}"

        m = vm.wait_for(r"^GPU-(?:FRAME2 (\d+) (\d+) (\d+) (\d+)|ERROR.*)$", timeout=120)
        assert m[1], vm.serial_text()
        rect = tuple(int(v) for v in m.groups())
        ok, note = screen_matches(vm, tmp_path, w, h, expected(w, h, rect))
        assert ok, f"frame 2: {note}\n{be.stderr()[-3000:]}"
        assert "Traceback" not in be.stderr()
        vm.close()  # QEMU first, so it does not complain about a vanished back-end
    finally:
        be.terminate()
        be.stop()
