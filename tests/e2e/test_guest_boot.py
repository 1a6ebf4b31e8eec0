"""Validate the guest kit itself with QEMU's built-in (not vhost-user) virtio-rng device."""

from __future__ import annotations

import re
import struct
import time

import pytest

from vhostsuite.testing.guest import MIN_QEMU_VERSION, Qemu

pytestmark = pytest.mark.e2e


def test_qemu_version(qemu: Qemu) -> None:
    assert qemu.version >= MIN_QEMU_VERSION >= (8, 2, 0)


def test_boot_with_builtin_virtio_rng(vm_factory) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    vm = vm_factory("rng", ["-device", "virtio-rng-pci"])
    vm.wait_for(r"^VHS-BOOTED", timeout=180)
    done = vm.wait_for(r"^VHS-DONE rc=(\d+)", timeout=180)
    elapsed = time.monotonic() - t0
    print(f"boot to VHS-DONE: {elapsed:.1f}s")
    out = vm.serial_text()
    assert "VHS-INSMOD-FAIL" not in out, out
    assert done[1] == "0", out

    cur = re.search(r"^RNG_CURRENT=(\S*)", out, re.M)
    assert cur and cur[1].startswith("virtio_rng"), out
    blocks = {}
    for x in "AB":
        size = re.search(rf"^RNG_{x}_BYTES=\s*(\d+)", out, re.M)
        digest = re.search(rf"^RNG_{x}_SHA256=([0-9a-f]{{64}})", out, re.M)
        data = re.search(rf"^RNG_{x}=([0-9a-f]*)", out, re.M)
        assert size and digest and data, out
        assert int(size[1]) == 4096
        assert len(data[1]) == 2 * 4096
        blocks[x] = (digest[1], data[1])
    assert blocks["A"] != blocks["B"]
    assert vm.wait_exit(60) == 0


def test_screendump_builtin_virtio_gpu(vm_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    vm = vm_factory("idle", ["-device", "virtio-gpu-pci"])
    vm.wait_for(r"^VHS-IDLE", timeout=180)
    assert "VHS-INSMOD-FAIL" not in vm.serial_text()
    fmt = vm.screendump(tmp_path / "screen.img")
    data = (tmp_path / "screen.img").read_bytes()
    if fmt == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = struct.unpack(">II", data[16:24])
    else:
        m = re.match(rb"P6\s+(\d+)\s+(\d+)\s", data)
        assert m, data[:32]
        width, height = int(m[1]), int(m[2])
    assert width >= 640 and height >= 480  # the guest's DRM fbdev set a mode on the scanout
    assert vm.qmp("query-status")["status"] == "running"
