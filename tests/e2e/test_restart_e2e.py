"""A back-end restarted under a running guest, with QEMU's own reconnect (``reconnect-ms``).

Debian 13's QEMU 10.0 aborts when a vhost-user-rng or -input back-end comes back, and does not
start such a device while its chardev is still connecting; these tests run with QEMU built
with ``patches/qemu/`` (``make qemu-reconnect``, :mod:`vhostsuite.testing.qemubuild`) and skip,
saying so, where it is not built. Each boot restarts the back-end while the guest uses the
device: after SIGKILL (a crash) and after SIGTERM (an upgrade).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Backend, program
from tests.e2e.conftest import vms_of
from tests.e2e.test_input_e2e import KEY_SAFE, SYN, guest_view, hint_events_per_packet
from tests.test_input import Control
from vhostsuite.devices.input import config as C
from vhostsuite.testing.guest import VM, Guest, Qemu, Unavailable
from vhostsuite.testing.qemubuild import patched_qemu

pytestmark = pytest.mark.e2e

#: How often QEMU tries the socket again once the back-end is gone.
RECONNECT_MS = 500
#: How long an instance serves before the next restart. QEMU 10 (patched) is not ready for a
#: back-end that goes again within about a second of coming back: it may stop and drop the
#: next one it connects to. Real restarts are seconds apart; this keeps the test to those.
SETTLE = 2.0


@pytest.fixture(scope="session")
def reconnect_qemu() -> Qemu:
    try:
        return patched_qemu()
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def boot(reconnect_qemu: Qemu, guest: Guest, tmp_path: Path) -> Iterator[Callable[..., VM]]:
    """VMs under the patched QEMU."""
    yield from vms_of(reconnect_qemu, guest, tmp_path)


def _end(be: Backend, sig: int) -> None:
    """End the instance as a crash (SIGKILL) or an upgrade (SIGTERM) does."""
    be.proc.send_signal(sig)
    status = be.wait(10)
    assert status == (-signal.SIGKILL if sig == signal.SIGKILL else 0), be.stderr()


def _wait_connected(be: Backend, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while "front-end connected" not in be.stderr():
        assert time.monotonic() < deadline and be.proc.poll() is None, be.stderr()
        time.sleep(0.01)


def test_rng_reads_go_on_across_restarts(boot, tmp_path: Path) -> None:
    """Three restarts while the guest reads, after SIGKILL, SIGTERM and SIGKILL again."""
    path = tmp_path / "rng.sock"
    argv = [*program("vhost-user-rng"), f"--socket-path={path}", "-v"]
    instances: list[Backend] = []
    # The first instance starts after QEMU: QEMU waits for it before the device is realised.
    late = threading.Timer(1.0, lambda: instances.append(Backend(argv, tmp_path)))
    late.start()
    try:
        chardev = f"socket,id=rng0,path={path},reconnect-ms={RECONNECT_MS}"
        vm = boot("rng-loop", ["-chardev", chardev, "-device", "vhost-user-rng-pci,chardev=rng0"],
                  cmdline_extra="vhs.rng_blocks=20")  # fmt: skip
        late.join()
        for sig, after in ((signal.SIGKILL, 3), (signal.SIGTERM, 8), (signal.SIGKILL, 13)):
            vm.wait_for(rf"^RNG_BLOCK {after} ", timeout=240)
            _end(instances[-1], sig)
            instances.append(Backend(argv, tmp_path))
            _wait_connected(instances[-1])
            time.sleep(SETTLE)
        done = vm.wait_for(r"^VHS-DONE rc=(\d+)", timeout=240)
        out = vm.serial_text()
        assert done[1] == "0", out
        blocks = re.findall(r"^RNG_BLOCK (\d+) ([0-9a-f]*)$", out, re.M)
        assert [int(i) for i, _ in blocks] == list(range(1, 21)), out
        assert all(len(data) == 128 for _, data in blocks) and len({data for _, data in blocks}) == 20
        assert vm.wait_exit(60) == 0, vm.stderr_path.read_text()
        # QEMU exited: the last instance ends with status 0
        assert instances[-1].wait(10) == 0, instances[-1].stderr()
    finally:
        late.cancel()
        for be in instances:
            be.stop()


def _keys(codes: list[int]) -> list[list[tuple[int, int, int]]]:
    return [batch for code in codes for batch in ([(C.EV_KEY, code, 1), SYN], [(C.EV_KEY, code, 0), SYN])]


def test_input_events_go_on_across_restarts(boot, tmp_path: Path) -> None:
    """Key presses sent to each instance's control socket reach the guest in order, those sent
    to a new instance before QEMU has reconnected included."""
    sock, ctl_path = tmp_path / "in.sock", tmp_path / "kbd.ctl"
    argv = [*program("vhost-user-input"), f"--socket-path={sock}", "--virtual=keyboard", f"--control-socket={ctl_path}"]
    phases = [_keys(KEY_SAFE[0:5]), _keys(KEY_SAFE[5:10]), _keys(KEY_SAFE[10:15])]
    sent = [ev for phase in phases for batch in phase for ev in batch]
    expected = guest_view(sent, hint_events_per_packet(C.builtin("keyboard")))
    be = Backend(argv, tmp_path)
    instances = [be]
    ctl = None
    try:
        be.wait_listening(sock)
        chardev = f"socket,id=in0,path={sock},reconnect-ms={RECONNECT_MS}"
        params = f"vhs.input_events={len(expected)} vhs.input_timeout=400 vhs.input_idle=120 vhs.input_linger=5"
        vm = boot("input-test", ["-chardev", chardev, "-device", "vhost-user-input-pci,chardev=in0"],
                  cmdline_extra=params)  # fmt: skip
        ctl = Control(str(ctl_path))
        vm.wait_for(r"^INPUT_READY", timeout=300)
        for i, phase in enumerate(phases):
            if i:
                _end(instances[-1], (signal.SIGKILL, signal.SIGTERM)[i - 1])
                ctl.close()
                instances.append(Backend(argv, tmp_path))
                ctl = Control(str(ctl_path), timeout=10)
            for batch in phase:  # a new instance takes them before QEMU is back
                assert ctl.events(batch).get("ok") is True
            # and delivers them once it is: then (and not while QEMU sets it up) it ends
            want = sum(len(batch) for batch in phase)
            deadline = time.monotonic() + 120
            while ctl.state()["delivered"] < want:
                assert time.monotonic() < deadline, ctl.state()
                time.sleep(0.1)
            if i + 1 < len(phases):
                time.sleep(SETTLE)
        vm.wait_for(r"^(INPUT_EVENTS_DONE|INPUT_TIMEOUT)", timeout=300)
        done = vm.wait_for(r"^VHS-DONE rc=(\d+)", timeout=240)
        out = vm.serial_text()
        got = [tuple(int(x) for x in m.groups()) for m in re.finditer(r"^EV (\d+) (\d+) (-?\d+)$", out, re.M)]
        assert got == expected, out
        assert done[1] == "0", out
        assert vm.wait_exit(60) == 0, vm.stderr_path.read_text()
        assert instances[-1].wait(10) == 0, instances[-1].stderr()
    finally:
        if ctl is not None:
            ctl.close()
        for be in instances:
            be.stop()
