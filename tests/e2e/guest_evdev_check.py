"""Runs inside a guest, in the Debian root where the vhostsuite package is installed: a real
kernel evdev device (made with uinput) passed through by the installed vhost-user-input, driven
by the test front-end over a real socket. Prints ``EVDEV-OK <what>`` per check; any failure
ends it with a traceback and a non-zero status.

Checked: the config space shows the kernel's view of the device (name, ids, properties, event
bits, absinfo); events reach the guest in order; the device is grabbed (another reader sees
nothing) and with --no-grab it is not; an LED the driver sets reaches the device; unplugging
the device ends the back-end with status 1 and a message.
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import time

sys.path.insert(0, "/usr/lib/vhostsuite/python")

import evdev  # noqa: E402
from evdev import AbsInfo, UInput  # noqa: E402
from evdev import ecodes as E  # noqa: E402

from vhostsuite.devices.input import config as C  # noqa: E402
from vhostsuite.testing.frontend import Frontend  # noqa: E402

EV = struct.Struct("<HHi")
NAME = "vhs uinput tablet"
IDS = (0x06, 0x1D6B, 0x0104, 0x0002)  # bustype, vendor, product, version
CAPS = {
    E.EV_KEY: [E.BTN_LEFT, E.BTN_TOUCH, E.KEY_A],
    E.EV_ABS: [
        (E.ABS_X, AbsInfo(value=0, min=0, max=32767, fuzz=0, flat=0, resolution=10)),
        (E.ABS_Y, AbsInfo(value=0, min=0, max=16383, fuzz=4, flat=0, resolution=5)),
    ],
    E.EV_LED: [E.LED_NUML, E.LED_CAPSL],
}


def ok(what: str) -> None:
    print(f"EVDEV-OK {what}", flush=True)


def entry(fe: Frontend, select_: int, subsel: int) -> bytes:
    fe.set_config(0, bytes([select_, subsel]))
    data = fe.get_config(0, C.CONFIG_SIZE)
    return data[C.UNION_OFFSET : C.UNION_OFFSET + data[2]]


def bits(payload: bytes) -> set[int]:
    return {i * 8 + b for i, byte in enumerate(payload) for b in range(8) if byte >> b & 1}


def start(path: str, *extra: str) -> tuple[subprocess.Popen, Frontend]:
    sock = "/tmp/in.sock"
    if os.path.exists(sock):
        os.unlink(sock)
    be = subprocess.Popen(["/usr/libexec/vhost-user-input", f"--socket-path={sock}", f"--evdev-path={path}", *extra],
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        if be.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"vhost-user-input did not start: {be.stderr.read()}")
        time.sleep(0.05)
    fe = Frontend.connect(sock, timeout=30)
    fe.initialize()
    return be, fe


def events(q, n: int, timeout: float = 30) -> list[tuple[int, int, int]]:
    return [EV.unpack(u.data) for u in q.wait_used(n, timeout)]


def nothing_to_read(dev: evdev.InputDevice, wait: float = 1.0) -> bool:
    return not select.select([dev.fd], [], [], wait)[0]


def main() -> int:
    ui = UInput(CAPS, name=NAME, bustype=IDS[0], vendor=IDS[1], product=IDS[2], version=IDS[3],
                input_props=[E.INPUT_PROP_DIRECT])  # fmt: skip
    time.sleep(0.5)  # udev-less guest: the node appears in devtmpfs at once, give it a moment
    path = ui.device.path
    be, fe = start(path)

    # -- the config space is the kernel's view of the device -------------------------------
    assert entry(fe, C.VIRTIO_INPUT_CFG_ID_NAME, 0).decode() == NAME
    assert struct.unpack("<HHHH", entry(fe, C.VIRTIO_INPUT_CFG_ID_DEVIDS, 0)) == IDS
    assert E.INPUT_PROP_DIRECT in bits(entry(fe, C.VIRTIO_INPUT_CFG_PROP_BITS, 0))
    assert {E.BTN_LEFT, E.BTN_TOUCH, E.KEY_A} <= bits(entry(fe, C.VIRTIO_INPUT_CFG_EV_BITS, E.EV_KEY))
    assert bits(entry(fe, C.VIRTIO_INPUT_CFG_EV_BITS, E.EV_ABS)) == {E.ABS_X, E.ABS_Y}
    assert {E.LED_NUML, E.LED_CAPSL} <= bits(entry(fe, C.VIRTIO_INPUT_CFG_EV_BITS, E.EV_LED))
    assert struct.unpack("<iiiii", entry(fe, C.VIRTIO_INPUT_CFG_ABS_INFO, E.ABS_X)) == (0, 32767, 0, 0, 10)
    assert struct.unpack("<iiiii", entry(fe, C.VIRTIO_INPUT_CFG_ABS_INFO, E.ABS_Y)) == (0, 16383, 4, 0, 5)
    ok("config")

    # -- events, in order; the device is grabbed ----------------------------------------------
    evq, stq = fe.start([64, 64])
    for _ in range(32):
        evq.add([], [EV.size])
    evq.kick()
    other = evdev.InputDevice(path)
    time.sleep(0.5)
    ui.write(E.EV_ABS, E.ABS_X, 1234)
    ui.write(E.EV_ABS, E.ABS_Y, 567)
    ui.write(E.EV_KEY, E.BTN_TOUCH, 1)
    ui.syn()
    got = events(evq, 4)
    assert got == [(E.EV_ABS, E.ABS_X, 1234), (E.EV_ABS, E.ABS_Y, 567), (E.EV_KEY, E.BTN_TOUCH, 1),
                   (E.EV_SYN, E.SYN_REPORT, 0)], got  # fmt: skip
    ok("events")
    assert nothing_to_read(other), "grabbed, yet another reader got events"
    ok("grab")

    # -- an LED the driver sets reaches the device --------------------------------------------
    stq.add([EV.pack(E.EV_LED, E.LED_CAPSL, 1) + EV.pack(E.EV_SYN, E.SYN_REPORT, 0)], [])
    stq.kick()
    deadline = time.monotonic() + 10
    leds: list[tuple[int, int, int]] = []
    while (E.EV_LED, E.LED_CAPSL, 1) not in leds and time.monotonic() < deadline:
        if select.select([ui.fd], [], [], 0.2)[0]:
            leds += [(e.type, e.code, e.value) for e in ui.read()]
    assert (E.EV_LED, E.LED_CAPSL, 1) in leds, leds
    assert E.LED_CAPSL in evdev.InputDevice(path).leds()
    ok("led")

    # -- unplugged: the back-end says so and ends with status 1 ---------------------------------
    ui.close()
    rc = be.wait(30)
    err = be.stderr.read()
    assert rc == 1, (rc, err)
    assert "was removed" in err, err
    fe.close()
    other.close()
    ok("unplug")

    # -- --no-grab: the host keeps seeing the device --------------------------------------------
    ui = UInput(CAPS, name=NAME, input_props=[E.INPUT_PROP_DIRECT])
    time.sleep(0.5)
    be, fe = start(ui.device.path, "--no-grab")
    evq, _ = fe.start([64, 64])
    for _ in range(8):
        evq.add([], [EV.size])
    evq.kick()
    other = evdev.InputDevice(ui.device.path)
    time.sleep(0.5)
    ui.write(E.EV_KEY, E.KEY_A, 1)
    ui.syn()
    assert events(evq, 2) == [(E.EV_KEY, E.KEY_A, 1), (E.EV_SYN, E.SYN_REPORT, 0)]
    assert not nothing_to_read(other, 5), "--no-grab, yet another reader got nothing"
    seen = [(e.type, e.code, e.value) for e in other.read()]
    assert (E.EV_KEY, E.KEY_A, 1) in seen, seen
    ok("no-grab")
    fe.close()
    assert be.wait(30) == 0
    ui.close()
    other.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
