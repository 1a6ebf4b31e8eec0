"""vhost-user-input and a real kernel evdev device. These hosts have none (no /dev/uinput), a
Linux guest does: the guest boots with the Debian root in which our package is installed
(shared over virtio-9p), makes a device with uinput, and there the installed
vhost-user-input passes it through to the test front-end (tests/e2e/guest_evdev_check.py):
config from the kernel's device, events in order, grab and --no-grab, an LED written back to
the device, and unplugging."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CHECKS = ("config", "events", "grab", "led", "unplug", "no-grab")


def test_a_real_evdev_device_passed_through(fresh_root: Path, vm_factory) -> None:
    vhs = fresh_root / "vhs"
    vhs.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).with_name("guest_evdev_check.py"), vhs / "check.py")
    run = vhs / "run"
    run.write_text("#!/bin/sh\nexec python3 /vhs/check.py\n")
    run.chmod(0o755)
    share = f"local,path={fresh_root},mount_tag=vhsroot,security_model=passthrough,id=vhsroot"
    vm = vm_factory("chroot", ["-virtfs", share])
    done = vm.wait_for(r"^VHS-DONE rc=(\d+)", timeout=600)
    out = vm.serial_text()
    assert done[1] == "0", out
    assert "VHS-INSMOD-FAIL" not in out, out
    for what in CHECKS:
        assert f"EVDEV-OK {what}" in out, out
    assert vm.wait_exit(60) == 0
