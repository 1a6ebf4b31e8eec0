"""vhost-user-rng served to a real Linux guest by a real QEMU (TCG)."""

from __future__ import annotations

import re
import socket

import pytest

from tests.conftest import Backend, program

pytestmark = pytest.mark.e2e


def _check_guest_output(out: str) -> None:
    assert "VHS-INSMOD-FAIL" not in out, out
    cur = re.search(r"^RNG_CURRENT=(\S*)", out, re.M)
    assert cur and cur[1].startswith("virtio_rng"), out
    blocks = []
    for x in "AB":
        size = re.search(rf"^RNG_{x}_BYTES=\s*(\d+)", out, re.M)
        data = re.search(rf"^RNG_{x}=([0-9a-f]*)", out, re.M)
        assert size and data, out
        assert int(size[1]) == 4096 and len(data[1]) == 2 * 4096
        blocks.append(data[1])
    assert blocks[0] != blocks[1]


def serve_rng_guest(vm_factory, be: Backend, chardev: str, pass_fds: tuple[int, ...] = (),
                    keep: socket.socket | None = None) -> None:  # fmt: skip
    """Boot the rng guest with back-end *be* on *chardev*: it reads two blocks of random bytes,
    and when QEMU exits the back-end ends with status 0. *keep* is closed once QEMU has it."""
    vm = vm_factory("rng", ["-chardev", chardev, "-device", "vhost-user-rng-pci,chardev=rng0"], pass_fds=pass_fds)
    if keep is not None:
        keep.close()
    done = vm.wait_for(r"^VHS-DONE rc=(\d+)", timeout=240)
    out = vm.serial_text()
    assert done[1] == "0", out
    _check_guest_output(out)
    assert vm.wait_exit(60) == 0
    # QEMU exited: the front-end hung up, and the back-end ends with status 0
    assert be.wait(10) == 0, be.stderr()
    assert "hung up" in be.stderr()


@pytest.mark.parametrize("mode", ["socket-path", "fd"])
def test_guest_reads_hwrng_from_our_backend(vm_factory, tmp_path, mode):
    if mode == "socket-path":
        path = tmp_path / "rng.sock"
        be = Backend([*program("vhost-user-rng"), f"--socket-path={path}", "-v"], tmp_path)
        chardev = f"socket,id=rng0,path={path}"
        pass_fds: tuple[int, ...] = ()
        keep = None
    else:  # as libvirt does it: one connected socketpair, one end each
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        be = Backend([*program("vhost-user-rng"), f"--fd={theirs.fileno()}", "-v"], tmp_path, (theirs.fileno(),))
        theirs.close()
        chardev = f"socket,id=rng0,fd={ours.fileno()}"
        pass_fds = (ours.fileno(),)
        keep = ours
    try:
        if mode == "socket-path":
            be.wait_listening(path)
        serve_rng_guest(vm_factory, be, chardev, pass_fds, keep)
    finally:
        be.stop()
        if keep is not None:
            keep.close()
